// ger_kernels::expand_filter through the dispatcher of a plain libtorch program:
// equal to rot90/flip of the base filter (SPEC section 3), and its backward is its adjoint.
#include <torch/torch.h>

#include <cstdio>

namespace {

int passed = 0, failed = 0;

void expect(bool ok, const char* what, int64_t order, int64_t s_in) {
  ok ? ++passed : ++failed;
  if (!ok) std::printf("FAILED: %s (group_order %lld, S_in %lld)\n", what, (long long)order, (long long)s_in);
}

// A_t(w) = flip_H^m(rot90^r(w)) for t = 4*m + r
torch::Tensor act(const torch::Tensor& w, int64_t t) {
  torch::Tensor out = torch::rot90(w, t % 4, {-2, -1});
  return t >= 4 ? torch::flip(out, {-2}) : out;
}

int64_t inv_mul(int64_t t, int64_t s) {  // SPEC section 1
  const int64_t mt = t / 4, rt = t % 4, ms = s / 4, rs = s % 4;
  const int64_t r = mt != ms ? rt + rs : rs - rt;
  return 4 * (mt ^ ms) + ((r % 4) + 4) % 4;
}

void check(int64_t order, int64_t s_in, int64_t k) {
  static const auto expand = c10::Dispatcher::singleton()
      .findSchemaOrThrow("ger_kernels::expand_filter", "").typed<at::Tensor(const at::Tensor&, int64_t)>();
  static const auto backward = c10::Dispatcher::singleton()
      .findSchemaOrThrow("ger_kernels::expand_filter_backward", "")
      .typed<at::Tensor(const at::Tensor&, int64_t, int64_t)>();
  const auto options = torch::dtype(torch::kFloat64);
  const torch::Tensor w = torch::randn({2, 3, s_in, k, k}, options);
  const torch::Tensor out = expand.call(w, order);
  torch::Tensor expected = torch::empty({2, order, 3, s_in, k, k}, options);
  for (int64_t t = 0; t < order; ++t)
    for (int64_t s = 0; s < s_in; ++s)
      expected.select(1, t).select(2, s).copy_(act(w.select(2, s_in == 1 ? 0 : inv_mul(t, s)), t));
  expect(torch::equal(out, expected.reshape({2 * order, 3 * s_in, k, k})), "expand_filter = A_t(w[T[t, s]])",
         order, s_in);
  const torch::Tensor grad = torch::randn_like(out);
  const torch::Tensor lhs = (out * grad).sum();
  const torch::Tensor rhs = (w * backward.call(grad, order, s_in)).sum();
  expect(torch::allclose(lhs, rhs, 1e-12, 1e-12), "backward is the adjoint", order, s_in);
}

}  // namespace

int main() {
  torch::manual_seed(0);
  for (int64_t order : {4, 8})
    for (int64_t s_in : {int64_t(1), order})
      for (int64_t k : {1, 2, 3, 5}) check(order, s_in, k);
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

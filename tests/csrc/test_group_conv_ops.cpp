// ger_kernels::group_conv2d and its two backward ops through the dispatcher of a plain libtorch
// program (CPU): equal to ATen's convolution on expand_filter(w) and to its gradients, in float64.
#include <torch/torch.h>

#include <cstdio>

namespace {

int passed = 0, failed = 0;

void expect(bool ok, const char* what, int64_t order, int64_t s_in, int64_t k, int64_t stride) {
  ok ? ++passed : ++failed;
  if (!ok)
    std::printf("FAILED: %s (group_order %lld, S_in %lld, k %lld, stride %lld)\n", what, (long long)order,
                (long long)s_in, (long long)k, (long long)stride);
}

bool close(const torch::Tensor& a, const torch::Tensor& b) { return torch::allclose(a, b, 1e-11, 1e-11); }

void check(int64_t order, int64_t s_in, int64_t k, int64_t stride, int64_t padding, int64_t dilation) {
  auto& dispatcher = c10::Dispatcher::singleton();
  static const auto expand = dispatcher.findSchemaOrThrow("ger_kernels::expand_filter", "")
                                 .typed<at::Tensor(const at::Tensor&, int64_t)>();
  static const auto fold = dispatcher.findSchemaOrThrow("ger_kernels::expand_filter_backward", "")
                               .typed<at::Tensor(const at::Tensor&, int64_t, int64_t)>();
  static const auto conv =
      dispatcher.findSchemaOrThrow("ger_kernels::group_conv2d", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t,
                            int64_t, int64_t, int64_t)>();
  static const auto input_grad =
      dispatcher.findSchemaOrThrow("ger_kernels::group_conv2d_input_grad", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, int64_t, int64_t, int64_t,
                            int64_t)>();
  static const auto weight_grad =
      dispatcher.findSchemaOrThrow("ger_kernels::group_conv2d_weight_grad", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, int64_t, int64_t,
                            int64_t)>();
  const auto options = torch::dtype(torch::kFloat64);
  const torch::Tensor x = torch::randn({2, 3 * s_in, 9, 8}, options);
  const torch::Tensor w = torch::randn({4, 3, s_in, k, k}, options);
  const torch::Tensor b = torch::randn({4}, options);
  const torch::Tensor expanded = expand.call(w, order).requires_grad_(true);
  const torch::Tensor x_leaf = x.clone().requires_grad_(true);
  const torch::Tensor expected = torch::conv2d(x_leaf, expanded, b.repeat_interleave(order), stride, padding,
                                               dilation);
  expect(close(conv.call(x, w, b, stride, padding, dilation, order), expected), "output", order, s_in, k, stride);
  const torch::Tensor grad = torch::randn_like(expected);
  const auto grads = torch::autograd::grad({expected}, {x_leaf, expanded}, {grad});
  const std::vector<c10::SymInt> input_size(x.sizes().begin(), x.sizes().end());
  expect(close(input_grad.call(grad, w, input_size, stride, padding, dilation, order), grads[0]), "input gradient",
         order, s_in, k, stride);
  // dw is dW~ summed back over the transformed copies (expand_filter_backward, tested on its own).
  expect(close(weight_grad.call(grad, x, k, s_in, stride, padding, dilation, order),
               fold.call(grads[1], order, s_in)),
         "weight gradient", order, s_in, k, stride);
}

}  // namespace

int main() {
  torch::manual_seed(0);
  for (int64_t order : {4, 8})
    for (int64_t s_in : {int64_t(1), order})
      for (int64_t k : {1, 2, 3, 5})
        for (int64_t stride : {1, 2}) check(order, s_in, k, stride, k / 2, k == 5 ? 1 : 2 - k % 2);
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

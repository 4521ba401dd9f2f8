// CPU kernels of expand_filter and its adjoint, read through the group tables.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../expand_filter.h"
#include "../group_tables.h"
#include "expand_filter_cpu.h"

namespace ger_kernels {
namespace {

// For each element t, the k*k source taps of A_t(w) in row-major order: O(S k^2) ints.
std::vector<int64_t> tap_sources(const GroupTables& tables, int k) {
  std::vector<int64_t> sources(static_cast<size_t>(tables.order) * k * k);
  for (int t = 0; t < tables.order; ++t)
    for (int a = 0; a < k; ++a)
      for (int b = 0; b < k; ++b) {
        int si, sj;
        source_tap(tables.taps[t], k, a, b, si, sj);
        sources[(t * k + a) * k + b] = si * k + sj;
      }
  return sources;
}

// out[o*S + t][i*S_in + s][u][v] = w[o][i][S_in == 1 ? 0 : T[t][s]][A_t source of (u, v)]
template <typename scalar_t>
void expand_filter_kernel(const scalar_t* w, scalar_t* out, const FilterShape& shape) {
  const GroupTables& tables = group_tables(shape.group_order);
  const int k = static_cast<int>(shape.kernel_size);
  const int64_t taps = int64_t(k) * k;
  const int64_t s_in = shape.in_orientations;
  const std::vector<int64_t> sources = tap_sources(tables, k);
  at::parallel_for(0, shape.out_fields * shape.group_order, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ot = begin; ot < end; ++ot) {
      const int64_t o = ot / shape.group_order;
      const int t = static_cast<int>(ot % shape.group_order);
      const int64_t* tap = sources.data() + t * taps;
      scalar_t* dst = out + ot * shape.in_fields * s_in * taps;
      for (int64_t i = 0; i < shape.in_fields; ++i) {
        for (int64_t s = 0; s < s_in; ++s, dst += taps) {
          const int64_t u = s_in == 1 ? 0 : tables.inv_mul[t][s];
          const scalar_t* src = w + ((o * shape.in_fields + i) * s_in + u) * taps;
          for (int64_t j = 0; j < taps; ++j) dst[j] = src[tap[j]];
        }
      }
    }
  });
}

// dw[o][i][u][p][q] = sum_t grad[o*S + t][i*S_in + s][A_t^-1 source of (p, q)], s = S_in == 1 ? 0 : t*u.
template <typename scalar_t>
void expand_filter_backward_kernel(const scalar_t* grad, scalar_t* dw, const FilterShape& shape) {
  using acc_t = at::opmath_type<scalar_t>;
  const GroupTables& tables = group_tables(shape.group_order);
  const int k = static_cast<int>(shape.kernel_size);
  const int64_t taps = int64_t(k) * k;
  const int64_t s_in = shape.in_orientations;
  const int64_t grad_row = shape.in_fields * s_in * taps;  // one expanded output channel
  const std::vector<int64_t> sources = tap_sources(tables, k);
  at::parallel_for(0, shape.out_fields * shape.in_fields, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sum(taps);
    for (int64_t oi = begin; oi < end; ++oi) {
      const int64_t o = oi / shape.in_fields, i = oi % shape.in_fields;
      for (int64_t u = 0; u < s_in; ++u) {
        std::fill(sum.begin(), sum.end(), acc_t(0));
        for (int t = 0; t < shape.group_order; ++t) {
          const int64_t s = s_in == 1 ? 0 : tables.mul[t][u];
          const int64_t* tap = sources.data() + tables.inv[t] * taps;
          const scalar_t* src = grad + (o * shape.group_order + t) * grad_row + (i * s_in + s) * taps;
          for (int64_t j = 0; j < taps; ++j) sum[j] += src[tap[j]];
        }
        scalar_t* dst = dw + (oi * s_in + u) * taps;
        for (int64_t j = 0; j < taps; ++j) dst[j] = static_cast<scalar_t>(sum[j]);
      }
    }
  });
}

}  // namespace

at::Tensor expand_filter_cpu(const at::Tensor& weight, int64_t group_order) {
  const FilterShape shape = check_expand_filter(weight, group_order);
  const at::Tensor w = weight.contiguous();
  at::Tensor out = at::empty({shape.out_fields * group_order, shape.in_fields * shape.in_orientations,
                              shape.kernel_size, shape.kernel_size}, w.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "expand_filter_cpu", [&] {
    expand_filter_kernel<scalar_t>(w.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), shape);
  });
  return out;
}

at::Tensor expand_filter_backward_cpu(const at::Tensor& grad, int64_t group_order, int64_t in_orientations) {
  const FilterShape shape = check_expand_filter_backward(grad, group_order, in_orientations);
  const at::Tensor g = grad.contiguous();
  at::Tensor dw = at::empty({shape.out_fields, shape.in_fields, in_orientations, shape.kernel_size,
                             shape.kernel_size}, g.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "expand_filter_backward_cpu", [&] {
    expand_filter_backward_kernel<scalar_t>(g.const_data_ptr<scalar_t>(), dw.mutable_data_ptr<scalar_t>(), shape);
  });
  return dw;
}

TORCH_LIBRARY_IMPL(ger_kernels, CPU, m) {
  m.impl("expand_filter", &expand_filter_cpu);
  m.impl("expand_filter_backward", &expand_filter_backward_cpu);
}

}  // namespace ger_kernels

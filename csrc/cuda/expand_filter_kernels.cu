// CUDA kernels of expand_filter and its adjoint (same formulas as csrc/cpu).
#include <algorithm>
#include <cstdint>

#include "../group_tables.h"
#include "accumulate.cuh"
#include "expand_filter_kernels.h"

namespace ger_kernels {
namespace {

constexpr int kThreads = 256;

int grid_size(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
}

// The expansion is a gather, so it copies bits: one instantiation per element size.
template <typename Bits>
__global__ void expand_filter_kernel(const Bits* __restrict__ w, Bits* __restrict__ out, FilterShape shape,
                                     GroupTables tables) {
  const int k = static_cast<int>(shape.kernel_size);
  const int64_t taps = int64_t(k) * k;
  const int64_t s_in = shape.in_orientations;
  const int64_t n = shape.expanded_numel();
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int b = static_cast<int>(idx % k);
    const int a = static_cast<int>((idx / k) % k);
    const int64_t col = (idx / taps) % (shape.in_fields * s_in);  // i*S_in + s
    const int64_t row = idx / (taps * shape.in_fields * s_in);    // o*S + t
    const int t = static_cast<int>(row % shape.group_order);
    const int64_t o = row / shape.group_order;
    const int64_t i = col / s_in;
    const int64_t u = s_in == 1 ? 0 : tables.inv_mul[t][col % s_in];
    int si, sj;
    source_tap(tables.taps[t], k, a, b, si, sj);
    out[idx] = w[((o * shape.in_fields + i) * s_in + u) * taps + si * k + sj];
  }
}

// One thread per base weight: dw[o][i][u][p][q] = sum_t grad[o*S + t][i*S_in + s][A_t^-1 source of (p, q)].
template <typename T>
__global__ void expand_filter_backward_kernel(const T* __restrict__ grad, T* __restrict__ dw, FilterShape shape,
                                              GroupTables tables) {
  const int k = static_cast<int>(shape.kernel_size);
  const int64_t taps = int64_t(k) * k;
  const int64_t s_in = shape.in_orientations;
  const int64_t grad_row = shape.in_fields * s_in * taps;
  const int64_t n = shape.weight_numel();
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int q = static_cast<int>(idx % k);
    const int p = static_cast<int>((idx / k) % k);
    const int u = static_cast<int>((idx / taps) % s_in);
    const int64_t oi = idx / (taps * s_in);
    const int64_t o = oi / shape.in_fields, i = oi % shape.in_fields;
    typename Accumulate<T>::type sum = 0;
    for (int t = 0; t < shape.group_order; ++t) {
      const int64_t s = s_in == 1 ? 0 : tables.mul[t][u];
      int a, b;
      source_tap(tables.taps[tables.inv[t]], k, p, q, a, b);
      sum += to_acc(grad[(o * shape.group_order + t) * grad_row + (i * s_in + s) * taps + a * k + b]);
    }
    dw[idx] = from_acc<T>(sum);
  }
}

template <typename Bits>
cudaError_t launch_gather(const void* w, void* out, const FilterShape& shape, cudaStream_t stream) {
  const int64_t n = shape.expanded_numel();
  if (n == 0) return cudaSuccess;
  expand_filter_kernel<Bits><<<grid_size(n), kThreads, 0, stream>>>(
      static_cast<const Bits*>(w), static_cast<Bits*>(out), shape,
      group_tables(shape.group_order));
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_sum(const void* grad, void* dw, const FilterShape& shape, cudaStream_t stream) {
  const int64_t n = shape.weight_numel();
  if (n == 0) return cudaSuccess;
  expand_filter_backward_kernel<T><<<grid_size(n), kThreads, 0, stream>>>(
      static_cast<const T*>(grad), static_cast<T*>(dw), shape,
      group_tables(shape.group_order));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_expand_filter(const void* weight, void* expanded, const FilterShape& shape, int element_bytes,
                                 cudaStream_t stream) {
  switch (element_bytes) {
    case 2: return launch_gather<uint16_t>(weight, expanded, shape, stream);
    case 4: return launch_gather<uint32_t>(weight, expanded, shape, stream);
    case 8: return launch_gather<uint64_t>(weight, expanded, shape, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_expand_filter_backward(const void* grad, void* grad_weight, const FilterShape& shape,
                                          FloatKind kind, cudaStream_t stream) {
  switch (kind) {
    case FloatKind::kHalf: return launch_sum<__half>(grad, grad_weight, shape, stream);
    case FloatKind::kBFloat16: return launch_sum<__nv_bfloat16>(grad, grad_weight, shape, stream);
    case FloatKind::kFloat: return launch_sum<float>(grad, grad_weight, shape, stream);
    case FloatKind::kDouble: return launch_sum<double>(grad, grad_weight, shape, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace ger_kernels

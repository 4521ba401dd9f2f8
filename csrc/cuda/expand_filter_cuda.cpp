// Torch glue of the CUDA expand_filter kernels: checks, allocation, current stream.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../expand_filter.h"
#include "expand_filter_kernels.h"
#include "torch_glue.h"

namespace ger_kernels {
namespace {

at::Tensor expand_filter_cuda(const at::Tensor& weight, int64_t group_order) {
  const FilterShape shape = check_expand_filter(weight, group_order);
  float_kind(weight.scalar_type());
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = weight.contiguous();
  at::Tensor out = at::empty({shape.out_fields * group_order, shape.in_fields * shape.in_orientations,
                              shape.kernel_size, shape.kernel_size}, w.options());
  check_launch(launch_expand_filter(w.const_data_ptr(), out.mutable_data_ptr(), shape,
                                    static_cast<int>(w.element_size()), c10::cuda::getCurrentCUDAStream()),
               "expand_filter");
  return out;
}

at::Tensor expand_filter_backward_cuda(const at::Tensor& grad, int64_t group_order, int64_t in_orientations) {
  const FilterShape shape = check_expand_filter_backward(grad, group_order, in_orientations);
  const FloatKind kind = float_kind(grad.scalar_type());
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();
  at::Tensor dw = at::empty({shape.out_fields, shape.in_fields, in_orientations, shape.kernel_size,
                             shape.kernel_size}, g.options());
  check_launch(launch_expand_filter_backward(g.const_data_ptr(), dw.mutable_data_ptr(), shape, kind,
                                             c10::cuda::getCurrentCUDAStream()),
               "expand_filter_backward");
  return dw;
}

}  // namespace

TORCH_LIBRARY_IMPL(ger_kernels, CUDA, m) {
  m.impl("expand_filter", &expand_filter_cuda);
  m.impl("expand_filter_backward", &expand_filter_backward_cuda);
}

}  // namespace ger_kernels

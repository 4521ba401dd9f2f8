// Filter expansion (SPEC section 3): argument checks shared by the CPU and CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>

#include "filter_shape.h"

namespace ger_kernels {

FilterShape check_expand_filter(const at::Tensor& weight, int64_t group_order);
FilterShape check_expand_filter_backward(const at::Tensor& grad, int64_t group_order, int64_t in_orientations);

}  // namespace ger_kernels

// CPU expand_filter and its adjoint, also called by the CPU group convolution on weight panels.
#pragma once

#include <ATen/core/Tensor.h>

namespace ger_kernels {

// W~ (C_out*S, C_in*S_in, k, k) of weight (C_out, C_in, S_in, k, k).
at::Tensor expand_filter_cpu(const at::Tensor& weight, int64_t group_order);
// dw (C_out, C_in, S_in, k, k) of dW~ (C_out*S, C_in*S_in, k, k).
at::Tensor expand_filter_backward_cpu(const at::Tensor& grad, int64_t group_order, int64_t in_orientations);

}  // namespace ger_kernels

// Group convolution ops (SPEC section 3): argument checks shared by the CPU and CUDA glue.
//
//   group_conv2d(input, weight, bias?, stride, padding, dilation, group_order) -> output
//   group_conv2d_input_grad(grad_output, weight, input_size, stride, padding, dilation, group_order) -> grad_input
//   group_conv2d_weight_grad(grad_output, input, kernel_size, in_orientations, stride, padding, dilation,
//                            group_order) -> grad_weight
// Shapes are those of ConvShape; the bias gradient is a plain sum of grad_output (no kernel of its own).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "conv_shape.h"

namespace ger_kernels {

ConvShape check_group_conv(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           int64_t stride, int64_t padding, int64_t dilation, int64_t group_order);
ConvShape check_group_conv_input_grad(const at::Tensor& grad_output, const at::Tensor& weight,
                                      at::IntArrayRef input_size, int64_t stride, int64_t padding, int64_t dilation,
                                      int64_t group_order);
ConvShape check_group_conv_weight_grad(const at::Tensor& grad_output, const at::Tensor& input, int64_t kernel_size,
                                       int64_t in_orientations, int64_t stride, int64_t padding, int64_t dilation,
                                       int64_t group_order);

// The results of the three ops, uninitialized: the output in the input's memory format, the input
// gradient in grad_output's, the base weight gradient contiguous.
at::Tensor empty_output(const ConvShape& shape, const at::Tensor& input);
at::Tensor empty_grad_input(const ConvShape& shape, const at::Tensor& grad_output);
at::Tensor empty_grad_weight(const ConvShape& shape, const at::Tensor& input);

}  // namespace ger_kernels

// Schemas of every ger_kernels op, defined once, and their shape checks.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "expand_filter.h"
#include "group_conv.h"
#include "group_tables.h"

namespace ger_kernels {

namespace {

void check_group_order(int64_t group_order) {
  TORCH_CHECK(is_supported_group_order(group_order),
              "group_order must be 8 (p4m) or 4 (p4), got ", group_order);
}

void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be a floating point tensor, got ",
              t.scalar_type());
}

void check_same(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, ".dtype must match ", like_name, ".dtype ",
              like.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), name, ".device must match ", like_name, ".device ", like.device(),
              ", got ", t.device());
}

// stride >= 1, padding >= 0, dilation >= 1, kernel_size >= 1, C_in, C_out >= 1 fields, an input H, W >= 1 (any
// batch), and an output of at least 1 x 1.
ConvShape conv_shape(int64_t batch, int64_t in_fields, int64_t in_orientations, int64_t out_fields,
                     int64_t group_order, int64_t kernel_size, int64_t stride, int64_t padding, int64_t dilation,
                     int64_t in_h, int64_t in_w) {
  TORCH_CHECK(kernel_size >= 1, "kernel_size must be >= 1, got ", kernel_size);
  TORCH_CHECK(stride >= 1, "stride must be >= 1, got ", stride);
  TORCH_CHECK(padding >= 0, "padding must be >= 0, got ", padding);
  TORCH_CHECK(dilation >= 1, "dilation must be >= 1, got ", dilation);
  TORCH_CHECK(in_fields >= 1 && out_fields >= 1 && in_h >= 1 && in_w >= 1, "a group convolution needs C_in, C_out "
              ">= 1 fields and an input H, W >= 1 (the batch may be empty), got C_in = ", in_fields, ", C_out = ",
              out_fields, ", H x W = ", in_h, " x ", in_w);
  const int64_t out_h = conv_output_size(in_h, kernel_size, stride, padding, dilation);
  const int64_t out_w = conv_output_size(in_w, kernel_size, stride, padding, dilation);
  TORCH_CHECK(out_h >= 1 && out_w >= 1, "input of size ", in_h, " x ", in_w, " is smaller than the ",
              kernel_size, " x ", kernel_size, " kernel (dilation ", dilation, ", padding ", padding, ")");
  return {batch, in_fields, in_orientations, out_fields, group_order, kernel_size, stride, padding, dilation,
          in_h, in_w, out_h, out_w};
}

}  // namespace

ConvShape check_group_conv(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           int64_t stride, int64_t padding, int64_t dilation, int64_t group_order) {
  const FilterShape filter = check_expand_filter(weight, group_order);
  check_floating(input, "input");
  TORCH_CHECK(input.dim() == 4, "input must be 4-D (B, C_in*S_in, H, W), got shape ", input.sizes());
  TORCH_CHECK(input.size(1) == filter.in_fields * filter.in_orientations, "input must have C_in*S_in = ",
              filter.in_fields, "*", filter.in_orientations, " = ", filter.in_fields * filter.in_orientations,
              " channels for weight of shape ", weight.sizes(), ", got ", input.size(1));
  check_same(weight, "weight", input, "input");
  if (bias.has_value()) {
    check_same(*bias, "bias", input, "input");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == filter.out_fields, "bias must have shape (",
                filter.out_fields, ",): one value per output field, got ", bias->sizes());
  }
  return conv_shape(input.size(0), filter.in_fields, filter.in_orientations, filter.out_fields, group_order,
                    filter.kernel_size, stride, padding, dilation, input.size(2), input.size(3));
}

ConvShape check_group_conv_input_grad(const at::Tensor& grad_output, const at::Tensor& weight,
                                      at::IntArrayRef input_size, int64_t stride, int64_t padding, int64_t dilation,
                                      int64_t group_order) {
  const FilterShape filter = check_expand_filter(weight, group_order);
  check_floating(grad_output, "grad_output");
  check_same(weight, "weight", grad_output, "grad_output");
  TORCH_CHECK(input_size.size() == 4, "input_size must have 4 entries (B, C_in*S_in, H, W), got ", input_size);
  TORCH_CHECK(input_size[1] == filter.in_fields * filter.in_orientations, "input_size[1] must be C_in*S_in = ",
              filter.in_fields * filter.in_orientations, " for weight of shape ", weight.sizes(), ", got ",
              input_size[1]);
  const ConvShape shape = conv_shape(input_size[0], filter.in_fields, filter.in_orientations, filter.out_fields,
                                     group_order, filter.kernel_size, stride, padding, dilation, input_size[2],
                                     input_size[3]);
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == shape.batch &&
                  grad_output.size(1) == shape.out_channels() && grad_output.size(2) == shape.out_h &&
                  grad_output.size(3) == shape.out_w,
              "grad_output must have shape (", shape.batch, ", ", shape.out_channels(), ", ", shape.out_h, ", ",
              shape.out_w, "), got ", grad_output.sizes());
  return shape;
}

ConvShape check_group_conv_weight_grad(const at::Tensor& grad_output, const at::Tensor& input, int64_t kernel_size,
                                       int64_t in_orientations, int64_t stride, int64_t padding, int64_t dilation,
                                       int64_t group_order) {
  check_group_order(group_order);
  check_floating(input, "input");
  check_same(grad_output, "grad_output", input, "input");
  TORCH_CHECK(in_orientations == 1 || in_orientations == group_order, "in_orientations must be 1 or ",
              group_order, ", got ", in_orientations);
  TORCH_CHECK(input.dim() == 4 && input.size(1) % in_orientations == 0,
              "input must be 4-D (B, C_in*", in_orientations, ", H, W), got shape ", input.sizes());
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(1) % group_order == 0,
              "grad_output must be 4-D (B, C_out*", group_order, ", H', W'), got shape ", grad_output.sizes());
  const ConvShape shape = conv_shape(input.size(0), input.size(1) / in_orientations, in_orientations,
                                     grad_output.size(1) / group_order, group_order, kernel_size, stride, padding,
                                     dilation, input.size(2), input.size(3));
  TORCH_CHECK(grad_output.size(0) == shape.batch && grad_output.size(2) == shape.out_h &&
                  grad_output.size(3) == shape.out_w,
              "grad_output must have shape (", shape.batch, ", ", shape.out_channels(), ", ", shape.out_h, ", ",
              shape.out_w, "), got ", grad_output.sizes());
  return shape;
}

at::Tensor empty_output(const ConvShape& shape, const at::Tensor& input) {
  return at::empty({shape.batch, shape.out_channels(), shape.out_h, shape.out_w},
                   input.options().memory_format(input.suggest_memory_format()));
}

at::Tensor empty_grad_input(const ConvShape& shape, const at::Tensor& grad_output) {
  return at::empty({shape.batch, shape.in_channels(), shape.in_h, shape.in_w},
                   grad_output.options().memory_format(grad_output.suggest_memory_format()));
}

at::Tensor empty_grad_weight(const ConvShape& shape, const at::Tensor& input) {
  return at::empty({shape.out_fields, shape.in_fields, shape.in_orientations, shape.kernel_size, shape.kernel_size},
                   input.options());
}

FilterShape check_expand_filter(const at::Tensor& weight, int64_t group_order) {
  check_group_order(group_order);
  check_floating(weight, "weight");
  TORCH_CHECK(weight.dim() == 5, "weight must be 5-D (C_out, C_in, S_in, k, k), got shape ", weight.sizes());
  const int64_t s_in = weight.size(2);
  TORCH_CHECK(s_in == 1 || s_in == group_order, "weight.shape[2] (S_in) must be 1 (lifting) or ", group_order,
              ", got ", s_in);
  TORCH_CHECK(weight.size(3) == weight.size(4), "weight must have square k x k taps, got ", weight.size(3), " x ",
              weight.size(4));
  return {weight.size(0), weight.size(1), s_in, weight.size(3), group_order};
}

FilterShape check_expand_filter_backward(const at::Tensor& grad, int64_t group_order, int64_t in_orientations) {
  check_group_order(group_order);
  check_floating(grad, "grad");
  TORCH_CHECK(in_orientations == 1 || in_orientations == group_order, "in_orientations must be 1 or ", group_order,
              ", got ", in_orientations);
  TORCH_CHECK(grad.dim() == 4, "grad must be 4-D (C_out*S, C_in*S_in, k, k), got shape ", grad.sizes());
  TORCH_CHECK(grad.size(0) % group_order == 0 && grad.size(1) % in_orientations == 0,
              "grad must have shape (C_out*", group_order, ", C_in*", in_orientations, ", k, k), got ", grad.sizes());
  TORCH_CHECK(grad.size(2) == grad.size(3), "grad must have square k x k taps, got ", grad.sizes());
  return {grad.size(0) / group_order, grad.size(1) / in_orientations, in_orientations, grad.size(2), group_order};
}

TORCH_LIBRARY(ger_kernels, m) {
  m.def("expand_filter(Tensor weight, int group_order) -> Tensor");
  m.def("expand_filter_backward(Tensor grad, int group_order, int in_orientations) -> Tensor");
  m.def("group_conv2d(Tensor input, Tensor weight, Tensor? bias, int stride, int padding, int dilation, "
        "int group_order) -> Tensor");
  m.def("group_conv2d_input_grad(Tensor grad_output, Tensor weight, SymInt[] input_size, int stride, int padding, "
        "int dilation, int group_order) -> Tensor");
  m.def("group_conv2d_weight_grad(Tensor grad_output, Tensor input, int kernel_size, int in_orientations, "
        "int stride, int padding, int dilation, int group_order) -> Tensor");
}

}  // namespace ger_kernels

// CPU kernels of the group convolution ops (SPEC section 3), blocked by weight panels.
//
// W~ is never allocated. Each pass walks the fields in blocks; for a block it gathers
// one panel of W~ (the rows of a few output fields, or the columns of a few input
// fields) from w through the group tables (expand_filter_cpu), runs ATen's
// convolution (oneDNN) on that panel, and writes the block's slice of the result.
// A panel holds at most kPanelBytes, and at most half of the fields whenever there
// are two or more, so it is always smaller than W~. The weight gradient folds each
// panel of dW~ into the base gradient at once (expand_filter_backward_cpu).
#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>

#include "../group_conv.h"
#include "expand_filter_cpu.h"

namespace ger_kernels {
namespace {

// Large enough that each panel is a full-size oneDNN convolution, small next to W~ of deep
// layers (74 MiB in float32 at 181 fields).
constexpr int64_t kPanelBytes = int64_t(8) << 20;
// Below 2x this many input channels, oneDNN's transposed convolution is slow on column panels.
constexpr int64_t kMinPanelChannels = 32;

// Fields per panel: as many as fit in kPanelBytes (at least 1), at most half of them.
int64_t fields_per_panel(int64_t fields, int64_t panel_bytes_per_field) {
  const int64_t fit = std::max<int64_t>(1, kPanelBytes / std::max<int64_t>(1, panel_bytes_per_field));
  return std::min(fit, std::max<int64_t>(1, (fields + 1) / 2));
}

at::Tensor group_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            int64_t stride, int64_t padding, int64_t dilation, int64_t group_order) {
  const ConvShape shape = check_group_conv(input, weight, bias, stride, padding, dilation, group_order);
  at::Tensor out = empty_output(shape, input);
  if (shape.batch == 0) return out;
  const at::Tensor w = weight.contiguous();
  const int64_t k = shape.kernel_size;
  const int64_t block = fields_per_panel(shape.out_fields, group_order * shape.in_channels() * k * k *
                                                              static_cast<int64_t>(w.element_size()));
  for (int64_t o = 0; o < shape.out_fields; o += block) {
    const int64_t n = std::min(block, shape.out_fields - o);
    const at::Tensor panel = expand_filter_cpu(w.narrow(0, o, n), group_order);  // rows o*S .. (o+n)*S
    std::optional<at::Tensor> panel_bias;
    if (bias.has_value()) panel_bias = bias->narrow(0, o, n).repeat_interleave(group_order);
    out.narrow(1, o * group_order, n * group_order)
        .copy_(at::convolution(input, panel, panel_bias, {stride, stride}, {padding, padding},
                               {dilation, dilation}, false, {0, 0}, 1));
  }
  return out;
}

at::Tensor group_conv2d_input_grad_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                       at::IntArrayRef input_size, int64_t stride, int64_t padding,
                                       int64_t dilation, int64_t group_order) {
  const ConvShape shape =
      check_group_conv_input_grad(grad_output, weight, input_size, stride, padding, dilation, group_order);
  at::Tensor grad_input = empty_grad_input(shape, grad_output);
  if (shape.batch == 0) return grad_input;
  const int64_t k = shape.kernel_size;
  // The transposed convolution of grad_output recovers the rows/columns its window missed.
  const std::array<int64_t, 2> extra = {
      shape.in_h - ((shape.out_h - 1) * stride - 2 * padding + dilation * (k - 1) + 1),
      shape.in_w - ((shape.out_w - 1) * stride - 2 * padding + dilation * (k - 1) + 1)};
  const auto transposed_conv = [&](const at::Tensor& grad, const at::Tensor& panel) {
    return at::convolution(grad, panel, std::nullopt, {stride, stride}, {padding, padding}, {dilation, dilation},
                           true, extra, 1);
  };
  const int64_t element_bytes = weight.element_size();
  if (shape.in_channels() >= 2 * kMinPanelChannels) {
    // Panels of W~ columns (input fields): each writes its own channels of grad_input.
    const int64_t block = fields_per_panel(shape.in_fields,
                                           shape.out_channels() * shape.in_orientations * k * k * element_bytes);
    for (int64_t i = 0; i < shape.in_fields; i += block) {
      const int64_t n = std::min(block, shape.in_fields - i);
      grad_input.narrow(1, i * shape.in_orientations, n * shape.in_orientations)
          .copy_(transposed_conv(grad_output, expand_filter_cpu(weight.narrow(1, i, n), group_order)));
    }
  } else {
    // Few input channels (lifting layers): panels of W~ rows (output fields), summed. With more than one
    // panel, 16-bit operands are widened to float32 (exactly) and the sum rounded once, as one convolution
    // would: adding panels rounded to 16 bits loses up to a bit per panel.
    const int64_t block = fields_per_panel(shape.out_fields, group_order * shape.in_channels() * k * k *
                                                                 element_bytes);
    const bool widen = block < shape.out_fields && element_bytes < 4;
    at::Tensor sum = widen ? at::zeros_like(grad_input, grad_input.options().dtype(at::kFloat)) : grad_input;
    for (int64_t o = 0; o < shape.out_fields; o += block) {
      const int64_t n = std::min(block, shape.out_fields - o);
      at::Tensor grad = grad_output.narrow(1, o * group_order, n * group_order);
      at::Tensor panel = expand_filter_cpu(weight.narrow(0, o, n), group_order);
      if (widen) {
        grad = grad.to(at::kFloat);
        panel = panel.to(at::kFloat);
      }
      const at::Tensor part = transposed_conv(grad, panel);
      if (o == 0 && !widen) sum.copy_(part); else sum.add_(part);
    }
    if (widen) grad_input.copy_(sum);
  }
  return grad_input;
}

at::Tensor group_conv2d_weight_grad_cpu(const at::Tensor& grad_output, const at::Tensor& input, int64_t kernel_size,
                                        int64_t in_orientations, int64_t stride, int64_t padding, int64_t dilation,
                                        int64_t group_order) {
  const ConvShape shape = check_group_conv_weight_grad(grad_output, input, kernel_size, in_orientations, stride,
                                                       padding, dilation, group_order);
  const int64_t k = kernel_size;
  at::Tensor grad_weight = empty_grad_weight(shape, input);
  if (shape.batch == 0) return grad_weight.zero_();
  const int64_t block = fields_per_panel(shape.out_fields, group_order * shape.in_channels() * k * k *
                                                              static_cast<int64_t>(input.element_size()));
  // ATen only reads the weight's sizes for the weight gradient: a broadcast zero stands in for each panel.
  const at::Tensor zero = at::zeros({1, 1, 1, 1}, input.options());
  for (int64_t o = 0; o < shape.out_fields; o += block) {
    const int64_t n = std::min(block, shape.out_fields - o);
    const at::Tensor panel_sizes = zero.expand({n * group_order, shape.in_channels(), k, k});
    const at::Tensor panel_grad = std::get<1>(at::convolution_backward(
        grad_output.narrow(1, o * group_order, n * group_order), input, panel_sizes, std::nullopt,
        {stride, stride}, {padding, padding}, {dilation, dilation}, false, {0, 0}, 1, {false, true, false}));
    grad_weight.narrow(0, o, n).copy_(expand_filter_backward_cpu(panel_grad, group_order, in_orientations));
  }
  return grad_weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(ger_kernels, CPU, m) {
  m.impl("group_conv2d", &group_conv2d_cpu);
  m.impl("group_conv2d_input_grad", &group_conv2d_input_grad_cpu);
  m.impl("group_conv2d_weight_grad", &group_conv2d_weight_grad_cpu);
}

}  // namespace ger_kernels

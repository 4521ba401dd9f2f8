// Sizes of one group convolution (SPEC section 3), shared by the torch glue and the
// torch-free CPU/CUDA kernels.
#pragma once

#include <cstdint>

#include "filter_shape.h"
#include "host_device.h"

namespace ger_kernels {

// input (batch, in_fields*in_orientations, in_h, in_w)
// weight (out_fields, in_fields, in_orientations, kernel_size, kernel_size)
// output (batch, out_fields*group_order, out_h, out_w); in_orientations is 1 (lifting) or group_order.
struct ConvShape {
  int64_t batch, in_fields, in_orientations, out_fields, group_order;
  int64_t kernel_size, stride, padding, dilation;
  int64_t in_h, in_w, out_h, out_w;

  GER_HOST_DEVICE int64_t in_channels() const { return in_fields * in_orientations; }
  GER_HOST_DEVICE int64_t out_channels() const { return out_fields * group_order; }
  GER_HOST_DEVICE FilterShape filter() const {
    return {out_fields, in_fields, in_orientations, kernel_size, group_order};
  }
};

// F.conv2d's output size along one axis; 0 when the window does not fit.
GER_HOST_DEVICE int64_t conv_output_size(int64_t size, int64_t kernel_size, int64_t stride, int64_t padding,
                                         int64_t dilation) {
  const int64_t span = size + 2 * padding - dilation * (kernel_size - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

}  // namespace ger_kernels

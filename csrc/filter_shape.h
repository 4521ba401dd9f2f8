// Shape of a filter expansion, shared by torch glue and torch-free kernels.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace ger_kernels {

// weight (out_fields, in_fields, in_orientations, k, k)
//   <-> expanded (out_fields*group_order, in_fields*in_orientations, k, k)
struct FilterShape {
  int64_t out_fields, in_fields, in_orientations, kernel_size, group_order;

  GER_HOST_DEVICE int64_t weight_numel() const { return out_fields * in_fields * in_orientations * kernel_size * kernel_size; }
  GER_HOST_DEVICE int64_t expanded_numel() const { return weight_numel() * group_order; }
};

}  // namespace ger_kernels

// Helpers shared by the torch glue of the CUDA kernels (csrc/cuda/*.cpp, never the .cu files).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include "float_kind.h"

namespace ger_kernels {

inline FloatKind float_kind(at::ScalarType type) {
  switch (type) {
    case at::kHalf: return FloatKind::kHalf;
    case at::kBFloat16: return FloatKind::kBFloat16;
    case at::kFloat: return FloatKind::kFloat;
    case at::kDouble: return FloatKind::kDouble;
    default: TORCH_CHECK(false, "expected float16, bfloat16, float32 or float64, got ", type);
  }
}

inline void check_launch(cudaError_t status, const char* op) {
  TORCH_CHECK(status == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(status));
}

}  // namespace ger_kernels

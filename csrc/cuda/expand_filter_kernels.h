// Launchers of the CUDA expand_filter kernels. Torch-free: raw pointers and a stream,
// so the .cu compiles with plain nvcc; the torch glue is expand_filter_cuda.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include "../filter_shape.h"
#include "float_kind.h"

namespace ger_kernels {

// W~ from w (contiguous, same element type); element_bytes is 2, 4 or 8.
cudaError_t launch_expand_filter(const void* weight, void* expanded, const FilterShape& shape, int element_bytes,
                                 cudaStream_t stream);

// dw from dW~ (contiguous), summing the group_order transformed copies in float or double.
cudaError_t launch_expand_filter_backward(const void* grad, void* grad_weight, const FilterShape& shape,
                                          FloatKind kind, cudaStream_t stream);

}  // namespace ger_kernels

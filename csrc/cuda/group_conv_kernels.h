// Launchers of the fused CUDA group convolution kernels (implicit GEMM, index math in csrc/implicit_gemm.h).
// Torch-free: raw pointers, element strides and a stream; the torch glue is group_conv_cuda.cpp.
//
// Tensors: input/grad_input (B, C_in*S_in, H, W), output/grad_output (B, C_out*S, H', W'), any strides;
// weight/grad_weight (C_out, C_in, S_in, k, k) and bias (C_out,) contiguous. All have the element type `kind`.
// float16/bfloat16 run on tensor cores with float accumulation: from sm_80 the CuTe kernels (group_conv_cute.h)
// where they apply and are enabled (CudaDevice::cute_enabled), else WMMA where the device has it (sm_70 for
// float16, sm_80 for bfloat16); float32 and float64 on a SIMT FMA kernel. Each launcher returns
// cudaGetLastError(), or cudaErrorInvalidValue for sizes beyond the index types: channel counts times k*k
// below 2^31, padded spatial sizes below 2^30 (fits_spatial); pixel counts and element offsets are int64.
#pragma once

#include <cuda_runtime_api.h>

#include "../conv_shape.h"
#include "../implicit_gemm.h"
#include "float_kind.h"

namespace ger_kernels {

struct CudaDevice {
  int sm_count;
  int arch;  // compute capability, 10*major + minor
  // Whether 16-bit ops may run the CuTe kernels (built with GER_KERNELS_CUTE=1). Off unless the
  // environment sets GER_KERNELS_CUTE=1: they have not passed the GPU parity tests yet.
  bool cute_enabled = false;
};

// Forward and input gradient take scratch memory for a permuted copy of the weight (the CuTe kernels'): of
// weight_scratch_numel elements of the weight's type, 16-byte aligned (else those kernels do not run); 0 elements
// (and any pointer) where the kernels that may run need none. input_grad: for the input gradient.
int64_t weight_scratch_numel(const ConvShape& shape, bool input_grad, FloatKind kind, const CudaDevice& device);

cudaError_t launch_group_conv2d(const void* input, const Strides4& input_strides, const void* weight,
                                void* weight_scratch, const void* bias, void* output,
                                const Strides4& output_strides, const ConvShape& shape, FloatKind kind,
                                const CudaDevice& device, cudaStream_t stream);

cudaError_t launch_group_conv2d_input_grad(const void* grad_output, const Strides4& grad_output_strides,
                                           const void* weight, void* weight_scratch, void* grad_input,
                                           const Strides4& grad_input_strides, const ConvShape& shape,
                                           FloatKind kind, const CudaDevice& device, cudaStream_t stream);

// The weight gradient splits its reduction over output pixels into `splits` parts (split-K): part z writes
// its partial sums of dw to workspace[z] (no atomics), a second kernel adds the parts in a fixed order and
// writes each dw element once, so results are deterministic. The workspace holds splits * weight_numel
// accumulators: float, or double for float64. weight_grad_splits picks the split count for a kind and device.
int weight_grad_splits(const ConvShape& shape, FloatKind kind, const CudaDevice& device);

cudaError_t launch_group_conv2d_weight_grad(const void* grad_output, const Strides4& grad_output_strides,
                                            const void* input, const Strides4& input_strides, void* grad_weight,
                                            void* workspace, int splits, const ConvShape& shape, FloatKind kind,
                                            const CudaDevice& device, cudaStream_t stream);

}  // namespace ger_kernels

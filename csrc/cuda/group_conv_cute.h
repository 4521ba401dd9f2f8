// CuTe (CUTLASS) tensor-core kernels of the fused group convolution for float16/bfloat16 on sm_80 and newer
// (group_conv_cute.cu, built with GER_KERNELS_CUTE=1). The launchers of group_conv_kernels.h call them where
// they apply, when enabled (CudaDevice::cute_enabled), and keep their WMMA and SIMT kernels for the rest.
// Torch-free: raw pointers and a stream.
//
// Arguments are those of group_conv_kernels.h; `kind` is kHalf or kBFloat16 and the device is sm_80 or newer.
// Forward and input gradient copy their activation operand (input, grad_output) in 16-byte chunks with
// cp.async: they apply where cute_vectorizable says so for that tensor. They first permute the weight into
// `weight_copy` (weight_copy_numel(shape, false) elements for the forward, (shape, true) for the input gradient,
// 16-byte aligned; implicit_gemm.h), from which their weight operand is copied the same way.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../conv_shape.h"
#include "../implicit_gemm.h"
#include "float_kind.h"

namespace ger_kernels {

// Whether 8 consecutive channels of every pixel of the tensor are one aligned 16-byte chunk of 16-bit elements:
// channel stride 1 (channels last), the channel count and the other strides multiples of 8, data 16-byte aligned.
bool cute_vectorizable(const void* data, const Strides4& strides, int64_t channels);

cudaError_t launch_cute_group_conv2d(const void* input, const Strides4& input_strides, const void* weight,
                                     void* weight_copy, const void* bias, void* output,
                                     const Strides4& output_strides, const ConvShape& shape, FloatKind kind,
                                     cudaStream_t stream);

cudaError_t launch_cute_group_conv2d_input_grad(const void* grad_output, const Strides4& grad_output_strides,
                                                const void* weight, void* weight_copy, void* grad_input,
                                                const Strides4& grad_input_strides, const ConvShape& shape,
                                                FloatKind kind, cudaStream_t stream);

// The split-K partial sums of the weight gradient into workspace[z][o][n] (float), z < splits; the caller adds
// the parts. Where grad_output and input are cute_vectorizable: per tap, a GEMM over the z-th part of the output
// pixels with block tiles of kCuteWeightGradChannelsTile output channels x as many input channels
// (cute_weight_grad_tiles of them per part), folded into the base weight gradient; the workspace is zeroed first.
// Else: a GEMM of output fields x base weight elements (tile kCuteWeightGradTileM x kCuteWeightGradTileN) over
// (pixel, t) in chunks of kCuteWeightGradChunk pixels (weight_grad_reduction), operands gathered.
constexpr int kCuteWeightGradChannelsTile = 128;
constexpr int kCuteWeightGradChunk = 32, kCuteWeightGradTileM = 64, kCuteWeightGradTileN = 128;
int64_t cute_weight_grad_tiles(const ConvShape& shape);
cudaError_t launch_cute_group_conv2d_weight_grad(const void* grad_output, const Strides4& grad_output_strides,
                                                 const void* input, const Strides4& input_strides, float* workspace,
                                                 int splits, const ConvShape& shape, FloatKind kind,
                                                 cudaStream_t stream);

}  // namespace ger_kernels

// Torch glue of the fused CUDA group convolution kernels: checks, device guard, allocation in the memory
// format the input suggests (channels_last stays channels_last), current stream. Inputs keep their strides.
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <cstdlib>
#include <string_view>

#include "../group_conv.h"
#include "../implicit_gemm.h"
#include "group_conv_kernels.h"
#include "torch_glue.h"

namespace ger_kernels {
namespace {

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// The kernels index spatial positions with int (implicit_gemm.h); say so instead of a bare launch error.
void check_spatial(const ConvShape& shape, const char* op) {
  TORCH_CHECK(fits_spatial(shape), op, ": the CUDA kernels need padded sizes, stride and dilation*(k-1) below 2^30, "
              "got input ", shape.in_h, " x ", shape.in_w, ", padding ", shape.padding, ", stride ", shape.stride,
              ", dilation ", shape.dilation, ", k ", shape.kernel_size);
}

CudaDevice current_device() {
  const int index = c10::cuda::current_device();
  int sm_count = 0, major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, index));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, index));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, index));
  const char* cute = std::getenv("GER_KERNELS_CUTE");  // read per call: tests switch it
  return {sm_count, 10 * major + minor, cute != nullptr && std::string_view(cute) == "1"};
}

at::Tensor group_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             int64_t stride, int64_t padding, int64_t dilation, int64_t group_order) {
  const ConvShape shape = check_group_conv(input, weight, bias, stride, padding, dilation, group_order);
  check_spatial(shape, "group_conv2d");
  const FloatKind kind = float_kind(input.scalar_type());
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output = empty_output(shape, input);
  if (output.numel() == 0) return output;
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const CudaDevice device = current_device();
  const at::Tensor scratch = at::empty({weight_scratch_numel(shape, false, kind, device)}, w.options());
  check_launch(launch_group_conv2d(input.const_data_ptr(), strides_of(input), w.const_data_ptr(),
                                   scratch.mutable_data_ptr(), b.defined() ? b.const_data_ptr() : nullptr,
                                   output.mutable_data_ptr(), strides_of(output), shape, kind, device,
                                   c10::cuda::getCurrentCUDAStream()),
               "group_conv2d");
  return output;
}

at::Tensor group_conv2d_input_grad_cuda(const at::Tensor& grad_output, const at::Tensor& weight,
                                        c10::SymIntArrayRef input_size, int64_t stride, int64_t padding,
                                        int64_t dilation, int64_t group_order) {
  const ConvShape shape = check_group_conv_input_grad(grad_output, weight, C10_AS_INTARRAYREF_SLOW(input_size),
                                                      stride, padding, dilation, group_order);
  check_spatial(shape, "group_conv2d_input_grad");
  const FloatKind kind = float_kind(grad_output.scalar_type());
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor grad_input = empty_grad_input(shape, grad_output);
  if (grad_input.numel() == 0) return grad_input;
  const at::Tensor w = weight.contiguous();
  const CudaDevice device = current_device();
  const at::Tensor scratch = at::empty({weight_scratch_numel(shape, true, kind, device)}, w.options());
  check_launch(launch_group_conv2d_input_grad(grad_output.const_data_ptr(), strides_of(grad_output),
                                              w.const_data_ptr(), scratch.mutable_data_ptr(),
                                              grad_input.mutable_data_ptr(), strides_of(grad_input), shape, kind,
                                              device, c10::cuda::getCurrentCUDAStream()),
               "group_conv2d_input_grad");
  return grad_input;
}

at::Tensor group_conv2d_weight_grad_cuda(const at::Tensor& grad_output, const at::Tensor& input, int64_t kernel_size,
                                         int64_t in_orientations, int64_t stride, int64_t padding, int64_t dilation,
                                         int64_t group_order) {
  const ConvShape shape = check_group_conv_weight_grad(grad_output, input, kernel_size, in_orientations, stride,
                                                       padding, dilation, group_order);
  check_spatial(shape, "group_conv2d_weight_grad");
  const FloatKind kind = float_kind(input.scalar_type());
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor grad_weight = empty_grad_weight(shape, input);
  if (shape.batch == 0) return grad_weight.zero_();
  const CudaDevice device = current_device();
  const int splits = weight_grad_splits(shape, kind, device);
  // the kernels' accumulator type (Accumulate<T>): float for 16-bit and float inputs, double for double
  const at::Tensor workspace = at::empty({splits * grad_weight.numel()},
                                         input.options().dtype(at::toOpMathType(input.scalar_type())));
  check_launch(launch_group_conv2d_weight_grad(grad_output.const_data_ptr(), strides_of(grad_output),
                                               input.const_data_ptr(), strides_of(input),
                                               grad_weight.mutable_data_ptr(), workspace.mutable_data_ptr(), splits,
                                               shape, kind, device, c10::cuda::getCurrentCUDAStream()),
               "group_conv2d_weight_grad");
  return grad_weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(ger_kernels, CUDA, m) {
  m.impl("group_conv2d", &group_conv2d_cuda);
  m.impl("group_conv2d_input_grad", &group_conv2d_input_grad_cuda);
  m.impl("group_conv2d_weight_grad", &group_conv2d_weight_grad_cuda);
}

}  // namespace ger_kernels

// GER_HOST_DEVICE marks small functions that CPU and CUDA kernels both call.
#pragma once

#if defined(__CUDACC__)
#define GER_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GER_HOST_DEVICE inline
#endif

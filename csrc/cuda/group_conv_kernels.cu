// Fused group convolution kernels: implicit GEMMs whose operand tiles are gathered in place, with the index
// math of csrc/implicit_gemm.h (W~ is read from w through the group tables, never written).
//
// A block computes a BM x BN tile of C = A * B, walking its part of the reduction in steps of BK: each step
// stages A (BM x BK) and B (BK x BN) in shared memory, both reduction-major (a[kk * ldA + m], b[kk * ldB + n]),
// and multiplies them with SIMT FMAs or with WMMA 16x16x16 tensor-core fragments (float accumulation), while
// the global loads of the next step are in flight into registers.
// A problem (Forward, InputGrad, WeightGrad) supplies the loads of one step and the epilogue: row(m, z) is the
// offset of output row m (decoded once per row), store(row, n, acc) writes one element of it.
// Built with GER_KERNELS_CUTE=1 and enabled at run time (CudaDevice::cute_enabled), float16/bfloat16 on sm_80 and
// newer run the CuTe kernels of group_conv_cute.cu instead (forward and input gradient where their activation is
// cute_vectorizable, the weight gradient always).
#include <mma.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "accumulate.cuh"
#include "group_conv_cute.h"
#include "group_conv_kernels.h"

namespace ger_kernels {
namespace {

// Block tile: kThreads threads; the smem rows are padded by kPad elements against bank conflicts (for WMMA,
// 8 elements keep the row pitch a multiple of 16 bytes, its ldm rule).
template <int kBM_, int kBN_, int kBK_, int kThreads_, int kPad>
struct Tile {
  static constexpr int kBM = kBM_, kBN = kBN_, kBK = kBK_, kThreads = kThreads_;
  static constexpr int kLdA = kBM + kPad, kLdB = kBN + kPad;
};
// SIMT FMA: 16 x 16 threads, each a 4 x 4 block of outputs strided by 16.
using SimtTile = Tile<64, 64, 16, 256, 4>;
// WMMA: 4 warps in a 2 x 2 grid, each a 32 x 32 block of 2 x 2 fragments.
using WmmaTile = Tile<64, 64, 32, 128, 8>;
static_assert(SimtTile::kBM == WmmaTile::kBM && SimtTile::kBN == WmmaTile::kBN, "weight_grad_splits assumes one "
              "block tile size");
constexpr int kBlockM = SimtTile::kBM, kBlockN = SimtTile::kBN;

template <typename T> struct Type { using type = T; };

template <typename T> __device__ __forceinline__ T zero() { return from_acc<T>(typename Accumulate<T>::type(0)); }

// Read-only load of an operand element through the non-coherent cache.
template <typename T> __device__ __forceinline__ T read(const T* p) { return __ldg(p); }

// How a block's threads share a kRows x kDepth operand tile, stored reduction-major (tile[kk * ld + r]):
// by row, each thread keeps one row r (consecutive threads consecutive rows) and takes kCount steps kk;
// by step, each thread keeps one step kk (consecutive threads consecutive steps) and takes kCount rows.
// What depends only on the kept index is decoded once per thread and step (the context).
template <bool kByStep, int kRows, int kDepth, int kThreads>
struct TileMap {
  static constexpr int kKept = kByStep ? kDepth : kRows;
  static constexpr int kCount = kRows * kDepth / kThreads;
  static_assert(kThreads % kKept == 0 && kRows * kDepth % kThreads == 0, "tile does not divide among threads");

  __device__ static int kept() { return threadIdx.x % kKept; }
  __device__ static int taken(int j) { return threadIdx.x / kKept + j * (kThreads / kKept); }
  __device__ static int offset(int j, int ld) { return kByStep ? kept() * ld + taken(j) : taken(j) * ld + kept(); }
};

// A thread's elements of one operand tile: context(kept) once, then value(context, taken(j)).
template <class Map, typename T, class Context, class Value>
__device__ __forceinline__ void gather(T (&out)[Map::kCount], Context context, Value value) {
  const auto ctx = context(Map::kept());
#pragma unroll
  for (int j = 0; j < Map::kCount; ++j) out[j] = value(ctx, Map::taken(j));
}

template <class Map, typename T>
__device__ __forceinline__ void commit(T* tile, int ld, const T (&in)[Map::kCount]) {
#pragma unroll
  for (int j = 0; j < Map::kCount; ++j) tile[Map::offset(j, ld)] = in[j];
}

// The A (BM x BK) and B (BK x BN) elements of one reduction step that a thread loads, held in registers
// between the global loads and the shared-memory store so that the loads of step k+1 overlap the math of step k.
template <class P, class Tl>
struct Operands {
  using AMap = TileMap<P::kAByStep, Tl::kBM, Tl::kBK, Tl::kThreads>;
  using BMap = TileMap<P::kBByStep, Tl::kBN, Tl::kBK, Tl::kThreads>;
  typename P::T a[AMap::kCount], b[BMap::kCount];

  __device__ void commit(typename P::T* a_tile, typename P::T* b_tile) const {
    ger_kernels::commit<AMap>(a_tile, Tl::kLdA, a);
    ger_kernels::commit<BMap>(b_tile, Tl::kLdB, b);
  }
};

// y[m][n] = sum_kk X[m][kk] W~[n][kk] + bias[n / S]; m: output pixel, n: output channel, kk: (c, a, b).
template <typename T_>
struct Forward {
  using T = T_;
  using Acc = typename Accumulate<T>::type;
  const T* x;
  const T* w;
  const T* bias;  // nullptr without bias
  T* y;
  Strides4 xs, ys;
  ConvShape shape;
  PixelGrid pixels;  // output pixels
  int64_t m_size;
  int n_size, k_size;

  static constexpr bool kAByStep = false, kBByStep = false;

  template <class Tl>
  __device__ ReductionRange k_range(int) const { return {0, k_size}; }

  template <class Tl>
  __device__ void load(Operands<Forward, Tl>& ops, int64_t m0, int n0, int64_t k0, const GroupTables& g) const {
    const int k = static_cast<int>(shape.kernel_size);
    gather<typename Operands<Forward, Tl>::AMap>(
        ops.a, [&](int r) { return m0 + r < m_size ? pixel_of(m0 + r, pixels) : Pixel{-1, 0, 0}; },
        [&](const Pixel& px, int kk) {
          const int c = static_cast<int>(k0) + kk;
          if (px.n < 0 || c >= k_size) return zero<T>();
          const int64_t off = forward_input_offset(shape, xs, px, channel_tap_of(c, k));
          return off < 0 ? zero<T>() : read(x + off);
        });
    gather<typename Operands<Forward, Tl>::BMap>(
        ops.b, [&](int r) { return n0 + r; },
        [&](int n, int kk) {
          const int c = static_cast<int>(k0) + kk;
          if (n >= n_size || c >= k_size) return zero<T>();
          return read(w + expanded_weight_offset(shape, g, n, channel_tap_of(c, k)));
        });
  }

  __device__ int64_t row(int64_t m, int) const { return tensor_offset(ys, pixel_of(m, pixels), 0); }

  __device__ void store(int64_t row, int n, Acc acc) const {
    if (bias != nullptr) acc += to_acc(read(bias + n / static_cast<int>(shape.group_order)));
    y[row + n * ys.c] = from_acc<T>(acc);
  }
};

// dx[m][n] = sum_kk dY[m][kk] W~[oc][(n, a, b)]; m: input pixel, n: input channel, kk: (oc, a, b).
// Under a stride, a tap reaches an input pixel only where (ih + padding - a*dilation) is a multiple of the
// stride; elsewhere it reads 0 (input_grad_output_offset).
template <typename T_>
struct InputGrad {
  using T = T_;
  using Acc = typename Accumulate<T>::type;
  const T* dy;
  const T* w;
  T* dx;
  Strides4 dys, dxs;
  ConvShape shape;
  PixelGrid pixels;  // input pixels
  int64_t m_size;
  int n_size, k_size;

  static constexpr bool kAByStep = false, kBByStep = false;

  template <class Tl>
  __device__ ReductionRange k_range(int) const { return {0, k_size}; }

  template <class Tl>
  __device__ void load(Operands<InputGrad, Tl>& ops, int64_t m0, int n0, int64_t k0, const GroupTables& g) const {
    const int k = static_cast<int>(shape.kernel_size);
    gather<typename Operands<InputGrad, Tl>::AMap>(
        ops.a, [&](int r) { return m0 + r < m_size ? pixel_of(m0 + r, pixels) : Pixel{-1, 0, 0}; },
        [&](const Pixel& px, int kk) {
          const int c = static_cast<int>(k0) + kk;
          if (px.n < 0 || c >= k_size) return zero<T>();
          const int64_t off = input_grad_output_offset(shape, dys, px, channel_tap_of(c, k));
          return off < 0 ? zero<T>() : read(dy + off);
        });
    gather<typename Operands<InputGrad, Tl>::BMap>(
        ops.b, [&](int r) { return n0 + r; },
        [&](int n, int kk) {
          const int c = static_cast<int>(k0) + kk;
          if (n >= n_size || c >= k_size) return zero<T>();
          const ChannelTap ct = channel_tap_of(c, k);
          return read(w + expanded_weight_offset(shape, g, ct.channel, {n, ct.a, ct.b}));
        });
  }

  __device__ int64_t row(int64_t m, int) const { return tensor_offset(dxs, pixel_of(m, pixels), 0); }

  __device__ void store(int64_t row, int n, Acc acc) const { dx[row + n * dxs.c] = from_acc<T>(acc); }
};

// Partial dw[o][n] = sum_kk dY[o][kk] X~[kk][n] over split z's range of the reduction; o: output field,
// n: (i*S_in + u, p, q), kk: (pixel, t) in chunks of BK (weight_grad_reduction), so one step has one t and
// the S transformed copies are summed inside the reduction. Written to workspace[z][o][n].
template <typename T_>
struct WeightGrad {
  using T = T_;
  using Acc = typename Accumulate<T>::type;
  const T* dy;
  const T* x;
  Acc* workspace;
  Strides4 dys, xs;
  ConvShape shape;
  PixelGrid out_pixels;
  FastDiv order;
  int m_size, n_size;
  int64_t k_size, pixels;

  static constexpr bool kAByStep = true, kBByStep = true;

  // Split z of gridDim.z, in whole steps of the kernel's BK (one t per step).
  template <class Tl>
  __device__ ReductionRange k_range(int z) const { return split_reduction(k_size, Tl::kBK, static_cast<int>(gridDim.z), z); }

  template <class Tl>
  __device__ void load(Operands<WeightGrad, Tl>& ops, int64_t m0, int n0, int64_t k0, const GroupTables& g) const {
    const int k = static_cast<int>(shape.kernel_size);
    struct Step {
      Pixel px;  // n < 0 past the last pixel
      int t;
    };
    const auto step = [&](int kk) {
      const PixelOrientation r = weight_grad_reduction(k0 + kk, order, Tl::kBK);
      return Step{r.pixel < pixels ? pixel_of(r.pixel, out_pixels) : Pixel{-1, 0, 0}, r.t};
    };
    gather<typename Operands<WeightGrad, Tl>::AMap>(ops.a, step, [&](const Step& s, int r) {
      const int64_t o = m0 + r;
      if (s.px.n < 0 || o >= m_size) return zero<T>();
      return read(dy + tensor_offset(dys, s.px, o * shape.group_order + s.t));
    });
    gather<typename Operands<WeightGrad, Tl>::BMap>(ops.b, step, [&](const Step& s, int r) {
      const int n = n0 + r;
      if (s.px.n < 0 || n >= n_size) return zero<T>();
      const int64_t off = weight_grad_input_offset(shape, g, xs, s.px, s.t, channel_tap_of(n, k));
      return off < 0 ? zero<T>() : read(x + off);
    });
  }

  __device__ int64_t row(int64_t m, int z) const { return (int64_t(z) * m_size + m) * n_size; }

  __device__ void store(int64_t row, int n, Acc acc) const { workspace[row + n] = acc; }
};

// The group tables in shared memory (dynamic indexing into a kernel parameter could go through local memory).
__device__ __forceinline__ void stage_tables(GroupTables& shared, const GroupTables& param) {
  if (threadIdx.x == 0) shared = param;
  __syncthreads();
}

template <class P>
__global__ void __launch_bounds__(SimtTile::kThreads) simt_gemm(P p, GroupTables tables) {
  using T = typename P::T;
  using Acc = typename P::Acc;
  using Tl = SimtTile;
  __shared__ GroupTables g;
  __shared__ alignas(16) unsigned char smem[(Tl::kBK * Tl::kLdA + Tl::kBK * Tl::kLdB) * sizeof(T)];
  T* a = reinterpret_cast<T*>(smem);
  T* b = a + Tl::kBK * Tl::kLdA;
  stage_tables(g, tables);

  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t m0 = int64_t(blockIdx.x) * Tl::kBM;
  const int n0 = blockIdx.y * Tl::kBN;
  const ReductionRange range = p.template k_range<Tl>(blockIdx.z);
  Acc acc[4][4] = {};
  Operands<P, Tl> ops;
  if (range.begin < range.end) p.template load<Tl>(ops, m0, n0, range.begin, g);
  for (int64_t k0 = range.begin; k0 < range.end; k0 += Tl::kBK) {
    ops.commit(a, b);
    __syncthreads();
    if (k0 + Tl::kBK < range.end) p.template load<Tl>(ops, m0, n0, k0 + Tl::kBK, g);
#pragma unroll
    for (int kk = 0; kk < Tl::kBK; ++kk) {
      Acc av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        av[i] = to_acc(a[kk * Tl::kLdA + tx + 16 * i]);
        bv[i] = to_acc(b[kk * Tl::kLdB + ty + 16 * i]);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + tx + 16 * i;
    if (m >= p.m_size) continue;
    const int64_t row = p.row(m, blockIdx.z);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = n0 + ty + 16 * j;
      if (n < p.n_size) p.store(row, n, acc[i][j]);
    }
  }
}

// Whether this compilation pass has WMMA for T (float16 from sm_70, bfloat16 from sm_80); the host pass
// says yes, and the launchers never pick the tensor-core kernel on devices without them.
template <typename T> __device__ constexpr bool has_wmma() {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  return true;
#elif __CUDA_ARCH__ >= 700
  return std::is_same_v<T, __half>;
#else
  return false;
#endif
}

template <class P>
__global__ void __launch_bounds__(WmmaTile::kThreads) wmma_gemm(P p, GroupTables tables) {
  using T = typename P::T;
  if constexpr (!has_wmma<T>()) {
    __trap();
  } else {
    namespace wmma = nvcuda::wmma;
    using Tl = WmmaTile;
    constexpr int kLdC = Tl::kBM + 4;  // epilogue tile, column-major c[n * kLdC + m]
    constexpr int kOperandBytes = (Tl::kBK * Tl::kLdA + Tl::kBK * Tl::kLdB) * sizeof(T);
    constexpr int kResultBytes = Tl::kBN * kLdC * sizeof(float);
    __shared__ GroupTables g;
    // The operand tiles of the main loop and the float result of the epilogue share this buffer.
    __shared__ alignas(32) unsigned char smem[kOperandBytes > kResultBytes ? kOperandBytes : kResultBytes];
    T* a = reinterpret_cast<T*>(smem);
    T* b = a + Tl::kBK * Tl::kLdA;
    float* c = reinterpret_cast<float*>(smem);
    stage_tables(g, tables);

    const int warp = threadIdx.x / 32, wm = warp % 2, wn = warp / 2;
    const int64_t m0 = int64_t(blockIdx.x) * Tl::kBM;
    const int n0 = blockIdx.y * Tl::kBN;
    const ReductionRange range = p.template k_range<Tl>(blockIdx.z);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    Operands<P, Tl> ops;
    if (range.begin < range.end) p.template load<Tl>(ops, m0, n0, range.begin, g);
    for (int64_t k0 = range.begin; k0 < range.end; k0 += Tl::kBK) {
      ops.commit(a, b);
      __syncthreads();
      if (k0 + Tl::kBK < range.end) p.template load<Tl>(ops, m0, n0, k0 + Tl::kBK, g);
#pragma unroll
      for (int ks = 0; ks < Tl::kBK; ks += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> fa[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          wmma::load_matrix_sync(fa[i], a + ks * Tl::kLdA + wm * 32 + 16 * i, Tl::kLdA);
          wmma::load_matrix_sync(fb[i], b + ks * Tl::kLdB + wn * 32 + 16 * i, Tl::kLdB);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(c + (wn * 32 + 16 * j) * kLdC + wm * 32 + 16 * i, acc[i][j], kLdC,
                                wmma::mem_col_major);
    __syncthreads();
    // Each thread writes one row m of the tile, consecutive threads consecutive rows.
    static_assert(Tl::kThreads % Tl::kBM == 0, "epilogue rows do not divide among threads");
    const int ml = threadIdx.x % Tl::kBM;
    if (m0 + ml < p.m_size) {
      const int64_t row = p.row(m0 + ml, blockIdx.z);
      for (int nl = threadIdx.x / Tl::kBM; nl < Tl::kBN; nl += Tl::kThreads / Tl::kBM)
        if (n0 + nl < p.n_size) p.store(row, n0 + nl, c[nl * kLdC + ml]);
    }
  }
}

// dw[idx] = sum over z of workspace[z][idx], in order z = 0, 1, ...
template <typename T>
__global__ void sum_splits(const typename Accumulate<T>::type* __restrict__ workspace, T* __restrict__ dw,
                           int64_t numel, int splits) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < numel;
       idx += int64_t(gridDim.x) * blockDim.x) {
    typename Accumulate<T>::type sum = 0;
    for (int z = 0; z < splits; ++z) sum += workspace[z * numel + idx];
    dw[idx] = from_acc<T>(sum);
  }
}

bool fits_int(int64_t n) { return n <= INT_MAX; }

template <class Tl, class P>
cudaError_t launch_gemm(const P& p, int splits, cudaStream_t stream) {
  const int64_t m_tiles = (p.m_size + Tl::kBM - 1) / Tl::kBM;
  const int64_t n_tiles = (int64_t(p.n_size) + Tl::kBN - 1) / Tl::kBN;
  if (m_tiles == 0 || n_tiles == 0) return cudaSuccess;
  if (!fits_int(m_tiles) || n_tiles > 65535 || splits > 65535) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(m_tiles), static_cast<unsigned>(n_tiles), static_cast<unsigned>(splits));
  const GroupTables& tables = group_tables(p.shape.group_order);
  if constexpr (std::is_same_v<Tl, WmmaTile>) {
    wmma_gemm<P><<<grid, Tl::kThreads, 0, stream>>>(p, tables);
  } else {
    simt_gemm<P><<<grid, Tl::kThreads, 0, stream>>>(p, tables);
  }
  return cudaGetLastError();
}

// Calls body(Type<T>{}, tile) with the element type of `kind` and the block tile of the kernel that runs it on
// `device`: WMMA for float16 (sm_70+) and bfloat16 (sm_80+), SIMT otherwise.
template <class Body>
cudaError_t with_kernel(FloatKind kind, const CudaDevice& device, Body body) {
  switch (kind) {
    case FloatKind::kHalf:
      return device.arch >= 70 ? body(Type<__half>{}, WmmaTile{}) : body(Type<__half>{}, SimtTile{});
    case FloatKind::kBFloat16:
      return device.arch >= 80 ? body(Type<__nv_bfloat16>{}, WmmaTile{}) : body(Type<__nv_bfloat16>{}, SimtTile{});
    case FloatKind::kFloat: return body(Type<float>{}, SimtTile{});
    case FloatKind::kDouble: return body(Type<double>{}, SimtTile{});
  }
  return cudaErrorInvalidValue;
}

#if GER_KERNELS_CUTE
// Whether 16-bit ops go to the CuTe kernels on this device (sm_80 and newer: mma.sync, ldmatrix, cp.async),
// when they are enabled (CudaDevice::cute_enabled).
bool uses_cute(FloatKind kind, const CudaDevice& device) {
  return device.cute_enabled && (kind == FloatKind::kHalf || kind == FloatKind::kBFloat16) && device.arch >= 80;
}

// Whether the CuTe forward (input_grad false) or input gradient runs: its activation `data` is
// cute_vectorizable and the weight scratch 16-byte aligned.
bool uses_cute_conv(FloatKind kind, const CudaDevice& device, const void* data, const Strides4& strides,
                    int64_t channels, const void* weight_scratch) {
  return uses_cute(kind, device) && cute_vectorizable(data, strides, channels) &&
         reinterpret_cast<uintptr_t>(weight_scratch) % 16 == 0;
}
#endif  // GER_KERNELS_CUTE (cute_vectorizable exists only then)

}  // namespace

int64_t weight_scratch_numel([[maybe_unused]] const ConvShape& shape, [[maybe_unused]] bool input_grad,
                             [[maybe_unused]] FloatKind kind, [[maybe_unused]] const CudaDevice& device) {
#if GER_KERNELS_CUTE
  if (uses_cute(kind, device)) return weight_copy_numel(shape, input_grad);
#endif
  return 0;
}

cudaError_t launch_group_conv2d(const void* input, const Strides4& input_strides, const void* weight,
                                void* weight_scratch, const void* bias, void* output,
                                const Strides4& output_strides, const ConvShape& shape, FloatKind kind,
                                const CudaDevice& device, cudaStream_t stream) {
  const int64_t k_size = shape.in_channels() * shape.kernel_size * shape.kernel_size;
  if (!fits_spatial(shape) || !fits_int(k_size) || !fits_int(shape.out_channels())) return cudaErrorInvalidValue;
#if GER_KERNELS_CUTE
  if (uses_cute_conv(kind, device, input, input_strides, shape.in_channels(), weight_scratch)) {
    return launch_cute_group_conv2d(input, input_strides, weight, weight_scratch, bias, output, output_strides, shape,
                                    kind, stream);
  }
#endif
  return with_kernel(kind, device, [&](auto type, auto tile) {
    using T = typename decltype(type)::type;
    const Forward<T> p{static_cast<const T*>(input), static_cast<const T*>(weight), static_cast<const T*>(bias),
                       static_cast<T*>(output), input_strides, output_strides, shape,
                       {FastDiv(shape.out_h), FastDiv(shape.out_w)}, shape.batch * shape.out_h * shape.out_w, static_cast<int>(shape.out_channels()),
                       static_cast<int>(k_size)};
    return launch_gemm<decltype(tile)>(p, 1, stream);
  });
}

cudaError_t launch_group_conv2d_input_grad(const void* grad_output, const Strides4& grad_output_strides,
                                           const void* weight, void* weight_scratch, void* grad_input,
                                           const Strides4& grad_input_strides, const ConvShape& shape,
                                           FloatKind kind, const CudaDevice& device, cudaStream_t stream) {
  const int64_t k_size = shape.out_channels() * shape.kernel_size * shape.kernel_size;
  if (!fits_spatial(shape) || !fits_int(k_size) || !fits_int(shape.in_channels())) return cudaErrorInvalidValue;
#if GER_KERNELS_CUTE
  if (uses_cute_conv(kind, device, grad_output, grad_output_strides, shape.out_channels(), weight_scratch)) {
    return launch_cute_group_conv2d_input_grad(grad_output, grad_output_strides, weight, weight_scratch, grad_input,
                                               grad_input_strides, shape, kind, stream);
  }
#endif
  return with_kernel(kind, device, [&](auto type, auto tile) {
    using T = typename decltype(type)::type;
    const InputGrad<T> p{static_cast<const T*>(grad_output), static_cast<const T*>(weight),
                         static_cast<T*>(grad_input), grad_output_strides, grad_input_strides, shape,
                         {FastDiv(shape.in_h), FastDiv(shape.in_w)}, shape.batch * shape.in_h * shape.in_w, static_cast<int>(shape.in_channels()),
                         static_cast<int>(k_size)};
    return launch_gemm<decltype(tile)>(p, 1, stream);
  });
}

// Two blocks per SM (of the block tile of the kernel that runs) in waves that leave few of them idle
// (reduction_split_count), each part of the reduction at least kMinSteps long, at most kMaxWorkspace
// accumulators in the workspace.
int weight_grad_splits(const ConvShape& shape, [[maybe_unused]] FloatKind kind, const CudaDevice& device) {
  constexpr int64_t kMinSteps = 4096, kMaxWorkspace = int64_t(1) << 24, kMaxSplits = 64;
  int64_t tiles = (shape.out_fields + kBlockM - 1) / kBlockM *
                  ((shape.in_channels() * shape.kernel_size * shape.kernel_size + kBlockN - 1) / kBlockN);
#if GER_KERNELS_CUTE
  // the tiles of the CuTe kernel of channels-last tensors (its other kernel, for other layouts, uses the same count)
  if (uses_cute(kind, device)) tiles = cute_weight_grad_tiles(shape);
#endif
  const int64_t steps = shape.batch * shape.out_h * shape.out_w * shape.group_order;
  const int64_t numel = shape.filter().weight_numel();
  return reduction_split_count(tiles, steps, 2 * int64_t(device.sm_count), kMinSteps,
                               std::min(kMaxWorkspace / numel, kMaxSplits));
}

cudaError_t launch_group_conv2d_weight_grad(const void* grad_output, const Strides4& grad_output_strides,
                                            const void* input, const Strides4& input_strides, void* grad_weight,
                                            void* workspace, int splits, const ConvShape& shape, FloatKind kind,
                                            const CudaDevice& device, cudaStream_t stream) {
  const int64_t n_size = shape.in_channels() * shape.kernel_size * shape.kernel_size;
  if (!fits_spatial(shape) || !fits_int(n_size) || !fits_int(shape.out_fields) || splits < 1) {
    return cudaErrorInvalidValue;
  }
  return with_kernel(kind, device, [&](auto type, auto tile) {
    using T = typename decltype(type)::type;
    using Tl = decltype(tile);
    using Acc = typename Accumulate<T>::type;
    const WeightGrad<T> p{static_cast<const T*>(grad_output), static_cast<const T*>(input),
                          static_cast<Acc*>(workspace), grad_output_strides, input_strides, shape,
                          {FastDiv(shape.out_h), FastDiv(shape.out_w)}, FastDiv(shape.group_order),
                          static_cast<int>(shape.out_fields), static_cast<int>(n_size),
                          weight_grad_reduction_size(shape, Tl::kBK), shape.batch * shape.out_h * shape.out_w};
    cudaError_t status;
#if GER_KERNELS_CUTE
    if (uses_cute(kind, device)) {
      status = launch_cute_group_conv2d_weight_grad(grad_output, grad_output_strides, input, input_strides,
                                                    static_cast<float*>(workspace), splits, shape, kind, stream);
    } else
#endif
    {
      status = launch_gemm<Tl>(p, splits, stream);
    }
    const int64_t numel = shape.filter().weight_numel();
    if (status != cudaSuccess || numel == 0) return status;
    constexpr int kThreads = 256;
    const int blocks = static_cast<int>(std::min<int64_t>((numel + kThreads - 1) / kThreads, 65535));
    sum_splits<T><<<blocks, kThreads, 0, stream>>>(static_cast<const Acc*>(workspace), static_cast<T*>(grad_weight),
                                                   numel, splits);
    return cudaGetLastError();
  });
}

}  // namespace ger_kernels

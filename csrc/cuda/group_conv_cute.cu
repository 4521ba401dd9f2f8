// CuTe tensor-core implicit GEMMs of the fused group convolution (float16/bfloat16, sm_80 and newer), with the
// index math of csrc/implicit_gemm.h. A block computes a kBM x kBN tile of C[m][n] = sum_kk A[m][kk] B[n][kk]
// (both operands reduction-major):
//   - 8 warps, each repeating SM80's mma.sync 16x8x16 atom (float accumulation) over its part of the tile;
//   - operand tiles in shared memory, kStages deep, rows of kBK = 32 elements XOR-swizzled so that ldmatrix
//     reads them without bank conflicts;
//   - an operand side is either copied with cp.async in 16-byte chunks (the activations of forward and input
//     gradient: 8 consecutive channels of a channels-last tensor, zero-filled in the padding), or gathered element
//     by element into registers, its global loads in flight during the math of a step and stored to shared memory
//     after it (the weight, read from w through the group tables, so W~ never exists in memory; both operands of
//     the weight gradient, whose reduction runs over pixels).
// Reduction orders: forward and input gradient tap-major (tap_major_channel_tap_of: a 16-byte chunk is one tap
// and 8 channels), weight gradient (pixel, t) in chunks of 32 pixels of one t (weight_grad_reduction) split over
// gridDim.z (split-K), each part written to its own workspace slice, which the caller adds in order.
#if GER_KERNELS_CUTE

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <climits>
#include <cstdint>

#include "group_conv_cute.h"

namespace ger_kernels {
namespace {

using namespace cute;

template <typename T> struct Sm80Mma;
template <> struct Sm80Mma<cutlass::half_t> { using type = SM80_16x8x16_F32F16F16F32_TN; };
template <> struct Sm80Mma<cutlass::bfloat16_t> { using type = SM80_16x8x16_F32BF16BF16F32_TN; };

template <typename T_, int kBM_, int kBN_>
struct Config {
  using T = T_;
  static constexpr int kBM = kBM_, kBN = kBN_, kBK = 32, kStages = 3, kThreads = 256;
  static constexpr int kChunk = 8;  // 16-bit elements per 16-byte chunk
  static constexpr int kWarpsM = kBM >= 128 ? 4 : 2, kWarpsN = kThreads / 32 / kWarpsM;
  // 8 rows of 32 elements (64 bytes), the 16-byte chunks of row r XOR-ed with bits 1-2 of r.
  using SmemAtom = decltype(composition(Swizzle<2, 3, 3>{}, Layout<Shape<_8, Int<kBK>>, Stride<Int<kBK>, _1>>{}));
  using SmemA = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBM>, Int<kBK>, Int<kStages>>{}));
  using SmemB = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBN>, Int<kBK>, Int<kStages>>{}));
  // kWarpsM x kWarpsN warps; each warp's atoms cover 16 columns per k step, so that one ldmatrix.x4 loads them.
  using Mma = decltype(make_tiled_mma(typename Sm80Mma<T>::type{}, Layout<Shape<Int<kWarpsM>, Int<kWarpsN>, _1>>{},
                                     Tile<Int<16 * kWarpsM>, Int<16 * kWarpsN>, _16>{}));
  using LoadFragment = Copy_Atom<SM75_U32x4_LDSM_N, T>;
  static constexpr int kSmemBytes = int(cosize_v<SmemA> + cosize_v<SmemB>) * int(sizeof(T));
};

// How the block's threads share the 16-byte chunks of a kRows x kBK operand tile: chunk q = thread + j*kThreads
// is row q / (kBK/8), columns 8*(q % (kBK/8)) .. +7. A thread's chunks all start at the same column, so one
// reduction position per thread (a Step, decoded once and advanced by kBK) serves both operands at every step.
template <class Cfg, int kRows>
struct ChunkMap {
  static constexpr int kPerRow = Cfg::kBK / Cfg::kChunk;
  static constexpr int kCount = kRows * kPerRow / Cfg::kThreads;
  static_assert(kCount * Cfg::kThreads == kRows * kPerRow && Cfg::kThreads % kPerRow == 0,
                "chunks do not divide among threads");
  __device__ static int row(int j) { return (threadIdx.x + j * Cfg::kThreads) / kPerRow; }
  __device__ static int col() { return threadIdx.x % kPerRow * Cfg::kChunk; }
};

__device__ __forceinline__ uint16_t read_bits(const uint16_t* p) { return __ldg(reinterpret_cast<const unsigned short*>(p)); }

__device__ __forceinline__ uint4 pack(const uint16_t (&v)[8]) {
  return {v[0] | uint32_t(v[1]) << 16, v[2] | uint32_t(v[3]) << 16, v[4] | uint32_t(v[5]) << 16,
          v[6] | uint32_t(v[7]) << 16};
}

// One operand side of a problem, for the rows a thread owns: Side::row(r) once, then per step, at the thread's
// reduction position `step` (kk .. kk+7), either Side::chunk(row, step) (kAsync: element offset of the 8
// elements, -1 for zeros) or Side::gather(row, step, tables) (the 8 elements, packed).
template <class Cfg, int kRows, class Side>
struct Loader {
  using Map = ChunkMap<Cfg, kRows>;
  typename Side::Row rows[Map::kCount];
  uint4 staged[Side::kAsync ? 1 : Map::kCount];

  __device__ Loader(const Side& side, int64_t first_row, const GroupTables& g) {
#pragma unroll
    for (int j = 0; j < Map::kCount; ++j) rows[j] = side.row(first_row + Map::row(j), g);
  }

  template <class Stage>
  __device__ static uint4* chunk_at(Stage&& stage, int j) {
    return reinterpret_cast<uint4*>(&stage(Map::row(j), Map::col()));
  }

  // The global reads of one step: cp.async into the stage, or gathered into registers.
  template <class Step, class Stage>
  __device__ void fetch(const Side& side, const Step& step, Stage&& stage, const GroupTables& g) {
#pragma unroll
    for (int j = 0; j < Map::kCount; ++j) {
      if constexpr (Side::kAsync) {
        const int64_t offset = side.chunk(rows[j], step);
        const auto* src = reinterpret_cast<const cute::uint128_t*>(side.data + (offset < 0 ? 0 : offset));
        SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>::copy(
            *src, *reinterpret_cast<cute::uint128_t*>(chunk_at(stage, j)), offset >= 0);
      } else {
        staged[j] = side.gather(rows[j], step, g);
      }
    }
  }

  // Gathered sides: the registers of the last fetch into the stage.
  template <class Stage>
  __device__ void commit(Stage&& stage) const {
    if constexpr (!Side::kAsync) {
#pragma unroll
      for (int j = 0; j < Map::kCount; ++j) *chunk_at(stage, j) = staged[j];
    }
  }
};

template <class Cfg, class P>
__global__ void __launch_bounds__(Cfg::kThreads) cute_gemm(P p, GroupTables tables) {
  using T = typename Cfg::T;
  extern __shared__ __align__(128) unsigned char smem[];
  // in shared memory: indexed per element below, which a kernel parameter would put in local memory
  __shared__ GroupTables g;
  if (threadIdx.x == 0) g = tables;
  __syncthreads();
  Tensor sA = make_tensor(make_smem_ptr(reinterpret_cast<T*>(smem)), typename Cfg::SmemA{});
  Tensor sB = make_tensor(make_smem_ptr(reinterpret_cast<T*>(smem) + cosize_v<typename Cfg::SmemA>),
                          typename Cfg::SmemB{});

  const int64_t m0 = int64_t(blockIdx.x) * Cfg::kBM;
  const int n0 = blockIdx.y * Cfg::kBN;
  const ReductionRange range = p.k_range(blockIdx.z);
  const int k_tiles = static_cast<int>((range.end - range.begin + Cfg::kBK - 1) / Cfg::kBK);
  Loader<Cfg, Cfg::kBM, typename P::ASide> a(p.a, m0, g);
  Loader<Cfg, Cfg::kBN, typename P::BSide> b(p.b, n0, g);

  typename Cfg::Mma mma;
  auto thread_mma = mma.get_slice(threadIdx.x);
  Tensor fragment_a = thread_mma.partition_fragment_A(sA(_, _, 0));  // (MMA, MMA_M, MMA_K)
  Tensor fragment_b = thread_mma.partition_fragment_B(sB(_, _, 0));  // (MMA, MMA_N, MMA_K)
  Tensor acc = partition_fragment_C(mma, Shape<Int<Cfg::kBM>, Int<Cfg::kBN>>{});
  clear(acc);
  auto load_a = make_tiled_copy_A(typename Cfg::LoadFragment{}, mma);
  auto load_b = make_tiled_copy_B(typename Cfg::LoadFragment{}, mma);
  auto thread_load_a = load_a.get_slice(threadIdx.x);
  auto thread_load_b = load_b.get_slice(threadIdx.x);
  Tensor smem_a = thread_load_a.partition_S(sA);  // (CPY, CPY_M, CPY_K, stage)
  Tensor smem_b = thread_load_b.partition_S(sB);
  Tensor view_a = thread_load_a.retile_D(fragment_a);
  Tensor view_b = thread_load_b.retile_D(fragment_b);

  // the steps are fetched in order: the thread's position moves by kBK after each
  typename P::ASide::Step step = p.a.first_step(range.begin + ChunkMap<Cfg, Cfg::kBM>::col());
  const auto fetch = [&](int stage) {
    a.fetch(p.a, step, sA(_, _, stage), g);
    b.fetch(p.b, step, sB(_, _, stage), g);
    p.a.advance(step, Cfg::kBK);
  };
#pragma unroll
  for (int stage = 0; stage < Cfg::kStages - 1; ++stage) {
    if (stage < k_tiles) {
      fetch(stage);
      a.commit(sA(_, _, stage));
      b.commit(sB(_, _, stage));
    }
    cp_async_fence();
  }
  for (int tile = 0; tile < k_tiles; ++tile) {
    cp_async_wait<Cfg::kStages - 2>();
    __syncthreads();  // the tile's stage is complete, and every warp is done with the stage refilled next
    const int stage = tile % Cfg::kStages, next = tile + Cfg::kStages - 1, next_stage = next % Cfg::kStages;
    if (next < k_tiles) fetch(next_stage);
    cp_async_fence();
#pragma unroll
    for (int kb = 0; kb < size<2>(fragment_a); ++kb) {
      copy(load_a, smem_a(_, _, kb, stage), view_a(_, _, kb));
      copy(load_b, smem_b(_, _, kb, stage), view_b(_, _, kb));
      gemm(mma, fragment_a(_, _, kb), fragment_b(_, _, kb), acc);
    }
    if (next < k_tiles) {
      a.commit(sA(_, _, next_stage));
      b.commit(sB(_, _, next_stage));
    }
  }
  cp_async_wait<0>();

  Tensor coords = thread_mma.partition_C(make_identity_tensor(Shape<Int<Cfg::kBM>, Int<Cfg::kBN>>{}));
  int64_t row_m = -1, row = 0;
#pragma unroll
  for (int i = 0; i < size(acc); ++i) {
    const int64_t m = m0 + get<0>(coords(i));
    const int n = n0 + get<1>(coords(i));
    if (m >= p.m_size || n >= p.n_size) continue;
    if (m != row_m) {
      row_m = m;
      row = p.row(m, blockIdx.z);
    }
    p.store(row, n, acc(i));
  }
}

// Activations read in 16-byte chunks of one tap and 8 channels, tap-major (forward: the input at output pixel
// m; input gradient: grad_output at input pixel m, through the transposed im2col). Steps: TapMajorCursor.
template <bool kTransposed>
struct ChannelsLastRows {
  static constexpr bool kAsync = true;
  using Row = Pixel;  // n < 0 past the last pixel
  using Step = TapMajorCursor;
  const uint16_t* data;
  Strides4 strides;
  ConvShape shape;
  PixelGrid pixels;
  int64_t m_size;
  int k_size, channels;

  __device__ Step first_step(int64_t kk) const {
    return {kk, tap_major_channel_tap_of(static_cast<int>(kk), channels, static_cast<int>(shape.kernel_size))};
  }
  __device__ void advance(Step& step, int by) const { step.advance(by, channels, static_cast<int>(shape.kernel_size)); }

  __device__ Row row(int64_t m, const GroupTables&) const { return m < m_size ? pixel_of(m, pixels) : Pixel{-1, 0, 0}; }

  __device__ int64_t chunk(const Row& px, const Step& step) const {
    if (px.n < 0 || step.kk >= k_size) return -1;
    return kTransposed ? input_grad_output_offset(shape, strides, px, step.at)
                       : forward_input_offset(shape, strides, px, step.at);
  }
};

// Forward weight W~[n][kk], n output channel, kk tap-major: the 8 channels c0..c0+7 of a chunk (c0 a multiple of
// 8, which S_in divides) sit at expanded_weight_offset(n, c0) + delta[e], delta of the row n (chunk_deltas).
struct ForwardWeightRows {
  static constexpr bool kAsync = false;
  struct Row {
    int n;  // -1 past the last channel
    int delta[8];
  };
  const uint16_t* w;
  ConvShape shape;
  int n_size, k_size, channels;

  __device__ Row row(int64_t n, const GroupTables& g) const {
    Row r{n < n_size ? static_cast<int>(n) : -1, {}};
    if (r.n >= 0) chunk_deltas(shape, g, r.n, r.delta);
    return r;
  }

  __device__ uint4 gather(const Row& r, const TapMajorCursor& step, const GroupTables& g) const {
    uint16_t v[8] = {};
    if (r.n >= 0 && step.kk < k_size) {
      const int64_t base = expanded_weight_offset(shape, g, r.n, step.at);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = read_bits(w + base + r.delta[e]);
    }
    return pack(v);
  }
};

// Input gradient weight W~[oc][(n, a, b)], n input channel, kk = (tap, oc) tap-major.
struct InputGradWeightRows {
  static constexpr bool kAsync = false;
  using Row = int;  // input channel, -1 past the last
  const uint16_t* w;
  ConvShape shape;
  int n_size, k_size, channels;

  __device__ Row row(int64_t n, const GroupTables&) const { return n < n_size ? static_cast<int>(n) : -1; }

  __device__ uint4 gather(Row n, const TapMajorCursor& step, const GroupTables& g) const {
    uint16_t v[8] = {};
    if (n >= 0 && step.kk < k_size) {
      const ChannelTap& ct = step.at;
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = read_bits(w + expanded_weight_offset(shape, g, ct.channel + e, {n, ct.a, ct.b}));
    }
    return pack(v);
  }
};

// The 8 consecutive (pixel, t) of a weight-gradient chunk kk..kk+7: one t, consecutive pixels.
struct PixelRun {
  int64_t kk;
  Pixel first;
  int64_t pixel;  // index of `first`
  int t;
};

__device__ __forceinline__ PixelRun pixel_run(int64_t kk, const FastDiv& order, const PixelGrid& grid) {
  const PixelOrientation r = weight_grad_reduction(kk, order, kCuteWeightGradChunk);
  return {kk, pixel_of(r.pixel, grid), r.pixel, r.t};
}

// Weight gradient A: grad_output[pixel][o*S + t], o output field. Steps: PixelRun, decoded once per step.
struct WeightGradOutputRows {
  static constexpr bool kAsync = false;
  using Row = int;  // output field, -1 past the last
  using Step = PixelRun;
  const uint16_t* dy;
  Strides4 strides;
  ConvShape shape;
  PixelGrid pixels;
  FastDiv order;
  int64_t pixel_count;
  int m_size;

  __device__ Step first_step(int64_t kk) const { return pixel_run(kk, order, pixels); }
  __device__ void advance(Step& step, int by) const { step = pixel_run(step.kk + by, order, pixels); }

  __device__ Row row(int64_t o, const GroupTables&) const { return o < m_size ? static_cast<int>(o) : -1; }

  __device__ uint4 gather(Row o, const PixelRun& run, const GroupTables&) const {
    uint16_t v[8] = {};
    if (o >= 0) {
      Pixel px = run.first;
      const int64_t channel = o * shape.group_order + run.t;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        if (run.pixel + e < pixel_count) v[e] = read_bits(dy + tensor_offset(strides, px, channel));
        px = next_pixel(px, pixels);
      }
    }
    return pack(v);
  }
};

// Weight gradient B: X~[(pixel, t)][n], n = (i*S_in + u, p, q) an element of the base weight.
struct WeightGradInputRows {
  static constexpr bool kAsync = false;
  struct Row {
    ChannelTap base;
    bool valid;
  };
  const uint16_t* x;
  Strides4 strides;
  ConvShape shape;
  PixelGrid pixels;
  FastDiv order;
  int64_t pixel_count;
  int n_size;

  __device__ Row row(int64_t n, const GroupTables&) const {
    return {channel_tap_of(static_cast<int>(n), static_cast<int>(shape.kernel_size)), n < n_size};
  }

  __device__ uint4 gather(const Row& r, const PixelRun& run, const GroupTables& g) const {
    uint16_t v[8] = {};
    if (r.valid) {
      const ChannelTap source = weight_grad_source(shape, g, run.t, r.base);  // weight_grad_input_offset's
      Pixel px = run.first;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        if (run.pixel + e < pixel_count) {
          const int64_t offset = forward_input_offset(shape, strides, px, source);
          if (offset >= 0) v[e] = read_bits(x + offset);
        }
        px = next_pixel(px, pixels);
      }
    }
    return pack(v);
  }
};

// y[m][n] = sum_kk X[m][kk] W~[n][kk] + bias[n / S]
template <typename T>
struct Forward {
  using ASide = ChannelsLastRows<false>;
  using BSide = ForwardWeightRows;
  ASide a;
  BSide b;
  const T* bias;  // nullptr without bias
  T* y;
  Strides4 ys;
  PixelGrid pixels;
  int64_t m_size;
  int n_size, k_size, group_order;

  __device__ ReductionRange k_range(int) const { return {0, k_size}; }
  __device__ int64_t row(int64_t m, int) const { return tensor_offset(ys, pixel_of(m, pixels), 0); }
  __device__ void store(int64_t row, int n, float acc) const {
    if (bias != nullptr) acc += static_cast<float>(bias[n / group_order]);
    y[row + n * ys.c] = T(acc);
  }
};

// dx[m][n] = sum_kk dY[m][kk] W~[oc][(n, a, b)]
template <typename T>
struct InputGrad {
  using ASide = ChannelsLastRows<true>;
  using BSide = InputGradWeightRows;
  ASide a;
  BSide b;
  T* dx;
  Strides4 dxs;
  PixelGrid pixels;
  int64_t m_size;
  int n_size, k_size;

  __device__ ReductionRange k_range(int) const { return {0, k_size}; }
  __device__ int64_t row(int64_t m, int) const { return tensor_offset(dxs, pixel_of(m, pixels), 0); }
  __device__ void store(int64_t row, int n, float acc) const { dx[row + n * dxs.c] = T(acc); }
};

// Partial dw[o][n] over split z's part of the reduction, into workspace[z][o][n].
struct WeightGrad {
  using ASide = WeightGradOutputRows;
  using BSide = WeightGradInputRows;
  ASide a;
  BSide b;
  float* workspace;
  int64_t k_size;
  int m_size, n_size;

  __device__ ReductionRange k_range(int z) const {
    return split_reduction(k_size, kCuteWeightGradChunk, static_cast<int>(gridDim.z), z);
  }
  __device__ int64_t row(int64_t m, int z) const { return (int64_t(z) * m_size + m) * n_size; }
  __device__ void store(int64_t row, int n, float acc) const { workspace[row + n] = acc; }
};

template <class Cfg, class P>
cudaError_t launch(const P& p, int splits, cudaStream_t stream) {
  const int64_t m_tiles = (p.m_size + Cfg::kBM - 1) / Cfg::kBM;
  const int64_t n_tiles = (int64_t(p.n_size) + Cfg::kBN - 1) / Cfg::kBN;
  if (m_tiles == 0 || n_tiles == 0) return cudaSuccess;
  if (m_tiles > INT_MAX || n_tiles > 65535 || splits > 65535) return cudaErrorInvalidValue;
  const auto kernel = cute_gemm<Cfg, P>;
  const cudaError_t status =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (status != cudaSuccess) return status;
  const dim3 grid(static_cast<unsigned>(m_tiles), static_cast<unsigned>(n_tiles), static_cast<unsigned>(splits));
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p, group_tables(p.a.shape.group_order));
  return cudaGetLastError();
}

// Calls body(T{}) with the cutlass element type of a 16-bit kind.
template <class Body>
cudaError_t with_type(FloatKind kind, Body body) {
  switch (kind) {
    case FloatKind::kHalf: return body(cutlass::half_t{});
    case FloatKind::kBFloat16: return body(cutlass::bfloat16_t{});
    default: return cudaErrorInvalidValue;
  }
}

const uint16_t* bits(const void* p) { return static_cast<const uint16_t*>(p); }

}  // namespace

bool cute_vectorizable(const void* data, const Strides4& s, int64_t channels) {
  return s.c == 1 && channels % 8 == 0 && s.n % 8 == 0 && s.h % 8 == 0 && s.w % 8 == 0 &&
         reinterpret_cast<uintptr_t>(data) % 16 == 0;
}

cudaError_t launch_cute_group_conv2d(const void* input, const Strides4& input_strides, const void* weight,
                                     const void* bias, void* output, const Strides4& output_strides,
                                     const ConvShape& shape, FloatKind kind, cudaStream_t stream) {
  const int channels = static_cast<int>(shape.in_channels());
  const int k_size = static_cast<int>(channels * shape.kernel_size * shape.kernel_size);
  const int n_size = static_cast<int>(shape.out_channels());
  const int64_t m_size = shape.batch * shape.out_h * shape.out_w;
  const PixelGrid pixels{FastDiv(shape.out_h), FastDiv(shape.out_w)};
  return with_type(kind, [&](auto type) {
    using T = decltype(type);
    const Forward<T> p{{bits(input), input_strides, shape, pixels, m_size, k_size, channels},
                       {bits(weight), shape, n_size, k_size, channels},
                       static_cast<const T*>(bias), static_cast<T*>(output), output_strides, pixels, m_size, n_size,
                       k_size, static_cast<int>(shape.group_order)};
    return launch<Config<T, 128, 128>>(p, 1, stream);
  });
}

cudaError_t launch_cute_group_conv2d_input_grad(const void* grad_output, const Strides4& grad_output_strides,
                                                const void* weight, void* grad_input,
                                                const Strides4& grad_input_strides, const ConvShape& shape,
                                                FloatKind kind, cudaStream_t stream) {
  const int channels = static_cast<int>(shape.out_channels());
  const int k_size = static_cast<int>(channels * shape.kernel_size * shape.kernel_size);
  const int n_size = static_cast<int>(shape.in_channels());
  const int64_t m_size = shape.batch * shape.in_h * shape.in_w;
  const PixelGrid pixels{FastDiv(shape.in_h), FastDiv(shape.in_w)};
  return with_type(kind, [&](auto type) {
    using T = decltype(type);
    const InputGrad<T> p{{bits(grad_output), grad_output_strides, shape, pixels, m_size, k_size, channels},
                         {bits(weight), shape, n_size, k_size, channels},
                         static_cast<T*>(grad_input), grad_input_strides, pixels, m_size, n_size, k_size};
    return launch<Config<T, 128, 128>>(p, 1, stream);
  });
}

cudaError_t launch_cute_group_conv2d_weight_grad(const void* grad_output, const Strides4& grad_output_strides,
                                                 const void* input, const Strides4& input_strides, float* workspace,
                                                 int splits, const ConvShape& shape, FloatKind kind,
                                                 cudaStream_t stream) {
  const int m_size = static_cast<int>(shape.out_fields);
  const int n_size = static_cast<int>(shape.in_channels() * shape.kernel_size * shape.kernel_size);
  const int64_t pixel_count = shape.batch * shape.out_h * shape.out_w;
  const PixelGrid pixels{FastDiv(shape.out_h), FastDiv(shape.out_w)};
  const FastDiv order(shape.group_order);
  const WeightGrad p{{bits(grad_output), grad_output_strides, shape, pixels, order, pixel_count, m_size},
                     {bits(input), input_strides, shape, pixels, order, pixel_count, n_size},
                     workspace, weight_grad_reduction_size(shape, kCuteWeightGradChunk), m_size, n_size};
  // the output fields are few (M): 64-row tiles waste less of the atoms than 128-row ones
  return with_type(kind, [&](auto type) {
    return launch<Config<decltype(type), kCuteWeightGradTileM, kCuteWeightGradTileN>>(p, splits, stream);
  });
}

}  // namespace ger_kernels

#endif  // GER_KERNELS_CUTE

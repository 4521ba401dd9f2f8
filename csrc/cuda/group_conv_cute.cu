// CuTe tensor-core implicit GEMMs of the fused group convolution (float16/bfloat16, sm_80 and newer), with the
// index math of csrc/implicit_gemm.h. A block computes a kBM x kBN tile of C[m][n] = sum_kk A[m][kk] B[n][kk]:
//   - 8 warps, each repeating SM80's mma.sync 16x8x16 atom (float accumulation) over its part of the tile;
//   - operand tiles in shared memory, kStages deep, XOR-swizzled so that ldmatrix reads them without bank
//     conflicts: reduction-major rows of kBK = 32 elements, or column-major, 8 reduction positions of 64 rows
//     or columns per swizzle atom, read with ldmatrix.trans (the weight of forward and input gradient, both
//     operands of the channels-last weight gradient);
//   - an operand side is either copied with cp.async in 16-byte chunks, or gathered element by element into
//     registers, its global loads in flight during the math of a step and stored to shared memory after it.
//     Copied: the activations of forward and input gradient (8 consecutive channels of a channels-last tensor,
//     zero-filled in the padding), and their weight, from a permuted copy of w made before the GEMM
//     (weight_copy_source: for one reduction position and one group element, 8 consecutive fields are
//     contiguous); both operands of the weight gradient of channels-last tensors (cute_weight_grad).
//     Gathered: both operands of the weight gradient of other tensors (cute_gemm<..., WeightGrad>).
// Forward and input gradient order a tile's columns by group element, then field (grouped_column), so that a
// chunk of B is 8 fields of one element; the epilogue puts the tile back in channel order through shared memory
// and writes whole rows. Reduction orders: forward and input gradient tap-major (tap_major_channel_tap_of: a
// 16-byte chunk of A is one tap and 8 channels); the weight gradients split their pixels over the grid
// (split-K), each part written to its own workspace slice, which the caller adds in order: per tap over segments
// of pixels (cute_weight_grad), or (pixel, t) in chunks of 32 pixels of one t (weight_grad_reduction).
#if GER_KERNELS_CUTE

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "group_conv_cute.h"

namespace ger_kernels {
namespace {

using namespace cute;

template <typename T> struct Sm80Mma;
template <> struct Sm80Mma<cutlass::half_t> { using type = SM80_16x8x16_F32F16F16F32_TN; };
template <> struct Sm80Mma<cutlass::bfloat16_t> { using type = SM80_16x8x16_F32BF16BF16F32_TN; };

// kColumnMajorB: B tiles are stored column by column (8 consecutive n of one kk per 16-byte chunk), else row by
// row (8 consecutive kk of one n); kColumnMajorA likewise for A (8 consecutive m of one kk).
template <typename T_, int kBM_, int kBN_, bool kColumnMajorB_ = false, bool kColumnMajorA_ = false>
struct Config {
  using T = T_;
  static constexpr int kBM = kBM_, kBN = kBN_, kBK = 32, kStages = 3, kThreads = 256;
  static constexpr bool kColumnMajorA = kColumnMajorA_, kColumnMajorB = kColumnMajorB_;
  static constexpr int kChunk = 8;  // 16-bit elements per 16-byte chunk
  static constexpr int kWarpsM = kBM >= 128 ? 4 : 2, kWarpsN = kThreads / 32 / kWarpsM;
  // 8 rows of 32 elements (64 bytes), the 16-byte chunks of row r XOR-ed with bits 1-2 of r.
  using RowAtom = decltype(composition(Swizzle<2, 3, 3>{}, Layout<Shape<_8, Int<kBK>>, Stride<Int<kBK>, _1>>{}));
  // 8 columns of 64 elements (128 bytes), the 16-byte chunks of column c XOR-ed with bits 0-2 of c.
  using ColumnAtom = decltype(composition(Swizzle<3, 3, 3>{}, Layout<Shape<_64, _8>, Stride<_1, _64>>{}));
  using SmemA = decltype(tile_to_shape(std::conditional_t<kColumnMajorA, ColumnAtom, RowAtom>{},
                                       Shape<Int<kBM>, Int<kBK>, Int<kStages>>{}));
  using SmemB = decltype(tile_to_shape(std::conditional_t<kColumnMajorB, ColumnAtom, RowAtom>{},
                                       Shape<Int<kBN>, Int<kBK>, Int<kStages>>{}));
  // kWarpsM x kWarpsN warps; each warp's atoms cover 16 columns per k step, so that one ldmatrix.x4 loads them.
  using Mma = decltype(make_tiled_mma(typename Sm80Mma<T>::type{}, Layout<Shape<Int<kWarpsM>, Int<kWarpsN>, _1>>{},
                                     Tile<Int<16 * kWarpsM>, Int<16 * kWarpsN>, _16>{}));
  using LoadFragmentA = Copy_Atom<std::conditional_t<kColumnMajorA, SM75_U16x8_LDSM_T, SM75_U32x4_LDSM_N>, T>;
  using LoadFragmentB = Copy_Atom<std::conditional_t<kColumnMajorB, SM75_U16x8_LDSM_T, SM75_U32x4_LDSM_N>, T>;
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

  // the rows of block tile `tile`; the reduction position is the caller's Step
  __device__ Loader(const Side& side, int64_t tile, int64_t, const GroupTables& g) {
#pragma unroll
    for (int j = 0; j < Map::kCount; ++j) rows[j] = side.row(tile * kRows + Map::row(j), g);
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

// The weight of forward and input gradient, copied with cp.async from its permuted copy (WeightCopyColumns) into
// a column-major B tile whose kBN columns are in grouped order (grouped_column: tile_fields fields of each group
// element). Chunk q = thread + j*kThreads is columns 8*(q % kPerK) .. +7 (8 fields of one element) at
// reduction position q / kPerK of the step: a thread keeps its columns and walks its kCount positions with
// cursors of its own, advanced by kBK at each fetch (the steps are fetched in order).
// The reduction channels are a multiple of 8 (the A side's condition) and the positions start at a multiple of
// 8 and move by multiples of 8, so channel % G' (G' = S_in for the forward, S for the input gradient, both
// dividing 8) is the same at every position of a thread: its CopyRowTerms are decoded once.
template <class Cfg, class Side>
struct ColumnLoader {
  static constexpr int kPerK = Cfg::kBN / Cfg::kChunk;         // chunks per reduction position
  static constexpr int kKPerPass = Cfg::kThreads / kPerK;     // reduction positions per pass of the block
  static constexpr int kCount = Cfg::kBK / kKPerPass;
  static_assert(Cfg::kColumnMajorB && Cfg::kThreads % kPerK == 0 && kCount * kKPerPass == Cfg::kBK &&
                    kKPerPass % 8 == 0, "chunks do not divide among threads");
  const uint16_t* column_data;  // the copy at the thread's first field; nullptr past the last field
  CopyRowTerms terms;
  TapMajorCursor steps[kCount];

  __device__ static int column() { return threadIdx.x % kPerK * Cfg::kChunk; }
  __device__ static int position(int j) { return threadIdx.x / kPerK + j * kKPerPass; }

  __device__ ColumnLoader(const Side& side, int64_t tile, int64_t first_kk, const GroupTables& g) {
    const GroupedColumn col = grouped_column(column(), static_cast<int>(tile) * side.tile_fields, side.tile_fields);
    column_data = col.field < side.fields ? side.data + col.field : nullptr;
    const int inner = static_cast<int>(first_kk + position(0)) & side.inner_mask;
    terms = Side::kInputGrad ? copy_row_terms(side.shape, g, inner, col.element)
                             : copy_row_terms(side.shape, g, col.element, inner);
    const int k = static_cast<int>(side.shape.kernel_size);
#pragma unroll
    for (int j = 0; j < kCount; ++j) {
      const int64_t kk = first_kk + position(j);
      steps[j] = {kk, tap_major_channel_tap_of(static_cast<int>(kk), side.channels, k)};
    }
  }

  template <class Step, class Stage>
  __device__ void fetch(const Side& side, const Step&, Stage&& stage, const GroupTables&) {
    const int k = static_cast<int>(side.shape.kernel_size);
#pragma unroll
    for (int j = 0; j < kCount; ++j) {
      const ChannelTap& at = steps[j].at;
      const bool valid = column_data != nullptr && steps[j].kk < side.k_size;
      const uint16_t* src = side.data;
      if (valid) {
        const int row =
            weight_copy_row(terms, side.rows_per_tap, side.s_in, at.channel >> side.inner_shift, at.a, at.b);
        src = column_data + int64_t(row) * side.stride;
      }
      SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>::copy(
          *reinterpret_cast<const cute::uint128_t*>(src),
          *reinterpret_cast<cute::uint128_t*>(&stage(column(), position(j))), valid);
      steps[j].advance(Cfg::kBK, side.channels, k);
    }
  }

  template <class Stage>
  __device__ void commit(Stage&&) const {}
};

// Forward and input gradient: the tile in shared memory in channel order (row m, column channel - first
// channel, with bias), then each row's channels written in chunks of 8 (one 16-byte store where the output is
// cute_vectorizable). `tile` reuses the operand stages, which every warp is done with.
struct GroupedOutput {
  uint16_t* data;
  const uint16_t* bias;  // nullptr without bias
  Strides4 strides;
  PixelGrid pixels;
  int64_t m_size;
  int channels, fields, group, tile_fields;
  bool vectorized;

  template <class Cfg, class Acc, class Coords>
  __device__ void store(const Acc& acc, const Coords& coords, typename Cfg::T* tile, int64_t m0,
                        int tile_index) const {
    using T = typename Cfg::T;
    constexpr int kLd = Cfg::kBN + Cfg::kChunk;  // padded rows of 16-byte multiples
    static_assert(Cfg::kBM * kLd * int(sizeof(T)) <= Cfg::kSmemBytes, "the output tile does not fit");
    const int first_field = tile_index * tile_fields;
    __syncthreads();
#pragma unroll
    for (int i = 0; i < size(acc); ++i) {
      const GroupedColumn col = grouped_column(get<1>(coords(i)), first_field, tile_fields);
      float value = acc(i);
      if (bias != nullptr && col.field < fields) {
        value += static_cast<float>(reinterpret_cast<const T*>(bias)[col.field]);
      }
      tile[get<0>(coords(i)) * kLd + (col.field - first_field) * group + col.element] = T(value);
    }
    __syncthreads();
    constexpr int kPerRow = Cfg::kBN / Cfg::kChunk, kPerThread = Cfg::kBM * kPerRow / Cfg::kThreads;
    static_assert(kPerThread * Cfg::kThreads == Cfg::kBM * kPerRow, "chunks do not divide among threads");
    const int first_channel = first_field * group;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int q = threadIdx.x + j * Cfg::kThreads, r = q / kPerRow, c = q % kPerRow * Cfg::kChunk;
      const int64_t m = m0 + r;
      const int channel = first_channel + c;
      if (m >= m_size || channel >= channels) continue;
      T* dst = reinterpret_cast<T*>(data) + tensor_offset(strides, pixel_of(m, pixels), channel);
      const T* src = tile + r * kLd + c;
      if (vectorized) {
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
      } else {
        for (int e = 0; e < Cfg::kChunk && channel + e < channels; ++e) dst[e * strides.c] = src[e];
      }
    }
  }
};

// The multistage main loop of the kernels, over k_tiles reduction steps: fetch(stage) issues the global reads of
// the next step for a stage (cp.async, or loads into registers), commit(stage) stores what it loaded into
// registers to that stage after the math of the current step, after_step(stage) runs after the math of each step
// (of `stage`).
template <class Cfg, class SmemA, class SmemB, class Acc, class Fetch, class Commit, class AfterStep>
__device__ __forceinline__ void main_loop(const SmemA& sA, const SmemB& sB, Acc& acc, int k_tiles, Fetch&& fetch,
                                          Commit&& commit, AfterStep&& after_step) {
  typename Cfg::Mma mma;
  auto thread_mma = mma.get_slice(threadIdx.x);
  Tensor fragment_a = thread_mma.partition_fragment_A(sA(_, _, 0));  // (MMA, MMA_M, MMA_K)
  Tensor fragment_b = thread_mma.partition_fragment_B(sB(_, _, 0));  // (MMA, MMA_N, MMA_K)
  auto load_a = make_tiled_copy_A(typename Cfg::LoadFragmentA{}, mma);
  auto load_b = make_tiled_copy_B(typename Cfg::LoadFragmentB{}, mma);
  auto thread_load_a = load_a.get_slice(threadIdx.x);
  auto thread_load_b = load_b.get_slice(threadIdx.x);
  Tensor smem_a = thread_load_a.partition_S(sA);  // (CPY, CPY_M, CPY_K, stage)
  Tensor smem_b = thread_load_b.partition_S(sB);
  Tensor view_a = thread_load_a.retile_D(fragment_a);
  Tensor view_b = thread_load_b.retile_D(fragment_b);
#pragma unroll
  for (int stage = 0; stage < Cfg::kStages - 1; ++stage) {
    if (stage < k_tiles) {
      fetch(stage);
      commit(stage);
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
    if (next < k_tiles) commit(next_stage);
    after_step(stage);
  }
  cp_async_wait<0>();
}

// The block's operand stages in dynamic shared memory, (rows, kBK, stage) each.
template <class Cfg>
__device__ auto operand_stages(unsigned char* smem) {
  using T = typename Cfg::T;
  return cute::make_tuple(
      make_tensor(make_smem_ptr(reinterpret_cast<T*>(smem)), typename Cfg::SmemA{}),
      make_tensor(make_smem_ptr(reinterpret_cast<T*>(smem) + cosize_v<typename Cfg::SmemA>), typename Cfg::SmemB{}));
}

// The accumulator tile of a thread, and the (m, n) of each of its elements.
template <class Cfg>
__device__ auto accumulator_tile() {
  typename Cfg::Mma mma;
  return cute::make_tuple(
      partition_fragment_C(mma, Shape<Int<Cfg::kBM>, Int<Cfg::kBN>>{}),
      mma.get_slice(threadIdx.x).partition_C(make_identity_tensor(Shape<Int<Cfg::kBM>, Int<Cfg::kBN>>{})));
}

template <class Cfg, class P>
__global__ void __launch_bounds__(Cfg::kThreads) cute_gemm(P p, GroupTables tables) {
  using T = typename Cfg::T;
  extern __shared__ __align__(128) unsigned char smem[];
  // in shared memory: indexed per element below, which a kernel parameter would put in local memory
  __shared__ GroupTables g;
  if (threadIdx.x == 0) g = tables;
  __syncthreads();
  auto [sA, sB] = operand_stages<Cfg>(smem);

  const int64_t m0 = int64_t(blockIdx.x) * Cfg::kBM;
  const ReductionRange range = p.k_range(blockIdx.z);
  const int k_tiles = static_cast<int>((range.end - range.begin + Cfg::kBK - 1) / Cfg::kBK);
  using BSide = typename P::BSide;
  Loader<Cfg, Cfg::kBM, typename P::ASide> a(p.a, blockIdx.x, range.begin, g);
  std::conditional_t<Cfg::kColumnMajorB, ColumnLoader<Cfg, BSide>, Loader<Cfg, Cfg::kBN, BSide>> b(
      p.b, blockIdx.y, range.begin, g);
  auto [acc, coords] = accumulator_tile<Cfg>();
  clear(acc);

  // the steps are fetched in order: the thread's position moves by kBK after each
  typename P::ASide::Step step = p.a.first_step(range.begin + ChunkMap<Cfg, Cfg::kBM>::col());
  main_loop<Cfg>(
      sA, sB, acc, k_tiles,
      [&](int stage) {
        a.fetch(p.a, step, sA(_, _, stage), g);
        b.fetch(p.b, step, sB(_, _, stage), g);
        p.a.advance(step, Cfg::kBK);
      },
      [&](int stage) {
        a.commit(sA(_, _, stage));
        b.commit(sB(_, _, stage));
      },
      [](int) {});

  if constexpr (P::kGroupedColumns) {
    p.out.template store<Cfg>(acc, coords, reinterpret_cast<T*>(smem), m0, blockIdx.y);
  } else {
    const int n0 = blockIdx.y * Cfg::kBN;
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

// The weight of forward (kInputGrad false) or input gradient from its permuted copy (implicit_gemm.h): a chunk
// is 8 fields of one group element, at copy row weight_copy_row(terms, rows_per_tap, s_in, channel >> inner_shift,
// a, b) for reduction position (tap (a, b), channel) (tap-major). Read by ColumnLoader.
template <bool kInputGrad_>
struct WeightCopyColumns {
  static constexpr bool kInputGrad = kInputGrad_;
  const uint16_t* data;  // weight_copy_numel(shape, kInputGrad) elements, 16-byte aligned
  ConvShape shape;
  int64_t stride;          // weight_copy_stride
  int fields;              // per copy row: C_out (forward) or C_in
  int tile_fields;         // per block tile: kBN / G, G = S (forward) or S_in
  int channels, k_size;    // reduction: channels per tap, channels * k * k
  int rows_per_tap, s_in;  // C_in (forward) or C_out; S_in
  int inner_mask, inner_shift;  // channel = outer * G' + inner: G' - 1 and log2 G', G' = S_in (forward) or S
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

// Forward (kInputGrad false): y[m][channel] = sum_kk X[m][kk] W~[channel][kk] + bias[field], tile columns in
// grouped order (G = S). Input gradient: dx[m][channel] = sum_kk dY[m][kk] W~[oc][(channel, a, b)], grouped
// order G = S_in.
template <bool kInputGrad>
struct GroupedConv {
  static constexpr bool kGroupedColumns = true;
  using ASide = ChannelsLastRows<kInputGrad>;
  using BSide = WeightCopyColumns<kInputGrad>;
  ASide a;
  BSide b;
  GroupedOutput out;
  int64_t m_size;
  int k_size;

  __device__ ReductionRange k_range(int) const { return {0, k_size}; }
  int64_t column_tiles() const { return (b.fields + b.tile_fields - 1) / b.tile_fields; }
};
using Forward = GroupedConv<false>;
using InputGrad = GroupedConv<true>;

// Partial dw[o][n] over split z's part of the reduction, into workspace[z][o][n].
struct WeightGrad {
  static constexpr bool kGroupedColumns = false;
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
  int64_t column_tiles() const { return (n_size + kCuteWeightGradTileN - 1) / kCuteWeightGradTileN; }
};

// Weight gradient of channels-last grad_output and input (both cute_vectorizable): for each tap (a, b), the GEMM
// dW~[n][c] = sum_p dY[p][n] X[p shifted by (a, b)][c] (rows n = o*S + t: output channels; columns c: input
// channels; reduction: the output pixels of the block's split), folded into the split's workspace slice
// (weight_grad_fold_offset). Both operands are 16-byte chunks of 8 channels of one pixel, copied with cp.async
// into column-major tiles (ChunkColumns). A block walks its pixels in segments of kWeightGradSegment, each once
// per tap, folding the segment's sum of a tap when it is done (SegmentTapStep). Its tile holds whole fields of
// rows (kBM a multiple of S) and of columns (kBN of S_in), so the workspace elements its folds add to are its
// own: it folds in phases whose adds go to distinct elements (weight_grad_fold_phase), with a barrier in between,
// in a fixed order: deterministic, without atomics. The workspace is zeroed before.
struct WeightGradChannels {
  const uint16_t* dy;
  const uint16_t* x;
  float* workspace;  // [split][element of dw]
  Strides4 dys, xs;
  ConvShape shape;
  PixelGrid pixels;
  int64_t pixel_count, split_pixels, weight_numel;  // split_pixels: a multiple of kBK
  int rows, columns;                               // output channels, input channels
  int order_shift, s_in_shift;                     // log2 S, log2 S_in
};

constexpr int kWeightGradSegment = 4096;  // pixels summed per tap between two folds, a multiple of kBK
// dynamic shared memory of cute_weight_grad past the operand stages: the float tile of a fold
template <class Cfg>
constexpr int kWeightGradFoldBytes = Cfg::kBM * Cfg::kBN * int(sizeof(float));

// How the threads share the 16-byte chunks of a column-major kRows x kBK tile: chunk q = thread + j*kThreads is
// rows 8*(q % kPerK) .. +7 at reduction position q / kPerK. Both operands of WeightGradChannels have 128 rows:
// a thread's chunks of A and B are at the same positions (one pixel decode serves both).
template <class Cfg, int kRows>
struct ChunkColumns {
  static constexpr int kPerK = kRows / Cfg::kChunk, kKPerPass = Cfg::kThreads / kPerK;
  static constexpr int kCount = Cfg::kBK / kKPerPass;
  static_assert(Cfg::kThreads % kPerK == 0 && kCount * kKPerPass == Cfg::kBK, "chunks do not divide among threads");
  __device__ static int row() { return threadIdx.x % kPerK * Cfg::kChunk; }
  __device__ static int position(int j) { return threadIdx.x / kPerK + j * kKPerPass; }
};

template <class Cfg, class StageA, class StageB>
__device__ __forceinline__ void fetch_weight_grad(const WeightGradChannels& p, const SegmentTapStep& at,
                                                  int64_t end, int m0, int c0, StageA&& a_stage, StageB&& b_stage) {
  using Chunks = ChunkColumns<Cfg, Cfg::kBM>;
  static_assert(Cfg::kBM == Cfg::kBN, "A and B chunks at the same positions");
  const int row = Chunks::row();
#pragma unroll
  for (int j = 0; j < Chunks::kCount; ++j) {
    const int64_t pixel = at.first + at.step * Cfg::kBK + Chunks::position(j);
    const bool in_range = pixel < end;  // within the segment: steps cover it, the last one up to `end`
    const Pixel px = in_range ? pixel_of(pixel, p.pixels) : Pixel{0, 0, 0};
    const bool a_valid = in_range && m0 + row < p.rows;
    const uint16_t* a_src = a_valid ? p.dy + tensor_offset(p.dys, px, m0 + row) : p.dy;
    const int64_t b_offset =
        in_range && c0 + row < p.columns ? forward_input_offset(p.shape, p.xs, px, {c0 + row, at.a, at.b}) : -1;
    SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>::copy(
        *reinterpret_cast<const cute::uint128_t*>(a_src),
        *reinterpret_cast<cute::uint128_t*>(&a_stage(row, Chunks::position(j))), a_valid);
    SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>::copy(
        *reinterpret_cast<const cute::uint128_t*>(p.x + (b_offset < 0 ? 0 : b_offset)),
        *reinterpret_cast<cute::uint128_t*>(&b_stage(row, Chunks::position(j))), b_offset >= 0);
  }
}

// Adds the block's dW~ tile of tap (a, b) to its workspace slice, through `tile` (kBM x kBN floats in shared
// memory, apart from the operand stages), in the phases of weight_grad_fold_phase.
template <class Cfg, class Acc, class Coords>
__device__ void fold_weight_grad(const WeightGradChannels& p, const Acc& acc, const Coords& coords, float* tile,
                                 int m0, int c0, int a, int b, const GroupTables& g) {
  // the last fold's reads of the tile are done: a reduction step, with its barrier, came in between
#pragma unroll
  for (int i = 0; i < size(acc); ++i) tile[get<0>(coords(i)) * Cfg::kBN + get<1>(coords(i))] = acc(i);
  float* slice = p.workspace + blockIdx.y * p.weight_numel;
  const int order = 1 << p.order_shift, s_mask = (1 << p.s_in_shift) - 1;
  uint32_t phase_of = 0;  // 4 bits per t
  int phases = 0;
  for (int t = 0; t < order; ++t) {
    const int phase = weight_grad_fold_phase(p.shape, g, t, a, b);
    phase_of |= uint32_t(phase) << (4 * t);
    phases = phase + 1 > phases ? phase + 1 : phases;
  }
  for (int phase = 0; phase < phases; ++phase) {
    __syncthreads();  // the tile is complete, and the adds of the last phase are visible to every thread
    for (int e = threadIdx.x; e < Cfg::kBM * Cfg::kBN; e += Cfg::kThreads) {
      const int n = m0 + e / Cfg::kBN, c = c0 + e % Cfg::kBN, t = n & (order - 1);
      if (n >= p.rows || c >= p.columns || int(phase_of >> (4 * t) & 15) != phase) continue;
      const CopyRowTerms terms = copy_row_terms(p.shape, g, t, c & s_mask);
      slice[weight_grad_fold_offset(p.shape, terms, n >> p.order_shift, c >> p.s_in_shift, a, b)] += tile[e];
    }
  }
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads) cute_weight_grad(WeightGradChannels p, GroupTables tables) {
  const int64_t begin = int64_t(blockIdx.y) * p.split_pixels;
  const int64_t end = begin + p.split_pixels < p.pixel_count ? begin + p.split_pixels : p.pixel_count;
  if (begin >= end) return;  // a split past the last pixel: the whole block
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ GroupTables g;
  if (threadIdx.x == 0) g = tables;
  __syncthreads();
  auto [sA, sB] = operand_stages<Cfg>(smem);
  const int column_tiles = (p.columns + Cfg::kBN - 1) / Cfg::kBN;
  const int m0 = blockIdx.x / column_tiles * Cfg::kBM, c0 = blockIdx.x % column_tiles * Cfg::kBN;
  const int k = static_cast<int>(p.shape.kernel_size);
  const int k_tiles = static_cast<int>(segment_tap_steps(begin, end, k, Cfg::kBK));
  auto [acc, coords] = accumulator_tile<Cfg>();
  clear(acc);
  // per stage: the tap a*k + b whose sum is complete after the stage's step (fold it), else -1; written when the
  // stage is fetched, read after its math (barriers in between)
  __shared__ int fold_tap[Cfg::kStages];
  SegmentTapStep fetched = SegmentTapStep::start(begin, end, kWeightGradSegment, Cfg::kBK);
  main_loop<Cfg>(
      sA, sB, acc, k_tiles,
      [&](int stage) {
        fetch_weight_grad<Cfg>(p, fetched, end, m0, c0, sA(_, _, stage), sB(_, _, stage));
        if (threadIdx.x == 0) fold_tap[stage] = fetched.folds() ? fetched.a * k + fetched.b : -1;
        fetched.advance(k, end, kWeightGradSegment, Cfg::kBK);
      },
      [](int) {},
      [&](int stage) {
        const int tap = fold_tap[stage];
        if (tap >= 0) {
          fold_weight_grad<Cfg>(p, acc, coords, reinterpret_cast<float*>(smem + Cfg::kSmemBytes), m0, c0, tap / k,
                                tap % k, g);
          clear(acc);
        }
      });
}

template <class Cfg, class P>
cudaError_t launch(const P& p, int splits, cudaStream_t stream) {
  const int64_t m_tiles = (p.m_size + Cfg::kBM - 1) / Cfg::kBM;
  const int64_t n_tiles = p.column_tiles();
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

int log2_of(int power_of_two) {
  int l = 0;
  while ((1 << l) < power_of_two) ++l;
  return l;
}

// Whether a block of the current device may have this much dynamic shared memory (sm_86 and sm_89: 99 KiB).
bool fits_shared_memory(int bytes) {
  int device = 0, limit = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess &&
         bytes <= limit;
}

// copy[index] = w[weight_copy_source(shape, input_grad, index)], 0 in the padding.
__global__ void permute_weight(const uint16_t* w, uint16_t* copy, ConvShape shape, bool input_grad, int64_t numel) {
  for (int64_t index = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; index < numel;
       index += int64_t(gridDim.x) * blockDim.x) {
    const int64_t from = weight_copy_source(shape, input_grad, index);
    copy[index] = from < 0 ? uint16_t(0) : w[from];
  }
}

cudaError_t copy_weight(const void* weight, void* copy, const ConvShape& shape, bool input_grad,
                        cudaStream_t stream) {
  const int64_t numel = weight_copy_numel(shape, input_grad);
  if (numel == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((numel + kThreads - 1) / kThreads, 4096));
  permute_weight<<<blocks, kThreads, 0, stream>>>(bits(weight), static_cast<uint16_t*>(copy), shape, input_grad,
                                                  numel);
  return cudaGetLastError();
}

}  // namespace

bool cute_vectorizable(const void* data, const Strides4& s, int64_t channels) {
  return s.c == 1 && channels % 8 == 0 && s.n % 8 == 0 && s.h % 8 == 0 && s.w % 8 == 0 &&
         reinterpret_cast<uintptr_t>(data) % 16 == 0;
}

namespace {

GroupedOutput grouped_output(void* data, const void* bias, const Strides4& strides, const PixelGrid& pixels,
                             int64_t m_size, int channels, int fields, int group, int tile_fields) {
  return {static_cast<uint16_t*>(data), bits(bias), strides, pixels, m_size, channels, fields, group, tile_fields,
          cute_vectorizable(data, strides, channels)};
}

}  // namespace

cudaError_t launch_cute_group_conv2d(const void* input, const Strides4& input_strides, const void* weight,
                                     void* weight_copy, const void* bias, void* output,
                                     const Strides4& output_strides, const ConvShape& shape, FloatKind kind,
                                     cudaStream_t stream) {
  const int channels = static_cast<int>(shape.in_channels());
  const int k_size = static_cast<int>(channels * shape.kernel_size * shape.kernel_size);
  const int group = static_cast<int>(shape.group_order), s_in = static_cast<int>(shape.in_orientations);
  const int64_t m_size = shape.batch * shape.out_h * shape.out_w;
  const PixelGrid pixels{FastDiv(shape.out_h), FastDiv(shape.out_w)};
  return with_type(kind, [&](auto type) {
    using Cfg = Config<decltype(type), 128, 128, true>;
    const int tile_fields = Cfg::kBN / group;
    const Forward p{{bits(input), input_strides, shape, pixels, m_size, k_size, channels},
                    {bits(weight_copy), shape, weight_copy_stride(shape, false), static_cast<int>(shape.out_fields),
                     tile_fields, channels, k_size, static_cast<int>(shape.in_fields), s_in, s_in - 1, log2_of(s_in)},
                    grouped_output(output, bias, output_strides, pixels, m_size, static_cast<int>(shape.out_channels()),
                                   static_cast<int>(shape.out_fields), group, tile_fields),
                    m_size, k_size};
    const cudaError_t status = copy_weight(weight, weight_copy, shape, false, stream);
    return status != cudaSuccess ? status : launch<Cfg>(p, 1, stream);
  });
}

cudaError_t launch_cute_group_conv2d_input_grad(const void* grad_output, const Strides4& grad_output_strides,
                                                const void* weight, void* weight_copy, void* grad_input,
                                                const Strides4& grad_input_strides, const ConvShape& shape,
                                                FloatKind kind, cudaStream_t stream) {
  const int channels = static_cast<int>(shape.out_channels());
  const int k_size = static_cast<int>(channels * shape.kernel_size * shape.kernel_size);
  const int group = static_cast<int>(shape.group_order), s_in = static_cast<int>(shape.in_orientations);
  const int64_t m_size = shape.batch * shape.in_h * shape.in_w;
  const PixelGrid pixels{FastDiv(shape.in_h), FastDiv(shape.in_w)};
  return with_type(kind, [&](auto type) {
    using Cfg = Config<decltype(type), 128, 128, true>;
    const int tile_fields = Cfg::kBN / s_in;
    const InputGrad p{{bits(grad_output), grad_output_strides, shape, pixels, m_size, k_size, channels},
                      {bits(weight_copy), shape, weight_copy_stride(shape, true), static_cast<int>(shape.in_fields),
                       tile_fields, channels, k_size, static_cast<int>(shape.out_fields), s_in, group - 1,
                       log2_of(group)},
                      grouped_output(grad_input, nullptr, grad_input_strides, pixels, m_size,
                                     static_cast<int>(shape.in_channels()), static_cast<int>(shape.in_fields), s_in,
                                     tile_fields),
                      m_size, k_size};
    const cudaError_t status = copy_weight(weight, weight_copy, shape, true, stream);
    return status != cudaSuccess ? status : launch<Cfg>(p, 1, stream);
  });
}

int64_t cute_weight_grad_tiles(const ConvShape& shape) {
  constexpr int kTile = kCuteWeightGradChannelsTile;
  return (shape.out_channels() + kTile - 1) / kTile * ((shape.in_channels() + kTile - 1) / kTile);
}

cudaError_t launch_cute_group_conv2d_weight_grad(const void* grad_output, const Strides4& grad_output_strides,
                                                 const void* input, const Strides4& input_strides, float* workspace,
                                                 int splits, const ConvShape& shape, FloatKind kind,
                                                 cudaStream_t stream) {
  const int64_t pixel_count = shape.batch * shape.out_h * shape.out_w;
  const PixelGrid pixels{FastDiv(shape.out_h), FastDiv(shape.out_w)};
  using ChannelsConfig =  // its shared memory: the same for both 16-bit types
      Config<cutlass::half_t, kCuteWeightGradChannelsTile, kCuteWeightGradChannelsTile, true, true>;
  if (cute_vectorizable(grad_output, grad_output_strides, shape.out_channels()) &&
      cute_vectorizable(input, input_strides, shape.in_channels()) &&
      fits_shared_memory(ChannelsConfig::kSmemBytes + kWeightGradFoldBytes<ChannelsConfig>)) {
    return with_type(kind, [&](auto type) {
      using Cfg = Config<decltype(type), kCuteWeightGradChannelsTile, kCuteWeightGradChannelsTile, true, true>;
      const int64_t numel = shape.filter().weight_numel();
      const int64_t per_split = ((pixel_count + splits - 1) / splits + Cfg::kBK - 1) / Cfg::kBK * Cfg::kBK;
      const WeightGradChannels p{bits(grad_output), bits(input), workspace, grad_output_strides, input_strides,
                                 shape, pixels, pixel_count, per_split, numel,
                                 static_cast<int>(shape.out_channels()), static_cast<int>(shape.in_channels()),
                                 log2_of(static_cast<int>(shape.group_order)),
                                 log2_of(static_cast<int>(shape.in_orientations))};
      const int64_t tiles = cute_weight_grad_tiles(shape);
      if (tiles > INT_MAX || splits > 65535) return cudaErrorInvalidValue;
      cudaError_t status = cudaMemsetAsync(workspace, 0, sizeof(float) * splits * numel, stream);
      if (status != cudaSuccess || tiles == 0 || pixel_count == 0) return status;  // no pixels: dw = 0
      const auto kernel = cute_weight_grad<Cfg>;
      constexpr int kSmemBytes = Cfg::kSmemBytes + kWeightGradFoldBytes<Cfg>;
      status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
      if (status != cudaSuccess) return status;
      const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(splits));
      kernel<<<grid, Cfg::kThreads, kSmemBytes, stream>>>(p, group_tables(shape.group_order));
      return cudaGetLastError();
    });
  }
  const int m_size = static_cast<int>(shape.out_fields);
  const int n_size = static_cast<int>(shape.in_channels() * shape.kernel_size * shape.kernel_size);
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

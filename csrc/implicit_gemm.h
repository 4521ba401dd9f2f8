// Index math of the implicit-GEMM group convolution (SPEC section 3), shared by the CUDA kernels
// (csrc/cuda/group_conv_kernels.cu) and the CPU test that runs it naively (tests/csrc/test_implicit_gemm.cpp).
//
// Each op is a GEMM whose operands are read in place, never materialized:
//   forward      y[m][n]  = sum_kk X[m][kk] * W~[n][kk]
//                m: output pixel (b, oh, ow); n: output channel o*S + t; kk = (c*k + a)*k + b, c = i*S_in + s
//   input grad   dx[m][n] = sum_kk dY[m][kk] * W~[oc][(n*k + a)*k + b]
//                m: input pixel (b, ih, iw); n: input channel; kk = (oc*k + a)*k + b
//   weight grad  dw[o][n] = sum_kk dY[o][kk] * X~[kk][n]
//                n = ((i*S_in + u)*k + p)*k + q: element of the base weight w; kk: (pixel, t), see weight_grad_reduction
// W~ is read from w through the group tables (expanded_weight_offset); the weight gradient sums the S
// transformed copies inside the reduction (weight_grad_input_offset). Offsets are int64 element offsets;
// -1 marks a zero (padding, or an input pixel that no output position reaches under the stride).
#pragma once

#include <algorithm>
#include <cstdint>

#include "conv_shape.h"
#include "group_tables.h"
#include "host_device.h"

namespace ger_kernels {

// Element strides of a 4-D tensor (B, C, H, W): any memory format, e.g. NCHW or channels_last.
struct Strides4 {
  int64_t n, c, h, w;
};

struct Pixel {
  int64_t n;
  int h, w;
};

// A reduction (or weight) index (channel*k + a)*k + b: a channel and a tap (a, b) of the k x k window.
struct ChannelTap {
  int channel, a, b;
};

// One step of the weight gradient's reduction: an output pixel index (b*out_h + oh)*out_w + ow and an element t.
struct PixelOrientation {
  int64_t pixel;
  int t;
};

// Division of an int64 n in [0, 2^63) by a fixed divisor d in [1, 2^31) as a multiply-high and shifts
// (Granlund and Montgomery, "Division by invariant integers using multiplication", PLDI 1994, figure 4.1,
// N = 64): the kernels' pixel decode without 64-bit division. The constructor runs on the host.
class FastDiv {
 public:
  FastDiv() = default;
  explicit FastDiv(int64_t d) : divisor_(d) {
    int l = 0;  // ceil(log2(d))
    while ((int64_t(1) << l) < d) ++l;
    magic_ = static_cast<uint64_t>(((static_cast<unsigned __int128>(1) << 64) * ((uint64_t(1) << l) - d)) / d + 1);
    shift1_ = l < 1 ? l : 1;
    shift2_ = l < 1 ? 0 : l - 1;
  }

  GER_HOST_DEVICE int64_t divisor() const { return divisor_; }

  GER_HOST_DEVICE int64_t div(int64_t n) const {
    const uint64_t u = static_cast<uint64_t>(n);
#if defined(__CUDA_ARCH__)
    const uint64_t t = __umul64hi(magic_, u);
#else
    const uint64_t t = static_cast<uint64_t>((static_cast<unsigned __int128>(magic_) * u) >> 64);
#endif
    return static_cast<int64_t>((t + ((u - t) >> shift1_)) >> shift2_);
  }

 private:
  int64_t divisor_ = 1;
  uint64_t magic_ = 1;
  int shift1_ = 0, shift2_ = 0;
};

// The pixels (b, h, w) of a (B, H, W) grid in row-major order m = (b*H + h)*W + w.
struct PixelGrid {
  FastDiv height, width;
};

GER_HOST_DEVICE Pixel pixel_of(int64_t m, const PixelGrid& grid) {
  const int64_t row = grid.width.div(m);  // b*H + h
  const int64_t n = grid.height.div(row);
  return {n, static_cast<int>(row - n * grid.height.divisor()), static_cast<int>(m - row * grid.width.divisor())};
}

GER_HOST_DEVICE ChannelTap channel_tap_of(int kk, int k) {
  return {kk / (k * k), (kk / k) % k, kk % k};
}

// The tap-major reduction order of the CuTe kernels' forward and input gradient: kk = (a*k + b)*channels + c.
// With channels a multiple of 8, 8 consecutive kk from a multiple of 8 are one tap and 8 consecutive channels:
// one 16-byte copy from a channels-last tensor (channel stride 1).
GER_HOST_DEVICE ChannelTap tap_major_channel_tap_of(int kk, int channels, int k) {
  const int tap = kk / channels;
  return {kk - tap * channels, tap / k, tap % k};
}

// A position kk of the tap-major order, moved forward without a division: what a kernel thread keeps across the
// reduction steps it visits in order. `at` is tap_major_channel_tap_of(kk, channels, k) (a >= k past the end).
struct TapMajorCursor {
  int64_t kk;
  ChannelTap at;

  GER_HOST_DEVICE void advance(int step, int channels, int k) {
    kk += step;
    at.channel += step;
    while (at.channel >= channels) {
      at.channel -= channels;
      if (++at.b == k) {
        at.b = 0;
        ++at.a;
      }
    }
  }
};

// The pixel after p in the row-major order of `grid`: pixel_of(m + 1) from p = pixel_of(m), without a division.
GER_HOST_DEVICE Pixel next_pixel(Pixel p, const PixelGrid& grid) {
  if (++p.w < grid.width.divisor()) return p;
  p.w = 0;
  if (++p.h < grid.height.divisor()) return p;
  p.h = 0;
  ++p.n;
  return p;
}

// Whether the spatial index arithmetic fits int (the kernels check it): padded sizes, stride and the
// dilated window below 2^30, so every row or column position below stays within (-2^30, 2^31).
inline bool fits_spatial(const ConvShape& s) {
  const int64_t limit = int64_t(1) << 30;
  return s.in_h + 2 * s.padding < limit && s.in_w + 2 * s.padding < limit && s.stride < limit &&
         s.dilation * (s.kernel_size - 1) < limit;
}

GER_HOST_DEVICE int64_t tensor_offset(const Strides4& s, const Pixel& p, int64_t channel) {
  return p.n * s.n + channel * s.c + p.h * s.h + p.w * s.w;
}

// Offset of W~[row][col] in the contiguous base weight w (C_out, C_in, S_in, k, k): row = o*S + t,
// col = (i*S_in + s, a, b); W~[o*S + t][i*S_in + s][a][b] = A_t(w[o][i][S_in == 1 ? 0 : T[t][s]])[a][b].
GER_HOST_DEVICE int64_t expanded_weight_offset(const ConvShape& shape, const GroupTables& tables, int row,
                                               const ChannelTap& col) {
  const int k = static_cast<int>(shape.kernel_size);
  const int s_in = static_cast<int>(shape.in_orientations);
  const int o = row / tables.order, t = row % tables.order;
  const int64_t i = col.channel / s_in;
  const int u = s_in == 1 ? 0 : tables.inv_mul[t][col.channel % s_in];
  int src_i, src_j;
  source_tap(tables.taps[t], k, col.a, col.b, src_i, src_j);
  return (((o * shape.in_fields + i) * s_in + u) * k + src_i) * k + src_j;
}

// The CuTe kernels' copies of the weight for forward and input gradient, which make the 8 elements of W~ that one
// 16-byte chunk of their B tile holds (one reduction position, one group element g, 8 consecutive fields)
// contiguous: w (C_out, C_in, S_in, k, k) permuted to
//   forward        wf[tap][i][u][o] = w[o][i][u][tap]   (rows (tap, i, u), C_out fields per row)
//   input gradient wb[tap][o][u][i] = w[o][i][u][tap]   (rows (tap, o, u), C_in fields per row)
// tap = a*k + b, each row zero-padded to weight_copy_stride fields (a multiple of 8: 16-byte aligned rows).
// W~[o*S + t][i*S_in + s][a][b] = w[o][i][u][A_t's source of (a, b)] with u = S_in == 1 ? 0 : T[t][s] is then
//   forward        wf[forward_weight_copy_row(t, (i*S_in + s, a, b)) * stride + o]
//   input gradient wb[input_grad_weight_copy_row(s, (o*S + t, a, b)) * stride + i]
GER_HOST_DEVICE int64_t weight_copy_fields(const ConvShape& shape, bool input_grad) {
  return input_grad ? shape.in_fields : shape.out_fields;
}

GER_HOST_DEVICE int64_t weight_copy_stride(const ConvShape& shape, bool input_grad) {
  return (weight_copy_fields(shape, input_grad) + 7) / 8 * 8;
}

GER_HOST_DEVICE int64_t weight_copy_numel(const ConvShape& shape, bool input_grad) {
  return shape.kernel_size * shape.kernel_size * (input_grad ? shape.out_fields : shape.in_fields) *
         shape.in_orientations * weight_copy_stride(shape, input_grad);
}

// The element of w at position `index` of a copy, -1 in the zero padding.
GER_HOST_DEVICE int64_t weight_copy_source(const ConvShape& shape, bool input_grad, int64_t index) {
  const int64_t stride = weight_copy_stride(shape, input_grad), taps = shape.kernel_size * shape.kernel_size;
  const int64_t field = index % stride, row = index / stride;
  if (field >= weight_copy_fields(shape, input_grad)) return -1;
  const int64_t u = row % shape.in_orientations, outer = row / shape.in_orientations;
  const int64_t rows_per_tap = input_grad ? shape.out_fields : shape.in_fields;
  const int64_t other = outer % rows_per_tap, tap = outer / rows_per_tap;
  const int64_t o = input_grad ? other : field, i = input_grad ? field : other;
  return ((o * shape.in_fields + i) * shape.in_orientations + u) * taps + tap;
}

// What a copy row depends on for group elements t (of the output) and s (of the input): the source tap of
// (a, b) under A_t is a*tap_a + b*tap_b + tap_0 (source_tap, flattened to src_i*k + src_j), and u as above.
// A kernel keeps a table of these per (t, s) and finds a row with a few multiply-adds.
struct CopyRowTerms {
  int tap_a, tap_b, tap_0, u;
};

GER_HOST_DEVICE CopyRowTerms copy_row_terms(const ConvShape& shape, const GroupTables& tables, int t, int s) {
  const int k = static_cast<int>(shape.kernel_size);
  const TapMap& m = tables.taps[t];
  return {m.a * k + m.c, m.b * k + m.d, (m.oi * k + m.oj) * (k - 1),
          shape.in_orientations == 1 ? 0 : tables.inv_mul[t][s]};
}

// Row (tap, outer, u) of a copy with rows_per_tap rows of `outer` per tap.
GER_HOST_DEVICE int weight_copy_row(const CopyRowTerms& terms, int rows_per_tap, int s_in, int outer, int a, int b) {
  return ((a * terms.tap_a + b * terms.tap_b + terms.tap_0) * rows_per_tap + outer) * s_in + terms.u;
}

// Forward: the row holding W~[o*S + t][ct] for every o (ct.channel = i*S_in + s).
GER_HOST_DEVICE int forward_weight_copy_row(const ConvShape& shape, const GroupTables& tables, int t,
                                            const ChannelTap& ct) {
  const int s_in = static_cast<int>(shape.in_orientations);
  return weight_copy_row(copy_row_terms(shape, tables, t, ct.channel % s_in), static_cast<int>(shape.in_fields),
                         s_in, ct.channel / s_in, ct.a, ct.b);
}

// Input gradient: the row holding W~[ct.channel][i*S_in + s][ct.a][ct.b] for every i (ct.channel = o*S + t).
GER_HOST_DEVICE int input_grad_weight_copy_row(const ConvShape& shape, const GroupTables& tables, int s,
                                               const ChannelTap& ct) {
  const int order = tables.order;
  return weight_copy_row(copy_row_terms(shape, tables, ct.channel % order, s), static_cast<int>(shape.out_fields),
                         static_cast<int>(shape.in_orientations), ct.channel / order, ct.a, ct.b);
}

// The CuTe weight gradient of channels-last tensors computes, per tap (a, b), dW~[o*S + t][c][a][b] =
// sum over output pixels of grad_output[pixel][o*S + t] * x[pixel shifted by (a, b)][c] (forward_input_offset),
// c = i*S_in + s, and folds it into the base weight gradient: it adds to dw at this offset, that of
// (o, i, u, A_t's source tap of (a, b)) with terms = copy_row_terms(shape, tables, t, s) (u = T[t][s]).
GER_HOST_DEVICE int64_t weight_grad_fold_offset(const ConvShape& shape, const CopyRowTerms& terms, int o, int i,
                                                int a, int b) {
  const int64_t taps = shape.kernel_size * shape.kernel_size;
  return ((o * shape.in_fields + i) * shape.in_orientations + terms.u) * taps + a * terms.tap_a + b * terms.tap_b +
         terms.tap_0;
}

// It adds the S rows o*S + t of one tap's dW~ in phases, a barrier between: t's phase is the number of t' < t with
// the same source tap of (a, b) (weight_grad_fold_offset's last term), so two rows of one phase add to different
// taps of dw, never to the same element. Phases: 1 + the largest phase (S for the center tap of an odd k).
GER_HOST_DEVICE int weight_grad_fold_tap(const ConvShape& shape, const GroupTables& tables, int t, int a, int b) {
  const CopyRowTerms terms = copy_row_terms(shape, tables, t, 0);
  return a * terms.tap_a + b * terms.tap_b + terms.tap_0;
}

GER_HOST_DEVICE int weight_grad_fold_phase(const ConvShape& shape, const GroupTables& tables, int t, int a, int b) {
  const int tap = weight_grad_fold_tap(shape, tables, t, a, b);
  int phase = 0;
  for (int earlier = 0; earlier < t; ++earlier) phase += weight_grad_fold_tap(shape, tables, earlier, a, b) == tap;
  return phase;
}

// Its reduction order for one block: pixels [begin, end) in segments of `segment` (a multiple of `step_pixels`),
// each segment once per tap (a, b) (a-major), in steps of step_pixels pixels (the last step of the last segment
// may pass `end`); the sum of one tap over one segment is folded after its last step. A cursor in that order:
struct SegmentTapStep {
  int64_t first;         // first pixel of the segment
  int a, b, step, steps;  // tap, step within the segment, steps of the segment

  GER_HOST_DEVICE static int steps_of(int64_t first, int64_t end, int segment, int step_pixels) {
    const int64_t pixels = end - first < segment ? end - first : segment;
    return static_cast<int>((pixels + step_pixels - 1) / step_pixels);
  }

  GER_HOST_DEVICE static SegmentTapStep start(int64_t begin, int64_t end, int segment, int step_pixels) {
    return {begin, 0, 0, 0, steps_of(begin, end, segment, step_pixels)};
  }

  GER_HOST_DEVICE bool folds() const { return step + 1 == steps; }  // the last step of (segment, tap)

  GER_HOST_DEVICE void advance(int k, int64_t end, int segment, int step_pixels) {
    if (++step < steps) return;
    step = 0;
    if (++b < k) return;
    b = 0;
    if (++a < k) return;
    a = 0;
    first += segment;
    steps = steps_of(first, end, segment, step_pixels);
  }
};

// The number of steps of that order: k*k times the steps over [begin, end).
GER_HOST_DEVICE int64_t segment_tap_steps(int64_t begin, int64_t end, int k, int step_pixels) {
  return int64_t(k) * k * ((end - begin + step_pixels - 1) / step_pixels);
}

// Column order of the CuTe forward and input-gradient tiles (whose B chunks are 8 fields of one group element):
// a tile of `fields` fields from `first_field` and all G group elements (G = S, or S_in for the input gradient)
// puts group element n / fields, field first_field + n % fields at column n, channel field*G + n / fields.
struct GroupedColumn {
  int field, element;
};

GER_HOST_DEVICE GroupedColumn grouped_column(int n, int first_field, int fields) {
  return {first_field + n % fields, n / fields};
}

// Forward im2col: offset of the input element read by output pixel `out` at (channel, a, b); -1 in the padding.
GER_HOST_DEVICE int64_t forward_input_offset(const ConvShape& shape, const Strides4& x, const Pixel& out,
                                             const ChannelTap& ct) {
  const int ih = out.h * static_cast<int>(shape.stride) - static_cast<int>(shape.padding) +
                 ct.a * static_cast<int>(shape.dilation);
  const int iw = out.w * static_cast<int>(shape.stride) - static_cast<int>(shape.padding) +
                 ct.b * static_cast<int>(shape.dilation);
  if (ih < 0 || ih >= shape.in_h || iw < 0 || iw >= shape.in_w) return -1;
  return tensor_offset(x, {out.n, ih, iw}, ct.channel);
}

// Transposed im2col: offset of grad_output[b][oc][oh][ow] with oh*stride = ih + padding - a*dilation (and the
// same for w) for input pixel `in` and ct = (oc, a, b); -1 where that position is not divisible by the stride
// or lies outside the output.
// Spatial sizes, padding, stride and dilation*(k-1) are below 2^30 (fits_spatial), so this is int arithmetic.
GER_HOST_DEVICE int64_t input_grad_output_offset(const ConvShape& shape, const Strides4& dy, const Pixel& in,
                                                 const ChannelTap& ct) {
  const int stride = static_cast<int>(shape.stride), padding = static_cast<int>(shape.padding);
  const int dilation = static_cast<int>(shape.dilation);
  const int th = in.h + padding - ct.a * dilation, tw = in.w + padding - ct.b * dilation;
  if (th < 0 || tw < 0) return -1;
  int oh = th, ow = tw;  // stride 1 (the common case) skips the divisions
  if (stride != 1) {
    if (th % stride != 0 || tw % stride != 0) return -1;
    oh = th / stride, ow = tw / stride;
  }
  if (oh >= shape.out_h || ow >= shape.out_w) return -1;
  return tensor_offset(dy, {in.n, oh, ow}, ct.channel);
}

// The weight gradient's reduction runs over output pixels in chunks of `chunk`, each chunk once per t:
// kk = ((pixel / chunk) * S + t) * chunk + pixel % chunk, so a tile of `chunk` consecutive kk has a single t.
GER_HOST_DEVICE PixelOrientation weight_grad_reduction(int64_t kk, const FastDiv& group_order, int chunk) {
  const int64_t step = kk / chunk, pixel_chunk = group_order.div(step);
  return {pixel_chunk * chunk + kk % chunk, static_cast<int>(step - pixel_chunk * group_order.divisor())};
}

// Length of that reduction: the output pixels rounded up to whole chunks, times S (pixels past the end read 0).
GER_HOST_DEVICE int64_t weight_grad_reduction_size(const ConvShape& shape, int chunk) {
  const int64_t pixels = shape.batch * shape.out_h * shape.out_w;
  return (pixels + chunk - 1) / chunk * chunk * shape.group_order;
}

struct ReductionRange {
  int64_t begin, end;
};

// Part z of a reduction of length k_size (a multiple of chunk) split into `splits` parts (split-K): consecutive
// chunk-aligned ranges that cover [0, k_size) once; trailing parts may be empty.
GER_HOST_DEVICE ReductionRange split_reduction(int64_t k_size, int chunk, int splits, int z) {
  const int64_t length = (k_size / chunk + splits - 1) / splits * chunk;
  const int64_t begin = z * length, end = begin + length;
  return {begin < k_size ? begin : k_size, end < k_size ? end : k_size};
}

// How many parts (split_reduction) a reduction of `length` steps is split into when `tiles` output tiles each
// run one block per part on `slots` concurrent blocks (blocks per SM x SMs): at most `max_splits` parts, each
// at least `min_length` steps long, at most eight waves of blocks; among those, the count with the least time
// counted as waves x steps per part (a last wave that leaves slots idle costs a whole wave), and the fewest
// parts among equals (each part adds a partial gradient to the workspace and to its final sum).
inline int reduction_split_count(int64_t tiles, int64_t length, int64_t slots, int64_t min_length,
                                 int64_t max_splits) {
  if (tiles <= 0 || length <= 0 || slots <= 0) return 1;
  const int64_t most =
      std::max<int64_t>(1, std::min({max_splits, length / min_length, (8 * slots + tiles - 1) / tiles}));
  int best = 1;
  int64_t best_cost = INT64_MAX;
  for (int64_t splits = 1; splits <= most; ++splits) {
    const int64_t per_part = (length + splits - 1) / splits, parts = (length + per_part - 1) / per_part;
    const int64_t cost = (tiles * parts + slots - 1) / slots * per_part;
    if (cost < best_cost) best = static_cast<int>(splits), best_cost = cost;
  }
  return best;
}

// Weight gradient, X~[kk][n]: the input element that meets grad_output[b][o*S + t][oh][ow] through the base
// weight element base = (i*S_in + u, p, q) in copy t: s = S_in == 1 ? 0 : t*u, (a, b) = A_t^-1's source of
// (p, q); -1 in the padding. dw[o][i][u][p][q] = sum over t and output pixels of grad_output times this.
// weight_grad_source gives that input channel and tap, the same for every pixel (a kernel decodes it once).
GER_HOST_DEVICE ChannelTap weight_grad_source(const ConvShape& shape, const GroupTables& tables, int t,
                                              const ChannelTap& base) {
  const int s_in = static_cast<int>(shape.in_orientations);
  const int i = base.channel / s_in;
  const int s = s_in == 1 ? 0 : tables.mul[t][base.channel % s_in];
  int a, b;
  source_tap(tables.taps[tables.inv[t]], static_cast<int>(shape.kernel_size), base.a, base.b, a, b);
  return {i * s_in + s, a, b};
}

GER_HOST_DEVICE int64_t weight_grad_input_offset(const ConvShape& shape, const GroupTables& tables, const Strides4& x,
                                                 const Pixel& out, int t, const ChannelTap& base) {
  return forward_input_offset(shape, x, out, weight_grad_source(shape, tables, t, base));
}

}  // namespace ger_kernels

// The index math of the CUDA implicit-GEMM kernels (csrc/implicit_gemm.h), run naively on the CPU: forward,
// input gradient and weight gradient summed over exactly the (m, n, kk) the kernels visit, through the same
// offset functions, compared in float64 with ATen's conv2d and convolution_backward on expand_filter(w)
// (weight gradient: expand_filter_backward of the dW~ that convolution_backward returns).
#include <torch/torch.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "implicit_gemm.h"

namespace {

using namespace ger_kernels;

int passed = 0, failed = 0;

enum class Layout { kContiguous, kChannelsLast, kStrided };

struct Case {
  int64_t order, in_orientations, kernel_size, stride, padding, dilation, in_h, in_w;
  Layout layout;
  int chunk;   // pixels per step of the weight gradient's reduction (the kernels use their BK: 16 or 32)
  int splits;  // parts of that reduction (split-K)
};

std::string describe(const Case& c) {
  const char* layouts[] = {"contiguous", "channels_last", "strided"};
  return "order " + std::to_string(c.order) + " S_in " + std::to_string(c.in_orientations) + " k " +
         std::to_string(c.kernel_size) + " stride " + std::to_string(c.stride) + " padding " +
         std::to_string(c.padding) + " dilation " + std::to_string(c.dilation) + " " + std::to_string(c.in_h) +
         "x" + std::to_string(c.in_w) + " " + layouts[static_cast<int>(c.layout)] + " chunk " +
         std::to_string(c.chunk) + " splits " + std::to_string(c.splits);
}

void expect_true(bool ok, const char* what, const Case& c) {
  ok ? ++passed : ++failed;
  if (!ok) std::printf("FAILED: %s (%s)\n", what, describe(c).c_str());
}

void expect_close(const torch::Tensor& actual, const torch::Tensor& expected, const char* what, const Case& c) {
  const double err = (actual - expected).abs().max().item<double>() / expected.abs().max().item<double>();
  const bool ok = torch::equal(torch::tensor(actual.sizes()), torch::tensor(expected.sizes())) && err <= 1e-12;
  ok ? ++passed : ++failed;
  if (!ok) std::printf("FAILED: %s (%s): max rel err %g\n", what, describe(c).c_str(), err);
}

// A (B, C, H, W) float64 tensor of random values in the case's layout; kStrided: a slice of a larger tensor
// (row step 2, storage offset 1).
torch::Tensor random_in(at::IntArrayRef size, Layout layout) {
  const auto options = torch::dtype(torch::kFloat64);
  switch (layout) {
    case Layout::kContiguous: return torch::randn(size, options);
    case Layout::kChannelsLast: return torch::randn(size, options).contiguous(at::MemoryFormat::ChannelsLast);
    case Layout::kStrided:
      return torch::randn({size[0], size[1], 2 * size[2], size[3] + 1}, options)
          .slice(2, 0, 2 * size[2], 2)
          .slice(3, 1, size[3] + 1);
  }
  return {};
}

// An uninitialized (B, C, H, W) float64 tensor in the case's layout; kStrided: memory order (B, H, C, W).
torch::Tensor empty_in(at::IntArrayRef size, Layout layout) {
  const auto options = torch::dtype(torch::kFloat64);
  switch (layout) {
    case Layout::kContiguous: return torch::empty(size, options);
    case Layout::kChannelsLast: return torch::empty(size, options.memory_format(at::MemoryFormat::ChannelsLast));
    case Layout::kStrided: return torch::empty({size[0], size[2], size[1], size[3]}, options).permute({0, 2, 1, 3});
  }
  return {};
}

Strides4 strides_of(const torch::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// A CuTe kernels' weight copy (weight_copy_numel elements, weight_copy_source of each; 0 in the padding).
torch::Tensor weight_copy(const torch::Tensor& w, const ConvShape& shape, bool input_grad) {
  torch::Tensor copy = torch::empty({weight_copy_numel(shape, input_grad)}, torch::kFloat64);
  const double* src = w.const_data_ptr<double>();
  double* dst = copy.mutable_data_ptr<double>();
  for (int64_t index = 0; index < copy.numel(); ++index) {
    const int64_t from = weight_copy_source(shape, input_grad, index);
    dst[index] = from < 0 ? 0.0 : src[from];
  }
  return copy;
}

// weight_copy_source is a bijection from the copy's non-padding positions onto w, and pads each row of
// weight_copy_stride (a multiple of 8) past the fields.
void check_weight_copy_is_a_permutation() {
  for (const bool input_grad : {false, true}) {
    for (const int64_t s_in : {1, 4, 8}) {
      const ConvShape shape{1, 3, s_in, 5, s_in == 1 ? 8 : s_in, 3, 1, 1, 1, 4, 4, 4, 4};
      const int64_t numel = shape.filter().weight_numel(), stride = weight_copy_stride(shape, input_grad);
      std::vector<int> hits(numel, 0);
      bool ok = stride % 8 == 0 && stride >= weight_copy_fields(shape, input_grad) &&
                weight_copy_numel(shape, input_grad) == numel / weight_copy_fields(shape, input_grad) * stride;
      for (int64_t index = 0; index < weight_copy_numel(shape, input_grad); ++index) {
        const int64_t from = weight_copy_source(shape, input_grad, index);
        ok &= (from < 0) == (index % stride >= weight_copy_fields(shape, input_grad)) && from < numel;
        if (from >= 0) ++hits[from];
      }
      ok &= std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; });
      ok ? ++passed : ++failed;
      if (!ok) {
        std::printf("FAILED: weight copy (input_grad %d, S_in %lld)\n", input_grad, static_cast<long long>(s_in));
      }
    }
  }
}

// What a CuTe kernel thread does (channel counts multiples of 8): the CopyRowTerms of its group element and of
// kk % G' (G' = S_in forward, S input gradient), decoded once, give the rows of forward_weight_copy_row /
// input_grad_weight_copy_row at every kk it visits (kk in steps of 8), with the channel split by a shift.
void check_copy_rows_from_terms() {
  for (const int64_t order : {4, 8}) {
    for (const int64_t s_in : {int64_t(1), order}) {
      for (const int64_t k : {1, 3, 5}) {
        const ConvShape shape{1, 24 / s_in, s_in, 3, order, k, 1, 1, 1, 4, 4, 4, 4};
        const GroupTables tables = make_group_tables(static_cast<int>(order));
        bool ok = true;
        for (const bool input_grad : {false, true}) {
          const int channels = static_cast<int>(input_grad ? 3 * order : shape.in_channels());
          const int inner_count = static_cast<int>(input_grad ? order : s_in);
          const int shift = inner_count == 1 ? 0 : inner_count == 4 ? 2 : 3;
          if (channels % 8 != 0) continue;
          for (int element = 0; element < (input_grad ? s_in : order); ++element) {
            for (int first = 0; first < 8; ++first) {
              const int inner = first & (inner_count - 1);
              const CopyRowTerms terms = input_grad ? copy_row_terms(shape, tables, inner, element)
                                                    : copy_row_terms(shape, tables, element, inner);
              const int rows_per_tap = static_cast<int>(input_grad ? shape.out_fields : shape.in_fields);
              for (int kk = first; kk < channels * k * k; kk += 8) {
                const ChannelTap ct = tap_major_channel_tap_of(kk, channels, static_cast<int>(k));
                const int expected = input_grad ? input_grad_weight_copy_row(shape, tables, element, ct)
                                                : forward_weight_copy_row(shape, tables, element, ct);
                ok &= weight_copy_row(terms, rows_per_tap, static_cast<int>(s_in), ct.channel >> shift, ct.a,
                                      ct.b) == expected;
              }
            }
          }
        }
        ok ? ++passed : ++failed;
        if (!ok) std::printf("FAILED: copy rows from terms, order %lld S_in %lld k %lld\n",
                             static_cast<long long>(order), static_cast<long long>(s_in), static_cast<long long>(k));
      }
    }
  }
}

// The phases of the weight gradient's fold: within one phase of a tap, the (t, s) of every row and column add to
// distinct dw elements (for one o and i; other o, i are other elements anyway), and the phases are few.
void check_fold_phases() {
  for (const int64_t order : {4, 8}) {
    for (const int64_t s_in : {int64_t(1), order}) {
      for (const int64_t k : {1, 2, 3, 5}) {
        const ConvShape shape{1, 1, s_in, 1, order, k, 1, 1, 1, 4, 4, 4, 4};
        const GroupTables tables = make_group_tables(static_cast<int>(order));
        bool ok = true;
        for (int a = 0; a < k; ++a) {
          for (int b = 0; b < k; ++b) {
            std::vector<std::vector<int64_t>> targets(order);
            for (int t = 0; t < order; ++t) {
              const int phase = weight_grad_fold_phase(shape, tables, t, a, b);
              ok &= phase >= 0 && phase < order;
              for (int s = 0; s < s_in; ++s) {
                const CopyRowTerms terms = copy_row_terms(shape, tables, t, s);
                targets[phase].push_back(weight_grad_fold_offset(shape, terms, 0, 0, a, b));
              }
            }
            for (auto& phase_targets : targets) {
              std::sort(phase_targets.begin(), phase_targets.end());
              ok &= std::adjacent_find(phase_targets.begin(), phase_targets.end()) == phase_targets.end();
            }
            // odd k: the center tap is the only one every A_t fixes; other taps need at most 2 phases
            const bool center = k % 2 == 1 && a == k / 2 && b == k / 2;
            int phases = 0;
            for (int t = 0; t < order; ++t) {
              phases = std::max(phases, 1 + weight_grad_fold_phase(shape, tables, t, a, b));
            }
            ok &= center || k == 1 ? phases == order : phases <= 2;
          }
        }
        ok ? ++passed : ++failed;
        if (!ok) std::printf("FAILED: fold phases, order %lld S_in %lld k %lld\n", static_cast<long long>(order),
                             static_cast<long long>(s_in), static_cast<long long>(k));
      }
    }
  }
}

// SegmentTapStep over segment_tap_steps steps visits every (pixel step, tap) once, segment by segment, each
// segment's taps in turn, and marks the last step of each (segment, tap) and no other.
void check_segment_tap_steps() {
  for (const int k : {1, 2, 3}) {
    for (const auto& [begin, end, segment] : {std::tuple<int64_t, int64_t, int>{0, 32, 64}, {64, 200, 64},
                                               {32, 100, 32}, {96, 1000, 256}, {0, 31, 64}}) {
      constexpr int kStep = 32;
      SegmentTapStep at = SegmentTapStep::start(begin, end, segment, kStep);
      std::vector<std::tuple<int64_t, int, int, bool>> visited;  // (first pixel of the step, a, b, folds)
      for (int64_t i = 0; i < segment_tap_steps(begin, end, k, kStep); ++i) {
        visited.emplace_back(at.first + int64_t(at.step) * kStep, at.a, at.b, at.folds());
        at.advance(k, end, segment, kStep);
      }
      std::vector<std::tuple<int64_t, int, int, bool>> expected;
      for (int64_t first = begin; first < end; first += segment) {
        const int64_t last = std::min<int64_t>(first + segment, end);
        for (int a = 0; a < k; ++a)
          for (int b = 0; b < k; ++b)
            for (int64_t pixel = first; pixel < last; pixel += kStep) {
              expected.emplace_back(pixel, a, b, pixel + kStep >= last);
            }
      }
      const bool ok = visited == expected;
      ok ? ++passed : ++failed;
      if (!ok) std::printf("FAILED: SegmentTapStep, k %d, [%lld, %lld), segment %d\n", k,
                           static_cast<long long>(begin), static_cast<long long>(end), segment);
    }
  }
}

void check(const Case& c) {
  static const auto expand = c10::Dispatcher::singleton()
      .findSchemaOrThrow("ger_kernels::expand_filter", "").typed<at::Tensor(const at::Tensor&, int64_t)>();
  static const auto expand_backward = c10::Dispatcher::singleton()
      .findSchemaOrThrow("ger_kernels::expand_filter_backward", "")
      .typed<at::Tensor(const at::Tensor&, int64_t, int64_t)>();
  const int64_t batch = 2, in_fields = 2, out_fields = 3, k = c.kernel_size, order = c.order;
  const int64_t in_channels = in_fields * c.in_orientations, out_channels = out_fields * order;
  const ConvShape shape{batch, in_fields, c.in_orientations, out_fields, order, k, c.stride, c.padding,
                        c.dilation, c.in_h, c.in_w,
                        conv_output_size(c.in_h, k, c.stride, c.padding, c.dilation),
                        conv_output_size(c.in_w, k, c.stride, c.padding, c.dilation)};
  const GroupTables tables = make_group_tables(static_cast<int>(order));
  const PixelGrid in_grid{FastDiv(c.in_h), FastDiv(c.in_w)}, out_grid{FastDiv(shape.out_h), FastDiv(shape.out_w)};
  expect_true(fits_spatial(shape), "fits_spatial", c);

  const torch::Tensor x = random_in({batch, in_channels, c.in_h, c.in_w}, c.layout);
  const torch::Tensor w = torch::randn({out_fields, in_fields, c.in_orientations, k, k}, torch::kFloat64);
  const torch::Tensor bias = torch::randn({out_fields}, torch::kFloat64);
  const torch::Tensor dy = random_in({batch, out_channels, shape.out_h, shape.out_w}, c.layout);
  const torch::Tensor expanded = expand.call(w, order);
  const std::vector<int64_t> stride{c.stride, c.stride}, padding{c.padding, c.padding},
      dilation{c.dilation, c.dilation};
  const torch::Tensor ref = at::conv2d(x, expanded, bias.repeat_interleave(order), stride, padding, dilation);
  const auto [ref_dx, ref_dexpanded, unused] = at::convolution_backward(
      dy, x, expanded, std::nullopt, stride, padding, dilation, false, {0, 0}, 1, {true, true, false});
  const torch::Tensor ref_dw = expand_backward.call(ref_dexpanded, order, c.in_orientations);

  const double* xp = x.const_data_ptr<double>();
  const double* wp = w.const_data_ptr<double>();
  const double* dyp = dy.const_data_ptr<double>();
  const Strides4 xs = strides_of(x), dys = strides_of(dy);
  const int k_int = static_cast<int>(k);

  // forward: m output pixel, n output channel, kk = (c, a, b)
  torch::Tensor y = empty_in({batch, out_channels, shape.out_h, shape.out_w}, c.layout);
  const Strides4 ys = strides_of(y);
  for (int64_t m = 0; m < batch * shape.out_h * shape.out_w; ++m) {
    const Pixel px = pixel_of(m, out_grid);
    for (int n = 0; n < out_channels; ++n) {
      double sum = bias[n / order].item<double>();
      for (int kk = 0; kk < in_channels * k * k; ++kk) {
        const ChannelTap ct = channel_tap_of(kk, k_int);
        const int64_t off = forward_input_offset(shape, xs, px, ct);
        if (off >= 0) sum += xp[off] * wp[expanded_weight_offset(shape, tables, n, ct)];
      }
      y.mutable_data_ptr<double>()[tensor_offset(ys, px, n)] = sum;
    }
  }
  expect_close(y, ref, "forward", c);

  // The CuTe kernels' forward (channel counts multiples of 8): kk tap-major in chunks of 8 channels, one input
  // offset per chunk (channel stride xs.c).
  if (in_channels % 8 == 0) {
    torch::Tensor y_chunks = empty_in({batch, out_channels, shape.out_h, shape.out_w}, c.layout);
    for (int64_t m = 0; m < batch * shape.out_h * shape.out_w; ++m) {
      const Pixel px = pixel_of(m, out_grid);
      for (int n = 0; n < out_channels; ++n) {
        double sum = bias[n / order].item<double>();
        for (int kk = 0; kk < in_channels * k * k; kk += 8) {
          const ChannelTap ct = tap_major_channel_tap_of(kk, static_cast<int>(in_channels), k_int);
          const int64_t off = forward_input_offset(shape, xs, px, ct);
          if (off < 0) continue;
          for (int e = 0; e < 8; ++e) {
            sum += xp[off + e * xs.c] * wp[expanded_weight_offset(shape, tables, n, {ct.channel + e, ct.a, ct.b})];
          }
        }
        y_chunks.mutable_data_ptr<double>()[tensor_offset(ys, px, n)] = sum;
      }
    }
    expect_close(y_chunks, ref, "forward, tap-major chunks of 8 channels", c);
  }

  // The CuTe kernels' forward with the permuted weight copy: tiles of 2 fields x S elements in grouped column
  // order (the kernels' tiles hold 16 or 32 fields; 2 makes the 3 fields a full and a partial tile), kk
  // tap-major, W~ read from the copy's rows (forward_weight_copy_row), zeros past the fields.
  {
    const torch::Tensor copy = weight_copy(w, shape, false);
    const double* cp = copy.const_data_ptr<double>();
    const int64_t copy_stride = weight_copy_stride(shape, false);
    torch::Tensor y_copy = empty_in({batch, out_channels, shape.out_h, shape.out_w}, c.layout).fill_(NAN);
    const int tile_fields = 2;
    for (int64_t m = 0; m < batch * shape.out_h * shape.out_w; ++m) {
      const Pixel px = pixel_of(m, out_grid);
      for (int first = 0; first < out_fields; first += tile_fields) {
        for (int n = 0; n < tile_fields * order; ++n) {
          const GroupedColumn col = grouped_column(n, first, tile_fields);
          if (col.field >= out_fields) continue;
          double sum = bias[col.field].item<double>();
          for (int kk = 0; kk < in_channels * k * k; ++kk) {
            const ChannelTap ct = tap_major_channel_tap_of(kk, static_cast<int>(in_channels), k_int);
            const int64_t off = forward_input_offset(shape, xs, px, ct);
            const int row = forward_weight_copy_row(shape, tables, col.element, ct);
            if (off >= 0) sum += xp[off] * cp[row * copy_stride + col.field];
          }
          y_copy.mutable_data_ptr<double>()[tensor_offset(ys, px, col.field * order + col.element)] = sum;
        }
      }
    }
    expect_close(y_copy, ref, "forward, permuted weight copy and grouped tile columns", c);
  }

  // input gradient: m input pixel, n input channel, kk = (oc, a, b)
  torch::Tensor dx = empty_in({batch, in_channels, c.in_h, c.in_w}, c.layout);
  const Strides4 dxs = strides_of(dx);
  for (int64_t m = 0; m < batch * c.in_h * c.in_w; ++m) {
    const Pixel px = pixel_of(m, in_grid);
    for (int n = 0; n < in_channels; ++n) {
      double sum = 0;
      for (int kk = 0; kk < out_channels * k * k; ++kk) {
        const ChannelTap ct = channel_tap_of(kk, k_int);
        const int64_t off = input_grad_output_offset(shape, dys, px, ct);
        if (off >= 0) sum += dyp[off] * wp[expanded_weight_offset(shape, tables, ct.channel, {n, ct.a, ct.b})];
      }
      dx.mutable_data_ptr<double>()[tensor_offset(dxs, px, n)] = sum;
    }
  }
  expect_close(dx, ref_dx, "input grad", c);

  // The CuTe kernels' input gradient: kk = (tap, oc) tap-major in chunks of 8 output channels.
  if (out_channels % 8 == 0) {
    torch::Tensor dx_chunks = empty_in({batch, in_channels, c.in_h, c.in_w}, c.layout);
    for (int64_t m = 0; m < batch * c.in_h * c.in_w; ++m) {
      const Pixel px = pixel_of(m, in_grid);
      for (int n = 0; n < in_channels; ++n) {
        double sum = 0;
        for (int kk = 0; kk < out_channels * k * k; kk += 8) {
          const ChannelTap ct = tap_major_channel_tap_of(kk, static_cast<int>(out_channels), k_int);
          const int64_t off = input_grad_output_offset(shape, dys, px, ct);
          if (off < 0) continue;
          for (int e = 0; e < 8; ++e) {
            sum += dyp[off + e * dys.c] * wp[expanded_weight_offset(shape, tables, ct.channel + e, {n, ct.a, ct.b})];
          }
        }
        dx_chunks.mutable_data_ptr<double>()[tensor_offset(dxs, px, n)] = sum;
      }
    }
    expect_close(dx_chunks, ref_dx, "input grad, tap-major chunks of 8 channels", c);
  }

  // The CuTe kernels' input gradient with the permuted weight copy: tiles of 1 input field x S_in elements.
  {
    const torch::Tensor copy = weight_copy(w, shape, true);
    const double* cp = copy.const_data_ptr<double>();
    const int64_t copy_stride = weight_copy_stride(shape, true);
    const int64_t s_in = c.in_orientations;
    torch::Tensor dx_copy = empty_in({batch, in_channels, c.in_h, c.in_w}, c.layout).fill_(NAN);
    const int tile_fields = 1;
    for (int64_t m = 0; m < batch * c.in_h * c.in_w; ++m) {
      const Pixel px = pixel_of(m, in_grid);
      for (int first = 0; first < in_fields; first += tile_fields) {
        for (int n = 0; n < tile_fields * s_in; ++n) {
          const GroupedColumn col = grouped_column(n, first, tile_fields);
          if (col.field >= in_fields) continue;
          double sum = 0;
          for (int kk = 0; kk < out_channels * k * k; ++kk) {
            const ChannelTap ct = tap_major_channel_tap_of(kk, static_cast<int>(out_channels), k_int);
            const int64_t off = input_grad_output_offset(shape, dys, px, ct);
            const int row = input_grad_weight_copy_row(shape, tables, col.element, ct);
            if (off >= 0) sum += dyp[off] * cp[row * copy_stride + col.field];
          }
          dx_copy.mutable_data_ptr<double>()[tensor_offset(dxs, px, col.field * s_in + col.element)] = sum;
        }
      }
    }
    expect_close(dx_copy, ref_dx, "input grad, permuted weight copy and grouped tile columns", c);
  }

  // weight gradient: m output field, n = (i*S_in + u, p, q), kk = (pixel, t) in chunks, split in c.splits parts
  // whose partial sums are added at the end (the kernels' workspace)
  torch::Tensor dw = torch::zeros_like(w);
  const int64_t pixels = batch * shape.out_h * shape.out_w;
  const int64_t k_size = weight_grad_reduction_size(shape, c.chunk);
  for (int z = 0; z < c.splits; ++z) {
    const ReductionRange range = split_reduction(k_size, c.chunk, c.splits, z);
    for (int64_t o = 0; o < out_fields; ++o) {
      for (int n = 0; n < in_channels * k * k; ++n) {
        double sum = 0;
        for (int64_t kk = range.begin; kk < range.end; ++kk) {
          const PixelOrientation r = weight_grad_reduction(kk, FastDiv(order), c.chunk);
          if (r.pixel >= pixels) continue;
          const Pixel px = pixel_of(r.pixel, out_grid);
          const int64_t off = weight_grad_input_offset(shape, tables, xs, px, r.t, channel_tap_of(n, k_int));
          if (off >= 0) sum += dyp[tensor_offset(dys, px, o * order + r.t)] * xp[off];
        }
        dw.mutable_data_ptr<double>()[o * in_channels * k * k + n] += sum;
      }
    }
  }
  expect_close(dw, ref_dw, "weight grad", c);

  // The CuTe weight gradient of channels-last tensors: per tap, dW~ over all output channels and input channels
  // (a GEMM over pixels), folded into dw (weight_grad_fold_offset).
  torch::Tensor dw_fold = torch::zeros_like(w);
  for (int a = 0; a < k_int; ++a) {
    for (int b = 0; b < k_int; ++b) {
      for (int n = 0; n < out_channels; ++n) {
        for (int ch = 0; ch < in_channels; ++ch) {
          double sum = 0;
          for (int64_t p = 0; p < pixels; ++p) {
            const Pixel px = pixel_of(p, out_grid);
            const int64_t off = forward_input_offset(shape, xs, px, {ch, a, b});
            if (off >= 0) sum += dyp[tensor_offset(dys, px, n)] * xp[off];
          }
          const int t = static_cast<int>(n % order), s_in = static_cast<int>(c.in_orientations);
          const CopyRowTerms terms = copy_row_terms(shape, tables, t, ch % s_in);
          dw_fold.mutable_data_ptr<double>()[weight_grad_fold_offset(shape, terms, static_cast<int>(n / order),
                                                                     ch / s_in, a, b)] += sum;
        }
      }
    }
  }
  expect_close(dw_fold, ref_dw, "weight grad, per-tap GEMMs folded", c);
}

// Every (pixel, t) of the weight gradient's reduction is visited exactly once, whatever the chunk, and an
// aligned chunk of kk is one t over consecutive pixels (what lets a kernel step of BK = chunk use one t).
// Split parts are consecutive chunk-aligned ranges covering the reduction.
void check_reduction_covers_pixels_once() {
  const ConvShape shape{3, 1, 1, 1, 8, 3, 1, 1, 1, 5, 7, 5, 7};  // 105 output pixels
  for (int chunk : {1, 3, 16, 32}) {
    const int64_t k_size = weight_grad_reduction_size(shape, chunk);
    for (int splits : {1, 2, 5, 64}) {
      int64_t next = 0;
      bool ok = true;
      for (int z = 0; z < splits; ++z) {
        const ReductionRange range = split_reduction(k_size, chunk, splits, z);
        ok &= range.begin == next && range.end >= range.begin && range.begin % chunk == 0;
        next = range.end;
      }
      ok &= next == k_size;
      ok ? ++passed : ++failed;
      if (!ok) std::printf("FAILED: split_reduction with chunk %d, %d splits\n", chunk, splits);
    }
    std::vector<int> visits(105 * 8, 0);
    bool chunks_ok = true;
    for (int64_t kk = 0; kk < k_size; ++kk) {
      const PixelOrientation r = weight_grad_reduction(kk, FastDiv(8), chunk);
      const PixelOrientation first = weight_grad_reduction(kk - kk % chunk, FastDiv(8), chunk);
      chunks_ok &= r.t == first.t && r.pixel == first.pixel + kk % chunk;
      if (r.pixel < 105) ++visits[r.pixel * 8 + r.t];
    }
    const bool ok = chunks_ok && std::all_of(visits.begin(), visits.end(), [](int v) { return v == 1; });
    ok ? ++passed : ++failed;
    if (!ok) std::printf("FAILED: weight_grad_reduction with chunk %d\n", chunk);
  }
}

// reduction_split_count: within its bounds, the split count of least waves x steps per part (brute force here),
// the fewest parts among equals; the 181-field GER-UNet layer on an H200 (144 CuTe tiles, 264 block slots) gets
// 7 parts in 4 waves where one wave of 144 blocks left 120 slots idle.
void check_reduction_split_count() {
  const auto cost = [](int64_t tiles, int64_t length, int64_t slots, int64_t splits) {
    const int64_t per_part = (length + splits - 1) / splits, parts = (length + per_part - 1) / per_part;
    return (tiles * parts + slots - 1) / slots * per_part;
  };
  const struct { int64_t tiles, length, slots, min_length, max_splits; } cases[] = {
      {144, 100352, 264, 4096, 7}, {9, 1605632, 264, 4096, 64}, {1, 2163200, 264, 4096, 64}, {4, 100, 8, 4096, 64},
      {3, 1000, 4, 10, 64},        {500, 1 << 20, 132, 1, 64},   {0, 5, 8, 1, 4},            {7, 0, 8, 1, 4}};
  for (const auto& c : cases) {
    const int chosen = reduction_split_count(c.tiles, c.length, c.slots, c.min_length, c.max_splits);
    const int64_t most = std::max<int64_t>(
        1, std::min({c.max_splits, c.length / c.min_length, c.tiles > 0 ? (8 * c.slots + c.tiles - 1) / c.tiles : 1}));
    bool ok = chosen >= 1 && chosen <= most;
    for (int64_t s = 1; ok && c.tiles > 0 && c.length > 0 && s <= most; ++s) {
      const int64_t a = cost(c.tiles, c.length, c.slots, s), b = cost(c.tiles, c.length, c.slots, chosen);
      ok &= a > b || (a == b && s >= chosen);
    }
    ok ? ++passed : ++failed;
    if (!ok) std::printf("FAILED: reduction_split_count(%lld tiles, %lld steps) = %d\n", (long long)c.tiles,
                         (long long)c.length, chosen);
  }
  const bool layer_ok = reduction_split_count(144, 100352, 264, 4096, 7) == 7 &&
                        reduction_split_count(1, 2163200, 264, 4096, 64) == 64;
  layer_ok ? ++passed : ++failed;
  if (!layer_ok) std::printf("FAILED: reduction_split_count of the 181-field layer or of 520 x 520 pixels\n");
}

// next_pixel steps through a grid exactly as pixel_of(m + 1) does, across rows and images.
void check_next_pixel() {
  for (const auto& [h, w] : {std::pair<int64_t, int64_t>{1, 1}, {1, 5}, {4, 1}, {3, 7}}) {
    const PixelGrid grid{FastDiv(h), FastDiv(w)};
    bool ok = true;
    for (int64_t m = 0; m + 1 < 3 * h * w; ++m) {
      const Pixel next = next_pixel(pixel_of(m, grid), grid), expected = pixel_of(m + 1, grid);
      ok &= next.n == expected.n && next.h == expected.h && next.w == expected.w;
    }
    ok ? ++passed : ++failed;
    if (!ok) std::printf("FAILED: next_pixel on a %lld x %lld grid\n", static_cast<long long>(h), static_cast<long long>(w));
  }
}

// TapMajorCursor stepped through a reduction lands where tap_major_channel_tap_of decodes, for steps below and
// above the channel count (the CuTe kernels step by 32 from kk = 0, 8, 16 or 24).
void check_tap_major_cursor() {
  for (const int channels : {8, 16, 24, 48}) {
    for (const int k : {1, 3, 5}) {
      for (const int first : {0, 8, 16, 24}) {
        bool ok = true;
        TapMajorCursor cursor{first, tap_major_channel_tap_of(first, channels, k)};
        for (; cursor.kk < channels * k * k; cursor.advance(32, channels, k)) {
          const ChannelTap expected = tap_major_channel_tap_of(static_cast<int>(cursor.kk), channels, k);
          ok &= cursor.at.channel == expected.channel && cursor.at.a == expected.a && cursor.at.b == expected.b;
        }
        ok &= cursor.at.a >= k;
        ok ? ++passed : ++failed;
        if (!ok) std::printf("FAILED: TapMajorCursor, %d channels, k %d, from %d\n", channels, k, first);
      }
    }
  }
}

// FastDiv against plain division: edge divisors and dividends, then random ones over the whole range.
void check_fast_div() {
  std::vector<int64_t> divisors = {1, 2, 3, 4, 5, 7, 8, 9, 25, 448, 449, 1000003, (int64_t(1) << 30),
                                   (int64_t(1) << 31) - 1};
  std::vector<int64_t> dividends = {0, 1, 2, 3, (int64_t(1) << 32) - 1, int64_t(1) << 32, INT64_MAX - 1, INT64_MAX};
  std::mt19937_64 random(0);
  for (int i = 0; i < 200; ++i) divisors.push_back(1 + static_cast<int64_t>(random() % ((uint64_t(1) << 31) - 1)));
  int wrong = 0;
  for (const int64_t d : divisors) {
    const FastDiv fast(d);
    std::vector<int64_t> ns = dividends;
    for (const int64_t q : {int64_t(1), int64_t(1000), INT64_MAX / d})
      for (const int64_t e : {-1, 0, 1})
        if (e < 1 || q * d < INT64_MAX) ns.push_back(q * d + e);
    for (int i = 0; i < 2000; ++i) ns.push_back(static_cast<int64_t>(random() >> (1 + random() % 63)));
    for (const int64_t n : ns)
      if (n >= 0 && fast.div(n) != n / d) ++wrong;
  }
  wrong == 0 ? ++passed : ++failed;
  if (wrong != 0) std::printf("FAILED: FastDiv wrong in %d cases\n", wrong);
}

}  // namespace

int main() {
  torch::manual_seed(0);
  check_fast_div();
  check_reduction_covers_pixels_once();
  check_reduction_split_count();
  check_next_pixel();
  check_tap_major_cursor();
  check_weight_copy_is_a_permutation();
  check_copy_rows_from_terms();
  check_fold_phases();
  check_segment_tap_steps();
  const int chunks[] = {16, 32, 3}, splits[] = {1, 3, 2, 64};
  int index = 0;
  for (int64_t order : {4, 8}) {
    for (int64_t s_in : {int64_t(1), order}) {
      // k, stride, padding, dilation, H, W, layout
      const struct { int64_t k, stride, padding, dilation, h, w; Layout layout; } convs[] = {
          {1, 1, 0, 1, 5, 6, Layout::kContiguous},   {3, 1, 1, 1, 7, 5, Layout::kChannelsLast},
          {2, 2, 0, 1, 8, 6, Layout::kStrided},      {5, 2, 2, 1, 9, 7, Layout::kContiguous},
          {3, 2, 1, 2, 9, 8, Layout::kChannelsLast}, {3, 1, 2, 2, 6, 7, Layout::kStrided},
          {5, 1, 0, 1, 7, 6, Layout::kChannelsLast},
      };
      for (const auto& v : convs) {
        check({order, s_in, v.k, v.stride, v.padding, v.dilation, v.h, v.w, v.layout, chunks[index % 3],
               splits[index % 4]});
        ++index;
      }
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

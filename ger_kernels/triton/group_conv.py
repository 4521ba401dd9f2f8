"""Fused group convolution in Triton: forward, input gradient and weight gradient as
implicit GEMMs that read the base weight ``w`` through the small index tables of the group
(SPEC section 3) and never materialize the expanded filter ``W~`` or its gradient.

Shapes: input ``(B, C_in*S_in, H, W)`` (any strides: NCHW, channels_last, views), weight
``(C_out, C_in, S_in, k, k)``, bias ``(C_out,)``, output ``(B, C_out*S, H_out, W_out)`` in the
input's memory format. ``W~[o*S + t, i*S_in + s, tap] = w[o, i, T[t, s], taps[t, tap]]``
(``T[t, s]`` replaced by 0 when ``S_in = 1``) with ``taps[t] = group.tap_permutation(k)[t]``,
taps flattened row-major. float32 (IEEE unless ``GER_KERNELS_TRITON_TF32=1``), float16 and
bfloat16 inputs, float32 accumulation.

Kernels per pass, chosen by the launch config's variant (``tuning.CONFIGS``): the plain ones gather
the weight tile element by element through the tables; "fields" (forward, input gradient) reads it
as 16-byte vectors from a field-minor copy of ``w`` (``_field_minor``, the size of ``w`` but for padding), the
tile's columns being whole fields; "tma" is "fields" with the activation tile read through a tensor
descriptor (stride 1, channels_last maps with 16-byte pixel rows; elsewhere "fields" runs) as a
rectangle of 16 columns; the weight gradient's "channels" kernel has rows C_out*S and folds over the
group in its epilogue, and "channels-tma" reads both of its operands through descriptors. The "-row"
variants of both ("tma-row", "channels-tma-row") take their pixels from one row of the map, so that
the box in shared memory is the dot's operand as it is (no copy through registers).

Ops (namespace ``ger_kernels_triton``, CPU and CUDA; CPU tensors need ``TRITON_INTERPRET=1``):
``group_conv2d(input, weight, bias, stride, padding, dilation, order, relu)`` (differentiable;
``relu`` fuses a ReLU into the epilogue), ``group_conv2d_input_grad`` and
``group_conv2d_weight_grad`` (its backward). Under ``torch.autocast`` they compute in the
autocast dtype, as ``F.conv2d`` (``ger_kernels._autocast``).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

try:  # host-side tensor descriptors (triton >= 3.3 here; the "tma" forward falls back without them)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None
from torch._prims_common import suggest_memory_format

from ger_kernels import auto_paths
from ger_kernels._autocast import register_autocast
from ger_kernels._validation import check_output_size
from ger_kernels.auto_paths import TF32_ENV, precision
from ger_kernels.groups import Group, get_group
from ger_kernels.triton import DTYPES, interpreting
from ger_kernels.triton.batch_norm import tile_moments
from ger_kernels.triton.jit import DeviceFunction, Kernel
from ger_kernels.triton.tuning import FUSED_TAG, Config, Tuner, arch_name, dtype_class

__all__ = ["FIELDS_VARIANTS", "group_conv2d", "forward", "input_grad", "weight_grad", "statistics_of_fields", "tables",
           "precision", "problem_class", "TF32_ENV"]

@DeviceFunction
def _pixel_rectangle(tile, tiles_h, tiles_w, ROWS: tl.constexpr, TILE_W: tl.constexpr):
    """The pixels of rectangle ``tile`` of a map tiled by ROWS x TILE_W rectangles, tiles_h x tiles_w
    per image, row-major: (image, first row, first column, rows (ROWS*TILE_W,), columns (ROWS*TILE_W,))."""
    image = tile // (tiles_h * tiles_w)
    h0 = tile // tiles_w % tiles_h * ROWS
    w0 = tile % tiles_w * TILE_W
    pixel = tl.arange(0, ROWS * TILE_W)
    return image, h0, w0, h0 + pixel // TILE_W, w0 + pixel % TILE_W


@DeviceFunction
def _transformed_tap(code, kh, kw, KSIZE: tl.constexpr):
    """``taps[t, kh*KSIZE + kw]`` (``tables``) computed from element t's ``code`` = swap*4 + flip_rows*2 +
    flip_columns (``tables``'s "tap_code"): the tap (kh, kw), transposed if swap, then mirrored. No table
    load in a kernel's main loop: its loads depend on nothing loaded there, so all of them pipeline."""
    swap = (code >> 2) & 1
    row = kh + swap * (kw - kh)
    column = kw + swap * (kh - kw)
    row += ((code >> 1) & 1) * (KSIZE - 1 - 2 * row)
    column += (code & 1) * (KSIZE - 1 - 2 * column)
    return row * KSIZE + column


@DeviceFunction
def _phase_progression(phase_ptr, phase, channel_blocks):
    """(kh0, kw0, steps, n_w) of ``phase``'s taps (``phase_taps``): steps = n_h * n_w * channel_blocks,
    n_w at least 1 (a divisor)."""
    row = phase_ptr + phase * 4
    taps_w = tl.load(row + 3)
    return tl.load(row), tl.load(row + 1), tl.load(row + 2) * taps_w * channel_blocks, tl.maximum(taps_w, 1)


@DeviceFunction
def _phase_tap(index, kh0, kw0, taps_w, tap_period, KSIZE: tl.constexpr, UNIT_STRIDE: tl.constexpr):
    """(kh, kw) of a phase's tap ``index`` (``_phase_progression``); UNIT_STRIDE: every tap in order."""
    if UNIT_STRIDE:
        return index // KSIZE, index % KSIZE
    return kh0 + index // taps_w * tap_period, kw0 + index % taps_w * tap_period


@DeviceFunction
def _field_rows_tile(w_ptr, w_rows, LD, f0, rows_ok, G: tl.constexpr, BLOCK_K: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    """The (BLOCK_K, BLOCK_N) weight tile of a "fields" kernel: for each reduction row k and group
    element g < G, the FIELDS = BLOCK_N // G entries f0 .. f0 + FIELDS of row ``w_rows[k, g]`` of the
    field-minor copy, columns ordered (g, field); zeros where ``rows_ok`` is false. LD (entries a row)
    and f0 are multiples of FIELDS, and every program's fields are inside a row (the copy is padded:
    ``_field_minor``), so a tile is BLOCK_K x G runs of FIELDS aligned entries, loaded as vectors
    straight into the layout of the dot's shared-memory operand (cp.async on sm_80 and sm_90)."""
    FIELDS: tl.constexpr = BLOCK_N // G
    runs = (w_rows * LD)[:, :, None] + (f0 + tl.arange(0, FIELDS))[None, None, :]
    offsets = tl.max_contiguous(tl.multiple_of(tl.reshape(runs, (BLOCK_K, BLOCK_N)), [1, FIELDS]), [1, FIELDS])
    return tl.load(w_ptr + offsets, mask=rows_ok[:, None], other=0.0)


@DeviceFunction
def _channel_order(acc, G: tl.constexpr, FIELDS: tl.constexpr):
    """A "fields" kernel's accumulator, columns (g, field), with its columns in channel order (field, g)."""
    rows: tl.constexpr = acc.shape[0]
    return tl.reshape(tl.permute(tl.reshape(acc, (rows, G, FIELDS)), (0, 2, 1)), (rows, G * FIELDS))


@DeviceFunction
def _batch_norm_rows(norm_ptr, IN_FIELDS, channels, channels_ok, S_IN: tl.constexpr):
    """(mean, scale, shift), each (1, channels) float32, of the batch norm of ``channels``, from
    ``norm_ptr`` (3, IN_FIELDS) float32 rows mean, scale, shift per field f = channel // S_IN: a tile
    ``a`` through it is ``(a - mean) * scale + shift``. (Loaded before the tile they apply to, which
    keeps the input gradient's TMA kernels at fewer registers.)"""
    field = channels // S_IN
    mean = tl.load(norm_ptr + field, mask=channels_ok, other=0.0)
    scale = tl.load(norm_ptr + IN_FIELDS + field, mask=channels_ok, other=0.0)
    shift = tl.load(norm_ptr + 2 * IN_FIELDS + field, mask=channels_ok, other=0.0)
    return mean[None, :], scale[None, :], shift[None, :]


@DeviceFunction
def _normalized(a, norm_ptr, IN_FIELDS, channels, channels_ok, pixels_ok, S_IN: tl.constexpr, RELU: tl.constexpr):
    """The activation tile ``a`` (pixels, channels) with the batch norm of its input applied on load
    (``_batch_norm_rows``, ReLU if RELU); zero where the pixel or channel is padding (the convolution
    pads the normalized map); rounded to ``a``'s dtype."""
    mean, scale, shift = _batch_norm_rows(norm_ptr, IN_FIELDS, channels, channels_ok, S_IN)
    v = (a.to(tl.float32) - mean) * scale + shift
    if RELU:
        v = tl.maximum(v, 0.0)
    return tl.where(pixels_ok[:, None] & channels_ok[None, :], v, 0.0).to(a.dtype)


@DeviceFunction
def _where_normalized_positive(acc, x_ptr, offsets, ok, norm_ptr, IN_FIELDS, channels, channels_ok,
                               S_IN: tl.constexpr):
    """The input gradient ``acc`` (pixels, channels) of a convolution that read its input through a
    batch norm and a ReLU (``_normalized``), zeroed where the ReLU clipped: where
    ``(x - mean[f]) * scale[f] + shift[f] <= 0`` (float32), x loaded at ``offsets`` where ``ok``."""
    mean, scale, shift = _batch_norm_rows(norm_ptr, IN_FIELDS, channels, channels_ok, S_IN)
    v = (tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32) - mean) * scale + shift
    return tl.where(v > 0.0, acc, 0.0)


@DeviceFunction
def _store_statistics(stats_ptr, values, rows_ok, cols, cols_ok, N):
    """Per column of the float32 tile ``values`` (rows, cols), over the rows where ``rows_ok``:
    count, mean, and M2 about that mean, stored at ``stats_ptr[program_id(0), 0..2, cols]`` of a
    (programs, 3, N) float32 buffer (a batch norm's partial statistics, merged on the host)."""
    count, mean, m2 = tile_moments(values, rows_ok[:, None] & cols_ok[None, :], 0)
    base = stats_ptr + tl.program_id(0).to(tl.int64) * (3 * N) + cols
    tl.store(base, count, mask=cols_ok)
    tl.store(base + N, mean, mask=cols_ok)
    tl.store(base + 2 * N, m2, mask=cols_ok)


@Kernel.specializing(("sxc", "soc"))  # channel strides of 1 (channels_last): vector loads and stores
def forward_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, orient_ptr, tap_code_ptr, norm_ptr, stats_ptr,
    B, C, H, W, N, H_out, W_out, channel_blocks, steps,
    sxb, sxc, sxh, sxw, sob, soc, soh, sow,
    stride, padding, dilation,
    S: tl.constexpr, S_IN: tl.constexpr, KSIZE: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    NORM: tl.constexpr, NORM_RELU: tl.constexpr, STATS: tl.constexpr, ALIGN: tl.constexpr, PRECISION: tl.constexpr,
    FLAT_TAPS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[b, n, oh, ow] = sum_{c, tap} x[b, c, oh*stride - padding + kh*dilation, ...] W~[n, c, tap]
    (+ bias[n // S], ReLU). GEMM rows: output pixels (b, oh, ow); columns: output channels n
    (C = C_in*S_in, N = C_out*S); reduction: taps, then the channel_blocks = cdiv(C, BLOCK_K)
    blocks of input channels; with FLAT_TAPS (config variant "taps", lifting layers: S_IN = 1, no
    NORM) the k*k*C (tap, channel) pairs, BLOCK_K at a time (``steps`` of them), so that a few input
    channels do not leave most of each step's reduction empty.
    ALIGN divides C, sxb, sxh and sxw (vector loads along channels of channels_last inputs).
    NORM: x is read through its batch norm (``_normalized``, ReLU if NORM_RELU); STATS: the
    program's partial statistics of each output column go to ``stats_ptr`` (``_store_statistics``)."""
    TAPS: tl.constexpr = KSIZE * KSIZE
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < B * H_out * W_out
    n_ok = rn < N
    ow = rm % W_out
    oh = (rm // W_out) % H_out
    batch = (rm // (W_out * H_out)).to(tl.int64)
    t = rn % S
    # W~[n, c0 + k, tap] = w_tap_major[n // S, taps[t, tap], (c0 + k) // S_IN * S_IN + T[t, k % S_IN]] for c0
    # a multiple of S: loaded transposed, (n, k), so that a warp reads a column's channels side by side.
    w_off = (rn // S)[:, None] * (TAPS * C) + (rk // S_IN * S_IN)[None, :]
    if S_IN > 1:
        w_off += tl.load(orient_ptr + t[:, None] * S + (rk % S)[None, :])
    code = tl.load(tap_code_ptr + t)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    if FLAT_TAPS:
        tl.static_assert(S_IN == 1 and not NORM, "FLAT_TAPS: lifting layers without a batch norm on load")
        for step in range(steps):  # cdiv(k*k*C, BLOCK_K) steps over reduction rows r = tap*C + c
            r = step * BLOCK_K + rk
            tap = r // C
            r_ok = r < TAPS * C
            ih = (oh * stride - padding)[:, None] + (tap // KSIZE * dilation)[None, :]
            iw = (ow * stride - padding)[:, None] + (tap % KSIZE * dilation)[None, :]
            ok = m_ok[:, None] & r_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_ptr + (batch * sxb)[:, None] + ih * sxh + iw * sxw + (r % C * sxc)[None, :], mask=ok,
                        other=0.0)
            src = _transformed_tap(code[:, None], (tap // KSIZE)[None, :], (tap % KSIZE)[None, :], KSIZE)
            b = tl.load(w_ptr + (rn // S * (TAPS * C))[:, None] + src * C + (r % C)[None, :],
                        mask=n_ok[:, None] & r_ok[None, :], other=0.0)
            acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    else:
        for step in range(steps):  # one loop over (tap, channel block): k*k*channel_blocks steps
            tap = step // channel_blocks
            c0 = step % channel_blocks * BLOCK_K
            ih = oh * stride - padding + (tap // KSIZE) * dilation
            iw = ow * stride - padding + (tap % KSIZE) * dilation
            pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            c_ok = (c0 + rk) // ALIGN < C // ALIGN  # = c < C, constant over ALIGN channels (vector loads)
            rows = tl.multiple_of(batch * sxb + ih * sxh + iw * sxw, ALIGN)
            a = tl.load(x_ptr + rows[:, None] + (c0 + rk)[None, :] * sxc,
                        mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
            if NORM:
                a = _normalized(a, norm_ptr, C // S_IN, c0 + rk, c_ok, pix_ok, S_IN, NORM_RELU)
            src = _transformed_tap(code, tap // KSIZE, tap % KSIZE, KSIZE)
            b = tl.load(w_ptr + w_off + (src * C)[:, None] + c0, mask=n_ok[:, None] & c_ok[None, :], other=0.0)
            acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn // S, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    out = acc.to(out_ptr.dtype.element_ty)
    if STATS:
        _store_statistics(stats_ptr, out.to(tl.float32), m_ok, rn, n_ok, N)
    out_ptrs = out_ptr + (batch * sob + oh * soh + ow * sow)[:, None] + rn[None, :] * soc
    tl.store(out_ptrs, out, mask=m_ok[:, None] & n_ok[None, :])


@Kernel.specializing(("sxc", "soc"))
def forward_fields_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, orient_ptr, tap_code_ptr, norm_ptr, stats_ptr,
    B, C, H, W, C_OUT, LD, H_out, W_out, channel_blocks, steps, tiles_h, tiles_w,
    sxb, sxc, sxh, sxw, sob, soc, soh, sow,
    stride, padding, dilation,
    S: tl.constexpr, S_IN: tl.constexpr, KSIZE: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    NORM: tl.constexpr, NORM_RELU: tl.constexpr, STATS: tl.constexpr, ALIGN: tl.constexpr, PRECISION: tl.constexpr,
    TMA: tl.constexpr, TILE_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``forward_kernel``'s result (config variant "fields") with the weight tile read as vectors.
    A program's columns are BLOCK_N // S whole output fields o0 .. o0 + FIELDS, ordered (t, o)
    inside the tile. ``w_ptr`` is the field-minor copy of the base weight (``_field_minor``): row
    ``tap*C + c`` holds ``w[:, c // S_IN, c % S_IN, tap]`` over the output fields, zero-padded to
    LD (a multiple of 8 and of FIELDS, at least the programs' fields) entries, so for a reduction row
    c0 + k and an element t the tile's FIELDS entries are contiguous at row
    ``taps[t, tap]*C + c0 + k - s + T[t, s]`` (s = k % S_IN; ``_field_rows_tile``). The
    accumulator's columns are put back in channel order (o, t) before the store.
    TMA (config variants "tma" and "tma-row", stride 1): ``x_ptr`` is a tensor descriptor of the channels_last
    input as (B, H, W, C) in boxes of (1, BLOCK_M // TILE_W, TILE_W, BLOCK_K); a program's pixels
    are one such rectangle of output rows and columns (tiles_h x tiles_w per image), per tap the
    box is shifted by the tap, and what falls outside the image or past C reads as zeros.
    NORM and STATS as in ``forward_kernel``."""
    TAPS: tl.constexpr = KSIZE * KSIZE
    FIELDS: tl.constexpr = BLOCK_N // S
    if TMA:
        image, h0, w0, oh, ow = _pixel_rectangle(tl.program_id(0), tiles_h, tiles_w, BLOCK_M // TILE_W, TILE_W)
        m_ok = (oh < H_out) & (ow < W_out)
        batch = image.to(tl.int64)
    else:
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = rm < B * H_out * W_out
        ow = rm % W_out
        oh = (rm // W_out) % H_out
        batch = (rm // (W_out * H_out)).to(tl.int64)
    o0 = tl.program_id(1) * FIELDS
    rt = tl.arange(0, S)
    rk = tl.arange(0, BLOCK_K)
    code = tl.load(tap_code_ptr + rt)
    # (k, t) -> the row offset of reduction row c0 + k within its tap's rows, for element t
    if S_IN > 1:
        within = (rk // S_IN * S_IN)[:, None] + tl.load(orient_ptr + rt[None, :] * S + (rk % S_IN)[:, None])
    else:
        within = rk[:, None] + 0 * rt[None, :]
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for step in range(steps):  # one loop over (tap, channel block): k*k*channel_blocks steps
        tap = step // channel_blocks
        c0 = step % channel_blocks * BLOCK_K
        c_ok = (c0 + rk) // ALIGN < C // ALIGN  # = c < C, constant over ALIGN channels (vector loads)
        ih = oh * stride - padding + (tap // KSIZE) * dilation
        iw = ow * stride - padding + (tap % KSIZE) * dilation
        pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        if TMA:
            a = tl.reshape(x_ptr.load([image, h0 - padding + tap // KSIZE * dilation,
                                       w0 - padding + tap % KSIZE * dilation, c0]), (BLOCK_M, BLOCK_K))
        else:
            rows = tl.multiple_of(batch * sxb + ih * sxh + iw * sxw, ALIGN)
            a = tl.load(x_ptr + rows[:, None] + (c0 + rk)[None, :] * sxc,
                        mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
        if NORM:
            a = _normalized(a, norm_ptr, C // S_IN, c0 + rk, c_ok, pix_ok, S_IN, NORM_RELU)
        w_rows = (_transformed_tap(code, tap // KSIZE, tap % KSIZE, KSIZE) * C + c0)[None, :] + within  # (BLOCK_K, S)
        b = _field_rows_tile(w_ptr, w_rows, LD, o0, c_ok, S, BLOCK_K, BLOCK_N)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        fields = o0 + tl.arange(0, BLOCK_N) % FIELDS
        acc += tl.load(bias_ptr + fields, mask=fields < C_OUT, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    out = _channel_order(acc, S, FIELDS).to(out_ptr.dtype.element_ty)
    rn = o0 * S + tl.arange(0, BLOCK_N)  # channel order (o, t)
    if STATS:
        _store_statistics(stats_ptr, out.to(tl.float32), m_ok, rn, rn < C_OUT * S, C_OUT * S)
    out_ptrs = out_ptr + (batch * sob + oh * soh + ow * sow)[:, None] + rn[None, :] * soc
    tl.store(out_ptrs, out, mask=m_ok[:, None] & (rn < C_OUT * S)[None, :])


@Kernel.specializing(("sdc", "sxc"))
def input_grad_kernel(
    dy_ptr, w_ptr, dx_ptr, orient_ptr, tap_code_ptr, phase_ptr, x_ptr, norm_ptr,
    B, C, H, W, N, H_out, W_out, H_phase, W_phase, channel_blocks,
    sdb, sdc, sdh, sdw, sxb, sxc, sxh, sxw,
    stride, padding, dilation, tap_period,
    S: tl.constexpr, S_IN: tl.constexpr, KSIZE: tl.constexpr, NORM_RELU: tl.constexpr, ALIGN: tl.constexpr,
    PRECISION: tl.constexpr, UNIT_STRIDE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dx[b, c, h, w] = sum_{n, tap} dy[b, n, oh, ow] W~[n, c, tap] over oh*stride - padding +
    kh*dilation = h (and the same for w). Program axis 2 is the phase (h % stride, w % stride):
    a tap meets output pixels for all or none of a phase's pixels; those that do are the progressions
    of phase_ptr[phase] and tap_period (``phase_taps``), computed from the loop counter (no table
    load in the loop, which would keep the pipeliner from overlapping the weight tile); UNIT_STRIDE
    (stride 1: one phase, every tap in order) divides by the constant KSIZE instead (fewer
    registers). GEMM rows: that
    phase's input pixels; columns: input channels c; reduction: those taps, then the
    channel_blocks = cdiv(N, BLOCK_K) blocks of output channels. ALIGN divides N, sdb, sdh and sdw.
    NORM_RELU: the forward read its input x (laid out as dx) through a batch norm and a ReLU; the
    gradient is zeroed where that ReLU clipped (``_where_normalized_positive``)."""
    TAPS: tl.constexpr = KSIZE * KSIZE
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    h = tl.program_id(2) // stride + (rm // W_phase) % H_phase * stride
    w = tl.program_id(2) % stride + rm % W_phase * stride
    batch = (rm // (W_phase * H_phase)).to(tl.int64)
    m_ok = (rm < B * H_phase * W_phase) & (h < H) & (w < W)
    c_ok = rn < C
    t = rk % S
    # W~[n0 + k, c, tap] = w_tap_major[n0 // S + k // S, taps[t, tap], c // S_IN * S_IN + T[t, c % S_IN]]
    # for n0 a multiple of S
    w_off = (rk // S)[:, None] * (TAPS * C) + (rn // S_IN * S_IN)[None, :]
    if S_IN > 1:
        w_off += tl.load(orient_ptr + t[:, None] * S + (rn % S)[None, :])
    code = tl.load(tap_code_ptr + t)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    kh0, kw0, steps, taps_w = _phase_progression(phase_ptr, tl.program_id(2), channel_blocks)
    for step in range(steps):  # one loop over (tap of the phase, channel block): one software pipeline
        kh, kw = _phase_tap(step // channel_blocks, kh0, kw0, taps_w, tap_period, KSIZE, UNIT_STRIDE)
        n0 = step % channel_blocks * BLOCK_K
        oh = (h + padding - kh * dilation) // stride  # exact division: no rounding direction issue
        ow = (w + padding - kw * dilation) // stride
        pix_ok = m_ok & (oh >= 0) & (oh < H_out) & (ow >= 0) & (ow < W_out)
        n_ok = (n0 + rk) // ALIGN < N // ALIGN  # = n < N, constant over ALIGN channels
        rows = tl.multiple_of(batch * sdb + oh * sdh + ow * sdw, ALIGN)
        a = tl.load(dy_ptr + rows[:, None] + (n0 + rk)[None, :] * sdc, mask=pix_ok[:, None] & n_ok[None, :],
                    other=0.0)
        src = _transformed_tap(code, kh, kw, KSIZE)
        b = tl.load(w_ptr + w_off + (src * C)[:, None] + n0 // S * (TAPS * C), mask=n_ok[:, None] & c_ok[None, :],
                    other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    dx_offsets = (batch * sxb + h * sxh + w * sxw)[:, None] + rn[None, :] * sxc
    if NORM_RELU:
        acc = _where_normalized_positive(acc, x_ptr, dx_offsets, m_ok[:, None] & c_ok[None, :], norm_ptr, C // S_IN,
                                         rn, c_ok, S_IN)
    tl.store(dx_ptr + dx_offsets, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


@Kernel.specializing(("sdc", "sxc"))
def input_grad_fields_kernel(
    dy_ptr, w_ptr, dx_ptr, orient_ptr, tap_code_ptr, phase_ptr, x_ptr, norm_ptr,
    B, C_IN, H, W, N, LD, H_out, W_out, H_phase, W_phase, channel_blocks, tiles_h, tiles_w,
    sdb, sdc, sdh, sdw, sxb, sxc, sxh, sxw,
    stride, padding, dilation, tap_period,
    S: tl.constexpr, S_IN: tl.constexpr, KSIZE: tl.constexpr, NORM_RELU: tl.constexpr, ALIGN: tl.constexpr,
    PRECISION: tl.constexpr, UNIT_STRIDE: tl.constexpr, TMA: tl.constexpr, TILE_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``input_grad_kernel``'s result (config variant "fields"; the phase's taps and UNIT_STRIDE as there)
    with the weight tile read as vectors. A program's columns are BLOCK_N // S_IN whole input fields
    i0 .. i0 + FIELDS, ordered (s, i) inside the tile. ``w_ptr`` is the input-field-minor copy of the base weight
    (``_field_minor``): row ``(tap*C_out + o)*S_IN + s`` holds ``w[o, :, s, tap]`` over the input
    fields, zero-padded to LD entries (as in ``forward_fields_kernel``), so for reduction row n = o*S + t and
    column orientation s the tile's FIELDS entries are contiguous at row
    ``(taps[t, tap]*C_out + o)*S_IN + T[t, s]``. Columns go back to channel order (i, s) before
    the store. TMA (config variants "tma", "tma-row", stride 1: one phase): ``dy_ptr`` is a tensor descriptor
    of the channels_last dy as (B, H_out, W_out, N) in boxes of (1, BLOCK_M // TILE_W, TILE_W,
    BLOCK_K); a program's pixels are one such rectangle of input rows and columns, per tap the box
    is shifted back by the tap, and what falls outside dy or past N reads as zeros. NORM_RELU as in
    ``input_grad_kernel``."""
    FIELDS: tl.constexpr = BLOCK_N // S_IN
    if TMA:
        image, h0, w0, h, w = _pixel_rectangle(tl.program_id(0), tiles_h, tiles_w, BLOCK_M // TILE_W, TILE_W)
        m_ok = (h < H) & (w < W)
        batch = image.to(tl.int64)
    else:
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        h = tl.program_id(2) // stride + (rm // W_phase) % H_phase * stride
        w = tl.program_id(2) % stride + rm % W_phase * stride
        batch = (rm // (W_phase * H_phase)).to(tl.int64)
        m_ok = (rm < B * H_phase * W_phase) & (h < H) & (w < W)
    i0 = tl.program_id(1) * FIELDS
    rs = tl.arange(0, S_IN)
    rk = tl.arange(0, BLOCK_K)
    t = rk % S  # reduction rows n0 + k, n0 a multiple of S
    code = tl.load(tap_code_ptr + t)
    if S_IN > 1:
        orient = tl.load(orient_ptr + t[:, None] * S + rs[None, :])  # (BLOCK_K, S_IN): T[t, s]
    else:
        orient = 0 * rk[:, None] + rs[None, :]
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    kh0, kw0, steps, taps_w = _phase_progression(phase_ptr, tl.program_id(2), channel_blocks)
    for step in range(steps):  # one loop over (tap of the phase, channel block): one software pipeline
        kh, kw = _phase_tap(step // channel_blocks, kh0, kw0, taps_w, tap_period, KSIZE, UNIT_STRIDE)
        n0 = step % channel_blocks * BLOCK_K
        n_ok = (n0 + rk) // ALIGN < N // ALIGN  # = n < N, constant over ALIGN channels
        if TMA:
            a = tl.reshape(dy_ptr.load([image, h0 + padding - kh * dilation, w0 + padding - kw * dilation, n0]),
                           (BLOCK_M, BLOCK_K))
        else:
            oh = (h + padding - kh * dilation) // stride  # exact division: no rounding direction issue
            ow = (w + padding - kw * dilation) // stride
            pix_ok = m_ok & (oh >= 0) & (oh < H_out) & (ow >= 0) & (ow < W_out)
            rows = tl.multiple_of(batch * sdb + oh * sdh + ow * sdw, ALIGN)
            a = tl.load(dy_ptr + rows[:, None] + (n0 + rk)[None, :] * sdc, mask=pix_ok[:, None] & n_ok[None, :],
                        other=0.0)
        o = (n0 + rk) // S
        src = _transformed_tap(code, kh, kw, KSIZE)
        w_rows = ((src * (N // S) + o) * S_IN)[:, None] + orient  # (BLOCK_K, S_IN)
        b = _field_rows_tile(w_ptr, w_rows, LD, i0, n_ok, S_IN, BLOCK_K, BLOCK_N)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    acc = _channel_order(acc, S_IN, FIELDS)
    rc = i0 * S_IN + tl.arange(0, BLOCK_N)  # channel order (i, s)
    rc_ok = rc < C_IN * S_IN
    dx_offsets = (batch * sxb + h * sxh + w * sxw)[:, None] + rc[None, :] * sxc
    if NORM_RELU:
        acc = _where_normalized_positive(acc, x_ptr, dx_offsets, m_ok[:, None] & rc_ok[None, :], norm_ptr, C_IN, rc,
                                         rc_ok, S_IN)
    tl.store(dx_ptr + dx_offsets, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & rc_ok[None, :])


@Kernel.specializing(("sdc", "sxc"))
def weight_grad_kernel(
    dy_ptr, x_ptr, dw_ptr, source_ptr, inverse_taps_ptr, norm_ptr,
    B, C, H, W, C_OUT, H_out, W_out, pixels_per_split, steps,
    sdb, sdc, sdh, sdw, sxb, sxc, sxh, sxw,
    stride, padding, dilation,
    S: tl.constexpr, S_IN: tl.constexpr, KSIZE: tl.constexpr, NORM: tl.constexpr, NORM_RELU: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One split of the pixels of dw[o, q // S_IN, q % S_IN, tap'] (q = i*S_IN + u), written
    float32 to dw_ptr[split, o, q, tap']: the sum over the S elements t of
    dW~[o*S + t, i*S_IN + source[t, u], inverse_taps[t, tap']], where source[t, u] is the s
    with T[t, s] = u (0 when S_IN = 1) and inverse_taps[t] inverts taps[t]. The S transformed
    contributions accumulate in one register tile. GEMM rows: output fields o; columns: q;
    reduction: pixels (b, oh, ow) in blocks of BLOCK_K, and t. NORM: x is read through its batch
    norm, as in ``forward_kernel``."""
    TAPS: tl.constexpr = KSIZE * KSIZE
    tiles_n = (C + BLOCK_N - 1) // BLOCK_N
    tap_out = tl.program_id(1)
    split = tl.program_id(2)
    ro = tl.program_id(0) // tiles_n * BLOCK_M + tl.arange(0, BLOCK_M)
    rq = tl.program_id(0) % tiles_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    o_ok = ro < C_OUT
    q_ok = rq < C
    pixels = B * H_out * W_out
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    first = split * pixels_per_split
    for step in range(steps):  # one loop over (pixel block, t): pixels_per_split // BLOCK_K * S steps
        t = step % S
        p = first + step // S * BLOCK_K + rk
        p_ok = p < pixels
        ow = p % W_out
        oh = (p // W_out) % H_out
        batch = (p // (W_out * H_out)).to(tl.int64)
        tap = tl.load(inverse_taps_ptr + t * TAPS + tap_out)
        ih = oh * stride - padding + (tap // KSIZE) * dilation
        iw = ow * stride - padding + (tap % KSIZE) * dilation
        pix_ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        if S_IN > 1:
            c = rq // S_IN * S_IN + tl.load(source_ptr + t * S + rq % S_IN)
        else:
            c = rq
        a = tl.load(dy_ptr + (batch * sdb + oh * sdh + ow * sdw)[None, :] + ((ro * S + t) * sdc)[:, None],
                    mask=o_ok[:, None] & p_ok[None, :], other=0.0)
        b = tl.load(x_ptr + (batch * sxb + ih * sxh + iw * sxw)[:, None] + (c * sxc)[None, :],
                    mask=pix_ok[:, None] & q_ok[None, :], other=0.0)
        if NORM:
            b = _normalized(b, norm_ptr, C // S_IN, c, q_ok, pix_ok, S_IN, NORM_RELU)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    dw_ptrs = dw_ptr + split * (C_OUT * C * TAPS) + (ro[:, None] * C + rq[None, :]) * TAPS + tap_out
    tl.store(dw_ptrs, acc, mask=o_ok[:, None] & q_ok[None, :])


@Kernel.specializing(("sdc", "sxc"))
def weight_grad_channels_kernel(
    dy_ptr, x_ptr, dw_ptr, orient_ptr, orbit_slot_ptr, norm_ptr,
    B, C, H, W, N, H_out, W_out, pixels_per_split, blocks_per_split, tiles_h, tiles_w, orbit,
    sdb, sdc, sdh, sdw, sxb, sxc, sxh, sxw,
    stride, padding, dilation,
    S: tl.constexpr, S_IN: tl.constexpr, KSIZE: tl.constexpr, NORM: tl.constexpr, NORM_RELU: tl.constexpr,
    ALIGN_DY: tl.constexpr, ALIGN_X: tl.constexpr,
    PRECISION: tl.constexpr, TMA: tl.constexpr, TILE_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The weight gradient's other GEMM (config variant "channels"): one tap (program_id(1)) of one
    split (program_id(2)) of the pixels of dW~ tiles, folded to the base weight in the epilogue. The
    tile dW~[n, c, tap] = sum_p dy[p, n] x[p shifted by tap, c] (rows: output channels n = o*S + t,
    full tiles; columns: input channels c = i*S_IN + s; reduction: the split's pixels, BLOCK_K at a
    time, in one pipelined loop); then, one t at a time, its rows o*S + t are added to
    dw_ptr[split*k*k + tap, orbit_slot[t, tap], o, i*S_IN + T[t, s]] (float32, zero-initialized;
    T[t, s] replaced by s when S_IN = 1; contiguous along the input channels): the tap's transform
    ``taps[t, tap]`` is one of the at most ``orbit`` taps of its orbit, and ``orbit_slot`` its index
    there (``_orbits``). BLOCK_M is a multiple of S and BLOCK_N of S_IN, so a program owns whole
    fields of rows and columns of its (split, tap) partial: its read-add-writes race with no other
    program and run in a fixed order (deterministic). No W~-sized buffer: the partials hold, per
    split and tap, the base-weight gradient of the tap's orbit. The programs of one split run
    together and read the same pixels. ALIGN_DY divides N and
    the strides of dy but the channels', ALIGN_X C and those of x (vector loads along channels of
    channels_last maps: dy's stay vectors when x has 3 channels).
    TMA (config variants "channels-tma" and "channels-tma-row", stride 1): ``dy_ptr`` and ``x_ptr`` are descriptors
    of the channels_last maps as (B, H', W', channels) in boxes of (1, BLOCK_K // TILE_W, TILE_W,
    BLOCK_M) and (..., BLOCK_N); a reduction block is one rectangle of output pixels (tiles_h x
    tiles_w per image, blocks_per_split of them per split), the x box is shifted by the tap, and
    what falls outside a map (or past the images) reads as zeros. NORM: x is read through its
    batch norm, as in ``forward_kernel``, and, with BLOCK_N >= 64 (a wgmma's rows), the GEMM runs
    transposed, (c, n), so that the normalized tile is the dot's operand in registers (not stored to
    shared memory again)."""
    TAPS: tl.constexpr = KSIZE * KSIZE
    FIELDS: tl.constexpr = BLOCK_M // S
    TRANSPOSED: tl.constexpr = NORM and BLOCK_N >= 64
    tiles_c = (C + BLOCK_N - 1) // BLOCK_N
    n0 = tl.program_id(0) // tiles_c * BLOCK_M
    c0 = tl.program_id(0) % tiles_c * BLOCK_N
    rn = n0 + tl.arange(0, BLOCK_M)
    rc = c0 + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    n_ok = rn // ALIGN_DY < N // ALIGN_DY  # = rn < N, constant over ALIGN_DY channels (vector loads)
    c_ok = rc // ALIGN_X < C // ALIGN_X
    ro = tl.program_id(0) // tiles_c * FIELDS + tl.arange(0, FIELDS)  # the fields o of rows o*S + t
    fold_ok = (ro < N // S)[:, None] & c_ok[None, :]
    tap = tl.program_id(1)
    split = tl.program_id(2)
    pixels = B * H_out * W_out
    dw_fields = dw_ptr + (split * TAPS + tap).to(tl.int64) * (orbit * N // S * C) + ro[:, None] * C
    acc = tl.full((BLOCK_N, BLOCK_M) if TRANSPOSED else (BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for block in range(blocks_per_split):
        if TMA:  # a tile past the last image reads boxes of zeros
            image, h0, w0, oh, ow = _pixel_rectangle(split * blocks_per_split + block, tiles_h, tiles_w,
                                                     BLOCK_K // TILE_W, TILE_W)
            a = tl.trans(tl.reshape(dy_ptr.load([image, h0, w0, n0]), (BLOCK_K, BLOCK_M)))
            b = tl.reshape(x_ptr.load([image, h0 - padding + tap // KSIZE * dilation,
                                       w0 - padding + tap % KSIZE * dilation, c0]), (BLOCK_K, BLOCK_N))
            ih = oh - padding + (tap // KSIZE) * dilation
            iw = ow - padding + (tap % KSIZE) * dilation
            pix_ok = (image < B) & (oh < H_out) & (ow < W_out) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        else:
            p = split * pixels_per_split + block * BLOCK_K + rk
            p_ok = p < pixels
            ow = p % W_out
            oh = (p // W_out) % H_out
            batch = (p // (W_out * H_out)).to(tl.int64)
            ih = oh * stride - padding + (tap // KSIZE) * dilation
            iw = ow * stride - padding + (tap % KSIZE) * dilation
            pix_ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            dy_rows = tl.multiple_of(batch * sdb + oh * sdh + ow * sdw, ALIGN_DY)
            x_rows = tl.multiple_of(batch * sxb + ih * sxh + iw * sxw, ALIGN_X)
            a = tl.load(dy_ptr + dy_rows[None, :] + (rn * sdc)[:, None], mask=n_ok[:, None] & p_ok[None, :],
                        other=0.0)
            b = tl.load(x_ptr + x_rows[:, None] + (rc * sxc)[None, :], mask=pix_ok[:, None] & c_ok[None, :],
                        other=0.0)
        if NORM:
            b = _normalized(b, norm_ptr, C // S_IN, rc, c_ok, pix_ok, S_IN, NORM_RELU)
        if TRANSPOSED:
            acc = tl.dot(tl.trans(b), tl.trans(a), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if TRANSPOSED:
        by_t = tl.permute(tl.reshape(acc, (BLOCK_N, FIELDS, S)), (1, 0, 2))  # (field, c, t)
    else:
        by_t = tl.permute(tl.reshape(acc, (FIELDS, S, BLOCK_N)), (0, 2, 1))
    for fold in tl.static_range(S):  # the fold, one t at a time
        rows = by_t
        for level in tl.static_range(3):  # rows[:, :, fold]: select bit `level` of t (S <= 8)
            if (S >> level) > 1:
                even, odd = tl.split(tl.reshape(rows, (FIELDS, BLOCK_N, (S >> level) // 2, 2)))
                rows = odd if (fold >> level) & 1 else even
        if S_IN > 1:
            q = rc // S_IN * S_IN + tl.load(orient_ptr + fold * S + rc % S_IN)
        else:
            q = rc
        ptrs = dw_fields + tl.load(orbit_slot_ptr + fold * TAPS + tap) * (N // S * C) + q[None, :]
        tl.store(ptrs, tl.load(ptrs, mask=fold_ok, other=0.0) + tl.reshape(rows, (FIELDS, BLOCK_N)), mask=fold_ok)
        tl.debug_barrier()  # these writes are visible to the threads that read them next


# --------------------------------------------------------------------------- launchers

# (order, k, device) -> index tables; a plain dict (SPEC: O(S^2 + S*k^2) entries).
_TABLES: dict[tuple, dict[str, torch.Tensor]] = {}
_TUNER = Tuner()


def tables(group: Group, kernel_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The index tables the kernels read, int32, flattened row-major, with ``taps`` (S, k*k) =
    ``group.tap_permutation(k)``: ``orient`` (S, S) = T; ``source`` (S, S): ``source[t, u]`` = the s
    with ``T[t, s] = u``; ``inverse_taps`` (S, k*k): ``inverse_taps[t, taps[t, j]] = j``;
    ``tap_code`` (S,): ``taps[t]`` as the kernels compute it (``_tap_code``); ``orbit_slot``
    (S, k*k); and, for the host's gather over tap orbits, the int64 ``orbit_sources`` (k*k, orbit
    size) and ``orbit_position`` (k*k,) (``_orbits``)."""
    key = (group.order, kernel_size, device)
    if key not in _TABLES:
        taps = group.tap_permutation(kernel_size)
        slot, sources, position = _orbits(taps)
        _TABLES[key] = {name: table.to(device=device, dtype=torch.int32).flatten() for name, table in
                        {"orient": group.T, "source": group.T.argsort(1),
                         "inverse_taps": taps.argsort(1), "tap_code": _tap_code(taps, kernel_size),
                         "orbit_slot": slot}.items()}
        _TABLES[key].update(orbit_sources=sources.to(device), orbit_position=position.to(device))
    return _TABLES[key]


def _orbits(taps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the (S, k*k) tap permutations of a group: (slot, sources, position). The orbit of tap j is
    {taps[t, j]}, its members in increasing order; ``position[d]`` is d's index in its orbit and
    ``slot[t, j] = position[taps[t, j]]``; ``sources[d]`` (k*k x the largest orbit) lists the members
    of d's orbit, the taps whose transforms reach d, padded with k*k."""
    orbits = [sorted(set(taps[:, j].tolist())) for j in range(taps.shape[1])]
    width = max(map(len, orbits))
    position = torch.tensor([orbit.index(d) for d, orbit in enumerate(orbits)], dtype=torch.int64)
    sources = torch.tensor([orbit + [taps.shape[1]] * (width - len(orbit)) for orbit in orbits], dtype=torch.int64)
    return position[taps].to(torch.int32), sources, position


def _tap_code(taps: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(S,): per element t, the code (swap*4 + flip_rows*2 + flip_columns) under which the kernels'
    ``_transformed_tap`` (run here on torch tensors) gives the row ``taps[t]`` of (S, k*k)."""
    k = kernel_size
    kh, kw = torch.arange(k * k) // k, torch.arange(k * k) % k
    codes = {}
    for code in range(8):
        codes.setdefault(tuple(_transformed_tap.fn(code, kh, kw, k).tolist()), code)
    try:
        return torch.tensor([codes[tuple(row)] for row in taps.tolist()])
    except KeyError:  # pragma: no cover (every element of p4m and p4 is a symmetry of the square)
        raise ValueError("a tap permutation is not a symmetry of the square") from None


_PHASE_TAPS: dict[tuple, tuple[torch.Tensor, int]] = {}


def phase_taps(kernel_size: int, stride: int, padding: int, dilation: int, device: torch.device):
    """The taps that meet output pixels from the input pixels of each phase ``(ph, pw) = (h % stride,
    w % stride)``, as arithmetic progressions: int32 ``(stride**2, 4)`` rows ``(kh0, kw0, n_h, n_w)``
    (phase ``ph*stride + pw``) and their common step ``period``: the taps are ``kh = kh0 + a*period``,
    ``kw = kw0 + b*period`` for ``a < n_h``, ``b < n_w``, kh-major. Tap kh does for ph iff ``(ph +
    padding - kh*dilation) % stride == 0``: kh modulo ``period = stride // gcd(dilation, stride)``."""
    key = (kernel_size, stride, padding, dilation, device)
    if key not in _PHASE_TAPS:
        period = stride // math.gcd(dilation, stride)

        def progression(phase: int) -> tuple[int, int]:  # (first tap, count) along one axis
            meeting = [kh for kh in range(kernel_size) if (phase + padding - kh * dilation) % stride == 0]
            return (meeting[0] if meeting else 0), len(meeting)

        rows = []
        for ph in range(stride):
            for pw in range(stride):
                (kh0, n_h), (kw0, n_w) = progression(ph), progression(pw)
                rows.append([kh0, kw0, n_h, n_w])
        _PHASE_TAPS[key] = torch.tensor(rows, dtype=torch.int32).flatten().to(device), period
    return _PHASE_TAPS[key]


def _field_minor(weight: torch.Tensor, fields_dim: int, multiple: int) -> torch.Tensor:
    """The base weight ``(C_out, C_in, S_in, k, k)`` as rows over the fields of dimension
    ``fields_dim`` (0: output, 1: input fields), zero-padded to a multiple of ``multiple`` entries
    (a power of two): rows ``(kh, kw, i, s)`` for the output fields (forward), ``(kh, kw, o, s)`` for
    the input fields (input gradient). The "fields" kernels read a tile's fields as aligned vectors,
    unmasked: ``multiple`` is the larger of 8 and the fields of a tile."""
    order = (3, 4, 1, 2, 0) if fields_dim == 0 else (3, 4, 0, 2, 1)
    fields = weight.shape[fields_dim]
    rows = weight.permute(order).reshape(-1, fields)
    padded = weight.new_zeros((rows.shape[0], triton.cdiv(fields, multiple) * multiple))
    if padded.numel() >= 2 ** 31:
        raise ValueError(f"the Triton kernels index the weight with 32-bit offsets; a weight of shape "
                         f"{tuple(weight.shape)} is too large")
    padded[:, :fields] = rows
    return padded


def _tap_major(weight: torch.Tensor) -> torch.Tensor:
    """The base weight ``(C_out, C_in, S_in, k, k)`` laid out ``(C_out, k, k, C_in, S_in)``: the
    kernels read the S_in orientations of consecutive input fields from contiguous memory."""
    return weight.permute(0, 3, 4, 1, 2).contiguous()


class _WeightLayouts:
    """The copies of one call's base weight that the kernels read, made on first use (a call
    being tuned launches several configs): ``tap_major`` and ``field_minor(fields)`` over the
    fields of ``fields_dim``, for tiles of ``fields`` fields."""

    def __init__(self, weight: torch.Tensor, fields_dim: int):
        self.weight, self.fields_dim = weight, fields_dim
        self._field_minor: dict[int, torch.Tensor] = {}

    @functools.cached_property
    def tap_major(self) -> torch.Tensor:
        return _tap_major(self.weight)

    def field_minor(self, fields: int) -> torch.Tensor:
        multiple = max(8, fields)
        if multiple not in self._field_minor:
            self._field_minor[multiple] = _field_minor(self.weight, self.fields_dim, multiple)
        return self._field_minor[multiple]


# Columns of the pixel rectangle a "tma" or "channels-tma" program's box covers.
_TILE_W = 16
# The config variants of the forward and input gradient that run their "fields" kernels.
FIELDS_VARIANTS = ("fields", "tma", "tma-row")


def _box_width(config: Config, pixels: int) -> int:
    """Columns of the pixel rectangle of ``pixels`` pixels (BLOCK_M of a forward or input gradient
    tile, BLOCK_K of a weight gradient step) that a TMA config reads as one box: all of them, one row,
    for the "-row" variants, else ``_TILE_W`` (rows: ``pixels // width``)."""
    return pixels if config.variant.endswith("-row") else _TILE_W


def _pixel_tiles(source: torch.Tensor, tma: bool, height: int, width: int, config: Config):
    """What a "fields" kernel reads its activation operand from, and its pixel tiles: with
    ``tma``, a descriptor of the channels_last ``source`` in (1, BLOCK_M // TILE_W, TILE_W, BLOCK_K)
    boxes (``_box_width``) and the rectangles tiling a ``height x width`` map, else ``source`` itself
    and ``cdiv(pixels, BLOCK_M)`` runs of pixels. Returns (source, tiles_h, tiles_w, programs, TILE_W)."""
    box_width = _box_width(config, config.block_m)
    if not tma:
        return source, 0, 0, triton.cdiv(source.shape[0] * height * width, config.block_m), box_width
    rows = config.block_m // box_width
    tiles_h, tiles_w = triton.cdiv(height, rows), triton.cdiv(width, box_width)
    descriptor = TensorDescriptor.from_tensor(source.permute(0, 2, 3, 1), [1, rows, box_width, config.block_k])
    return descriptor, tiles_h, tiles_w, source.shape[0] * tiles_h * tiles_w, box_width


def _tma_eligible(x: torch.Tensor, stride: int) -> bool:
    """Whether a "tma" kernel can read ``x`` (the input, or dy) through a tensor descriptor: stride 1, a
    channels_last map whose channels are 16-byte rows (the descriptor's strides), 16-byte aligned."""
    channels_last = x.permute(0, 2, 3, 1).is_contiguous()
    return (TensorDescriptor is not None and stride == 1 and channels_last and x.shape[1] * x.element_size() % 16 == 0
            and x.data_ptr() % 16 == 0)


def _check_offsets(*tensors: torch.Tensor) -> None:
    """The kernels index within one image in 32 bits (the batch offset is 64-bit)."""
    for t in tensors:
        if sum((n - 1) * abs(s) for n, s in zip(t.shape[1:], t.stride()[1:])) >= 2 ** 31:
            raise ValueError(f"the Triton kernels index one image of a tensor with 32-bit offsets; "
                             f"a tensor of shape {tuple(t.shape)} and strides {t.stride()} is too large")


def _check(x: torch.Tensor) -> None:
    """A dtype and device the convolution kernels run correctly: no bfloat16 in the interpreter."""
    if x.dtype not in DTYPES:
        raise TypeError(f"the Triton kernels take float32, float16 or bfloat16 tensors, got {x.dtype}; "
                        "use the reference backend for other dtypes")
    if x.dtype == torch.bfloat16 and interpreting():
        raise TypeError(f"the Triton interpreter (TRITON_INTERPRET=1, triton {triton.__version__}) computes "
                        "bfloat16 dots wrongly; run the Triton convolution in float32 or float16 there, or on a GPU")
    if x.device.type != "cuda" and not interpreting():
        raise RuntimeError(f"the Triton kernels run {x.device.type} tensors only in the Triton interpreter "
                           "(TRITON_INTERPRET=1); use CUDA tensors")


def _alignment(x: torch.Tensor) -> int:
    """The largest power of two up to 16 that divides the channel count of ``x`` and every
    stride but the channels': the channels of a pixel then start on a multiple of it."""
    numbers = [x.shape[1]] + [s for d, s in enumerate(x.stride()) if d != 1]
    return next(a for a in (16, 8, 4, 2, 1) if all(n % a == 0 for n in numbers))


def problem_class(family: str, dtype: torch.dtype, input_shape, weight_shape, stride: int, padding: int,
                  dilation: int, order: int) -> tuple:
    """The tuning key of ``family``'s kernel for an input ``(B, C_in*S_in, H, W)`` and a weight
    ``(C_out, C_in, S_in, k, k)``: ``auto_paths.problem_class`` (an error when the output is empty)."""
    check_output_size(input_shape, weight_shape[-1], stride, padding, dilation)
    problem = auto_paths.ConvProblem(dtype, tuple(input_shape), tuple(weight_shape), stride, padding, dilation, order,
                                     False)
    return auto_paths.problem_class(family, problem)


def _run(family: str, dtype: torch.dtype, key: tuple, launch, device: torch.device):
    """``launch(config)`` with the forced, cached, default or tuned config of ``family`` for
    ``dtype`` and problem class ``key``."""
    gpu = _device_key(device) if device.type == "cuda" else ()

    def time_ms(config: Config) -> float:
        try:
            return triton.testing.do_bench(lambda: launch(config), warmup=5, rep=25)
        except triton.runtime.errors.OutOfResources:  # a config this GPU cannot run is never chosen
            return float("inf")

    # Triton launches on the current device
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        return launch(_TUNER.choose(family, dtype_class(dtype), key, time_ms, device=gpu, arch=arch_name(device)))


def forward(x, weight, bias, stride: int, padding: int, dilation: int, order: int, relu: bool,
            norm: Optional[torch.Tensor] = None, norm_relu: bool = False,
            statistics: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The group convolution (+ bias, + ReLU if ``relu``), in ``x``'s memory format, and its
    partial statistics if ``statistics``: float32 (programs, 3, C_out*S), per output channel
    and program (count, mean, M2) of the values stored (``statistics_of_fields`` merges them).
    ``norm`` (3, C_in) float32 (mean, scale, shift per input field) convolves the normalized
    input ``(x - mean) * scale + shift`` (ReLU if ``norm_relu``) instead of ``x``. The kernels
    read ``bias`` as a dense vector (made contiguous)."""
    _check(x)
    bias = bias.contiguous() if bias is not None else None
    if statistics and relu:
        raise ValueError("statistics are of the convolution's output before a ReLU; do not fuse both")
    batch, channels, height, width = x.shape
    c_out, _, s_in, k, _ = weight.shape
    h_out, w_out = check_output_size(x.shape, k, stride, padding, dilation)
    out = torch.empty((batch, c_out * order, h_out, w_out), dtype=x.dtype, device=x.device,
                      memory_format=suggest_memory_format(x))
    norm = _check_norm(norm, channels // s_in, x.device)
    if out.numel() == 0:
        return out, (out.new_zeros((0, 3, c_out * order), dtype=torch.float32) if statistics else None)
    _check_offsets(x, out)
    key = problem_class("forward", x.dtype, x.shape, weight.shape, stride, padding, dilation, order)
    key += _FUSED_KEY if norm is not None or statistics else ()
    layouts = _WeightLayouts(weight, fields_dim=0)
    table = tables(get_group(order), k, x.device)
    pixels, n = batch * h_out * w_out, c_out * order

    def launch(config: Config) -> Optional[torch.Tensor]:
        if config.variant in FIELDS_VARIANTS:
            rows = layouts.field_minor(config.block_n // order)
            tma = config.variant.startswith("tma") and _tma_eligible(x, stride)
            source, tiles_h, tiles_w, programs, box_width = _pixel_tiles(x, tma, h_out, w_out, config)
            stats = _statistics_buffer(statistics, programs, n, x.device)
            forward_fields_kernel[(programs, triton.cdiv(c_out, config.block_n // order))](
                source, rows, bias if bias is not None else rows, out, table["orient"], table["tap_code"],
                norm if norm is not None else rows, stats if stats is not None else rows,
                batch, channels, height, width, c_out, rows.shape[1], h_out, w_out,
                triton.cdiv(channels, config.block_k), k * k * triton.cdiv(channels, config.block_k), tiles_h, tiles_w,
                *x.stride(), *out.stride(), stride, padding, dilation, S=order, S_IN=s_in, KSIZE=k,
                HAS_BIAS=bias is not None, RELU=relu, NORM=norm is not None, NORM_RELU=norm_relu, STATS=statistics,
                ALIGN=_alignment(x), PRECISION=precision(x.dtype), TMA=tma, TILE_W=box_width, **config.meta())
        else:  # the plain kernel; "taps" configs flatten the reduction of lifting layers (else run plain)
            flat = config.variant == "taps" and s_in == 1 and norm is None
            grid = (triton.cdiv(pixels, config.block_m), triton.cdiv(n, config.block_n))
            stats = _statistics_buffer(statistics, grid[0], n, x.device)
            steps = triton.cdiv(k * k * channels, config.block_k) if flat else \
                k * k * triton.cdiv(channels, config.block_k)
            forward_kernel[grid](
                x, layouts.tap_major, bias if bias is not None else weight, out, table["orient"], table["tap_code"],
                norm if norm is not None else weight, stats if stats is not None else weight,
                batch, channels, height, width, n, h_out, w_out, triton.cdiv(channels, config.block_k),
                steps, *x.stride(), *out.stride(),
                stride, padding, dilation, S=order, S_IN=s_in, KSIZE=k, HAS_BIAS=bias is not None, RELU=relu,
                NORM=norm is not None, NORM_RELU=norm_relu, STATS=statistics, ALIGN=_alignment(x),
                PRECISION=precision(x.dtype), FLAT_TAPS=flat, **config.meta())
        return stats

    return out, _run("forward", x.dtype, key, launch, x.device)


# Tuning keys of kernels with a fused batch norm end with this: they are tuned apart from the plain
# kernels (their registers differ: some tiles that fit plain spill fused, triton-aot-sm90.md), and
# take the plain kernel's default config where the default table has no entry of their own.
_FUSED_KEY = (FUSED_TAG,)


def _statistics_buffer(statistics: bool, programs: int, channels: int, device) -> Optional[torch.Tensor]:
    """The (programs, 3, channels) float32 partial statistics a forward launch writes, if wanted."""
    return torch.empty((programs, 3, channels), dtype=torch.float32, device=device) if statistics else None


def _check_norm(norm: Optional[torch.Tensor], in_fields: int, device: torch.device) -> Optional[torch.Tensor]:
    """``norm`` as the kernels read it: a contiguous float32 (3, in_fields) tensor on ``device``."""
    if norm is None:
        return None
    if tuple(norm.shape) != (3, in_fields) or norm.dtype != torch.float32 or norm.device != device:
        raise ValueError(f"norm must be a float32 (3, {in_fields}) tensor (mean, scale, shift per input field) "
                         f"on {device}, got {norm.dtype} {tuple(norm.shape)} on {norm.device}")
    return norm.contiguous()


def statistics_of_fields(partials: torch.Tensor, order: int) -> torch.Tensor:
    """(3, C_out): count, mean and M2 of each output field, merged (Chan et al.) from a forward's
    per-channel partials (programs, 3, C_out*order)."""
    from ger_kernels.group_batch_norm import merge_statistics

    programs, _, channels = partials.shape
    by_field = partials.view(programs, 3, channels // order, order).permute(0, 3, 1, 2)
    return merge_statistics(by_field.reshape(programs * order, 3, channels // order))


def input_grad(grad, weight, input_size: list[int], channels_last: bool, stride: int, padding: int,
               dilation: int, order: int, relu_of: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Gradient w.r.t. the input ``(B, C_in*S_in, H, W)`` of size ``input_size``. ``relu_of``
    ``(x, norm)``: the forward read x through the batch norm ``norm`` (as ``forward``) and a ReLU;
    the gradient is zeroed where that ReLU clipped (the gradient w.r.t. the normalized map, before
    the ReLU)."""
    _check(grad)
    batch, channels, height, width = input_size
    c_out, _, s_in, k, _ = weight.shape
    dx = torch.empty(input_size, dtype=grad.dtype, device=grad.device,
                     memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if dx.numel() == 0:
        return dx
    _check_offsets(grad, dx)
    key = problem_class("input_grad", grad.dtype, input_size, weight.shape, stride, padding, dilation, order)
    key += _FUSED_KEY if relu_of is not None else ()
    layouts = _WeightLayouts(weight, fields_dim=1)
    table = tables(get_group(order), k, grad.device)
    h_out, w_out = grad.shape[-2:]
    h_phase, w_phase = triton.cdiv(height, stride), triton.cdiv(width, stride)
    n = c_out * order
    phases, tap_period = phase_taps(k, stride, padding, dilation, grad.device)
    x = norm = None
    if relu_of is not None:
        x, norm = relu_of[0].contiguous(memory_format=suggest_memory_format(dx)), _check_norm(
            relu_of[1], channels // s_in, grad.device)

    def launch(config: Config) -> None:
        if config.variant in FIELDS_VARIANTS:
            rows = layouts.field_minor(config.block_n // s_in)
            tma = config.variant.startswith("tma") and _tma_eligible(grad, stride)
            source, tiles_h, tiles_w, programs, box_width = _pixel_tiles(grad, tma, height, width, config)
            grid = (programs if tma else triton.cdiv(batch * h_phase * w_phase, config.block_m),
                    triton.cdiv(channels // s_in, config.block_n // s_in), 1 if tma else stride * stride)
            input_grad_fields_kernel[grid](
                source, rows, dx, table["orient"], table["tap_code"], phases,
                x if x is not None else dx, norm if norm is not None else rows,
                batch, channels // s_in, height, width, n, rows.shape[1], h_out, w_out, h_phase, w_phase,
                triton.cdiv(n, config.block_k), tiles_h, tiles_w, *grad.stride(), *dx.stride(),
                stride, padding, dilation, tap_period, S=order, S_IN=s_in, KSIZE=k, NORM_RELU=x is not None,
                ALIGN=_alignment(grad), PRECISION=precision(grad.dtype), UNIT_STRIDE=stride == 1, TMA=tma,
                TILE_W=box_width, **config.meta())
            return
        grid = (triton.cdiv(batch * h_phase * w_phase, config.block_m), triton.cdiv(channels, config.block_n),
                stride * stride)
        input_grad_kernel[grid](
            grad, layouts.tap_major, dx, table["orient"], table["tap_code"], phases,
            x if x is not None else dx, norm if norm is not None else weight,
            batch, channels, height, width, n, h_out, w_out, h_phase, w_phase, triton.cdiv(n, config.block_k),
            *grad.stride(), *dx.stride(),
            stride, padding, dilation, tap_period, S=order, S_IN=s_in, KSIZE=k, NORM_RELU=x is not None,
            ALIGN=_alignment(grad), PRECISION=precision(grad.dtype), UNIT_STRIDE=stride == 1, **config.meta())

    _run("input_grad", grad.dtype, key, launch, grad.device)
    return dx


@functools.cache
def _device_key(device: torch.device) -> tuple[str, str]:
    """What a tuning result depends on beyond the problem: the GPU and the triton version."""
    return torch.cuda.get_device_name(device), triton.__version__


@functools.cache
def _processors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _splits(device: torch.device, tiles: int, blocks: int, resident: int = 1) -> int:
    """How many ranges the weight gradient's reduction over ``blocks`` blocks of pixels is split
    into, for ``tiles`` programs per range: at most eight waves of the GPU's multiprocessors
    (``resident`` programs each) and at least four blocks a range; among those, the count with the
    least time by waves x blocks per range (the last wave's idle slots count), the fewest splits
    among equals (each adds a fold epilogue and a partial gradient)."""
    processors = _processors(device) * resident
    most = max(1, min(triton.cdiv(8 * processors, tiles), blocks // 4))

    def waves_by_blocks(splits: int) -> int:
        per_range = triton.cdiv(blocks, splits)
        return triton.cdiv(tiles * triton.cdiv(blocks, per_range), processors) * per_range

    return min(range(1, most + 1), key=lambda splits: (waves_by_blocks(splits), splits))


def weight_grad(grad, x, kernel_size: int, in_orientations: int, stride: int, padding: int, dilation: int,
                order: int, norm: Optional[torch.Tensor] = None, norm_relu: bool = False) -> torch.Tensor:
    """Gradient w.r.t. the base weight ``(C_out, C_in, S_in, k, k)``; partial sums over pixel
    ranges are float32, added in a fixed order (deterministic). Configs of variant "channels" (and
    "channels-tma") run ``weight_grad_channels_kernel`` (GEMM rows C_out*S), the others
    ``weight_grad_kernel``. ``norm`` and ``norm_relu``: the input was normalized on load, as in
    ``forward``."""
    _check(x)
    batch, channels, height, width = x.shape
    c_out = grad.shape[1] // order
    shape = (c_out, channels // in_orientations, in_orientations, kernel_size, kernel_size)
    if grad.numel() == 0 or x.numel() == 0:
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    _check_offsets(x, grad)
    taps = kernel_size * kernel_size
    table = tables(get_group(order), kernel_size, x.device)
    h_out, w_out = grad.shape[-2:]
    pixels = batch * h_out * w_out
    norm = _check_norm(norm, channels // in_orientations, x.device)

    def launch(config: Config) -> torch.Tensor:
        if config.variant.startswith("channels"):
            return launch_channels(config)
        tiles = triton.cdiv(c_out, config.block_m) * triton.cdiv(channels, config.block_n)
        blocks = triton.cdiv(pixels, config.block_k)
        per_split = triton.cdiv(blocks, _splits(x.device, tiles * taps, blocks)) * config.block_k
        partials = torch.empty((triton.cdiv(pixels, per_split), c_out, channels, taps), dtype=torch.float32,
                               device=x.device)
        weight_grad_kernel[(tiles, taps, partials.shape[0])](
            grad, x, partials, table["source"], table["inverse_taps"], norm if norm is not None else partials,
            batch, channels, height, width, c_out, h_out, w_out, per_split, per_split // config.block_k * order,
            *grad.stride(), *x.stride(),
            stride, padding, dilation, S=order, S_IN=in_orientations, KSIZE=kernel_size, NORM=norm is not None,
            NORM_RELU=norm_relu, PRECISION=precision(x.dtype), **config.meta())
        return partials.sum(0)

    def launch_channels(config: Config) -> torch.Tensor:
        tiles = triton.cdiv(c_out * order, config.block_m) * triton.cdiv(channels, config.block_n)
        tma = config.variant.startswith("channels-tma") and _tma_eligible(grad, stride) and _tma_eligible(x, stride)
        box_width = _box_width(config, config.block_k)
        if tma:  # reduction blocks: rectangles of (BLOCK_K // box_width) x box_width output pixels
            rows = config.block_k // box_width
            tiles_h, tiles_w = triton.cdiv(h_out, rows), triton.cdiv(w_out, box_width)
            blocks = batch * tiles_h * tiles_w
            dy_source = TensorDescriptor.from_tensor(grad.permute(0, 2, 3, 1), [1, rows, box_width, config.block_m])
            x_source = TensorDescriptor.from_tensor(x.permute(0, 2, 3, 1), [1, rows, box_width, config.block_n])
        else:
            tiles_h = tiles_w = 0
            blocks = triton.cdiv(pixels, config.block_k)
            dy_source, x_source = grad, x
        orbit = table["orbit_sources"].shape[1]  # taps a program's fold reaches, at most
        meta = dict(S=order, S_IN=in_orientations, KSIZE=kernel_size, NORM=norm is not None, NORM_RELU=norm_relu,
                    ALIGN_DY=_alignment(grad), ALIGN_X=_alignment(x), PRECISION=precision(x.dtype), TMA=tma,
                    TILE_W=box_width, **config.meta())

        def arguments(partials: torch.Tensor, per_split: int) -> tuple:
            return (dy_source, x_source, partials, table["orient"], table["orbit_slot"],
                    norm if norm is not None else partials, batch, channels, height, width, c_out * order, h_out,
                    w_out, per_split * config.block_k, per_split, tiles_h, tiles_w, orbit, *grad.stride(),
                    *x.stride(), stride, padding, dilation)

        resident = weight_grad_channels_kernel.resident_programs(
            x.device, *arguments(torch.empty(0, dtype=torch.float32, device=x.device), 1), **meta)
        per_split = triton.cdiv(blocks, _splits(x.device, tiles * taps, blocks, resident))  # blocks per split
        splits = triton.cdiv(blocks, per_split)
        partials = torch.zeros((splits, taps, orbit, c_out, channels), dtype=torch.float32, device=x.device)
        weight_grad_channels_kernel[(tiles, taps, splits)](*arguments(partials, per_split), **meta)
        # tap d: the sum over the taps of its orbit of their partials' slot for d
        by_source = torch.cat([partials.sum(0), partials.new_zeros((1, orbit, c_out, channels))])
        folded = by_source[table["orbit_sources"], table["orbit_position"][:, None]].sum(1)  # (taps, c_out, channels)
        return folded.permute(1, 2, 0)

    key = problem_class("weight_grad", x.dtype, x.shape, shape, stride, padding, dilation, order)
    key += _FUSED_KEY if norm is not None else ()
    return _run("weight_grad", x.dtype, key, launch, x.device).reshape(shape).to(x.dtype)


# --------------------------------------------------------------------------- torch.library ops

@torch.library.custom_op("ger_kernels_triton::group_conv2d", mutates_args=(), device_types=("cuda", "cpu"))
def group_conv2d_op(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int,
                    padding: int, dilation: int, order: int, relu: bool) -> torch.Tensor:
    return forward(input, weight, bias, stride, padding, dilation, order, relu)[0]


@group_conv2d_op.register_fake
def _(input, weight, bias, stride, padding, dilation, order, relu):
    size = check_output_size(input.shape, weight.shape[-1], stride, padding, dilation)
    return torch.empty([input.shape[0], weight.shape[0] * order, *size], dtype=input.dtype, device=input.device,
                       memory_format=suggest_memory_format(input))


@torch.library.custom_op("ger_kernels_triton::group_conv2d_input_grad", mutates_args=(),
                         device_types=("cuda", "cpu"))
def input_grad_op(grad: torch.Tensor, weight: torch.Tensor, input_size: list[int], channels_last: bool,
                  stride: int, padding: int, dilation: int, order: int) -> torch.Tensor:
    return input_grad(grad, weight, input_size, channels_last, stride, padding, dilation, order)


@input_grad_op.register_fake
def _(grad, weight, input_size, channels_last, stride, padding, dilation, order):
    return torch.empty(input_size, dtype=grad.dtype, device=grad.device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@torch.library.custom_op("ger_kernels_triton::group_conv2d_weight_grad", mutates_args=(),
                         device_types=("cuda", "cpu"))
def weight_grad_op(grad: torch.Tensor, input: torch.Tensor, kernel_size: int, in_orientations: int, stride: int,
                   padding: int, dilation: int, order: int) -> torch.Tensor:
    return weight_grad(grad, input, kernel_size, in_orientations, stride, padding, dilation, order)


@weight_grad_op.register_fake
def _(grad, input, kernel_size, in_orientations, stride, padding, dilation, order):
    shape = (grad.shape[1] // order, input.shape[1] // in_orientations, in_orientations, kernel_size, kernel_size)
    return input.new_empty(shape)


def _input_grad_like(input, grad, weight, conv) -> torch.Tensor:
    """The input gradient of ``grad`` through ``weight``, shaped and laid out like ``input``."""
    return input_grad_op(grad, weight, list(input.shape), suggest_memory_format(input) == torch.channels_last,
                         *conv)


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, order, relu = inputs
    ctx.save_for_backward(input, weight, output if relu else None)
    ctx.conv = (stride, padding, dilation, order)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    input, weight, output = ctx.saved_tensors
    if output is not None:  # the fused ReLU: no gradient where it clipped
        grad = grad.masked_fill(output <= 0, 0)
    dx = dw = db = None
    if ctx.needs_input_grad[0]:
        dx = _input_grad_like(input, grad, weight, ctx.conv)
    if ctx.needs_input_grad[1]:
        dw = weight_grad_op(grad, input, weight.shape[-1], weight.shape[2], *ctx.conv)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        db = grad.unflatten(1, (-1, ctx.conv[-1])).sum((0, 2, 3, 4))
    return dx, dw, db, None, None, None, None, None


group_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


# The two backward ops are bilinear: each is differentiated with the other two ops.
def _bilinear_setup_context(ctx, inputs, output):
    """Saves the two tensor operands and the convolution's (stride, padding, dilation, order)."""
    first, second, _, _, *ctx.conv = inputs
    ctx.save_for_backward(first, second)


def _input_grad_backward(ctx, g):
    grad, weight = ctx.saved_tensors
    d_grad = d_weight = None
    if ctx.needs_input_grad[0]:
        d_grad = group_conv2d_op(g, weight, None, *ctx.conv, False)
    if ctx.needs_input_grad[1]:
        d_weight = weight_grad_op(grad, g, weight.shape[-1], weight.shape[2], *ctx.conv)
    return d_grad, d_weight, None, None, None, None, None, None


def _weight_grad_backward(ctx, g):
    grad, input = ctx.saved_tensors
    d_grad = d_input = None
    if ctx.needs_input_grad[0]:
        d_grad = group_conv2d_op(input, g, None, *ctx.conv, False)
    if ctx.needs_input_grad[1]:
        d_input = _input_grad_like(input, grad, g, ctx.conv)
    return d_grad, d_input, None, None, None, None, None, None


input_grad_op.register_autograd(_input_grad_backward, setup_context=_bilinear_setup_context)
weight_grad_op.register_autograd(_weight_grad_backward, setup_context=_bilinear_setup_context)
for _name in ("group_conv2d", "group_conv2d_input_grad", "group_conv2d_weight_grad"):
    register_autocast(f"ger_kernels_triton::{_name}")


def group_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int,
                 padding: int, dilation: int, group: Group, relu: bool = False) -> torch.Tensor:
    """``reference.conv_expanded`` (arguments already checked), fused; ``relu`` applies a
    ReLU in the kernel's epilogue."""
    return group_conv2d_op(input, weight, bias, stride, padding, dilation, group.order, relu)

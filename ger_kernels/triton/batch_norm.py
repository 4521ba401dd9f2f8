"""Group batch norm in Triton: the four memory-bound stages of ``ger_kernels.group_batch_norm``.

A feature map ``(B, C*S, H, W)`` in either memory format is read as a contiguous matrix
``(R, L)`` whose rows or columns each belong to one field:

- NCHW: ``R = B*C`` rows of ``L = S*H*W`` elements; row ``r`` is field ``r % C``;
- channels_last: ``R = B*H*W`` pixel rows of ``L = C*S`` channels; column ``j`` is field ``j // S``.

Kernels (float32, float16 or bfloat16 maps; per-field vectors and all arithmetic float32):

- ``statistics_kernel``: partial (count, mean, M2) of ``x - shift[f]`` (a value of the field)
  over tiles of each row (NCHW) or column (channels_last), Chan-merged tile by tile (a tile's
  own M2 is taken about its own mean, so no sum of squares of large values is ever subtracted);
- ``normalize_kernel``: ``y = (x - mean[f]) * scale[f] + shift[f]`` (+ residual) (ReLU);
- ``grad_sums_kernel``: partial ``sum g`` and ``sum g * (x - mean[f])``, ``g`` = the output
  gradient, zeroed where a fused ReLU clipped (``y <= 0``);
- ``input_grad_kernel``: ``dx = g * a[f] + (x - mean[f]) * b[f] + c[f]`` (and ``g``, the
  residual's gradient).

Loops have constexpr bounds (``ITERS`` tiles per program) so that every kernel runs in the
Triton interpreter. ``ALIGN`` (a power of two dividing ``L``) lets the compiler prove rows
aligned and masks constant over ALIGN columns: vector loads and stores. Launchers take
tensors already laid out in one memory format; partial results are returned for
``ger_kernels.group_batch_norm`` to merge.
"""

from __future__ import annotations

import contextlib

import triton
import triton.language as tl
import torch
from torch._prims_common import suggest_memory_format

from ger_kernels.triton.jit import DeviceFunction, Kernel

__all__ = ["tile_moments", "Tiles", "statistics_partials", "normalize", "grad_sums_partials",
           "input_grad", "statistics_kernel", "normalize_kernel", "grad_sums_kernel", "input_grad_kernel"]

TILE = 2048  # elements per tile: 16 per thread of 4 warps
CHANNEL_TILE = 64  # columns of a channels_last tile
MAX_ITERS = 16  # tiles one reducing program merges
MIN_PROGRAMS = 1024  # reducing programs wanted (several waves on a GPU), before tiles per program grow
NUM_WARPS = 4
NUM_STAGES = 3  # the reducing loops prefetch tiles (Triton's default)
_SUM = tl.standard._sum_combine  # tl.sum is a @jit function; the interpreter recognizes this combiner


@DeviceFunction
def tile_moments(x, mask, AXIS: tl.constexpr):
    """(count, mean, M2 about that mean) along AXIS of the float32 tile ``x`` where ``mask``: a
    batch norm's partial statistics of one tile (merged with Chan et al.'s formula)."""
    count = tl.reduce(mask.to(tl.float32), AXIS, _SUM)
    mean = tl.reduce(tl.where(mask, x, 0.0), AXIS, _SUM) / tl.maximum(count, 1.0)
    centered = tl.where(mask, x - tl.expand_dims(mean, AXIS), 0.0)
    return count, mean, tl.reduce(centered * centered, AXIS, _SUM)


@DeviceFunction
def _tile(rows, cols, R, L, ALIGN: tl.constexpr):
    """(mask, offsets) of the tile ``rows x cols`` of the ``(R, L)`` matrix; the mask is constant
    over ALIGN columns and the rows start on multiples of ALIGN (vector loads and stores)."""
    mask = (rows < R)[:, None] & (cols // ALIGN < L // ALIGN)[None, :]
    offsets = tl.multiple_of(rows.to(tl.int64) * L, ALIGN)[:, None] + cols[None, :]
    return mask, offsets


@DeviceFunction
def _elementwise_tile(R, L, C, S: tl.constexpr, FIELDS_ON_ROWS: tl.constexpr, ALIGN: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """(field, mask, offsets) of program (i, j)'s tile: rows i*BLOCK_R.., columns j*BLOCK_L..;
    field per row (NCHW) or per column (channels_last)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    if FIELDS_ON_ROWS:
        field = rows % C
    else:
        field = tl.where(cols < L, cols // S, 0)
    mask, offsets = _tile(rows, cols, R, L, ALIGN)
    return field, mask, offsets


@DeviceFunction
def _reduced_lines(R, L, C, S: tl.constexpr, FIELDS_ON_ROWS: tl.constexpr, BLOCK_R: tl.constexpr,
                   BLOCK_L: tl.constexpr):
    """(kept, kept_ok, field) of a reducing program: the rows (NCHW) or columns (channels_last)
    it keeps apart, whether each exists, and its field."""
    if FIELDS_ON_ROWS:
        kept = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        kept_ok = kept < R
        field = kept % C
    else:
        kept = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
        kept_ok = kept < L
        field = tl.where(kept_ok, kept // S, 0)
    return kept, kept_ok, field


@DeviceFunction
def _reduction_tile(kept, i, R, L, FIELDS_ON_ROWS: tl.constexpr, ALIGN: tl.constexpr, BLOCK_R: tl.constexpr,
                    BLOCK_L: tl.constexpr, ITERS: tl.constexpr):
    """(mask, offsets) of tile ``i`` of the ITERS that a reducing program merges over its ``kept`` lines."""
    if FIELDS_ON_ROWS:
        rows = kept
        cols = (tl.program_id(1) * ITERS + i) * BLOCK_L + tl.arange(0, BLOCK_L)
    else:
        rows = (tl.program_id(0) * ITERS + i) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = kept
    return _tile(rows, cols, R, L, ALIGN)


@DeviceFunction
def _partials_offsets(kept, L, FIELDS_ON_ROWS: tl.constexpr):
    """Where a reducing program writes its partials of the ``kept`` lines (partials[k, row, j] for
    NCHW, partials[k, i, column] for channels_last; plane k = 0)."""
    if FIELDS_ON_ROWS:
        return kept.to(tl.int64) * tl.num_programs(1) + tl.program_id(1)
    return tl.program_id(0).to(tl.int64) * L + kept


@Kernel
def statistics_kernel(x_ptr, shift_ptr, partials_ptr, R, L, C, plane,
                      S: tl.constexpr, FIELDS_ON_ROWS: tl.constexpr, ALIGN: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_L: tl.constexpr, ITERS: tl.constexpr):
    """(count, mean, M2) of ``x - shift[f]`` over ITERS tiles: NCHW (FIELDS_ON_ROWS) program
    (i, j) covers rows i*BLOCK_R.. over columns j*ITERS*BLOCK_L.. and writes partials[k, row, j];
    channels_last program (i, j) covers columns j*BLOCK_L.. over rows i*ITERS*BLOCK_R.. and
    writes partials[k, i, column]; k = 0, 1, 2 planes ``plane`` elements apart. A shift near
    the field's values keeps the partial means small, so that float32 rounds them finely."""
    AXIS: tl.constexpr = 1 if FIELDS_ON_ROWS else 0  # the axis reduced within a tile
    kept, kept_ok, field = _reduced_lines(R, L, C, S, FIELDS_ON_ROWS, BLOCK_R, BLOCK_L)
    count = tl.where(kept_ok, 0.0, 0.0)  # float32 zeros, one per kept line
    mean = count
    m2 = count
    shift = tl.expand_dims(tl.load(shift_ptr + field), AXIS)
    for i in range(ITERS):
        mask, offsets = _reduction_tile(kept, i, R, L, FIELDS_ON_ROWS, ALIGN, BLOCK_R, BLOCK_L, ITERS)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tile_count, tile_mean, tile_m2 = tile_moments(x - shift, mask, AXIS)
        total = count + tile_count
        weight = tile_count / tl.maximum(total, 1.0)
        delta = tile_mean - mean
        mean += delta * weight
        m2 += tile_m2 + delta * delta * count * weight
        count = total
    out = _partials_offsets(kept, L, FIELDS_ON_ROWS)
    tl.store(partials_ptr + out, count, mask=kept_ok)
    tl.store(partials_ptr + plane + out, mean, mask=kept_ok)
    tl.store(partials_ptr + 2 * plane + out, m2, mask=kept_ok)


@Kernel.specializing(("C",))
def normalize_kernel(x_ptr, residual_ptr, y_ptr, mean_ptr, scale_ptr, shift_ptr, R, L, C,
                     S: tl.constexpr, FIELDS_ON_ROWS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
                     ALIGN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """y = (x - mean[f]) * scale[f] + shift[f] (+ residual) (ReLU) on one BLOCK_R x BLOCK_L tile."""
    AXIS: tl.constexpr = 1 if FIELDS_ON_ROWS else 0
    field, mask, offsets = _elementwise_tile(R, L, C, S, FIELDS_ON_ROWS, ALIGN, BLOCK_R, BLOCK_L)
    mean = tl.expand_dims(tl.load(mean_ptr + field), AXIS)
    scale = tl.expand_dims(tl.load(scale_ptr + field), AXIS)
    shift = tl.expand_dims(tl.load(shift_ptr + field), AXIS)
    y = (tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32) - mean) * scale + shift
    if HAS_RESIDUAL:
        y += tl.load(residual_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        y = tl.maximum(y, 0.0)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


@Kernel.specializing(("C",))
def grad_sums_kernel(grad_ptr, x_ptr, y_ptr, mean_ptr, partials_ptr, R, L, C, plane,
                     S: tl.constexpr, FIELDS_ON_ROWS: tl.constexpr, RELU: tl.constexpr, ALIGN: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr):
    """sum g and sum g * (x - mean[f]) over ITERS tiles, tiled and stored as in
    statistics_kernel (planes k = 0, 1); g = grad, 0 where y <= 0 if RELU."""
    AXIS: tl.constexpr = 1 if FIELDS_ON_ROWS else 0
    kept, kept_ok, field = _reduced_lines(R, L, C, S, FIELDS_ON_ROWS, BLOCK_R, BLOCK_L)
    mean = tl.expand_dims(tl.load(mean_ptr + field, mask=kept_ok, other=0.0), AXIS)
    sum_g = tl.full((BLOCK_R, BLOCK_L), 0.0, tl.float32)
    sum_gx = tl.full((BLOCK_R, BLOCK_L), 0.0, tl.float32)
    for i in range(ITERS):
        mask, offsets = _reduction_tile(kept, i, R, L, FIELDS_ON_ROWS, ALIGN, BLOCK_R, BLOCK_L, ITERS)
        g = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if RELU:
            g = tl.where(tl.load(y_ptr + offsets, mask=mask, other=0.0) > 0, g, 0.0)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        sum_g += g
        sum_gx += tl.where(mask, g * (x - mean), 0.0)
    out = _partials_offsets(kept, L, FIELDS_ON_ROWS)
    tl.store(partials_ptr + out, tl.reduce(sum_g, AXIS, _SUM), mask=kept_ok)
    tl.store(partials_ptr + plane + out, tl.reduce(sum_gx, AXIS, _SUM), mask=kept_ok)


@Kernel.specializing(("C",))
def input_grad_kernel(grad_ptr, x_ptr, y_ptr, dx_ptr, dresidual_ptr, mean_ptr, a_ptr, b_ptr, c_ptr, R, L, C,
                      S: tl.constexpr, FIELDS_ON_ROWS: tl.constexpr, RELU: tl.constexpr,
                      RESIDUAL_GRAD: tl.constexpr, ALIGN: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_L: tl.constexpr):
    """dx = g * a[f] + (x - mean[f]) * b[f] + c[f] on one tile, g = grad (0 where y <= 0 if
    RELU); g is also stored to dresidual if RESIDUAL_GRAD."""
    AXIS: tl.constexpr = 1 if FIELDS_ON_ROWS else 0
    field, mask, offsets = _elementwise_tile(R, L, C, S, FIELDS_ON_ROWS, ALIGN, BLOCK_R, BLOCK_L)
    mean = tl.expand_dims(tl.load(mean_ptr + field), AXIS)
    a = tl.expand_dims(tl.load(a_ptr + field), AXIS)
    b = tl.expand_dims(tl.load(b_ptr + field), AXIS)
    c = tl.expand_dims(tl.load(c_ptr + field), AXIS)
    g = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        g = tl.where(tl.load(y_ptr + offsets, mask=mask, other=0.0) > 0, g, 0.0)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    dx = g * a + (x - mean) * b + c
    tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    if RESIDUAL_GRAD:
        tl.store(dresidual_ptr + offsets, g.to(dresidual_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launchers

class Tiles:
    """The matrix view of a map and its tiling: ``R x L``, fields on rows (NCHW) or columns,
    ``BLOCK_R x BLOCK_L`` tiles, ``iters`` tiles per reducing program and its grid."""

    def __init__(self, x: torch.Tensor, order: int):
        batch, channels, height, width = x.shape
        self.fields_on_rows = suggest_memory_format(x) != torch.channels_last
        if self.fields_on_rows:
            self.R, self.L = batch * (channels // order), order * height * width
            self.block_l = min(TILE, triton.next_power_of_2(self.L))
            self.block_r = TILE // self.block_l
        else:
            self.R, self.L = batch * height * width, channels
            self.block_l = min(CHANNEL_TILE, triton.next_power_of_2(self.L))
            self.block_r = TILE // self.block_l
        self.grid = (triton.cdiv(self.R, self.block_r), triton.cdiv(self.L, self.block_l))
        along, across = (self.grid[1], self.grid[0]) if self.fields_on_rows else self.grid
        self.iters = 1  # grows while the programs stay many: fewer partials to merge
        while (self.iters < MAX_ITERS and self.iters < along
               and across * triton.cdiv(along, 2 * self.iters) >= MIN_PROGRAMS):
            self.iters *= 2
        along = triton.cdiv(along, self.iters)
        self.reduce_grid = (self.grid[0], along) if self.fields_on_rows else (along, self.grid[1])
        self.align = next(a for a in (16, 8, 4, 2, 1) if self.L % a == 0)  # rows start at multiples of it

    def partials_shape(self, planes: int) -> tuple[int, int, int]:
        """(planes, P0, P1) of a reducing kernel's output."""
        if self.fields_on_rows:
            return planes, self.R, self.reduce_grid[1]
        return planes, self.reduce_grid[0], self.L

    def meta(self) -> dict:
        return {"FIELDS_ON_ROWS": self.fields_on_rows, "ALIGN": self.align, "BLOCK_R": self.block_r,
                "BLOCK_L": self.block_l, "num_warps": NUM_WARPS, "num_stages": NUM_STAGES}


def _on_device(x: torch.Tensor):
    """Triton launches on the current CUDA device: make it ``x``'s."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def _per_field(partials: torch.Tensor, t: Tiles, fields: int, order: int) -> torch.Tensor:
    """(planes, P0, P1) partials -> (P, planes, fields): every partial of each field."""
    planes = partials.shape[0]
    if t.fields_on_rows:  # (planes, B*C, P1): rows b*C + c
        return partials.view(planes, -1, fields, partials.shape[2]).permute(1, 3, 0, 2).reshape(-1, planes, fields)
    # (planes, P0, C*S): columns c*S + s
    return partials.view(planes, partials.shape[1], fields, order).permute(1, 3, 0, 2).reshape(-1, planes, fields)


def statistics_partials(x: torch.Tensor, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, 3, C) float32 partial (count, mean, M2) of ``x - shift`` per field, and the (C,)
    shift: each field's first value (``x`` in one memory format, non-empty)."""
    t = Tiles(x, order)
    shift = x[0, ::order, 0, 0].float().contiguous()
    partials = torch.empty(t.partials_shape(3), dtype=torch.float32, device=x.device)
    with _on_device(x):
        statistics_kernel[t.reduce_grid](x, shift, partials, t.R, t.L, x.shape[1] // order, partials[0].numel(),
                                         S=order, ITERS=t.iters, **t.meta())
    return _per_field(partials, t, x.shape[1] // order, order), shift


def normalize(x, residual, mean, scale, shift, order: int, relu: bool) -> torch.Tensor:
    """(x - mean) * scale + shift (+ residual) (ReLU), per field; ``residual`` in x's layout or None."""
    t = Tiles(x, order)
    y = torch.empty_like(x)
    with _on_device(x):
        normalize_kernel[t.grid](x, residual if residual is not None else x, y, mean, scale, shift, t.R, t.L,
                                 x.shape[1] // order, S=order, HAS_RESIDUAL=residual is not None, RELU=relu, **t.meta())
    return y


def grad_sums_partials(grad, x, y, mean, order: int) -> torch.Tensor:
    """(P, 2, C) float32 partial sums of g and g * (x - mean) per field; ``y`` given: the ReLU's mask."""
    t = Tiles(x, order)
    partials = torch.empty(t.partials_shape(2), dtype=torch.float32, device=x.device)
    with _on_device(x):
        grad_sums_kernel[t.reduce_grid](grad, x, y if y is not None else x, mean, partials, t.R, t.L,
                                        x.shape[1] // order, partials[0].numel(), S=order, RELU=y is not None,
                                        ITERS=t.iters, **t.meta())
    return _per_field(partials, t, x.shape[1] // order, order)


def input_grad(grad, x, y, mean, a, b, c, order: int, residual_grad: bool) -> list[torch.Tensor]:
    """[dx] or [dx, g] (g: the residual's gradient), in x's layout and dtype."""
    t = Tiles(x, order)
    dx = torch.empty_like(x)
    dresidual = torch.empty_like(x) if residual_grad else None
    with _on_device(x):
        input_grad_kernel[t.grid](grad, x, y if y is not None else x, dx, dresidual if residual_grad else dx, mean,
                                  a, b, c, t.R, t.L, x.shape[1] // order, S=order, RELU=y is not None,
                                  RESIDUAL_GRAD=residual_grad, **t.meta())
    return [dx, dresidual] if residual_grad else [dx]

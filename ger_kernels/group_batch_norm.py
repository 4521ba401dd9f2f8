"""Group batch norm as fused ops (SPEC section 5): batch statistics per field, shared by its S
orientations, over batch, orientations and pixels; the normalization with an optional residual
add and ReLU, ``relu(bn(x) + residual)``; and their backward.

Maps are ``(B, C*S, H, W)``, NCHW or channels_last (outputs keep the input's format; other
strides are made dense first); field ``c`` holds channels ``c*S .. c*S + S - 1``. Per-field
vectors (statistics, weight, bias, coefficients) and all arithmetic are float32 (float64 for
float64 maps) whatever the map's dtype: under autocast batch norm gets bfloat16 activations and
float32 parameters. Triton kernels (``ger_kernels.triton.batch_norm``) run float32/16-bit maps
on CUDA with ``GER_KERNELS_TRITON_BN=1`` (opt-in until they have run on a GPU), and on CPU in the
Triton interpreter (``TRITON_INTERPRET=1``); plain torch runs the rest (the single-process op
through ATen's batch norm kernels, BatchNorm3d's own).

Stages, each a ``torch.library`` op (namespace ``ger_kernels``) with a fake kernel, with the
points where a synchronized batch norm reduces over processes:

    statistics(x)                         -> (3, C): count, mean, M2 (sum of squared deviations)
        [all_gather of (3, C) per process, then merge_statistics: the global batch's]
    normalize(x, mean, scale, shift, residual, relu) -> y = act((x - mean) * scale + shift + residual)
    grad_sums(grad, x, y, mean)           -> (2, C): sum g, sum g * (x - mean); g = grad, 0 where y <= 0
        [all_reduce(SUM) of the sums]
    input_grad(grad, x, y, mean, a, b, c, residual_grad) -> [dx] or [dx, g]: dx = g*a + (x - mean)*b + c

The variance never subtracts large sums of squares: the kernels take each tile's M2 about the
tile's own mean, of the values less a shift (a value of the field, so that float32 partial means
keep the spread's digits), and merge tiles with Chan et al.'s formula (also used across processes).
``group_batch_norm`` is the differentiable single-process op (``GroupBatchNorm2d`` calls it): on
Triton the stages without the reductions over processes; its running statistics come back as
outputs (custom ops with autograd cannot mutate) and are copied into the buffers. A synchronized
version composes the stage ops the same way, with the collectives between them
(``tests/test_group_batch_norm.py`` runs that recipe over two shards of a batch).
Its backward under ``create_graph`` (double backward) is ATen's batch norm backward, on Triton
too: the staged ops have no derivatives. ``min_bytes`` counts what each kernel must move, for
bandwidth figures.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch
from torch._prims_common import suggest_memory_format

from ger_kernels import triton as triton_backend  # imports no triton until its kernels are used

__all__ = ["TRITON_BN_ENV", "group_batch_norm", "batch_moments", "check_batch", "takes_statistics", "scale_shift",
           "staged_backward", "statistics", "merge_statistics",
           "normalize", "grad_sums", "input_grad", "input_grad_coefficients", "running_statistics", "min_bytes",
           "KERNELS"]

# The Triton kernels have been checked in the interpreter and compiled for sm_90, but have not yet
# run on a GPU (their GPU parity tests did not run in the H200 session of 2026-11-29): on CUDA they
# are opt-in until they have, and plain torch (ATen's batch norm kernels) runs by default.
TRITON_BN_ENV = "GER_KERNELS_TRITON_BN"
_DIMS = (0, 2, 3, 4)  # the 5-D view's dims reduced per field


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a dense NCHW or channels_last tensor (a copy only for other strides)."""
    return x.contiguous(memory_format=suggest_memory_format(x))


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` in ``x``'s memory format (``x`` dense)."""
    return t.contiguous(memory_format=suggest_memory_format(x))


def _unfolded(t5: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """An op's output ``(B, C, S, H, W)`` as ``(B, C*S, H, W)`` in ``x``'s memory format, not a view (a view
    returned by a custom op cannot be modified in place, as by a following ``nn.ReLU(inplace=True)``)."""
    return _like(t5.flatten(1, 2), x).detach()


@functools.cache
def _triton_available(device_type: str, interpreting: bool) -> bool:
    """Decided once per device type and interpreter setting (the key; importing triton is slow)."""
    return triton_backend.status(device_type)[0]


def _on_triton(x: torch.Tensor) -> bool:
    """Whether the Triton kernels run ``x``: CUDA with ``GER_KERNELS_TRITON_BN=1``, or CPU in the
    interpreter; non-empty, not float64."""
    if x.dtype not in triton_backend.DTYPES or x.numel() == 0:
        return False
    if x.device.type == "cpu" and not triton_backend.interpreting():
        return False
    if x.device.type == "cuda" and os.environ.get(TRITON_BN_ENV) != "1":
        return False
    return _triton_available(x.device.type, triton_backend.interpreting())


def takes_statistics(x: torch.Tensor) -> bool:
    """Whether ``group_batch_norm`` of a map like ``x`` uses given batch statistics (its staged
    kernels run; ATen's batch norm computes its own)."""
    return _on_triton(x)


def _kernels():
    from ger_kernels.triton import batch_norm

    return batch_norm


def _field_view(v: torch.Tensor) -> torch.Tensor:
    """A per-field vector ``(C,)`` broadcast against the 5-D view ``(B, C, S, H, W)``."""
    return v.view(1, -1, 1, 1, 1)


def _masked_grad5(grad: torch.Tensor, y: Optional[torch.Tensor], order: int, dtype: torch.dtype) -> torch.Tensor:
    g = grad.unflatten(1, (-1, order)).to(dtype)
    return g if y is None else g.masked_fill(y.unflatten(1, (-1, order)) <= 0, 0)


# --------------------------------------------------------------------------- stages

def merge_statistics(stats: torch.Tensor) -> torch.Tensor:
    """(P, 3, C) partial (count, mean, M2) -> (3, C) of their union (Chan et al.): M2 adds the
    partials' M2 and ``count * (mean - merged mean)**2``, terms that are never negative."""
    count, mean, m2 = stats.unbind(1)
    total = count.sum(0)
    merged = (count * mean).sum(0) / total.clamp(min=1)
    return torch.stack([total, merged, (m2 + count * (mean - merged) ** 2).sum(0)])


def _statistics(x: torch.Tensor, order: int) -> torch.Tensor:
    x = _dense(x)
    fields = x.shape[1] // order
    if x.numel() == 0:
        return x.new_zeros((3, fields), dtype=_accumulation_dtype(x))
    if _on_triton(x):
        partials, shift = _kernels().statistics_partials(x, order)
        count, mean, m2 = merge_statistics(partials)
        return torch.stack([count, mean + shift, m2])
    x5 = x.unflatten(1, (fields, order)).to(_accumulation_dtype(x))
    var, mean = torch.var_mean(x5, dim=_DIMS, correction=0)
    count = x5.numel() // fields
    return torch.stack([torch.full_like(mean, count), mean, var * count])


@torch.library.custom_op("ger_kernels::group_bn_statistics", mutates_args=())
def statistics(input: torch.Tensor, order: int) -> torch.Tensor:
    """(3, C): count, mean and M2 of each field of ``input`` ``(B, C*order, H, W)``."""
    return _statistics(input, order)


@statistics.register_fake
def _(input, order):
    return input.new_empty((3, input.shape[1] // order), dtype=_accumulation_dtype(input))


def _normalize(x, mean, scale, shift, residual, order: int, relu: bool) -> torch.Tensor:
    x = _dense(x)
    residual = _like(residual, x) if residual is not None else None
    if _on_triton(x):
        return _kernels().normalize(x, residual, mean, scale, shift, order, relu)
    dtype = _accumulation_dtype(x)
    x5 = x.unflatten(1, (-1, order)).to(dtype)
    y = torch.addcmul(_field_view(shift), x5 - _field_view(mean), _field_view(scale))
    if residual is not None:
        y += residual.unflatten(1, (-1, order))
    if relu:
        y.relu_()
    return _unfolded(y.to(x.dtype), x)


@torch.library.custom_op("ger_kernels::group_bn_normalize", mutates_args=())
def normalize(input: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
              residual: Optional[torch.Tensor], order: int, relu: bool) -> torch.Tensor:
    """``(input - mean[f]) * scale[f] + shift[f]`` (+ residual) (ReLU if ``relu``), per field f."""
    return _normalize(input, mean, scale, shift, residual, order, relu)


@normalize.register_fake
def _(input, mean, scale, shift, residual, order, relu):
    return torch.empty_like(input, memory_format=suggest_memory_format(input))


def _grad_sums(grad, x, y, mean, order: int) -> torch.Tensor:
    x = _dense(x)
    grad = _like(grad, x)
    y = _like(y, x) if y is not None else None
    if x.numel() == 0:
        return x.new_zeros((2, x.shape[1] // order), dtype=_accumulation_dtype(x))
    if _on_triton(x):
        return _kernels().grad_sums_partials(grad, x, y, mean, order).sum(0)
    dtype = _accumulation_dtype(x)
    g5 = _masked_grad5(grad, y, order, dtype)
    centered = x.unflatten(1, (-1, order)).to(dtype) - _field_view(mean)
    return torch.stack([g5.sum(_DIMS), (g5 * centered).sum(_DIMS)])


@torch.library.custom_op("ger_kernels::group_bn_grad_sums", mutates_args=())
def grad_sums(grad: torch.Tensor, input: torch.Tensor, output: Optional[torch.Tensor], mean: torch.Tensor,
              order: int) -> torch.Tensor:
    """(2, C): ``sum g`` and ``sum g * (input - mean[f])`` per field f, ``g = grad`` zeroed
    where ``output <= 0`` when ``output`` (of a fused ReLU) is given."""
    return _grad_sums(grad, input, output, mean, order)


@grad_sums.register_fake
def _(grad, input, output, mean, order):
    return input.new_empty((2, input.shape[1] // order), dtype=_accumulation_dtype(input))


def _input_grad(grad, x, y, mean, a, b, c, order: int, residual_grad: bool) -> list[torch.Tensor]:
    x = _dense(x)
    grad = _like(grad, x)
    y = _like(y, x) if y is not None else None
    if _on_triton(x):
        return _kernels().input_grad(grad, x, y, mean, a, b, c, order, residual_grad)
    dtype = _accumulation_dtype(x)
    g5 = _masked_grad5(grad, y, order, dtype)
    centered = x.unflatten(1, (-1, order)).to(dtype) - _field_view(mean)
    dx = g5 * _field_view(a) + centered * _field_view(b) + _field_view(c)
    # without the ReLU's mask g5 may be a view of grad, and an op's outputs may not alias its inputs
    outputs = [dx] + ([g5.to(x.dtype, copy=y is None)] if residual_grad else [])
    return [_unfolded(t.to(x.dtype), x) for t in outputs]


@torch.library.custom_op("ger_kernels::group_bn_input_grad", mutates_args=())
def input_grad(grad: torch.Tensor, input: torch.Tensor, output: Optional[torch.Tensor], mean: torch.Tensor,
               a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, order: int,
               residual_grad: bool) -> list[torch.Tensor]:
    """``[dx]``, or ``[dx, g]`` if ``residual_grad``: ``dx = g*a[f] + (input - mean[f])*b[f] + c[f]``,
    ``g`` as in ``grad_sums`` (the gradient of a residual added before the ReLU)."""
    return _input_grad(grad, input, output, mean, a, b, c, order, residual_grad)


@input_grad.register_fake
def _(grad, input, output, mean, a, b, c, order, residual_grad):
    like = torch.empty_like(input, memory_format=suggest_memory_format(input))
    return [like] + ([torch.empty_like(like)] if residual_grad else [])


def input_grad_coefficients(invstd: torch.Tensor, weight: Optional[torch.Tensor], sums: Optional[torch.Tensor],
                            count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b, c) of ``input_grad``: with batch statistics of ``count`` values per field (sums of
    ``grad_sums`` over them), ``dx = a * (g - mean(g) - xhat * mean(g * xhat))``,
    ``xhat = (x - mean) * invstd``; with fixed statistics (``sums`` None), ``dx = a * g``.
    ``a = weight * invstd``."""
    a = scale_shift(invstd, weight, None)[0]
    if sums is None:
        zero = torch.zeros_like(a)
        return a, zero, zero
    return a, -a * invstd * invstd * sums[1] / count, -a * sums[0] / count


def running_statistics(running_mean: torch.Tensor, running_var: torch.Tensor, mean: torch.Tensor,
                       var: torch.Tensor, count: int, factor) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm's update of the running statistics, out of place: ``(1 - factor) * running +
    factor * batch``, with the unbiased variance ``var * count / (count - 1)``; ``factor`` a
    float (momentum) or a 0-d tensor (``1 / num_batches_tracked``, momentum=None)."""
    new_mean = running_mean * (1 - factor) + mean.to(running_mean.dtype) * factor
    new_var = running_var * (1 - factor) + (var * (count / (count - 1))).to(running_var.dtype) * factor
    return new_mean, new_var


# --------------------------------------------------------------------------- the single-process op

def _updates(input: torch.Tensor, running_mean: Optional[torch.Tensor], training: bool) -> bool:
    return training and running_mean is not None and input.numel() > 0


def _native_forward(input, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum,
                    eps, order):
    """ATen's batch norm on the 5-D view (BatchNorm3d's kernels): (output 5-D, mean, invstd, new
    running mean, new running var); the plain-torch path of the single-process op."""
    x5 = _dense(input).unflatten(1, (-1, order))
    aten = torch.ops.aten
    if _updates(input, running_mean, training):
        factor = momentum if momentum is not None else 1.0 / num_batches_tracked.item()
        return aten._native_batch_norm_legit_functional(x5, weight, bias, running_mean, running_var, True, factor,
                                                        eps)
    none = input.new_empty(0), input.new_empty(0)
    if training or running_mean is None:
        return *aten.native_batch_norm(x5, weight, bias, None, None, True, 0.0, eps), *none
    dtype = _accumulation_dtype(input)
    output = aten.native_batch_norm(x5, weight, bias, running_mean, running_var, False, 0.0, eps)[0]
    return output, running_mean.to(dtype, copy=True), torch.rsqrt(running_var.to(dtype) + eps), *none


def batch_moments(input, order: int, running_mean, running_var, num_batches_tracked, training: bool, momentum,
                  eps: float, statistics: Optional[torch.Tensor] = None):
    """(mean, invstd, new running mean, new running var) of a batch norm of ``input`` (as in
    ``group_batch_norm``): the batch's, from ``statistics`` (count, mean, M2) when given (computed
    by whoever wrote ``input``) else computed, when ``training`` or without running statistics;
    else the running ones (an empty batch: zeros). The new running statistics are empty unless
    ``training`` updates them."""
    dtype = _accumulation_dtype(input)
    new_mean, new_var = input.new_empty(0), input.new_empty(0)
    if input.numel() == 0 and (training or running_mean is None):  # as the op: zeros, running statistics untouched
        zeros = input.new_zeros(input.shape[1] // order, dtype=dtype)
        return zeros, zeros.clone(), new_mean, new_var
    if training or running_mean is None:
        count = input.numel() // (input.shape[1] // order)
        _, mean, m2 = (statistics if statistics is not None else _statistics(input, order)).to(dtype).unbind(0)
        mean, var = mean.clone(), m2 / count  # outputs own their storage
        if _updates(input, running_mean, training):
            factor = momentum if momentum is not None else num_batches_tracked.to(torch.float64).reciprocal()
            new_mean, new_var = running_statistics(running_mean, running_var, mean, var, count, factor)
    else:
        mean, var = running_mean.to(dtype, copy=True), running_var.to(dtype)
    return mean, torch.rsqrt(var + eps), new_mean, new_var


def scale_shift(invstd: torch.Tensor, weight: Optional[torch.Tensor],
                bias: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of ``normalize`` for a batch norm with ``invstd``, ``weight`` and ``bias`` (either
    None: 1, 0), in ``invstd``'s dtype: ``y = (x - mean) * scale + shift``."""
    scale = invstd * weight.to(invstd.dtype) if weight is not None else invstd
    return scale, bias.to(invstd.dtype) if bias is not None else torch.zeros_like(scale)


def _triton_forward(input, weight, bias, residual, running_mean, running_var, num_batches_tracked, training,
                    momentum, eps, order, relu, statistics):
    """The staged kernels: (output, mean, invstd, new running mean, new running var)."""
    mean, invstd, new_mean, new_var = batch_moments(input, order, running_mean, running_var, num_batches_tracked,
                                                    training, momentum, eps, statistics)
    scale, shift = scale_shift(invstd, weight, bias)
    return _normalize(input, mean, scale, shift, residual, order, relu), mean, invstd, new_mean, new_var


@torch.library.custom_op("ger_kernels::group_batch_norm", mutates_args=())
def _group_batch_norm(input: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                      residual: Optional[torch.Tensor], running_mean: Optional[torch.Tensor],
                      running_var: Optional[torch.Tensor], num_batches_tracked: Optional[torch.Tensor],
                      training: bool, momentum: Optional[float], eps: float, order: int,
                      relu: bool, statistics: Optional[torch.Tensor] = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, mean, invstd, new running mean, new running var); the new running statistics
    are empty unless ``training`` updates them (functional: the caller copies them).
    ``statistics``: the input's (count, mean, M2) per field, used by the staged kernels instead
    of a statistics pass (ATen's batch norm computes its own)."""
    fields = input.shape[1] // order
    if input.numel() == 0:  # as BatchNorm3d: an empty output, running statistics untouched
        zeros = input.new_zeros(fields, dtype=_accumulation_dtype(input))
        none = input.new_empty(0)
        return _like(torch.empty_like(input), _dense(input)), zeros, zeros.clone(), none, none.clone()
    if _on_triton(input):
        return _triton_forward(input, weight, bias, residual, running_mean, running_var, num_batches_tracked,
                               training, momentum, eps, order, relu, statistics)
    output, mean, invstd, new_mean, new_var = _native_forward(input, weight, bias, running_mean, running_var,
                                                              num_batches_tracked, training, momentum, eps, order)
    output = _unfolded(output, _dense(input))
    if residual is not None:
        output += residual
    if relu:
        output.relu_()
    return output, mean, invstd, new_mean, new_var


@_group_batch_norm.register_fake
def _(input, weight, bias, residual, running_mean, running_var, num_batches_tracked, training, momentum, eps,
      order, relu, statistics=None):
    stats = input.new_empty(input.shape[1] // order, dtype=_accumulation_dtype(input))
    updates = _updates(input, running_mean, training)
    running = [t.new_empty(t.shape) if updates else input.new_empty(0) for t in (running_mean, running_var)]
    return (torch.empty_like(input, memory_format=suggest_memory_format(input)), stats, torch.empty_like(stats),
            *running)


def _setup_context(ctx, inputs, output):
    input, weight, bias, _, running_mean, _, _, training, _, ctx.eps, ctx.order, relu, _ = inputs
    ctx.batch_statistics = training or running_mean is None
    ctx.native = not _on_triton(input)
    ctx.bias_dtype = bias.dtype if bias is not None else None
    y, mean, invstd, new_mean, new_var = output
    ctx.save_for_backward(input, y if relu else None, weight, mean, invstd)
    ctx.mark_non_differentiable(mean, invstd, new_mean, new_var)


def _native_backward(ctx, grad, input, y, weight, mean, invstd, needs):
    """dx, dweight, dbias and the residual's gradient through ATen's batch norm backward (batch
    statistics) or plain ops (fixed statistics: ATen's double backward would differentiate them as
    the batch's); both differentiable, for double backward."""
    order = ctx.order
    grad = _like(grad, _dense(input))
    if y is not None:  # the ReLU's gradient, one pass
        grad = torch.ops.aten.threshold_backward(grad, y, 0)
    needs_input, needs_weight, needs_bias, needs_residual = needs
    if input.numel() == 0:  # ATen's kernels divide by the count
        zeros = mean.new_zeros(mean.shape)
        return torch.zeros_like(grad), zeros, zeros.clone(), grad if needs_residual else None
    x5, g5 = _dense(input).unflatten(1, (-1, order)), grad.unflatten(1, (-1, order))
    if ctx.batch_statistics:
        dx5, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            g5, x5, weight, None, None, mean, invstd, True, ctx.eps, [needs_input, needs_weight, needs_bias])
        dx = _like(dx5.flatten(1, 2), grad) if needs_input else None
    else:  # y = (x - mean) * invstd * weight + bias
        g5 = g5.to(mean.dtype)
        scale = scale_shift(invstd, weight, None)[0]
        dx = (g5 * _field_view(scale)).to(grad.dtype).flatten(1, 2) if needs_input else None
        dweight = (g5 * (x5 - _field_view(mean))).sum(_DIMS) * invstd if needs_weight else None
        dbias = g5.sum(_DIMS) if needs_bias else None
    return dx, dweight, dbias, grad if needs_residual else None


def staged_backward(grad, input, output, mean, invstd, weight, order: int, batch_statistics: bool,
                    needs_input: bool, needs_weight: bool, needs_bias: bool, needs_residual: bool = False):
    """(dx, dweight, dbias, dresidual) of a batch norm of ``input`` (statistics ``mean``, ``invstd``;
    batch statistics when ``batch_statistics``, whose dependence on ``input`` dx then includes) for
    the output gradient ``grad``, through the staged ops ``grad_sums`` and ``input_grad``; ``output``
    masks ``grad`` where a fused ReLU clipped. None where not needed; dweight and dbias in
    ``invstd``'s dtype."""
    sums = None
    if (batch_statistics and (needs_input or needs_residual)) or needs_weight or needs_bias:
        sums = grad_sums(grad, input, output, mean, order)
    dx = dresidual = None
    if needs_input or needs_residual:
        count = input.numel() // (input.shape[1] // order)
        a, b, c = input_grad_coefficients(invstd, weight.to(invstd.dtype) if weight is not None else None,
                                          sums if batch_statistics else None, count)
        dx, *rest = input_grad(grad, input, output, mean, a, b, c, order, needs_residual)
        dresidual = rest[0] if needs_residual else None
    return dx, sums[1] * invstd if needs_weight else None, sums[0] if needs_bias else None, dresidual


def _backward(ctx, grad, *_non_differentiable):
    input, y, weight, mean, invstd = ctx.saved_tensors
    needs = ctx.needs_input_grad[:4]
    needs_input, needs_weight, needs_bias, needs_residual = needs
    if ctx.native or torch.is_grad_enabled():  # create_graph: the staged ops have no double backward
        dx, dweight, dbias, dresidual = _native_backward(ctx, grad, input, y, weight, mean, invstd, needs)
    else:
        dx, dweight, dbias, dresidual = staged_backward(grad, input, y, mean, invstd, weight, ctx.order,
                                                        ctx.batch_statistics, *needs)
    dweight = dweight.to(weight.dtype) if needs_weight else None
    dbias = dbias.to(ctx.bias_dtype) if needs_bias else None
    return dx, dweight, dbias, dresidual, None, None, None, None, None, None, None, None, None


_group_batch_norm.register_autograd(_backward, setup_context=_setup_context)


def check_batch(input: torch.Tensor, order: int, batch_statistics: bool,
                statistics: Optional[torch.Tensor] = None) -> None:
    """Batch statistics need more than one value per field (as BatchNorm's); given ones (count,
    mean, M2 per field) are a floating point (3, C) tensor on the input's device."""
    fields = input.shape[1] // order
    if batch_statistics and input.numel() and input.numel() // fields <= 1:
        raise ValueError(f"Expected more than 1 value per field when training, got input of size "
                         f"{tuple(input.shape)}")
    if statistics is not None and (tuple(statistics.shape) != (3, fields) or statistics.device != input.device
                                   or not statistics.is_floating_point()):
        raise ValueError(f"statistics must be the input's (count, mean, M2) per field, a floating point tensor of "
                         f"shape (3, {fields}) on {input.device}, got {statistics.dtype} {tuple(statistics.shape)} "
                         f"on {statistics.device}")


def group_batch_norm(input: torch.Tensor, order: int, running_mean: Optional[torch.Tensor] = None,
                     running_var: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
                     bias: Optional[torch.Tensor] = None, training: bool = False, momentum: Optional[float] = 0.1,
                     eps: float = 1e-5, residual: Optional[torch.Tensor] = None, relu: bool = False,
                     num_batches_tracked: Optional[torch.Tensor] = None,
                     statistics: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.batch_norm`` on the 5-D view ``(B, C, S, H, W)`` of ``input`` ``(B, C*order, H, W)``
    (same arguments; batch statistics when ``training`` or without running statistics, which
    ``training`` updates), then ``+ residual`` and a ReLU if ``relu``, fused. ``momentum=None``
    (cumulative average) reads ``num_batches_tracked``, already incremented for this batch as
    BatchNorm does. An empty batch gives an empty output and leaves the running statistics.
    ``statistics`` (3, C): the input's per-field (count, mean, M2), when its producer computed them
    (``ger_kernels.nn.fused``); the staged kernels then skip their statistics pass."""
    check_batch(input, order, training or running_mean is None, statistics)
    if residual is not None and residual.shape != input.shape:
        raise ValueError(f"residual must have the input's shape {tuple(input.shape)}, got {tuple(residual.shape)}")
    update = _updates(input, running_mean, training)
    if update and momentum is None and num_batches_tracked is None:
        raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
    output, _, _, new_mean, new_var = _group_batch_norm(input, weight, bias, residual, running_mean, running_var,
                                                        num_batches_tracked, training, momentum, eps, order, relu,
                                                        statistics)
    if update:
        with torch.no_grad():
            running_mean.copy_(new_mean)
            running_var.copy_(new_var)
    return output


# --------------------------------------------------------------------------- memory traffic

KERNELS = ("statistics", "normalize", "grad_sums", "input_grad")


def min_bytes(numel: int, element_size: int, kernel: str, relu: bool = False, residual: bool = False) -> int:
    """Bytes ``kernel`` (one of ``KERNELS``) must move for a map of ``numel`` elements of
    ``element_size`` bytes (per-field vectors and partial results, O(C) each, left out):
    statistics reads x; normalize reads x (and the residual) and writes y; grad_sums reads
    grad and x (and y for the ReLU's mask); input_grad reads the same and writes dx (and the
    residual's gradient). A training step runs all four; eval forward only normalize."""
    maps = {"statistics": 1, "normalize": 2 + residual, "grad_sums": 2 + relu,
            "input_grad": 3 + relu + residual}
    if kernel not in maps:
        raise ValueError(f"kernel must be one of {list(KERNELS)}, got {kernel!r}")
    return maps[kernel] * numel * element_size

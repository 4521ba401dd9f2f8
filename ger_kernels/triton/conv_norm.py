"""A Triton group convolution fused with the batch norms around it: the batch norm (+ ReLU) of
its input applied while the input is loaded, and the batch statistics of its output written by
its epilogue (issue 12: conv -> group BN -> ReLU without the normalized map in memory).

``bn_group_conv2d(input, weight, bias, mean, invstd, norm_weight, norm_bias, stride, padding,
dilation, order, norm_relu, batch_statistics, statistics)`` (op ``ger_kernels_triton::
bn_group_conv2d``) returns ``(output, stats)``:

- ``output = conv(z)`` with ``z = act((input - mean[f]) * invstd[f] * norm_weight[f] + norm_bias[f])``
  per input field f (act a ReLU if ``norm_relu``), or ``conv(input)`` when ``mean`` is None; the
  convolution as ``group_conv.forward`` (input ``(B, C_in*S_in, H, W)``, weight ``(C_out, C_in,
  S_in, k, k)``, bias ``(C_out,)``). z is computed in float32 and rounded to the input's dtype,
  as group batch norm's own output.
- ``stats`` (3, C_out) float32: count, mean and M2 of each output field (of the values stored),
  for the next batch norm; empty unless ``statistics``. Not differentiable: the batch norm that
  consumes them differentiates through its batch statistics itself.

``mean`` and ``invstd`` (float32) are the input's batch statistics when ``batch_statistics``
(training: the backward then includes their dependence on the input, as a batch norm's does),
else fixed ones (running statistics). In the backward the input gradient's epilogue zeroes the
gradient where z's ReLU clipped (the normalized value <= 0, recomputed in float32 from the input),
then group batch norm's ``grad_sums`` / ``input_grad`` stages run; the weight gradient reads the
input through the same normalization. z is never stored. CPU tensors need ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch._prims_common import suggest_memory_format

from ger_kernels import group_batch_norm as gbn
from ger_kernels.triton import group_conv

__all__ = ["bn_group_conv2d"]


def _norm_rows(mean, invstd, weight, bias) -> Optional[torch.Tensor]:
    """(3, C) float32 rows (mean, scale, shift) the kernels read, or None without a batch norm."""
    if mean is None:
        return None
    return torch.stack([mean, *gbn.scale_shift(invstd, weight, bias)]).float()


@torch.library.custom_op("ger_kernels_triton::bn_group_conv2d", mutates_args=(), device_types=("cuda", "cpu"))
def bn_group_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    mean: Optional[torch.Tensor], invstd: Optional[torch.Tensor],
                    norm_weight: Optional[torch.Tensor], norm_bias: Optional[torch.Tensor], stride: int,
                    padding: int, dilation: int, order: int, norm_relu: bool, batch_statistics: bool,
                    statistics: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, stats) of the module docstring."""
    norm = _norm_rows(mean, invstd, norm_weight, norm_bias)
    output, partials = group_conv.forward(input, weight, bias, stride, padding, dilation, order, False, norm,
                                          norm_relu, statistics)
    if not statistics:
        return output, input.new_empty(0, dtype=torch.float32)
    if partials.shape[0] == 0:  # an empty batch
        return output, input.new_zeros((3, weight.shape[0]), dtype=torch.float32)
    return output, group_conv.statistics_of_fields(partials, order)


@bn_group_conv2d.register_fake
def _(input, weight, bias, mean, invstd, norm_weight, norm_bias, stride, padding, dilation, order, norm_relu,
      batch_statistics, statistics):
    output = group_conv.group_conv2d_op(input, weight, bias, stride, padding, dilation, order, False)
    return output, input.new_empty((3, weight.shape[0]) if statistics else (0,), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    (input, weight, bias, mean, invstd, norm_weight, norm_bias, stride, padding, dilation, order, norm_relu,
     ctx.batch_statistics, _) = inputs
    ctx.save_for_backward(input, weight, mean, invstd, norm_weight, norm_bias)
    ctx.conv = (stride, padding, dilation, order)
    ctx.norm_relu = norm_relu
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(output[1])


@torch.library.custom_op("ger_kernels_triton::bn_group_conv2d_backward", mutates_args=(),
                         device_types=("cuda", "cpu"))
def _conv_backward(grad: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, norm: Optional[torch.Tensor],
                   norm_relu: bool, stride: int, padding: int, dilation: int, order: int, input_grad: bool,
                   weight_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dz, dw) of the convolution of z (the normalized input, ``norm`` (3, C_in) rows mean, scale,
    shift, or the input itself): dz, laid out as the input, zeroed where z's ReLU clipped; dw of the
    base weight. Each is empty when not asked for."""
    conv = (stride, padding, dilation, order)
    dz = dw = input.new_empty(0)
    if input_grad:  # the ReLU's mask in the input gradient kernel's epilogue
        dz = group_conv.input_grad(grad, weight, list(input.shape), suggest_memory_format(input) == torch.channels_last,
                                   *conv, relu_of=(input, norm) if norm is not None and norm_relu else None)
    if weight_grad:
        dw = group_conv.weight_grad(grad, input, weight.shape[-1], weight.shape[2], *conv, norm, norm_relu)
    return dz, dw


@_conv_backward.register_fake
def _(grad, input, weight, norm, norm_relu, stride, padding, dilation, order, input_grad, weight_grad):
    dz = torch.empty_like(input, memory_format=suggest_memory_format(input)) if input_grad else input.new_empty(0)
    return dz, input.new_empty(weight.shape if weight_grad else (0,))


def _backward(ctx, grad, _stats_grad):
    input, weight, mean, invstd, norm_weight, norm_bias = ctx.saved_tensors
    order = ctx.conv[-1]
    needs_input, needs_weight, needs_bias, _, _, needs_norm_weight, needs_norm_bias = ctx.needs_input_grad[:7]
    norm = _norm_rows(mean, invstd, norm_weight, norm_bias)
    dx = dw = db = dgamma = dbeta = None
    needs_dz = needs_input or needs_norm_weight or needs_norm_bias
    dz, dw = _conv_backward(grad, input, weight, norm, ctx.norm_relu, *ctx.conv, needs_dz, needs_weight)
    dw = dw if needs_weight else None
    if ctx.has_bias and needs_bias:
        db = grad.unflatten(1, (-1, order)).sum((0, 2, 3, 4))
    if needs_dz:
        if norm is None:
            dx = dz
        else:  # through the batch norm (dz already masked by its ReLU)
            dx, dgamma, dbeta, _ = gbn.staged_backward(dz, input, None, mean, invstd, norm_weight, weight.shape[2],
                                                       ctx.batch_statistics, needs_input, needs_norm_weight,
                                                       needs_norm_bias)
            dgamma = dgamma.to(norm_weight.dtype) if needs_norm_weight else None
            dbeta = dbeta.to(norm_bias.dtype) if needs_norm_bias else None
    return dx, dw, db, None, None, dgamma, dbeta, None, None, None, None, None, None, None


bn_group_conv2d.register_autograd(_backward, setup_context=_setup_context)

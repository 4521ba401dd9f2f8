"""The three passes of a group convolution (forward, input gradient, weight gradient) on each
path, and a differentiable convolution whose passes run on different paths.

Paths are the backends (``ger_kernels.backends``): ``reference`` (``F.conv2d`` and its
``convolution_backward`` on the expanded filter ``W~``, the weight gradient folded to the base
weight by the adjoint of the expansion), ``cpp`` (the ops ``torch.ops.ger_kernels.group_conv2d``,
``group_conv2d_input_grad``, ``group_conv2d_weight_grad``) and ``triton`` (the same three of
``torch.ops.ger_kernels_triton``). Every pass of every path computes the same function (SPEC
section 3), on arguments already checked; each is differentiable, so the mixed convolution is
differentiable twice and more.

Shapes: input ``(B, C_in*S_in, H, W)``, weight ``(C_out, C_in, S_in, k, k)``, bias ``(C_out,)``,
grad (of the output) ``(B, C_out*S, H', W')``. The input gradient comes back in the input's
memory format, the weight gradient in the weight's shape.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch._prims_common import suggest_memory_format

from ger_kernels import reference
from ger_kernels._autocast import register_autocast
from ger_kernels._validation import conv_output_size
from ger_kernels.groups import Group, get_group

__all__ = ["PASSES", "PATHS", "PassPaths", "forward", "input_grad", "weight_grad", "group_conv2d"]

PATHS = ("reference", "cpp", "triton")
PASSES = ("forward", "input_grad", "weight_grad")


class PassPaths(NamedTuple):
    """The path of each pass of one convolution (each one of ``PATHS``)."""
    forward: str
    input_grad: str
    weight_grad: str


def _triton_ops():
    """``torch.ops.ger_kernels_triton``, registered on first use (importing triton takes a while)."""
    from ger_kernels.triton import group_conv  # noqa: F401  (registers the ops)

    return torch.ops.ger_kernels_triton


def forward(path: str, input, weight, bias, stride: int, padding: int, dilation: int, order: int) -> torch.Tensor:
    """``conv2d(input, W~, bias.repeat_interleave(S), stride, padding, dilation)`` on ``path``."""
    if path == "reference":
        return reference.conv_expanded(input, weight, bias, stride, padding, dilation, get_group(order))
    if path == "cpp":
        return torch.ops.ger_kernels.group_conv2d(input, weight, bias, stride, padding, dilation, order)
    return _triton_ops().group_conv2d(input, weight, bias, stride, padding, dilation, order, False)


def input_grad(path: str, grad, weight, input_size, channels_last: bool, stride: int, padding: int, dilation: int,
               order: int) -> torch.Tensor:
    """The gradient w.r.t. an input of size ``input_size`` (channels_last if ``channels_last``)."""
    if path == "reference":
        expanded = reference.expand_for_conv(weight, get_group(order))
        dummy = grad.new_empty(1).expand(list(input_size))  # convolution_backward reads only its shape here
        dx = torch.ops.aten.convolution_backward(grad, dummy, expanded, None, [stride] * 2, [padding] * 2,
                                                 [dilation] * 2, False, [0, 0], 1, [True, False, False])[0]
        return dx.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if path == "cpp":
        return torch.ops.ger_kernels.group_conv2d_input_grad(grad, weight, list(input_size), stride, padding,
                                                             dilation, order)
    return _triton_ops().group_conv2d_input_grad(grad, weight, list(input_size), channels_last, stride, padding,
                                                 dilation, order)


def weight_grad(path: str, grad, input, kernel_size: int, in_orientations: int, stride: int, padding: int,
                dilation: int, order: int) -> torch.Tensor:
    """The gradient w.r.t. the base weight ``(C_out, C_in, S_in, k, k)``."""
    if path == "reference":
        c_out_s, channels = grad.shape[1], input.shape[1]
        dummy = grad.new_empty(1).expand(c_out_s, channels, kernel_size, kernel_size)
        d_expanded = torch.ops.aten.convolution_backward(grad, input, dummy, None, [stride] * 2, [padding] * 2,
                                                         [dilation] * 2, False, [0, 0], 1, [False, True, False])[1]
        return reference.fold_expanded(d_expanded, get_group(order), in_orientations)
    if path == "cpp":
        return torch.ops.ger_kernels.group_conv2d_weight_grad(grad, input, kernel_size, in_orientations, stride,
                                                              padding, dilation, order)
    return _triton_ops().group_conv2d_weight_grad(grad, input, kernel_size, in_orientations, stride, padding,
                                                  dilation, order)


# --------------------------------------------------------------------------- the mixed convolution

@torch.library.custom_op("ger_kernels_paths::group_conv2d", mutates_args=())
def _mixed(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int, padding: int,
           dilation: int, order: int, forward_path: str, input_grad_path: str, weight_grad_path: str) -> torch.Tensor:
    return forward(forward_path, input, weight, bias, stride, padding, dilation, order)


@_mixed.register_fake
def _(input, weight, bias, stride, padding, dilation, order, forward_path, input_grad_path, weight_grad_path):
    k = weight.shape[-1]
    size = [conv_output_size(n, k, stride, padding, dilation) for n in input.shape[-2:]]
    return input.new_empty([input.shape[0], weight.shape[0] * order, *size]).contiguous(
        memory_format=suggest_memory_format(input))


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, order, _, ctx.input_grad_path, ctx.weight_grad_path = inputs
    ctx.save_for_backward(input, weight)
    ctx.conv = (stride, padding, dilation, order)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    input, weight = ctx.saved_tensors
    dx = dw = db = None
    if ctx.needs_input_grad[0]:
        dx = input_grad(ctx.input_grad_path, grad, weight, input.shape,
                        suggest_memory_format(input) == torch.channels_last, *ctx.conv)
    if ctx.needs_input_grad[1]:
        dw = weight_grad(ctx.weight_grad_path, grad, input, weight.shape[-1], weight.shape[2], *ctx.conv)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        db = grad.unflatten(1, (-1, ctx.conv[-1])).sum((0, 2, 3, 4))
    return dx, dw, db, None, None, None, None, None, None, None


_mixed.register_autograd(_backward, setup_context=_setup_context)
register_autocast("ger_kernels_paths::group_conv2d")


def group_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
                 dilation: int, group: Group, paths: PassPaths) -> torch.Tensor:
    """``reference.conv_expanded`` (arguments already checked) with its forward, input gradient and
    weight gradient on the paths ``paths`` names; differentiable w.r.t. input, weight and bias."""
    for name, path in zip(PASSES, paths):
        if path not in PATHS:
            raise ValueError(f"paths.{name} must be one of {list(PATHS)}, got {path!r}")
    return _mixed(input, weight, bias, stride, padding, dilation, group.order, *paths)

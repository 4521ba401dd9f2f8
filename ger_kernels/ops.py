"""The compiled extension ``ger_kernels._C``: loading it, and the fake kernels and
autograd formulas of the ops it registers under ``torch.ops.ger_kernels``.

Ops (schemas are defined once, in ``csrc/ops.cpp``):

- ``expand_filter(Tensor weight, int group_order) -> Tensor``: ``W~`` of SPEC section 3,
  ``(C_out, C_in, S_in, k, k) -> (C_out*S, C_in*S_in, k, k)``.
- ``expand_filter_backward(Tensor grad, int group_order, int in_orientations) -> Tensor``:
  its adjoint, ``dw[o, i, u] = sum_t A_t^-1(dW~[o, t, i, s])`` over ``T[t, s] = u``.
- ``group_conv2d(input, weight, bias?, int stride, int padding, int dilation, int group_order)``:
  the fused group convolution, ``(B, C_in*S_in, H, W) -> (B, C_out*S, H', W')``; W~ never exists.
- ``group_conv2d_input_grad(grad_output, weight, SymInt[] input_size, stride, padding, dilation,
  group_order)`` and ``group_conv2d_weight_grad(grad_output, input, int kernel_size,
  int in_orientations, stride, padding, dilation, group_order)``: its two backward passes (the bias
  gradient is a sum of ``grad_output``). All three are differentiable (twice and more).
Outputs keep the input's memory format (channels_last stays channels_last). Under
``torch.autocast`` the three convolution ops compute in the autocast dtype, as ``F.conv2d``
(``ger_kernels._autocast``); ``expand_filter`` keeps its input's dtype, as indexing does.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch
from torch._prims_common import suggest_memory_format

from ger_kernels._autocast import register_autocast
from ger_kernels._validation import conv_output_size


def _load_extension() -> str | None:
    """Imports ``ger_kernels._C`` (which registers the ops); returns why it failed, or None."""
    if importlib.util.find_spec("ger_kernels._C") is None:
        return "ger_kernels._C is not built"
    try:
        importlib.import_module("ger_kernels._C")
    except ImportError as error:
        return f"ger_kernels._C is built but does not load ({error})"
    return None


EXTENSION_ERROR = _load_extension()


def extension_loaded() -> bool:
    return EXTENSION_ERROR is None


def has_op(name: str) -> bool:
    """Whether the extension registered ``torch.ops.ger_kernels.<name>``."""
    return extension_loaded() and hasattr(torch.ops.ger_kernels, name)


def has_kernel(name: str, device_type: str) -> bool:
    """Whether ``torch.ops.ger_kernels.<name>`` has a kernel for tensors of ``device_type``
    ("cpu" or "cuda"; CUDA kernels are built only where CUDA is)."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return (key is not None and has_op(name)
            and torch._C._dispatch_has_kernel_for_dispatch_key(f"ger_kernels::{name}", key))


if extension_loaded():

    @torch.library.register_fake("ger_kernels::expand_filter")
    def _expand_filter_fake(weight, group_order):
        torch._check(weight.dim() == 5, lambda: "weight must be 5-D (C_out, C_in, S_in, k, k)")
        c_out, c_in, s_in, k, _ = weight.shape
        return weight.new_empty(c_out * group_order, c_in * s_in, k, k)

    @torch.library.register_fake("ger_kernels::expand_filter_backward")
    def _expand_filter_backward_fake(grad, group_order, in_orientations):
        torch._check(grad.dim() == 4, lambda: "grad must be 4-D (C_out*S, C_in*S_in, k, k)")
        c_out_s, c_in_s, k, _ = grad.shape
        return grad.new_empty(c_out_s // group_order, c_in_s // in_orientations, in_orientations, k, k)

    def _expand_filter_setup(ctx, inputs, output):
        weight, group_order = inputs
        ctx.group_order = group_order
        ctx.in_orientations = weight.shape[2]

    def _expand_filter_grad(ctx, grad):
        return torch.ops.ger_kernels.expand_filter_backward(grad, ctx.group_order, ctx.in_orientations), None

    def _expand_filter_backward_setup(ctx, inputs, output):
        ctx.group_order = inputs[1]

    def _expand_filter_backward_grad(ctx, grad):
        return torch.ops.ger_kernels.expand_filter(grad, ctx.group_order), None, None

    torch.library.register_autograd(
        "ger_kernels::expand_filter", _expand_filter_grad, setup_context=_expand_filter_setup)
    torch.library.register_autograd(
        "ger_kernels::expand_filter_backward", _expand_filter_backward_grad,
        setup_context=_expand_filter_backward_setup)

    def _empty_like_layout(like, *size):
        return like.new_empty(size).contiguous(memory_format=suggest_memory_format(like))

    @torch.library.register_fake("ger_kernels::group_conv2d")
    def _group_conv2d_fake(input, weight, bias, stride, padding, dilation, group_order):
        torch._check(input.dim() == 4 and weight.dim() == 5, lambda: "input must be 4-D and weight 5-D")
        k = weight.shape[-1]
        return _empty_like_layout(input, input.shape[0], weight.shape[0] * group_order,
                                  conv_output_size(input.shape[2], k, stride, padding, dilation),
                                  conv_output_size(input.shape[3], k, stride, padding, dilation))

    @torch.library.register_fake("ger_kernels::group_conv2d_input_grad")
    def _group_conv2d_input_grad_fake(grad_output, weight, input_size, stride, padding, dilation, group_order):
        torch._check(len(input_size) == 4, lambda: "input_size must have 4 entries")
        return _empty_like_layout(grad_output, *input_size)

    @torch.library.register_fake("ger_kernels::group_conv2d_weight_grad")
    def _group_conv2d_weight_grad_fake(grad_output, input, kernel_size, in_orientations, stride, padding, dilation,
                                       group_order):
        return input.new_empty(grad_output.shape[1] // group_order, input.shape[1] // in_orientations,
                               in_orientations, kernel_size, kernel_size)

    def _group_conv2d_setup(ctx, inputs, output):
        input, weight, bias, *ctx.conv_args = inputs
        ctx.save_for_backward(input, weight)
        ctx.has_bias = bias is not None

    def _group_conv2d_grad(ctx, grad):
        input, weight = ctx.saved_tensors
        group_order = ctx.conv_args[-1]
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.ops.ger_kernels.group_conv2d_input_grad(grad, weight, input.shape, *ctx.conv_args)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.ger_kernels.group_conv2d_weight_grad(
                grad, input, weight.shape[-1], weight.shape[2], *ctx.conv_args)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.unflatten(1, (-1, group_order)).sum((0, 2, 3, 4))
        return grad_input, grad_weight, grad_bias, None, None, None, None

    # The two backward ops are bilinear: each is differentiated with the other two ops.
    def _group_conv2d_input_grad_setup(ctx, inputs, output):
        grad_output, weight, _, *ctx.conv_args = inputs
        ctx.save_for_backward(grad_output, weight)

    def _group_conv2d_input_grad_grad(ctx, grad):
        grad_output, weight = ctx.saved_tensors
        d_grad_output = d_weight = None
        if ctx.needs_input_grad[0]:
            d_grad_output = torch.ops.ger_kernels.group_conv2d(grad, weight, None, *ctx.conv_args)
        if ctx.needs_input_grad[1]:
            d_weight = torch.ops.ger_kernels.group_conv2d_weight_grad(
                grad_output, grad, weight.shape[-1], weight.shape[2], *ctx.conv_args)
        return d_grad_output, d_weight, None, None, None, None, None

    def _group_conv2d_weight_grad_setup(ctx, inputs, output):
        grad_output, input, _, _, *ctx.conv_args = inputs
        ctx.save_for_backward(grad_output, input)

    def _group_conv2d_weight_grad_grad(ctx, grad):
        grad_output, input = ctx.saved_tensors
        d_grad_output = d_input = None
        if ctx.needs_input_grad[0]:
            d_grad_output = torch.ops.ger_kernels.group_conv2d(input, grad, None, *ctx.conv_args)
        if ctx.needs_input_grad[1]:
            d_input = torch.ops.ger_kernels.group_conv2d_input_grad(grad_output, grad, input.shape, *ctx.conv_args)
        return d_grad_output, d_input, None, None, None, None, None, None

    torch.library.register_autograd(
        "ger_kernels::group_conv2d", _group_conv2d_grad, setup_context=_group_conv2d_setup)
    torch.library.register_autograd(
        "ger_kernels::group_conv2d_input_grad", _group_conv2d_input_grad_grad,
        setup_context=_group_conv2d_input_grad_setup)
    torch.library.register_autograd(
        "ger_kernels::group_conv2d_weight_grad", _group_conv2d_weight_grad_grad,
        setup_context=_group_conv2d_weight_grad_setup)

    for _name in ("group_conv2d", "group_conv2d_input_grad", "group_conv2d_weight_grad"):
        register_autocast(f"ger_kernels::{_name}")

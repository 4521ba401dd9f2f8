"""The compiled extension ``ger_kernels._C``: loading it, and the fake kernels and
autograd formulas of the ops it registers under ``torch.ops.ger_kernels``.

Ops (schemas are defined once, in ``csrc/ops.cpp``):

- ``expand_filter(Tensor weight, int group_order) -> Tensor``: ``W~`` of SPEC section 3,
  ``(C_out, C_in, S_in, k, k) -> (C_out*S, C_in*S_in, k, k)``.
- ``expand_filter_backward(Tensor grad, int group_order, int in_orientations) -> Tensor``:
  its adjoint, ``dw[o, i, u] = sum_t A_t^-1(dW~[o, t, i, s])`` over ``T[t, s] = u``.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch


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

"""Import from GrouPy's PyTorch port (``groupy.gconv.pytorch_gconv``).

Its ``P4ConvZ2``, ``P4ConvP4``, ``P4MConvZ2``, ``P4MConvP4M`` share our convention (SPEC
section 1) and weight layout: ``weight (C_out, C_in, S_in, k, k)``, ``bias (C_out,)``. So
their state dicts load into our layers of the same name directly. GrouPy's layers return
5-D maps ``(B, C, S, H, W)`` and accept 4-D or 5-D input; ``from_groupy`` keeps that
interface with the :class:`GroupyLayout` layers (``GroupyP4MConvZ2``, ...), so the rest of a
GrouPy model runs unchanged and the model's GrouPy state dict loads into it unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from ger_kernels.nn import GroupConv2d, P4ConvP4, P4ConvZ2, P4MConvP4M, P4MConvZ2

__all__ = ["GroupyLayout", "GroupyP4MConvZ2", "GroupyP4MConvP4M", "GroupyP4ConvZ2", "GroupyP4ConvP4", "from_groupy",
           "is_groupy_conv"]


class GroupyLayout(GroupConv2d):
    """Base of our group convolutions with GrouPy's interface: 4-D ``(B, C*S_in, H, W)`` or 5-D
    ``(B, C, S_in, H, W)`` input, 5-D ``(B, C_out, S, H', W')`` output. Otherwise the layer of
    ours it derives from: same arguments, weight and bias (so GrouPy's parameter names), backends."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        flat = input.flatten(1, 2) if isinstance(input, torch.Tensor) and input.dim() == 5 else input
        return super().forward(flat).unflatten(1, (self.out_channels, self.group.order))


class GroupyP4MConvZ2(GroupyLayout, P4MConvZ2):
    """``P4MConvZ2`` with GrouPy's 5-D interface."""


class GroupyP4MConvP4M(GroupyLayout, P4MConvP4M):
    """``P4MConvP4M`` with GrouPy's 5-D interface."""


class GroupyP4ConvZ2(GroupyLayout, P4ConvZ2):
    """``P4ConvZ2`` with GrouPy's 5-D interface."""


class GroupyP4ConvP4(GroupyLayout, P4ConvP4):
    """``P4ConvP4`` with GrouPy's 5-D interface."""


# (input, output) stabilizer sizes of GrouPy's four layers -> ours
_LAYERS = {(1, 8): GroupyP4MConvZ2, (8, 8): GroupyP4MConvP4M, (1, 4): GroupyP4ConvZ2, (4, 4): GroupyP4ConvP4}


def is_groupy_conv(module: nn.Module) -> bool:
    """A GrouPy split group convolution: it has GrouPy's stabilizer sizes and 5-D weight."""
    sizes = (getattr(module, "input_stabilizer_size", None), getattr(module, "output_stabilizer_size", None))
    weight = getattr(module, "weight", None)
    return sizes in _LAYERS and isinstance(weight, torch.Tensor) and weight.dim() == 5


def _convert(module: nn.Module, backend: str) -> GroupyLayout:
    cls = _LAYERS[(module.input_stabilizer_size, module.output_stabilizer_size)]
    params = {}
    for name in ("kernel_size", "stride", "padding", "dilation"):
        value = getattr(module, name, 1)
        params[name] = tuple(value) if isinstance(value, (tuple, list)) else value
    layer = cls(module.in_channels, module.out_channels, **params, bias=module.bias is not None, backend=backend,
                strict_equivariance=False).to(module.weight.device, module.weight.dtype)
    layer.load_state_dict(module.state_dict())
    return layer.train(module.training)


def from_groupy(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replaces every GrouPy group convolution in ``model`` (in place; ``model`` itself may be one)
    by the equivalent :class:`GroupyLayout` layer of ours; returns the model. Parameter names stay
    GrouPy's: the original state dict loads into the converted model (``strict=True``).

    The converted layers keep GrouPy's behaviour on every input size (``strict_equivariance=False``);
    set it back to True on a layer to have inexact strided sizes rejected.
    """
    if is_groupy_conv(model):
        return _convert(model, backend)
    for name, child in model.named_children():
        setattr(model, name, from_groupy(child, backend))
    return model

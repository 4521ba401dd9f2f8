"""Import from GrouPy's PyTorch port (``groupy.gconv.pytorch_gconv``).

Its ``P4ConvZ2``, ``P4ConvP4``, ``P4MConvZ2``, ``P4MConvP4M`` share our convention (SPEC
section 1) and weight layout: ``weight (C_out, C_in, S_in, k, k)``, ``bias (C_out,)``. So
their state dicts load into our layers of the same name directly. GrouPy's layers return
5-D maps ``(B, C, S, H, W)`` and accept 4-D or 5-D input; ``from_groupy`` keeps that
interface with :class:`GroupyLayout` so the rest of a GrouPy model runs unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from ger_kernels.nn import GroupConv2d, conv_class

__all__ = ["GroupyLayout", "from_groupy", "is_groupy_conv"]

_STABILIZER_SIZES = {(1, 4), (4, 4), (1, 8), (8, 8)}  # (input, output) of GrouPy's four layers


def is_groupy_conv(module: nn.Module) -> bool:
    """A GrouPy split group convolution: it has GrouPy's stabilizer sizes and 5-D weight."""
    sizes = (getattr(module, "input_stabilizer_size", None), getattr(module, "output_stabilizer_size", None))
    weight = getattr(module, "weight", None)
    return sizes in _STABILIZER_SIZES and isinstance(weight, torch.Tensor) and weight.dim() == 5


class GroupyLayout(nn.Module):
    """Wraps one of our layers with GrouPy's interface: 4-D ``(B, C*S_in, H, W)`` or 5-D
    ``(B, C, S_in, H, W)`` input, 5-D ``(B, C_out, S, H', W')`` output."""

    def __init__(self, layer: GroupConv2d):
        super().__init__()
        self.layer = layer

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        flat = input.flatten(1, 2) if input.dim() == 5 else input
        return self.layer(flat).unflatten(1, (self.layer.out_channels, self.layer.group.order))


def _convert(module: nn.Module, backend: str) -> GroupyLayout:
    cls = conv_class(module.input_stabilizer_size, module.output_stabilizer_size)
    params = {}
    for name in ("kernel_size", "stride", "padding", "dilation"):
        value = getattr(module, name, 1)
        params[name] = tuple(value) if isinstance(value, (tuple, list)) else value
    layer = cls(module.in_channels, module.out_channels, **params, bias=module.bias is not None, backend=backend,
                strict_equivariance=False).to(module.weight.device, module.weight.dtype)
    layer.load_state_dict(module.state_dict())
    return GroupyLayout(layer)


def from_groupy(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replaces every GrouPy group convolution in ``model`` (in place; ``model`` itself may be one)
    by the equivalent layer of ours in a :class:`GroupyLayout`; returns the model.

    The converted layers keep GrouPy's behaviour on every input size (``strict_equivariance=False``);
    set it back to True on ``layer.layer`` to have inexact strided sizes rejected.
    """
    if is_groupy_conv(model):
        return _convert(model, backend)
    for name, child in model.named_children():
        setattr(model, name, from_groupy(child, backend))
    return model

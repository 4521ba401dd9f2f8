"""Export to plain PyTorch: every layer of this package replaced by ``torch.nn`` modules that
compute the same function in eval mode, so the layers need nothing of ``ger_kernels``.

- group convolution -> ``nn.Conv2d`` with the expanded filter ``W~`` and ``bias.repeat_interleave(S)``;
  one with GrouPy's 5-D interface (``from_groupy``) -> ``Flatten(1, -3)`` + that ``nn.Conv2d`` +
  ``Unflatten`` to ``(B, C, S, H, W)``;
- ``GroupBatchNorm2d`` -> ``nn.BatchNorm2d(C*S)`` with running statistics, scale and shift repeated
  per orientation (equal in eval mode; in train mode it would take per-orientation statistics); one
  without running statistics (``track_running_stats=False``, batch statistics per field even in eval
  mode) -> ``Unflatten`` + ``nn.BatchNorm3d(C)`` + ``Flatten``; then ``nn.ReLU`` if the layer fuses one;
- spatial pools and upsampling -> ``nn.MaxPool2d`` / ``nn.AvgPool2d`` / ``nn.Upsample``;
- ``GroupOrientationPool`` -> ``Unflatten`` + ``AvgPool3d``/``MaxPool3d`` over orientations + ``Flatten``;
- ``FusedSequential`` -> ``nn.Sequential`` of the exported layers.

A model whose own ``forward`` is code of this package (``GERUNet``) keeps that code; for an
artifact with no dependency at all, export that model further with ``torch.export`` or ONNX.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from ger_kernels.convert.groupy import GroupyLayout
from ger_kernels.nn import (FusedSequential, GroupAvgPool2d, GroupBatchNorm2d, GroupConv2d, GroupMaxPool2d,
                            GroupOrientationPool, GroupUpsample)
from ger_kernels.reference import expand_filter

__all__ = ["export", "plain_module"]


def _conv(layer: GroupConv2d) -> nn.Conv2d:
    order = layer.group.order
    conv = nn.Conv2d(layer.in_channels * layer.in_orientations, layer.out_channels * order, layer.kernel_size,
                     layer.stride, layer.padding, layer.dilation, bias=layer.bias is not None,
                     device=layer.weight.device, dtype=layer.weight.dtype)
    conv.weight.copy_(expand_filter(layer.weight, layer.group))
    if layer.bias is not None:
        conv.bias.copy_(layer.bias.repeat_interleave(order))
    return conv


def _batch_norm(layer: GroupBatchNorm2d) -> nn.Module:
    """Eval mode normalizes with the running statistics when the layer has them: then a
    ``BatchNorm2d(C*S)`` with statistics, scale and shift repeated per orientation is equal.
    Without them (``track_running_stats=False``) eval mode normalizes with batch statistics
    per field, which a per-channel ``BatchNorm2d`` would not: then the plain equivalent is
    ``BatchNorm3d(C)`` on the 5-D view, between ``Unflatten`` and ``Flatten``. A fused ReLU
    becomes an ``nn.ReLU`` after it."""
    order = layer.group.order
    like = next(layer.buffers(), None) if layer.weight is None else layer.weight
    factory = {"device": like.device if like is not None else None, "dtype": like.dtype if like is not None else None}
    if layer.running_mean is not None and layer.running_var is not None:
        bn = nn.BatchNorm2d(layer.num_features * order, layer.eps, layer.momentum, layer.affine, True, **factory)
        for name in ("weight", "bias", "running_mean", "running_var"):
            source = getattr(layer, name)
            if source is not None:
                getattr(bn, name).copy_(source.repeat_interleave(order))
        if layer.num_batches_tracked is not None:
            bn.num_batches_tracked.copy_(layer.num_batches_tracked)
    else:
        bn3d = nn.BatchNorm3d(layer.num_features, layer.eps, layer.momentum, layer.affine, False, **factory)
        if layer.affine:
            bn3d.weight.copy_(layer.weight)
            bn3d.bias.copy_(layer.bias)
        bn = nn.Sequential(nn.Unflatten(1, (-1, order)), bn3d, nn.Flatten(1, 2))
    return nn.Sequential(bn, nn.ReLU()) if layer.relu else bn


def _orientation_pool(layer: GroupOrientationPool) -> nn.Sequential:
    order = layer.group.order
    pool = nn.AvgPool3d((order, 1, 1)) if layer.reduce == "mean" else nn.MaxPool3d((order, 1, 1))
    return nn.Sequential(nn.Unflatten(1, (-1, order)), pool, nn.Flatten(1, 2))


@torch.no_grad()
def plain_module(module: nn.Module) -> nn.Module | None:
    """The ``torch.nn`` equivalent of one layer of this package, or None for any other module."""
    if isinstance(module, GroupyLayout):  # 4-D or 5-D input, 5-D output
        plain = nn.Sequential(nn.Flatten(1, -3), _conv(module),
                              nn.Unflatten(1, (module.out_channels, module.group.order)))
    elif isinstance(module, FusedSequential):  # the same chain (and child names), unfused, of plain layers
        plain = nn.Sequential(OrderedDict(module.named_children()))
        _replace_children(plain)
    elif isinstance(module, GroupConv2d):
        plain = _conv(module)
    elif isinstance(module, GroupBatchNorm2d):
        plain = _batch_norm(module)
    elif isinstance(module, GroupMaxPool2d):
        plain = nn.MaxPool2d(module.kernel_size, module.stride, module.padding)
    elif isinstance(module, GroupAvgPool2d):
        plain = nn.AvgPool2d(module.kernel_size, module.stride, module.padding)
    elif isinstance(module, GroupUpsample):
        plain = nn.Upsample(scale_factor=module.scale_factor, mode=module.mode,
                            align_corners=module.align_corners if module.mode == "bilinear" else None)
    elif isinstance(module, GroupOrientationPool):
        plain = _orientation_pool(module)
    else:
        return None
    return plain


def export(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every layer of this package replaced by its
    ``torch.nn`` equivalent (``model`` itself is left as it is)."""
    exported = copy.deepcopy(model).eval()
    plain = plain_module(exported)
    if plain is not None:
        return plain.eval()
    _replace_children(exported)
    return exported


def _replace_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        plain = plain_module(child)
        if plain is None:
            _replace_children(child)
        else:
            setattr(module, name, plain.eval())

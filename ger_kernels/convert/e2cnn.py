"""Import from e2cnn (escnn's classes of the same names are accepted too, untested): a layer or
a ``SequentialModule`` on regular fields of ``FlipRot2dOnR2(N=4)`` (p4m) or ``Rot2dOnR2(N=4)``
(p4) becomes the layer of ours, or an ``nn.Sequential`` of them, computing the same function:

===========================================  ==============================================
e2cnn                                        ours
===========================================  ==============================================
``R2Conv`` regular -> regular                ``P4MConvP4M`` / ``P4ConvP4``
``R2Conv`` trivial -> regular (lifting)      ``P4MConvZ2`` / ``P4ConvZ2``
``InnerBatchNorm`` on regular fields         ``GroupBatchNorm2d`` (same state)
``GroupPooling`` on regular fields           ``GroupOrientationPool(reduce="max")``
``PointwiseMaxPool`` / ``PointwiseAvgPool``  ``GroupMaxPool2d`` / ``GroupAvgPool2d``
``R2Upsampling`` (integer scale_factor)      ``GroupUpsample``
``ReLU``, ``ELU``, ``PointwiseDropout``,     ``nn.ReLU``, ``nn.ELU``, ``nn.Dropout``,
``IdentityModule``                           ``nn.Identity``
``SequentialModule``                         ``nn.Sequential`` (same child names)
===========================================  ==============================================

Anything else (``R2ConvTransposed``, other groups or field types, a plain ``torch.nn`` module)
is refused with a ``ValueError`` naming what is supported. Converted layers keep e2cnn's
behaviour on every input size (``strict_equivariance=False``).

e2cnn orders the 8 channels of a p4m regular field differently: our channel ``c*8 + s`` is
e2cnn's ``c*8 + E2CNN_P4M_PERMUTATION[s]`` (SPEC section 1), the identity for p4. This holds
for e2cnn's default reflection axis ``pi/2`` (the vertical axis; ``pi/2 + k*pi`` is the same
axis); a ``FlipRot2dOnR2`` with any other axis is refused. The expanded e2cnn filter, so
reordered, has our structure ``W~[o, t, i, s] = A_t(w[o, i, T[t, s]])`` exactly (checked on
conversion); ``w`` is its ``t = 0`` block. (e2cnn 0.2.3 caches kernel bases by representation,
not by axis: a default-axis layer built after one of another axis in the same process gets
that axis's basis and fails this check; build such layers with ``recompute=True``.)
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from ger_kernels._validation import check_fields
from ger_kernels.groups import Group, get_group
from ger_kernels.nn import (GroupAvgPool2d, GroupBatchNorm2d, GroupConv2d, GroupMaxPool2d, GroupOrientationPool,
                            GroupUpsample, conv_class)
from ger_kernels.reference import expand_filter

__all__ = ["E2CNN_P4M_PERMUTATION", "from_e2cnn", "e2cnn_to_ours"]

E2CNN_P4M_PERMUTATION = (0, 1, 2, 3, 6, 5, 4, 7)
_SUPPORTED = ("e2cnn R2Conv (regular -> regular fields, or trivial -> regular for lifting; zero padding, groups=1), "
              "InnerBatchNorm, GroupPooling, PointwiseMaxPool, PointwiseAvgPool, R2Upsampling, ReLU, ELU, "
              "PointwiseDropout, IdentityModule and SequentialModule of these, on regular fields of "
              "FlipRot2dOnR2(N=4) with the default axis pi/2 or Rot2dOnR2(N=4)")
_DEFAULT_AXIS = math.pi / 2


def _group_of(gspace) -> Group:
    """p4m for the dihedral group of order 8 (default reflection axis), p4 for the cyclic group of order 4."""
    group = getattr(gspace, "fibergroup", None)
    kind, order = type(group).__name__, group.order() if group is not None else None
    if (kind, order) == ("CyclicGroup", 4):
        return get_group("p4")
    if (kind, order) != ("DihedralGroup", 8):
        raise ValueError(f"unsupported gspace {type(gspace).__name__} with fiber group {kind} of order {order}; "
                         f"supported: {_SUPPORTED}")
    axis = getattr(gspace, "axis", _DEFAULT_AXIS)
    if not math.isclose(math.remainder(axis - _DEFAULT_AXIS, math.pi), 0.0, abs_tol=1e-9):
        raise ValueError(f"unsupported reflection axis {axis!r} of {type(gspace).__name__}: only e2cnn's default "
                         f"axis pi/2 (or pi/2 + k*pi) orders the channels by E2CNN_P4M_PERMUTATION; "
                         f"rebuild the model with FlipRot2dOnR2(N=4)")
    return get_group("p4m")


def _fields(field_type, group: Group, what: str, trivial: bool = False) -> tuple[int, int]:
    """``(number of fields, orientations per field)``: all regular (order), or all trivial (1) when allowed."""
    names = {rep.name for rep in field_type.representations}
    sizes = {rep.size for rep in field_type.representations}
    if names == {"regular"} and sizes == {group.order}:
        return len(field_type.representations), group.order
    if trivial and all(rep.is_trivial() for rep in field_type.representations):
        return len(field_type.representations), 1
    raise ValueError(f"unsupported {what} with representations {sorted(names)}; supported: {_SUPPORTED}")


def _channel_order(fields: int, orientations: int) -> torch.Tensor:
    """Index into e2cnn's channels giving ours: ``ours = e2cnn[:, index]``."""
    if orientations == 1:
        return torch.arange(fields)
    per_field = torch.tensor(E2CNN_P4M_PERMUTATION if orientations == 8 else range(4))
    return (torch.arange(fields)[:, None] * orientations + per_field).flatten()


def e2cnn_to_ours(tensor: torch.Tensor, group: str | int | Group = "p4m") -> torch.Tensor:
    """Reorders the channels of an e2cnn regular-field tensor ``(B, C*S, H, W)`` into ours; its own
    inverse. ``group`` is anything :func:`ger_kernels.groups.get_group` accepts."""
    group = get_group(group)
    fields = check_fields(tensor, group, "tensor")
    return tensor[:, _channel_order(fields, group.order).to(tensor.device)]


def _conv(conv, backend: str, atol: float) -> GroupConv2d:
    group = _group_of(conv.in_type.gspace)
    order = group.order
    c_out, _ = _fields(conv.out_type, group, "out_type")
    c_in, s_in = _fields(conv.in_type, group, "in_type", trivial=True)
    if getattr(conv, "padding_mode", "zeros") != "zeros" or getattr(conv, "groups", 1) != 1:
        raise ValueError(f"unsupported padding_mode={conv.padding_mode!r} / groups={conv.groups}; "
                         f"supported: {_SUPPORTED}")
    with torch.no_grad():
        expanded, bias = conv.expand_parameters()
        k = expanded.shape[-1]
        if expanded.shape != (c_out * order, c_in * s_in, k, k):
            raise ValueError(f"the expanded filter of {type(conv).__name__} has shape {tuple(expanded.shape)}, "
                             f"expected {(c_out * order, c_in * s_in, k, k)}; supported: {_SUPPORTED}")
        expanded = expanded[_channel_order(c_out, order)][:, _channel_order(c_in, s_in)]
        weight = expanded.view(c_out, order, c_in, s_in, k, k)[:, 0].contiguous()
        error = (expand_filter(weight, group) - expanded).abs().max() / expanded.abs().max().clamp_min(1e-30)
        if error > atol:
            raise ValueError(f"the expanded filter of {type(conv).__name__} is not a {group.name} group convolution "
                             f"in our convention (relative error {error:.1e}); supported: {_SUPPORTED}")
        if bias is not None:
            per_field = bias.view(c_out, order)
            if (per_field - per_field[:, :1]).abs().max() > atol * per_field.abs().max().clamp_min(1e-30):
                raise ValueError(f"the bias of {type(conv).__name__} differs between the orientations of a field")
        layer = conv_class(s_in, order)(c_in, c_out, k, conv.stride, conv.padding, conv.dilation, bias is not None,
                                        backend, strict_equivariance=False).to(expanded.device, expanded.dtype)
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias.view(c_out, order)[:, 0])
    return layer


def _batch_norm(module) -> GroupBatchNorm2d:
    group = _group_of(module.in_type.gspace)
    fields, order = _fields(module.in_type, group, "in_type")
    inner = getattr(module, f"batch_norm_[{order}]")
    layer = GroupBatchNorm2d(fields, group, module.eps, module.momentum, module.affine, module.track_running_stats)
    like = next(inner.buffers(), next(inner.parameters(), None))
    if like is not None:
        layer.to(like.device, like.dtype)
    layer.load_state_dict(inner.state_dict())
    return layer


def _square(module, name: str) -> int:
    value = getattr(module, name)
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if pair[0] != pair[1]:
        raise ValueError(f"unsupported {type(module).__name__} with {name}={value!r}; it must be equal on both axes")
    return pair[0]


def _pool(module, cls):
    dilation = _square(module, "dilation") if hasattr(module, "dilation") else 1
    if module.ceil_mode or dilation != 1:
        raise ValueError(f"unsupported {type(module).__name__} with ceil_mode={module.ceil_mode}, dilation={dilation}; "
                         f"supported: ceil_mode=False, dilation=1")
    return cls(_square(module, "kernel_size"), _square(module, "stride"), _square(module, "padding"),
               strict_equivariance=False)


def _group_pooling(module) -> GroupOrientationPool:
    group = _group_of(module.in_type.gspace)
    _fields(module.in_type, group, "in_type")
    return GroupOrientationPool(group, "max")


def _upsampling(module) -> GroupUpsample:
    scale = module._scale_factor
    if module._size is not None or not isinstance(scale, int) or isinstance(scale, bool):
        raise ValueError(f"unsupported R2Upsampling with size={module._size}, scale_factor={scale!r}; "
                         f"supported: an int scale_factor")
    return GroupUpsample(scale, module._mode, bool(module._align_corners))


def _sequential(module, backend: str, atol: float) -> nn.Sequential:
    children = OrderedDict()
    for name, child in module.named_children():
        try:
            children[name] = from_e2cnn(child, backend, atol)
        except ValueError as error:
            raise ValueError(f"SequentialModule child {name!r}: {error}") from None
    return nn.Sequential(children)


_LAYERS = {
    "InnerBatchNorm": _batch_norm,
    "GroupPooling": _group_pooling,
    "PointwiseMaxPool": lambda m: _pool(m, GroupMaxPool2d),
    "PointwiseAvgPool": lambda m: _pool(m, GroupAvgPool2d),
    "R2Upsampling": _upsampling,
    "ReLU": lambda m: nn.ReLU(m._inplace),
    "ELU": lambda m: nn.ELU(m.alpha, m._inplace),
    "PointwiseDropout": lambda m: nn.Dropout(m.p, m.inplace),
    "IdentityModule": lambda m: nn.Identity(),
}


def from_e2cnn(module: nn.Module, backend: str = "auto", atol: float = 1e-6) -> nn.Module:
    """The module of ours computing e2cnn's ``module`` (see the table above) on tensors whose
    channels are reordered by :func:`e2cnn_to_ours`, in ``module``'s train/eval mode. Raises
    ``ValueError`` for anything unsupported, or when an expanded filter is not of the
    group-convolution form (relative error above ``atol``)."""
    cls = type(module)
    name = cls.__name__ if cls.__module__.split(".")[0] in ("e2cnn", "escnn") else None
    if name == "R2Conv":
        converted = _conv(module, backend, atol)
    elif name == "SequentialModule":
        converted = _sequential(module, backend, atol)
    elif name in _LAYERS:
        converted = _LAYERS[name](module)
    else:
        raise ValueError(f"module must be an e2cnn module that converts, got {cls.__module__}.{cls.__qualname__}; "
                         f"supported: {_SUPPORTED}")
    return converted.train(module.training)

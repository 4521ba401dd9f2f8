"""Import from e2cnn / escnn: an ``R2Conv`` between regular fields of ``flipRot2dOnR2(N=4)``
(or ``rot2dOnR2(N=4)``), or lifting from trivial fields, becomes our ``P4MConvP4M`` /
``P4MConvZ2`` (``P4ConvP4`` / ``P4ConvZ2``).

e2cnn orders the 8 channels of a p4m regular field differently: our channel ``c*8 + s`` is
e2cnn's ``c*8 + E2CNN_P4M_PERMUTATION[s]`` (SPEC section 1; default reflection axis), the
identity for p4. The expanded e2cnn filter, so reordered, has our structure
``W~[o, t, i, s] = A_t(w[o, i, T[t, s]])`` exactly; ``w`` is its ``t = 0`` block.
"""

from __future__ import annotations

import torch
from torch import nn

from ger_kernels.nn import GroupConv2d, conv_class
from ger_kernels.reference import expand_filter

__all__ = ["E2CNN_P4M_PERMUTATION", "from_e2cnn", "e2cnn_to_ours"]

E2CNN_P4M_PERMUTATION = (0, 1, 2, 3, 6, 5, 4, 7)
_SUPPORTED = ("R2Conv between regular fields of flipRot2dOnR2(N=4) or rot2dOnR2(N=4), or from trivial fields "
              "(lifting) to regular fields, with zero padding and groups=1")


def _group_of(gspace) -> tuple[str, int]:
    """p4m for the dihedral group of order 8, p4 for the cyclic group of order 4 (a reflection axis
    other than e2cnn's default shows up as a filter that fails the structure check)."""
    group = getattr(gspace, "fibergroup", None)
    kind, order = type(group).__name__, group.order() if group is not None else None
    if (kind, order) == ("DihedralGroup", 8):
        return "p4m", 8
    if (kind, order) == ("CyclicGroup", 4):
        return "p4", 4
    raise ValueError(f"unsupported gspace {type(gspace).__name__} with fiber group {kind} of order {order}; "
                     f"supported: {_SUPPORTED}")


def _fields(field_type, order: int, what: str) -> tuple[int, int]:
    """``(number of fields, orientations per field)``: all regular (order) or all trivial (1)."""
    names = {rep.name for rep in field_type.representations}
    sizes = {rep.size for rep in field_type.representations}
    if names == {"regular"} and sizes == {order}:
        return len(field_type.representations), order
    if what == "in_type" and all(rep.is_trivial() for rep in field_type.representations):
        return len(field_type.representations), 1
    raise ValueError(f"unsupported {what} with representations {sorted(names)}; supported: {_SUPPORTED}")


def _channel_order(fields: int, orientations: int) -> torch.Tensor:
    """Index into e2cnn's channels giving ours: ``ours = e2cnn[:, index]``."""
    if orientations == 1:
        return torch.arange(fields)
    per_field = torch.tensor(E2CNN_P4M_PERMUTATION if orientations == 8 else range(4))
    return (torch.arange(fields)[:, None] * orientations + per_field).flatten()


def e2cnn_to_ours(tensor: torch.Tensor, group: str = "p4m") -> torch.Tensor:
    """Reorders the channels of an e2cnn regular-field tensor ``(B, C*S, H, W)`` into ours (self-inverse)."""
    order = 8 if group == "p4m" else 4
    return tensor[:, _channel_order(tensor.shape[1] // order, order).to(tensor.device)]


def from_e2cnn(conv: nn.Module, backend: str = "auto", atol: float = 1e-6) -> GroupConv2d:
    """The layer of ours computing ``conv`` (an e2cnn/escnn ``R2Conv``) up to the channel order of
    :func:`e2cnn_to_ours`. Raises ``ValueError`` for unsupported field types or settings, or when
    the expanded filter is not of the group-convolution form (relative error above ``atol``)."""
    group, order = _group_of(conv.in_type.gspace)
    c_out, s_out = _fields(conv.out_type, order, "out_type")
    if s_out != order:
        raise ValueError(f"out_type must be regular fields; supported: {_SUPPORTED}")
    c_in, s_in = _fields(conv.in_type, order, "in_type")
    if getattr(conv, "padding_mode", "zeros") != "zeros" or getattr(conv, "groups", 1) != 1:
        raise ValueError(f"unsupported padding_mode={conv.padding_mode!r} / groups={conv.groups}; "
                         f"supported: {_SUPPORTED}")
    with torch.no_grad():
        expanded, bias = conv.expand_parameters()
        expanded = expanded[_channel_order(c_out, order)][:, _channel_order(c_in, s_in)]
        k = expanded.shape[-1]
        weight = expanded.view(c_out, order, c_in, s_in, k, k)[:, 0].contiguous()
        error = (expand_filter(weight, group) - expanded).abs().max() / expanded.abs().max().clamp_min(1e-30)
        if error > atol:
            raise ValueError(f"the expanded filter of {type(conv).__name__} is not a {group} group convolution "
                             f"in our convention (relative error {error:.1e}); supported: {_SUPPORTED}")
        if bias is not None:
            per_field = bias.view(c_out, order)
            if (per_field - per_field[:, :1]).abs().max() > atol * per_field.abs().max().clamp_min(1e-30):
                raise ValueError(f"the bias of {type(conv).__name__} differs between the orientations of a field")
        layer = conv_class(s_in, order)(c_in, c_out, k, conv.stride, conv.padding, conv.dilation, bias is not None, backend,
                    strict_equivariance=False).to(expanded.device, expanded.dtype)
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias.view(c_out, order)[:, 0])
    return layer

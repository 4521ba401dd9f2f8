"""Reference of the group convolution (SPEC section 3): it materializes the expanded filter
``W~`` and calls ``F.conv2d``. Every other backend is checked against it.

``expand_filter`` is the definition of ``W~`` in pure PyTorch (an index gather). The
convolution expands with the extension's ``expand_filter`` op instead where it has a kernel for
the weight's device (CPU, and CUDA when built with it): the same ``W~`` bit for bit, whose
gradient is folded back by ``expand_filter_backward`` rather than autograd's ``index_put``
scatter (forward+backward 1.4x faster on a lifting layer and 4-21x on GER-UNet's group
layers, CPU float32, ``benchmarks/bench_expand_filter.py``). Both are differentiable, compile
to graphs and keep the weight's dtype under ``torch.autocast`` (``F.conv2d`` then casts ``W~``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ger_kernels import ops
from ger_kernels._validation import check_conv_args, check_weight, square_param
from ger_kernels.groups import Group, get_group

__all__ = ["expand_filter", "expand_for_conv", "fold_expanded", "group_conv2d"]


# (group name, S_in, k, device) -> gather indices; a plain dict, which torch.compile traces.
_GATHER_INDICES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _gather_indices(group: Group, in_orientations: int, kernel_size: int, device: torch.device):
    """Index tensors ``(S, S_in, 1)`` and ``(S, 1, k*k)`` so that
    ``w[:, :, orient, taps]`` is ``W~`` viewed ``(C_out, C_in, S, S_in, k*k)``; built once per key."""
    key = (group.name, in_orientations, kernel_size, device)
    if key not in _GATHER_INDICES:
        orient = torch.zeros(group.order, 1, dtype=torch.long) if in_orientations == 1 else group.T
        taps = group.tap_permutation(kernel_size)
        _GATHER_INDICES[key] = orient[:, :, None].to(device), taps[:, None, :].to(device)
    return _GATHER_INDICES[key]


def expand_filter(weight: torch.Tensor, group: str | Group = "p4m") -> torch.Tensor:
    """``W~`` of shape ``(C_out*S, C_in*S_in, k, k)`` from ``weight`` ``(C_out, C_in, S_in, k, k)``:

    lifting (``S_in = 1``): ``W~[o, t, i, 0] = A_t(w[o, i, 0])``;
    group (``S_in = S``):   ``W~[o, t, i, s] = A_t(w[o, i, T[t, s]])``.
    """
    group = get_group(group)
    c_out, c_in, s_in, k = check_weight(weight, group)
    orient, taps = _gather_indices(group, s_in, k, weight.device)
    expanded = weight.flatten(-2)[:, :, orient, taps]  # (C_out, C_in, S, S_in, k*k)
    return expanded.transpose(1, 2).reshape(c_out * group.order, c_in * s_in, k, k)


def group_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 stride=1, padding=0, dilation=1, group: str | Group = "p4m") -> torch.Tensor:
    """Group correlation: ``conv2d(input, W~, bias.repeat_interleave(S), ...)``.

    input ``(B, C_in*S_in, H, W)``, weight ``(C_out, C_in, S_in, k, k)``, bias ``(C_out,)``;
    returns ``(B, C_out*S, H', W')`` with ``H'`` as in ``F.conv2d``.
    """
    group = get_group(group)
    check_conv_args(input, weight, bias, group)
    stride = square_param(stride, "stride", 1)
    padding = square_param(padding, "padding", 0)
    dilation = square_param(dilation, "dilation", 1)
    return conv_expanded(input, weight, bias, stride, padding, dilation, group)


# device types on which the convolution expands W~ with the extension's op (decided at import,
# so torch.compile reads a constant)
EXPAND_OP_DEVICES = frozenset(d for d in ("cpu", "cuda") if ops.has_kernel("expand_filter", d))


def expand_for_conv(weight: torch.Tensor, group: Group) -> torch.Tensor:
    """``expand_filter(weight, group)`` of a checked weight, by the extension where it can."""
    if weight.device.type in EXPAND_OP_DEVICES:
        return torch.ops.ger_kernels.expand_filter(weight, group.order)
    return expand_filter(weight, group)


def fold_expanded(grad: torch.Tensor, group: Group, in_orientations: int) -> torch.Tensor:
    """The adjoint of ``expand_for_conv``: the gradient ``(C_out, C_in, S_in, k, k)`` of the base
    weight from a gradient ``(C_out*S, C_in*S_in, k, k)`` of ``W~``, by the extension where it can,
    else by the scatter-add that is the adjoint of ``expand_filter``'s gather. Differentiable."""
    if grad.device.type in EXPAND_OP_DEVICES:
        return torch.ops.ger_kernels.expand_filter_backward(grad, group.order, in_orientations)
    c_out_s, c_in_s, k, _ = grad.shape
    c_out, c_in = c_out_s // group.order, c_in_s // in_orientations
    orient, taps = _gather_indices(group, in_orientations, k, grad.device)
    per_element = grad.reshape(c_out, group.order, c_in, in_orientations, k * k).transpose(1, 2)
    folded = torch.ops.aten.index_put(grad.new_zeros(c_out, c_in, in_orientations, k * k),
                                      [None, None, orient, taps], per_element, accumulate=True)
    return folded.view(c_out, c_in, in_orientations, k, k)


def conv_expanded(input, weight, bias, stride: int, padding: int, dilation: int, group: Group) -> torch.Tensor:
    """``group_conv2d`` on arguments already checked."""
    expanded_bias = bias.repeat_interleave(group.order) if bias is not None else None
    return F.conv2d(input, expand_for_conv(weight, group), expanded_bias, stride, padding, dilation)

"""Functional group convolution with a selectable backend."""

from __future__ import annotations

import torch

from ger_kernels._validation import check_conv_args, check_output_size, square_param
from ger_kernels.backends import resolve_backend
from ger_kernels.groups import Group, get_group

__all__ = ["group_conv2d"]


def group_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 stride=1, padding=0, dilation=1, group: str | Group = "p4m",
                 backend: str = "auto") -> torch.Tensor:
    """The group correlation of SPEC section 3, computed by ``backend``.

    input ``(B, C_in*S_in, H, W)`` (``S_in = 1`` lifts planar input), weight
    ``(C_out, C_in, S_in, k, k)``, bias ``(C_out,)``; returns ``(B, C_out*S, H', W')``.
    Every backend gives the result of ``ger_kernels.reference.group_conv2d``.
    """
    group = get_group(group)
    check_conv_args(input, weight, bias, group)
    stride = square_param(stride, "stride", 1)
    padding = square_param(padding, "padding", 0)
    dilation = square_param(dilation, "dilation", 1)
    check_output_size(input.shape, weight.shape[-1], stride, padding, dilation)
    conv = resolve_backend(backend, input, weight, group, stride, padding, dilation)
    return conv(input, weight, bias, stride, padding, dilation, group)

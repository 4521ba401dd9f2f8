"""Spatial pooling of feature maps, and pooling over orientations (group -> planar).
Outputs keep the input's memory format (NCHW or channels_last)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch._prims_common import suggest_memory_format

from ger_kernels._validation import check_4d, check_exact_grid, check_fields, check_int
from ger_kernels.groups import Group, get_group

__all__ = ["GroupMaxPool2d", "GroupAvgPool2d", "GroupOrientationPool"]


class _SpatialPool2d(nn.Module):
    """Pools each channel over square windows; orientations are untouched, so it is
    exactly equivariant when the window grid is (checked unless ``strict_equivariance=False``)."""

    def __init__(self, kernel_size: int = 2, stride: int | None = None, padding: int = 0, *,
                 strict_equivariance: bool = True):
        super().__init__()
        self.kernel_size = check_int(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else check_int(stride, "stride")
        self.padding = check_int(padding, "padding", 0)
        if 2 * self.padding > self.kernel_size:  # the window would hold padding only
            raise ValueError(f"padding must be at most kernel_size // 2 = {self.kernel_size // 2}, got {padding}")
        self.strict_equivariance = strict_equivariance

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_4d(input, "input", "(B, C*S, H, W)")
        if self.strict_equivariance:
            check_exact_grid(type(self).__name__, input.shape[-2], input.shape[-1], self.kernel_size,
                             self.stride, self.padding)
        return self._pool(input)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class GroupMaxPool2d(_SpatialPool2d):
    """Spatial max pooling (default 2x2, stride 2) of ``(B, C*S, H, W)``."""

    def _pool(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding)


class GroupAvgPool2d(_SpatialPool2d):
    """Spatial average pooling (default 2x2, stride 2) of ``(B, C*S, H, W)``."""

    def _pool(self, input):
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding)


class GroupOrientationPool(nn.Module):
    """``(B, C*S, H, W) -> (B, C, H, W)``: mean (the paper's group output layer) or max
    over the S orientations of each field. Turns ``L_g y`` into ``A_g(pool(y))``."""

    def __init__(self, group: str | Group = "p4m", reduce: str = "mean"):
        super().__init__()
        if reduce not in ("mean", "max"):
            raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
        self.group = get_group(group)
        self.reduce = reduce

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        fields = check_fields(input, self.group, "input")
        order = self.group.order
        if suggest_memory_format(input) == torch.channels_last:
            # reduce the (B, H, W, C, S) view, dense here, so the result stays channels_last
            return self._reduce(input.permute(0, 2, 3, 1).unflatten(3, (fields, order)), 4).permute(0, 3, 1, 2)
        return self._reduce(input.unflatten(1, (fields, order)), 2)

    def _reduce(self, orientations: torch.Tensor, dim: int) -> torch.Tensor:
        return orientations.mean(dim) if self.reduce == "mean" else orientations.amax(dim)

    def extra_repr(self) -> str:
        return f"{self.group.name}, reduce={self.reduce!r}"

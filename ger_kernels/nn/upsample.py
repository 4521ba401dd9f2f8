"""Spatial upsampling of feature maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ger_kernels._validation import check_4d, check_int

__all__ = ["GroupUpsample"]


class GroupUpsample(nn.Module):
    """Upsamples each channel of ``(B, C*S, H, W)`` by an integer ``scale_factor``.

    Nearest and bilinear (either ``align_corners``) commute with quarter turns and
    mirrors, so the layer is exactly equivariant for every input size.
    """

    def __init__(self, scale_factor: int = 2, mode: str = "nearest", align_corners: bool = False):
        super().__init__()
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
        if align_corners and mode == "nearest":
            raise ValueError("align_corners=True needs mode='bilinear'")
        self.scale_factor = check_int(scale_factor, "scale_factor")
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_4d(input, "input", "(B, C*S, H, W)")
        align_corners = self.align_corners if self.mode == "bilinear" else None
        return F.interpolate(input, scale_factor=self.scale_factor, mode=self.mode, align_corners=align_corners)

    def extra_repr(self) -> str:
        s = f"scale_factor={self.scale_factor}, mode={self.mode!r}"
        return s + (", align_corners=True" if self.align_corners else "")

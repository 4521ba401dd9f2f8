"""Concatenation skips between group feature maps."""

from __future__ import annotations

import torch

from ger_kernels._validation import check_fields
from ger_kernels.groups import Group, get_group

__all__ = ["group_cat"]


def group_cat(a: torch.Tensor, b: torch.Tensor, group: str | Group = "p4m") -> torch.Tensor:
    """Fields of ``a`` then fields of ``b``: ``(B, (Ca+Cb)*S, H, W)``, orientation still fastest."""
    group = get_group(group)
    check_fields(a, group, "a")
    check_fields(b, group, "b")
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(f"a and b must agree in batch and spatial size, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype or a.device != b.device:
        raise TypeError(f"a and b must share dtype and device, got {a.dtype}/{a.device} and {b.dtype}/{b.device}")
    return torch.cat([a, b], dim=1)

"""Batch norm on group feature maps with statistics shared over orientations."""

from __future__ import annotations

import torch
from torch import nn
from torch._prims_common import suggest_memory_format

from ger_kernels._validation import check_fields, check_int
from ger_kernels.groups import Group, get_group

__all__ = ["GroupBatchNorm2d"]


class GroupBatchNorm2d(nn.BatchNorm3d):
    """``BatchNorm3d(num_fields)`` on the 5-D view ``(B, C, S, H, W)`` of ``(B, C*S, H, W)``.

    Batch and running statistics, scale and shift are per field, shared by its S
    orientations, which keeps the layer exactly equivariant (SPEC section 5);
    ``BatchNorm2d(C*S)`` would not.
    """

    def __init__(self, num_fields: int, group: str | Group = "p4m", eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__(check_int(num_fields, "num_fields"), eps, momentum, affine, track_running_stats)
        self.group = get_group(group)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        fields = check_fields(input, self.group, "input")
        if fields != self.num_features:
            raise ValueError(
                f"input must have num_fields*{self.group.order} = {self.num_features * self.group.order} "
                f"channels, got {input.shape[1]}"
            )
        output = super().forward(input.unflatten(1, (fields, self.group.order))).flatten(1, 2)
        return output.contiguous(memory_format=suggest_memory_format(input))  # BatchNorm3d gives NCHW

    def extra_repr(self) -> str:
        return f"{self.group.name}, " + super().extra_repr()

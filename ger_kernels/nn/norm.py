"""Batch norm on group feature maps with statistics shared over orientations."""

from __future__ import annotations

import torch
from torch import nn

from ger_kernels._validation import check_fields, check_int
from ger_kernels.group_batch_norm import group_batch_norm
from ger_kernels.groups import Group, get_group

__all__ = ["GroupBatchNorm2d"]


class GroupBatchNorm2d(nn.BatchNorm3d):
    """``BatchNorm3d(num_fields)`` on the 5-D view ``(B, C, S, H, W)`` of ``(B, C*S, H, W)``.

    Batch and running statistics, scale and shift are per field, shared by its S
    orientations, which keeps the layer exactly equivariant (SPEC section 5);
    ``BatchNorm2d(C*S)`` would not. It runs the fused ops of ``ger_kernels.group_batch_norm``
    (Triton kernels on CUDA with ``GER_KERNELS_TRITON_BN=1``) and keeps BatchNorm3d's
    parameters, buffers and state dict.

    ``forward(input, residual=None, relu=None)`` computes ``bn(input) + residual`` followed by
    a ReLU if ``relu`` (default: the layer's ``relu``), in one pass over the map.
    """

    def __init__(self, num_fields: int, group: str | Group = "p4m", eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, relu: bool = False):
        super().__init__(check_int(num_fields, "num_fields"), eps, momentum, affine, track_running_stats)
        self.group = get_group(group)
        self.relu = relu

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None,
                relu: bool | None = None) -> torch.Tensor:
        fields = check_fields(input, self.group, "input")
        if fields != self.num_features:
            raise ValueError(
                f"input must have num_fields*{self.group.order} = {self.num_features * self.group.order} "
                f"channels, got {input.shape[1]}"
            )
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)  # as BatchNorm3d, before the cumulative average reads it
        return self._batch_norm(input, residual, self.relu if relu is None else relu)

    def _batch_norm(self, input: torch.Tensor, residual: torch.Tensor | None, relu: bool) -> torch.Tensor:
        """The normalization of a checked input (``SyncGroupBatchNorm2d`` reduces it over processes)."""
        return group_batch_norm(
            input, self.group.order, self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None, self.weight, self.bias,
            self.training, self.momentum, self.eps, residual, relu, self.num_batches_tracked)

    def extra_repr(self) -> str:
        return f"{self.group.name}, " + super().extra_repr() + (", relu=True" if self.relu else "")

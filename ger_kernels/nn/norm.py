"""Batch norm on group feature maps with statistics shared over orientations."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ger_kernels._validation import check_fields, check_int
from ger_kernels.group_batch_norm import batch_moments, check_batch, group_batch_norm
from ger_kernels.groups import Group, get_group

__all__ = ["GroupBatchNorm2d", "InputNormalization"]


class InputNormalization(NamedTuple):
    """A group batch norm as the convolution after it applies it on load: per field
    ``(x - mean) * invstd * weight + bias``; ``batch_statistics``: mean and invstd are the
    batch's (their gradient flows to x), else fixed (running statistics). mean, invstd float32."""
    mean: torch.Tensor
    invstd: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    batch_statistics: bool


class GroupBatchNorm2d(nn.BatchNorm3d):
    """``BatchNorm3d(num_fields)`` on the 5-D view ``(B, C, S, H, W)`` of ``(B, C*S, H, W)``.

    Batch and running statistics, scale and shift are per field, shared by its S
    orientations, which keeps the layer exactly equivariant (SPEC section 5);
    ``BatchNorm2d(C*S)`` would not. It runs the fused ops of ``ger_kernels.group_batch_norm``
    (Triton kernels on CUDA with ``GER_KERNELS_TRITON_BN=1``) and keeps BatchNorm3d's
    parameters, buffers and state dict.

    ``forward(input, residual=None, relu=None, statistics=None)`` computes ``bn(input) + residual``
    followed by a ReLU if ``relu`` (default: the layer's ``relu``), in one pass over the map;
    ``statistics`` (3, C), the input's per-field (count, mean, M2) from the convolution that wrote
    it (``ger_kernels.nn.fused``), spares the staged kernels their statistics pass.
    """

    def __init__(self, num_fields: int, group: str | Group = "p4m", eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, relu: bool = False):
        super().__init__(check_int(num_fields, "num_fields"), eps, momentum, affine, track_running_stats)
        self.group = get_group(group)
        self.relu = relu

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None, relu: bool | None = None,
                statistics: torch.Tensor | None = None) -> torch.Tensor:
        self._check_and_count(input, statistics)
        return self._batch_norm(input, residual, self.relu if relu is None else relu, statistics)

    def _check_and_count(self, input: torch.Tensor, statistics: torch.Tensor | None = None) -> None:
        """Checks ``input`` (and given ``statistics``), then counts the batch as BatchNorm3d does,
        before the cumulative average reads the count."""
        fields = check_fields(input, self.group, "input")
        if fields != self.num_features:
            raise ValueError(
                f"input must have num_fields*{self.group.order} = {self.num_features * self.group.order} "
                f"channels, got {input.shape[1]}"
            )
        check_batch(input, self.group.order, self.training or self._running()[0] is None, statistics)
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)

    def _running(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The running statistics this forward reads or updates (None: batch statistics only)."""
        if self.training and not self.track_running_stats:
            return None, None
        return self.running_mean, self.running_var

    def _batch_norm(self, input: torch.Tensor, residual: torch.Tensor | None, relu: bool,
                    statistics: torch.Tensor | None = None) -> torch.Tensor:
        """The normalization of a checked input (``SyncGroupBatchNorm2d`` reduces it over processes)."""
        return group_batch_norm(input, self.group.order, *self._running(), self.weight, self.bias, self.training,
                                self.momentum, self.eps, residual, relu, self.num_batches_tracked, statistics)

    def normalizes_on_load(self) -> bool:
        """Whether a convolution may apply this batch norm while loading its input
        (``input_normalization``); a synchronized batch norm in training may not."""
        return True

    def input_normalization(self, input: torch.Tensor,
                            statistics: torch.Tensor | None = None) -> InputNormalization:
        """This batch norm of ``input`` as the convolution after it applies it on load (the ReLU is
        ``self.relu``), with the running statistics updated as ``forward`` does; ``statistics`` as
        in ``forward``."""
        self._check_and_count(input, statistics)
        running_mean, running_var = self._running()
        batch_statistics = self.training or running_mean is None
        with torch.no_grad():
            mean, invstd, new_mean, new_var = batch_moments(input, self.group.order, running_mean, running_var,
                                                            self.num_batches_tracked, self.training, self.momentum,
                                                            self.eps, statistics)
            if new_mean.numel():
                running_mean.copy_(new_mean)
                running_var.copy_(new_var)
        return InputNormalization(mean, invstd, self.weight, self.bias, batch_statistics)

    def extra_repr(self) -> str:
        return f"{self.group.name}, " + super().extra_repr() + (", relu=True" if self.relu else "")

"""Res-UNet, in a group-equivariant (GER-UNet) and a regular (R-UNet) version (SPEC section 6).

Architecture (``w1..w4`` = ``widths``, planar channels for R-UNet, fields for GER-UNet):

    input layer   3x3 conv in_channels -> w1 (lifting for GER-UNet), BN, ReLU
    encoder       block(w1 -> w1); pool, block(w1 -> w2); pool, block(w2 -> w3);
                  pool, block(w3 -> w4); block(w4 -> w4)                       (5 blocks)
    decoder       3 x [up-sample layer (x2 upsample, 3x3 conv w_l -> w_{l-1}, BN, ReLU),
                  skip (add, or concat along fields), block(-> w_{l-1})]     (3 blocks)
    output layer  1x1 conv w1 -> num_classes, zero-initialized (GER-UNet: then the mean over orientations)

A block is conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (identity, or 1x1 conv + BN when
the width changes), then ReLU. GER-UNet fuses each BN-ReLU and the last BN-add-ReLU of a
block into single passes of group batch norm (the ReLU modules are then Identities); on the
Triton backend each conv also writes the next batch norm's statistics and a block's second conv
applies the first BN-ReLU while loading its input (``ger_kernels.nn.FusedSequential``). Pools
are 2x2/2 max pools, so the network is exactly equivariant (GER-UNet) on inputs whose H and
W are divisible by 8; other sizes raise.
Inputs ``(B, in_channels, H, W)``, outputs class scores ``(B, num_classes, H, W)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ger_kernels._validation import check_feature_map
from ger_kernels.groups import get_group
from ger_kernels.nn import (FusedSequential, GroupBatchNorm2d, GroupMaxPool2d, GroupOrientationPool, GroupUpsample,
                            conv_class, group_cat)

__all__ = ["GERUNet", "RUNet", "PAPER_WIDTHS", "group_widths", "count_parameters"]

PAPER_WIDTHS = (64, 128, 256, 512)  # R-UNet; GER-UNet uses group_widths(PAPER_WIDTHS) = (23, 45, 91, 181)
DOWNSAMPLINGS = 3


def group_widths(widths, group: str = "p4m") -> tuple[int, ...]:
    """Regular widths divided by sqrt(S) and rounded: equal parameter counts (SPEC section 6)."""
    return tuple(round(w / math.sqrt(get_group(group).order)) for w in widths)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _Family:
    """The layers a Res-UNet is built from: plain (``group=None``) or group convolutions."""

    def __init__(self, group: str | None, backend: str, upsample_mode: str):
        self.group = get_group(group) if group else None
        self.backend = backend
        self.upsample_mode = upsample_mode

    def conv(self, c_in: int, c_out: int, k: int, lifting: bool = False, bias: bool = False) -> nn.Module:
        if self.group is None:
            return nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias)
        layer = conv_class(1 if lifting else self.group.order, self.group.order)
        return layer(c_in, c_out, k, padding=k // 2, bias=bias, backend=self.backend)

    def norm(self, c: int) -> nn.Module:
        return nn.BatchNorm2d(c) if self.group is None else GroupBatchNorm2d(c, self.group)

    def norm_relu(self, c: int) -> tuple[nn.Module, nn.Module]:
        """BN then ReLU as two modules; group BN fuses the ReLU (the second is then an Identity)."""
        if self.group is None:
            return nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        return GroupBatchNorm2d(c, self.group, relu=True), nn.Identity()

    def pool(self) -> nn.Module:
        return nn.MaxPool2d(2) if self.group is None else GroupMaxPool2d(2)

    def upsample(self) -> nn.Module:
        if self.group is None:
            return nn.Upsample(scale_factor=2, mode=self.upsample_mode)
        return GroupUpsample(2, self.upsample_mode)

    def cat(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], 1) if self.group is None else group_cat(a, b, self.group)

    def output(self, c_in: int, num_classes: int) -> nn.Module:
        """1x1 conv to class scores, zero-initialized: every model starts at equal class scores
        (with random init, the mean over orientations of a group head starts far from them)."""
        head = self.conv(c_in, num_classes, 1, bias=True)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return head if self.group is None else nn.Sequential(head, GroupOrientationPool(self.group, "mean"))


def _conv_bn_relu(family: _Family, c_in: int, c_out: int, lifting: bool = False) -> FusedSequential:
    return FusedSequential(family.conv(c_in, c_out, 3, lifting), *family.norm_relu(c_out))


def _norm_add_relu(norm: nn.Module, x: torch.Tensor, residual: torch.Tensor,
                   statistics: torch.Tensor | None) -> torch.Tensor:
    """``relu(norm(x) + residual)``: one fused pass for group batch norm (with the batch
    statistics of x when the convolution that wrote it computed them)."""
    if isinstance(norm, GroupBatchNorm2d):
        return norm(x, residual, relu=True, statistics=statistics)
    return torch.relu(norm(x) + residual)


class _ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU; the group version fuses each conv with
    the batch norms around it on the Triton backend (``ger_kernels.nn.fused``)."""

    def __init__(self, family: _Family, c_in: int, c_out: int):
        super().__init__()
        self.body = FusedSequential(family.conv(c_in, c_out, 3), *family.norm_relu(c_out),
                                    family.conv(c_out, c_out, 3), family.norm(c_out))
        self.shortcut = (nn.Identity() if c_in == c_out
                         else FusedSequential(family.conv(c_in, c_out, 1), family.norm(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body, norm = self.body[:-1], self.body[-1]
        if isinstance(body, FusedSequential):
            y, statistics = body.forward_with_statistics(x, consumer=norm)
        else:  # exported to plain torch.nn (ger_kernels.convert.export)
            y, statistics = body(x), None
        return _norm_add_relu(norm, y, self.shortcut(x), statistics)


class _ResUNet(nn.Module):
    def __init__(self, family: _Family, in_channels: int, num_classes: int, widths, skip: str):
        super().__init__()
        if skip not in ("add", "concat"):
            raise ValueError(f"skip must be 'add' or 'concat', got {skip!r}")
        if len(widths) != DOWNSAMPLINGS + 1 or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be {DOWNSAMPLINGS + 1} positive ints, got {widths!r}")
        self.family = family
        self.in_channels, self.num_classes, self.widths, self.skip = in_channels, num_classes, tuple(widths), skip
        w = self.widths
        self.input_layer = _conv_bn_relu(family, in_channels, w[0], lifting=True)
        self.encoder = nn.ModuleList([_ResBlock(family, w[0], w[0])] +
                                     [_ResBlock(family, w[i - 1], w[i]) for i in range(1, len(w))])
        self.bridge = _ResBlock(family, w[-1], w[-1])
        self.pool = family.pool()
        self.up_layers = nn.ModuleList(FusedSequential(family.upsample(), *_conv_bn_relu(family, w[i], w[i - 1]))
                                       for i in range(len(w) - 1, 0, -1))
        merged = 1 if skip == "add" else 2
        self.decoder = nn.ModuleList(_ResBlock(family, merged * w[i - 1], w[i - 1]) for i in range(len(w) - 1, 0, -1))
        self.output_layer = family.output(w[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.in_channels, "input", f"(B, {self.in_channels}, H, W)")
        factor = 2 ** DOWNSAMPLINGS
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"{type(self).__name__} needs H and W divisible by {factor} ({DOWNSAMPLINGS} 2x2 "
                             f"poolings) to stay exactly equivariant, got {x.shape[-2]}x{x.shape[-1]}; pad or "
                             f"crop the input")
        skips = []
        y = self.input_layer(x)
        for level, block in enumerate(self.encoder):
            y = block(self.pool(y) if level else y)
            skips.append(y)
        y = self.bridge(y)
        for up, block, skip in zip(self.up_layers, self.decoder, reversed(skips[:-1])):
            y = up(y)
            y = block(y + skip if self.skip == "add" else self.family.cat(y, skip))
        return self.output_layer(y)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, num_classes={self.num_classes}, widths={self.widths}, "
                f"skip={self.skip!r}")


class GERUNet(_ResUNet):
    """Group-equivariant Res-UNet: p4m (or p4) group convolutions, group BN, group skips,
    output = mean over orientations, so the score map is equivariant to the input."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, skip: str = "add",
                 widths=group_widths(PAPER_WIDTHS), group: str = "p4m", backend: str = "auto",
                 upsample_mode: str = "nearest"):
        super().__init__(_Family(group, backend, upsample_mode), in_channels, num_classes, widths, skip)
        self.group = self.family.group

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group={self.group.name!r}"


class RUNet(_ResUNet):
    """The regular Res-UNet baseline of the paper: the same architecture with plain convolutions."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, skip: str = "add", widths=PAPER_WIDTHS,
                 upsample_mode: str = "nearest"):
        super().__init__(_Family(None, "reference", upsample_mode), in_channels, num_classes, widths, skip)

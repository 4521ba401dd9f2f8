"""Equivariance checks for any module, the package's layers and users' models alike."""

from __future__ import annotations

import torch
from torch import nn

from ger_kernels.groups import Group, get_group

__all__ = ["equivariance_errors", "check_equivariance"]


def _action(group: Group, kind: str, name: str):
    if kind == "planar":
        return group.transform_planar
    if kind == "group":
        return group.transform
    raise ValueError(f"{name} must be 'planar' or 'group', got {kind!r}")


def _max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if expected.numel() == 0:
        return 0.0
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return ((actual - expected).abs().max() / scale).item()


@torch.no_grad()
def equivariance_errors(module: nn.Module, x: torch.Tensor, group: str | Group = "p4m",
                        input: str = "planar", output: str = "group") -> list[float]:
    """``max|module(L_g x) - L_g module(x)| / max|L_g module(x)|`` for every element ``g``.

    ``input``/``output`` say whether ``x`` and ``module(x)`` are planar images (acted on
    by ``A_g``) or group feature maps (acted on by ``L_g``, SPEC section 4). The module
    runs in whatever mode it is in (train mode updates batch norm running statistics).
    """
    group = get_group(group)
    act_in = _action(group, input, "input")
    act_out = _action(group, output, "output")
    y = module(x)
    return [_max_relative_error(module(act_in(x, g)), act_out(y, g)) for g in group.elements()]


def check_equivariance(module: nn.Module, x: torch.Tensor, group: str | Group = "p4m",
                       input: str = "planar", output: str = "group") -> float:
    """The largest of ``equivariance_errors(...)``: 0 for an exactly equivariant module
    up to rounding (about 1e-15 in float64, 1e-7 in float32)."""
    return max(equivariance_errors(module, x, group, input, output))

"""Group convolution layers: lifting (Z2 -> G) and group-to-group (G -> G), p4m and p4.

Channels are counted in fields: ``P4MConvP4M(C_in, C_out)`` maps ``(B, C_in*8, H, W)``
to ``(B, C_out*8, H', W')``. Weight ``(C_out, C_in, S_in, k, k)``, bias ``(C_out,)``
(SPEC section 2), the same for every backend and the same as GrouPy's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ger_kernels._validation import check_exact_grid, check_int, square_param
from ger_kernels.backends import check_backend_name
from ger_kernels.functional import group_conv2d
from ger_kernels.groups import get_group

__all__ = ["GroupConv2d", "P4MConvZ2", "P4MConvP4M", "P4ConvZ2", "P4ConvP4", "conv_class"]


class GroupConv2d(nn.Module):
    """Base of the group convolutions: subclasses set ``group_name`` and ``lifting``
    (planar input) and take ``nn.Conv2d``'s arguments.

    With ``strict_equivariance`` (default) forward raises when the input size makes a
    strided convolution inexact (SPEC section 5). ``backend`` can be changed at any
    time; it never touches the weights.
    """

    group_name: str
    lifting: bool

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, backend: str = "auto", *, strict_equivariance: bool = True):
        super().__init__()
        if not hasattr(self, "group_name"):
            raise TypeError("GroupConv2d is a base class: use P4MConvZ2, P4MConvP4M, P4ConvZ2 or P4ConvP4")
        self.group = get_group(self.group_name)
        self.in_channels = check_int(in_channels, "in_channels")
        self.out_channels = check_int(out_channels, "out_channels")
        self.kernel_size = square_param(kernel_size, "kernel_size", 1)
        self.stride = square_param(stride, "stride", 1)
        self.padding = square_param(padding, "padding", 0)
        self.dilation = square_param(dilation, "dilation", 1)
        self.strict_equivariance = strict_equivariance
        self.backend = backend
        k = self.kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, self.in_orientations, k, k))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    @property
    def in_orientations(self) -> int:
        return 1 if self.lifting else self.group.order

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, backend: str) -> None:
        self._backend = check_backend_name(backend)

    def _apply(self, fn, recurse: bool = True):
        """``nn.Module._apply`` with ``fn`` given the 5-D weight (and its gradient) as its 4-D view
        ``(C_out, C_in*S_in, k, k)``, the shape of an ``nn.Conv2d`` weight: ``.to(memory_format=
        torch.channels_last)`` then lays the weight out as it does a ``Conv2d`` weight, and the
        weight keeps its 5-D shape (and its state-dict layout)."""
        def on_conv2d_view(t: torch.Tensor) -> torch.Tensor:
            return fn(t.flatten(1, 2)).unflatten(1, t.shape[1:3]) if t.dim() == 5 else fn(t)

        return super()._apply(on_conv2d_view, recurse)

    def reset_parameters(self) -> None:
        """He init with the true fan-in ``C_in * S_in * k * k``; zero bias."""
        fan_in = self.in_channels * self.in_orientations * self.kernel_size ** 2
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_in))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def check_grid(self, input: torch.Tensor) -> None:
        """With ``strict_equivariance``, an error when ``input``'s size makes this strided
        convolution inexact (SPEC section 5)."""
        if self.strict_equivariance and isinstance(input, torch.Tensor) and input.dim() == 4:
            check_exact_grid(type(self).__name__, input.shape[-2], input.shape[-1], self.kernel_size,
                             self.stride, self.padding, self.dilation)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self.check_grid(input)
        return group_conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                            self.group, self.backend)

    def extra_repr(self) -> str:
        source = "Z2" if self.lifting else self.group.name
        s = (f"{source} -> {self.group.name}, fields {self.in_channels} -> {self.out_channels}, "
             f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}")
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        if not self.strict_equivariance:
            s += ", strict_equivariance=False"
        return s + f", backend={self.backend!r}"


class P4MConvZ2(GroupConv2d):
    """Lifting p4m convolution: planar ``(B, C_in, H, W)`` -> ``(B, C_out*8, H', W')``."""
    group_name, lifting = "p4m", True


class P4MConvP4M(GroupConv2d):
    """p4m to p4m convolution: ``(B, C_in*8, H, W)`` -> ``(B, C_out*8, H', W')``."""
    group_name, lifting = "p4m", False


class P4ConvZ2(GroupConv2d):
    """Lifting p4 convolution: planar ``(B, C_in, H, W)`` -> ``(B, C_out*4, H', W')``."""
    group_name, lifting = "p4", True


class P4ConvP4(GroupConv2d):
    """p4 to p4 convolution: ``(B, C_in*4, H, W)`` -> ``(B, C_out*4, H', W')``."""
    group_name, lifting = "p4", False


def conv_class(in_orientations: int, group_order: int) -> type[GroupConv2d]:
    """The layer for ``S_in`` -> ``S`` orientations: (1, 8) P4MConvZ2, (8, 8) P4MConvP4M,
    (1, 4) P4ConvZ2, (4, 4) P4ConvP4."""
    layers = {(1, 8): P4MConvZ2, (8, 8): P4MConvP4M, (1, 4): P4ConvZ2, (4, 4): P4ConvP4}
    if (in_orientations, group_order) not in layers:
        raise ValueError(f"(in_orientations, group_order) must be one of {sorted(layers)}, "
                         f"got {(in_orientations, group_order)}")
    return layers[(in_orientations, group_order)]

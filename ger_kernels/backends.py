"""Which convolution backends exist on this machine, why not the others, and what ``auto`` runs.

Backends compute the same function (SPEC section 3) with the same weights:
``reference`` (pure PyTorch, always available), ``cpp`` (fused C++/CUDA kernels of
``ger_kernels._C``) and ``triton`` (fused Triton kernels). Each is a function
``fn(input, weight, bias, stride, padding, dilation, group)`` of arguments already checked.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch

from ger_kernels import ops, reference
from ger_kernels.groups import Group

__all__ = ["AUTO_PREFERENCE", "BACKENDS", "BackendStatus", "auto_backend", "backends", "check_backend_name",
           "resolve_backend"]

BACKENDS = ("reference", "cpp", "triton")

# What ``auto`` runs per device type: the first available of these. Decided by measurement
# (README "Speed", `python benchmarks/run.py`): on CPU the cpp backend beats the reference at
# GER-UNet shapes. The fused CUDA and Triton kernels have not yet been measured on a GPU, so on
# CUDA ``auto`` stays with cuDNN on the expanded filter until benchmarks/results/ says otherwise.
AUTO_PREFERENCE = {"cpu": ("cpp", "reference")}
_AUTO_FALLBACK = ("reference",)


class BackendStatus(NamedTuple):
    available: bool
    reason: str


def _cpp_status() -> BackendStatus:
    if not ops.extension_loaded():
        return BackendStatus(False, f"{ops.EXTENSION_ERROR}; build it with `pip install --no-build-isolation -e .`")
    if not ops.has_op("group_conv2d"):
        return BackendStatus(
            False, "ger_kernels._C is built, but this version of it has no fused group_conv2d op "
                   "(rebuild it with `pip install --no-build-isolation -e .`)")
    return BackendStatus(True, "fused group_conv2d in ger_kernels._C")


def _triton_status() -> BackendStatus:
    from ger_kernels import triton as triton_backend

    return BackendStatus(*triton_backend.status())


@functools.cache
def _statuses() -> dict[str, BackendStatus]:
    """Decided once per process, on first use (importing triton takes a while), not per forward."""
    return {
        "reference": BackendStatus(True, "pure PyTorch: F.conv2d on the materialized expanded filter"),
        "cpp": _cpp_status(),
        "triton": _triton_status(),
    }


def backends() -> dict[str, BackendStatus]:
    """Every backend with whether it is available here, and why (not)."""
    return dict(_statuses())


def check_backend_name(backend: str) -> str:
    """``backend`` if it names a backend available here (or ``auto``), else a clear error."""
    if backend == "auto":
        return backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {list(BACKENDS)}, got {backend!r}")
    status = _statuses()[backend]
    if not status.available:
        raise ValueError(f"backend {backend!r} is not available: {status.reason}")
    return backend


def _cpp(input, weight, bias, stride: int, padding: int, dilation: int, group: Group) -> torch.Tensor:
    return torch.ops.ger_kernels.group_conv2d(input, weight, bias, stride, padding, dilation, group.order)


def _triton(input, weight, bias, stride: int, padding: int, dilation: int, group: Group) -> torch.Tensor:
    from ger_kernels import triton as triton_backend

    return triton_backend.group_conv2d(input, weight, bias, stride, padding, dilation, group)


_IMPLEMENTATIONS = {"reference": reference.conv_expanded, "cpp": _cpp, "triton": _triton}


def auto_backend(device: torch.device) -> str:
    """The backend ``auto`` runs for tensors on ``device`` (see AUTO_PREFERENCE)."""
    statuses = _statuses()
    preference = AUTO_PREFERENCE.get(torch.device(device).type, _AUTO_FALLBACK)
    return next(name for name in preference if statuses[name].available)


def resolve_backend(backend: str, device: torch.device) -> Callable:
    """The convolution implementation of ``backend`` for tensors on ``device``."""
    check_backend_name(backend)
    return _IMPLEMENTATIONS[auto_backend(device) if backend == "auto" else backend]

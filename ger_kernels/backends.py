"""Which convolution backends exist on this machine, and why not the others.

Backends compute the same function (SPEC section 3) with the same weights:
``reference`` (pure PyTorch, always available), ``cpp`` (fused C++/CUDA kernels of
``ger_kernels._C``) and ``triton`` (fused Triton kernels). ``auto`` picks the
fastest available one for the input's device.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, NamedTuple

from ger_kernels import ops, reference

__all__ = ["BACKENDS", "BackendStatus", "backends", "resolve_backend", "check_backend_name"]

BACKENDS = ("reference", "cpp", "triton")


class BackendStatus(NamedTuple):
    available: bool
    reason: str


def _cpp_status() -> BackendStatus:
    if not ops.extension_loaded():
        return BackendStatus(False, f"{ops.EXTENSION_ERROR}; build it with `pip install --no-build-isolation -e .`")
    if not ops.has_op("group_conv2d"):
        return BackendStatus(
            False, "ger_kernels._C is built, but this version of it has no fused group_conv2d op "
                   "(it provides expand_filter only)")
    return BackendStatus(True, "fused group_conv2d in ger_kernels._C")


def _triton_status() -> BackendStatus:
    if importlib.util.find_spec("triton") is None:
        return BackendStatus(False, "triton is not installed")
    return BackendStatus(False, "this version of ger_kernels has no Triton kernels")


# Decided once per process (the extension loads at import), not on every forward.
_STATUSES = {
    "reference": BackendStatus(True, "pure PyTorch: F.conv2d on the materialized expanded filter"),
    "cpp": _cpp_status(),
    "triton": _triton_status(),
}


def backends() -> dict[str, BackendStatus]:
    """Every backend with whether it is available here, and why (not)."""
    return dict(_STATUSES)


def check_backend_name(backend: str) -> str:
    """``backend`` if it names a backend available here (or ``auto``), else a clear error."""
    if backend == "auto":
        return backend
    if backend not in _STATUSES:
        raise ValueError(f"backend must be 'auto' or one of {list(BACKENDS)}, got {backend!r}")
    if not _STATUSES[backend].available:
        raise ValueError(f"backend {backend!r} is not available: {_STATUSES[backend].reason}")
    return backend


def resolve_backend(backend: str) -> Callable:
    """The convolution implementation ``fn(input, weight, bias, stride, padding, dilation, group)``
    (arguments already checked) of ``backend``; ``auto`` is the reference while it is the only one."""
    check_backend_name(backend)
    return reference.conv_expanded

"""Which convolution backends run on this machine (and on which device), why not the others,
and what ``auto`` runs.

Backends compute the same function (SPEC section 3) with the same weights:
``reference`` (``F.conv2d`` on the materialized expanded filter, always available;
``ger_kernels.reference``), ``cpp`` (fused C++/CUDA kernels of ``ger_kernels._C``) and
``triton`` (fused Triton kernels). Each is a function
``fn(input, weight, bias, stride, padding, dilation, group)`` of arguments already checked.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch

from ger_kernels import ops, reference
from ger_kernels import triton as triton_backend  # imports no triton until its kernels are used
from ger_kernels.groups import Group

__all__ = ["BACKENDS", "CPU_CPP_MIN_EXPANDED_BYTES", "BackendStatus", "auto_backend", "backends", "check_backend_name",
           "resolve_backend", "resolved_backend"]

BACKENDS = ("reference", "cpp", "triton")

# What ``auto`` runs, decided by measurement (README "Performance", `python benchmarks/run.py`,
# CPU float32): the cpp backend beats the reference on CPU where W~ is large (1.06x at 4.5 MB,
# 2.4x at 72 MB, forward+backward) and loses to it on small layers (0.93x at 1.2 MB, 0.79x for
# a lifting layer), where splitting W~ into panels costs more than expanding it. On CUDA every
# pass of the fused CUDA and Triton kernels measured slower than cuDNN on the expanded filter
# (H200, bf16, GER-UNet's layers: 0.01-0.63x, benchmarks/results/h200-2026-11-29b), so there
# ``auto`` runs the reference.
CPU_CPP_MIN_EXPANDED_BYTES = 4 << 20

class BackendStatus(NamedTuple):
    available: bool
    reason: str


def _reference_status(device_type: str | None) -> BackendStatus:
    if device_type == "cuda" and not torch.cuda.is_available():
        return BackendStatus(False, "there is no CUDA device")
    return BackendStatus(True, "F.conv2d on the materialized expanded filter")


def _cpp_status(device_type: str | None) -> BackendStatus:
    if not ops.extension_loaded():
        return BackendStatus(False, f"{ops.EXTENSION_ERROR}; build it with `pip install --no-build-isolation -e .`")
    if not ops.has_op("group_conv2d"):
        return BackendStatus(
            False, "ger_kernels._C is built, but this version of it has no fused group_conv2d op "
                   "(rebuild it with `pip install --no-build-isolation -e .`)")
    if device_type == "cuda":
        if not ops.has_kernel("group_conv2d", "cuda"):
            return BackendStatus(False, "ger_kernels._C was built without CUDA kernels (they are built when "
                                        "torch.version.cuda and CUDA_HOME are set, or with FORCE_CUDA=1)")
        if not torch.cuda.is_available():
            return BackendStatus(False, "there is no CUDA device")
        return BackendStatus(True, "fused group_conv2d CUDA kernels in ger_kernels._C")
    return BackendStatus(True, "fused group_conv2d in ger_kernels._C")


def _triton_status(device_type: str | None) -> BackendStatus:
    return BackendStatus(*triton_backend.status(device_type))


@functools.cache
def _statuses(device_type: str | None, triton_interpret: bool) -> dict[str, BackendStatus]:
    """Decided once per process and device type (importing triton takes a while), not per forward;
    ``TRITON_INTERPRET`` is part of the key because it decides where triton runs."""
    return {"reference": _reference_status(device_type), "cpp": _cpp_status(device_type),
            "triton": _triton_status(device_type)}


def backends(device: str | torch.device | None = None) -> dict[str, BackendStatus]:
    """Every backend with whether it runs here, and why (not): on tensors of ``device`` if given,
    else on any device of this machine."""
    device_type = torch.device(device).type if device is not None else None
    return dict(_statuses(device_type, triton_backend.interpreting()))


def check_backend_name(backend: str) -> str:
    """``backend`` if it names a backend available here (or ``auto``), else a clear error."""
    if backend == "auto":
        return backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {list(BACKENDS)}, got {backend!r}")
    status = backends()[backend]
    if not status.available:
        raise ValueError(f"backend {backend!r} is not available: {status.reason}")
    return backend


def _cpp(input, weight, bias, stride: int, padding: int, dilation: int, group: Group) -> torch.Tensor:
    return torch.ops.ger_kernels.group_conv2d(input, weight, bias, stride, padding, dilation, group.order)


def _triton(input, weight, bias, stride: int, padding: int, dilation: int, group: Group) -> torch.Tensor:
    return triton_backend.group_conv2d(input, weight, bias, stride, padding, dilation, group)


_IMPLEMENTATIONS = {"reference": reference.conv_expanded, "cpp": _cpp, "triton": _triton}


def auto_backend(device: str | torch.device, expanded_bytes: int) -> str:
    """The backend ``auto`` runs for a layer whose W~ has ``expanded_bytes`` on tensors of ``device``."""
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu and expanded_bytes >= CPU_CPP_MIN_EXPANDED_BYTES and backends("cpu")["cpp"].available:
        return "cpp"
    return "reference"


@torch.compiler.assume_constant_result
def resolved_backend(backend: str, device_type: str, expanded_bytes: int) -> str:
    """The backend that ``backend`` (a name or ``auto``) runs on tensors of ``device_type`` for a
    layer whose W~ has ``expanded_bytes``, or a clear error when it cannot run there.
    ``torch.compile`` calls it while tracing and keeps the name as a constant: the status checks
    (imports, CUDA queries, caches) never enter a graph."""
    check_backend_name(backend)
    if backend == "auto":
        return auto_backend(device_type, expanded_bytes)
    status = backends(device_type)[backend]
    if not status.available:
        raise ValueError(f"backend {backend!r} cannot run on {device_type} tensors: {status.reason}")
    return backend


def resolve_backend(backend: str, input: torch.Tensor, weight: torch.Tensor, group: Group) -> Callable:
    """The convolution implementation of ``backend`` for ``input`` and ``weight``."""
    expanded_bytes = weight.numel() * group.order * weight.element_size()
    return _IMPLEMENTATIONS[resolved_backend(backend, input.device.type, expanded_bytes)]

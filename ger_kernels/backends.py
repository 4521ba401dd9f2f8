"""Which convolution backends run on this machine (and on which device), why not the others,
and what ``auto`` runs.

Backends compute the same function (SPEC section 3) with the same weights:
``reference`` (``F.conv2d`` on the materialized expanded filter, always available;
``ger_kernels.reference``), ``cpp`` (fused C++/CUDA kernels of ``ger_kernels._C``) and
``triton`` (fused Triton kernels). Each is a function
``fn(input, weight, bias, stride, padding, dilation, group)`` of arguments already checked.
Under ``auto`` the three passes of a layer (forward, input gradient, weight gradient) may run on
different backends (``ger_kernels.auto_paths`` chooses them, ``ger_kernels.conv_passes`` composes
them); ``layer_paths`` and ``describe_model`` report which.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
from torch import nn

from ger_kernels import auto_paths, conv_passes, ops, reference
from ger_kernels import triton as triton_backend  # imports no triton until its kernels are used
from ger_kernels.groups import Group

__all__ = ["BACKENDS", "CPU_CPP_MIN_EXPANDED_BYTES", "BackendStatus", "auto_backend", "backends", "check_backend_name",
           "describe_model", "format_paths", "layer_paths", "pass_paths", "resolve_backend", "resolved_backend",
           "resolved_paths"]

BACKENDS = ("reference", "cpp", "triton")

# What ``auto`` runs, decided by measurement (README "Performance", `python benchmarks/run.py`,
# CPU float32): the cpp backend beats the reference on CPU where W~ is large (1.06x at 4.5 MB,
# 2.4x at 72 MB, forward+backward) and loses to it on small layers (0.93x at 1.2 MB, 0.79x for
# a lifting layer), where splitting W~ into panels costs more than expanding it. On CUDA every
# pass of the fused CUDA and Triton kernels measured slower than cuDNN on the expanded filter
# (H200, bf16, GER-UNet's layers: 0.01-0.63x, benchmarks/results/h200-2026-11-29b): there ``auto``
# takes each pass's path from the measured table of the GPU's architecture (ger_kernels/auto_paths_sm90.json:
# the reference on those layers), and with GER_KERNELS_AUTO_TIMING=1 times the paths on a layer's first call
# where the table has no entry.
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


@torch.compiler.assume_constant_result
def _auto_consults_paths(device_type: str) -> bool:
    """Whether ``auto`` asks ``auto_paths`` on ``device_type`` (CUDA, or a device type with a path table)."""
    return auto_paths.CHOOSER.consults(device_type)


def _layer_reasons(backend: str, device: str, expanded_bytes: int, classes: tuple | None,
                   problem: auto_paths.ConvProblem | None) -> dict[str, tuple[str, str]]:
    """Per pass, (the backend that runs it, why): ``backend`` itself, or under ``auto`` the choice of
    ``auto_paths`` for the passes' problem ``classes`` and, where it has none, ``auto_backend``."""
    device_type = torch.device(device).type
    if backend != "auto":
        return dict.fromkeys(conv_passes.PASSES, (resolved_backend(backend, device_type, expanded_bytes),
                                                  f"backend={backend!r}"))
    rule = auto_backend(device_type, expanded_bytes)
    why = f"auto on {device_type} without a measurement: " + (
        f"cpp where W~ has >= {CPU_CPP_MIN_EXPANDED_BYTES >> 20} MiB, else reference" if device_type == "cpu"
        else "reference")
    if classes is None:
        return dict.fromkeys(conv_passes.PASSES, (rule, why))
    candidates = tuple(name for name, status in backends(device_type).items() if status.available)
    choices = auto_paths.CHOOSER.choose(device, auto_paths.pass_entries(classes), candidates, problem)
    return {name: (choice.path, choice.source) if choice else (rule, why) for name, choice in choices.items()}


@torch.compiler.assume_constant_result
def resolved_paths(backend: str, device: str, expanded_bytes: int, classes: tuple | None,
                   problem: auto_paths.ConvProblem | None) -> conv_passes.PassPaths:
    """The backend of each pass (``conv_passes.PassPaths``) that ``backend`` runs on ``device`` for a
    layer whose W~ has ``expanded_bytes`` and whose passes have the problem ``classes``
    (``auto_paths.pass_classes``; None: ``auto_paths`` is not asked). ``problem`` lets ``auto`` time the
    passes that have no choice yet (None under ``torch.compile``, which never times). A
    compile-time constant, as ``resolved_backend``."""
    return conv_passes.PassPaths(*(path for path, _ in
                                   _layer_reasons(backend, device, expanded_bytes, classes, problem).values()))


def _implementation(paths: conv_passes.PassPaths) -> Callable:
    if paths.forward == paths.input_grad == paths.weight_grad:
        return _IMPLEMENTATIONS[paths.forward]  # one backend: its own ops and autograd
    return functools.partial(conv_passes.group_conv2d, paths=paths)


def _layer_query(backend: str, input: torch.Tensor, weight: torch.Tensor, group: Group, stride: int, padding: int,
                 dilation: int) -> tuple:
    """The arguments of ``resolved_paths`` for a layer: problem classes and problem only where
    ``auto`` asks ``auto_paths``, the problem only outside ``torch.compile``."""
    expanded_bytes = weight.numel() * group.order * weight.element_size()
    classes = problem = None
    if backend == "auto" and _auto_consults_paths(input.device.type):
        problem = auto_paths.layer_problem(input, weight, stride, padding, dilation, group.order)
        classes = auto_paths.pass_classes(problem)
        if torch.compiler.is_compiling():
            problem = None
    return backend, str(input.device), expanded_bytes, classes, problem


def pass_paths(backend: str, input: torch.Tensor, weight: torch.Tensor, group: Group, stride: int = 1,
               padding: int = 0, dilation: int = 1) -> conv_passes.PassPaths:
    """The backend of each pass of a layer of ``backend`` (a name or ``auto``) with ``input`` and
    ``weight`` (``resolved_paths``)."""
    return resolved_paths(*_layer_query(backend, input, weight, group, stride, padding, dilation))


def resolve_backend(backend: str, input: torch.Tensor, weight: torch.Tensor, group: Group, stride: int = 1,
                    padding: int = 0, dilation: int = 1) -> Callable:
    """The convolution implementation of ``backend`` for ``input`` and ``weight`` (with the passes
    of ``pass_paths``)."""
    return _implementation(pass_paths(backend, input, weight, group, stride, padding, dilation))


def layer_paths(backend: str, input: torch.Tensor, weight: torch.Tensor, group: Group, stride: int = 1,
                padding: int = 0, dilation: int = 1) -> dict[str, tuple[str, str]]:
    """Per pass (forward, input_grad, weight_grad): (the backend that runs it, why), for a layer
    of ``backend`` with ``input`` and ``weight``."""
    return _layer_reasons(*_layer_query(backend, input, weight, group, stride, padding, dilation))


def describe_model(model: nn.Module, example_input, *args, **kwargs) -> list[dict]:
    """Runs ``model(example_input, *args, **kwargs)`` without autograd and returns, per group
    convolution in call order, ``{"layer": name, "input": shape, "dtype": computed in,
    "forward" / "input_grad" / "weight_grad": (backend, why)}``: what its passes run on.
    Run it inside the autocast region a training step uses: the choice depends on the dtype."""
    from ger_kernels.nn.conv import GroupConv2d

    rows = []

    def record(name):
        def hook(layer, inputs):
            input = inputs[0]
            problem = auto_paths.layer_problem(input, layer.weight, layer.stride, layer.padding, layer.dilation,
                                               layer.group.order)
            rows.append({"layer": name, "input": tuple(input.shape), "dtype": str(problem.dtype).split(".")[-1],
                         **layer_paths(layer.backend, input, layer.weight, layer.group, layer.stride, layer.padding,
                                       layer.dilation)})
        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in model.named_modules()
               if isinstance(module, GroupConv2d)]
    try:
        with torch.no_grad():
            model(example_input, *args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return rows


def format_paths(rows: list[dict]) -> str:
    """``describe_model``'s rows as a text table, with the reasons listed once below it."""
    reasons: list[str] = []
    lines = [f"{'layer':<28} {'input':<18} {'dtype':<9} {'forward':<15} {'input_grad':<15} weight_grad"]
    for row in rows:
        cells = []
        for name in conv_passes.PASSES:
            path, why = row[name]
            if why not in reasons:
                reasons.append(why)
            cells.append(f"{path} [{reasons.index(why) + 1}]")
        lines.append(f"{row['layer']:<28} {'x'.join(map(str, row['input'])):<18} {row['dtype']:<9} "
                     f"{cells[0]:<15} {cells[1]:<15} {cells[2]}")
    return "\n".join(lines + [f"[{i + 1}] {why}" for i, why in enumerate(reasons)])

"""Measurement helpers shared by the benchmarks: timing, interleaved timing, peak memory of a
step, one profiled step, the machine's measured peak throughput, and a failed measurement's error
in one line."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(step: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call of ``step``, from a synchronized start to a synchronized end."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def interleaved_medians(steps: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                        warmup: int = 2) -> dict[str, float]:
    """Median milliseconds of each step; rounds alternate between steps so that drift in the
    machine's speed (clock, other load) hits every contender alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            samples[name].append(timed_ms(step, device))
    return {name: statistics.median(times) for name, times in samples.items()}


def _cuda_peak_bytes(step: Callable[[], object], device: torch.device) -> tuple[object, int]:
    """``step()``'s result, and the peak bytes the CUDA caching allocator held during the call beyond
    what it held before it."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = step()
    synchronize(device)
    return result, torch.cuda.max_memory_allocated(device) - before


def _trace(step: Callable[[], object], device: torch.device) -> profile:
    """One call of ``step`` under torch.profiler: CPU ops, and CUDA kernels on CUDA; allocation
    events on the CPU only (CUDA memory is read from the allocator's counters instead)."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, profile_memory=not cuda) as prof:
        step()
        synchronize(device)
    return prof


def peak_memory_bytes(step: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by one call of ``step`` beyond what was allocated before it."""
    if device.type == "cuda":
        return _cuda_peak_bytes(step, device)[1]
    return profiled_step(step, device)[1]


def profiled_step(step: Callable[[], object], device: torch.device) -> tuple[profile, int]:
    """One call of ``step`` under torch.profiler (CPU ops; CUDA kernels on CUDA): the trace and
    the peak bytes allocated beyond what was allocated before the call (CUDA: the caching
    allocator's counters; CPU: the trace's allocation events)."""
    if device.type == "cuda":
        return _cuda_peak_bytes(lambda: _trace(step, device), device)
    prof = _trace(step, device)
    # Every allocation and free of the CPU allocator, those inside compiled kernels included, each
    # counted once: by the innermost op that made it (self), in the order the ops started.
    changes = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                     if e.self_cpu_memory_usage)
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return prof, peak


def machine_peaks(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Measured, not nominal: TFLOP/s of a large matmul in ``dtype`` and GB/s of a large copy."""
    n = 4096 if device.type == "cuda" else 1536
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    src = torch.empty(64 * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    times = interleaved_medians({"matmul": lambda: a @ b, "copy": lambda: dst.copy_(src)}, device, repeats=5)
    return {"matmul_tflops": 2 * n ** 3 / times["matmul"] / 1e9,
            "copy_gbs": 2 * src.numel() * src.element_size() / times["copy"] / 1e6}


def describe(error: BaseException) -> str:
    """``error`` in one line for a results table: its type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]

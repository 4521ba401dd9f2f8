"""A one-line description of the machine, for reports and benchmark tables."""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["machine_description"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_description(device: torch.device | str = "cpu") -> str:
    """Device (GPU name or CPU model), cores, threads, torch/triton/Python versions."""
    device = torch.device(device)
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()
    versions = f"torch {torch.__version__}"
    try:
        import triton

        versions += f", triton {triton.__version__}"
    except ImportError:
        pass
    return (f"{what}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads, {versions}, "
            f"Python {platform.python_version()}")

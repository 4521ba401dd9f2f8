import platform

import torch

from ger_kernels.machine import machine_description


def test_names_cpu_cores_and_versions():
    text = machine_description("cpu")
    assert f"torch {torch.__version__}" in text and f"Python {platform.python_version()}" in text
    assert "CPU cores" in text and not text.startswith(",")

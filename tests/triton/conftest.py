"""Fixtures of the Triton kernel tests: where they run (CPU tensors in the Triton interpreter, the
root conftest's ``interpreter`` fixture, and CUDA where a GPU is present)."""

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request, monkeypatch):
    """"cpu" (through the interpreter) and "cuda" where a GPU is present. On CUDA the first
    config is forced (tests may force others): tuning would compile every config per case; and
    the group batch norm's Triton kernels, opt-in there, are switched on."""
    if request.param == "cpu":
        request.getfixturevalue("interpreter")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        monkeypatch.setenv("GER_KERNELS_TRITON_CONFIG", "0")
        monkeypatch.setenv("GER_KERNELS_TRITON_BN", "1")
    return torch.device(request.param)

"""Fixtures of every test: a fixed seed, and ``interpreter`` (Triton kernels on CPU tensors)."""

import functools

import pytest
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the test modules that need triton skip themselves
    triton = None

if triton is not None:
    from ger_kernels.triton.jit import Kernel

    @Kernel
    def _count_kernel(out_ptr, n):
        total = 0
        for _ in range(n):
            total += 1
        tl.store(out_ptr, total)


@functools.cache
def _interpreter_problem() -> str | None:
    """Why this triton's interpreter cannot run the kernels (None when it can): triton 3.6's
    turns a runtime loop bound into an int through a 1-element array, which numpy >= 2.4 refuses."""
    if triton is None:
        return "triton is not installed"
    out = torch.zeros(1, dtype=torch.int32)
    try:
        _count_kernel[(1,)](out, 3)
    except Exception as error:  # the interpreter's own failure, reported in the skip reason
        return f"triton {triton.__version__} interpreter cannot run a loop with a runtime bound: {error!r}"
    return None if out.item() == 3 else "the triton interpreter miscounts a loop"


@pytest.fixture
def interpreter(monkeypatch):
    """Kernels launched in this test run in the Triton interpreter (CPU tensors)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    problem = _interpreter_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

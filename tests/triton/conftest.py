"""Fixtures of the Triton kernel tests: where they run (CPU tensors in the Triton interpreter,
and CUDA where a GPU is present), with the interpreter switched on per test."""

import functools

import pytest
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the test modules that need triton skip themselves
    triton = None

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

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

import re

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from triton.runtime.jit import JITFunction  # noqa: E402

from ger_kernels.triton import interpreting  # noqa: E402
from ger_kernels.triton.jit import DeviceFunction, Kernel  # noqa: E402


@Kernel
def _add_one(x_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(x_ptr + offsets, tl.load(x_ptr + offsets, mask=offsets < n) + 1, mask=offsets < n)


@DeviceFunction
def _plus(x, AMOUNT: tl.constexpr):
    return x + AMOUNT


@Kernel
def _add_two(x_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(x_ptr + offsets, _plus(tl.load(x_ptr + offsets, mask=offsets < n), 2), mask=offsets < n)


def test_device_functions_run_interpreted_and_compile(interpreter):
    """A kernel calling a DeviceFunction: the interpreter calls it as Python (triton was imported
    without TRITON_INTERPRET), and the compiler inlines it (ahead of time for sm_90, no GPU needed)."""
    x = torch.arange(5.0)
    _add_two[(1,)](x, 5, BLOCK=8)
    assert torch.equal(x, torch.arange(2.0, 7.0))
    source = triton.compiler.ASTSource(fn=_add_two.jit, signature={"x_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"},
                                       constexprs={"BLOCK": 8})
    ptx = triton.compile(source, target=triton.backends.compiler.GPUTarget("cuda", 90, 32)).asm["ptx"]
    assert re.search(r"\badd(\.rn)?\.f32", ptx) and not re.search(r"^\s*call", ptx, re.M)  # inlined: no call


def test_interpreter_chosen_at_launch(monkeypatch, interpreter):
    assert interpreting()
    x = torch.arange(5.0)
    _add_one[(1,)](x, 5, BLOCK=8)
    assert torch.equal(x, torch.arange(1.0, 6.0))
    assert isinstance(_add_one.jit, JITFunction)  # compilable ahead of time whatever the environment
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not interpreting()
    if not torch.cuda.is_available():
        with pytest.raises(Exception):  # the compiled kernel needs a GPU
            _add_one[(1,)](x, 5, BLOCK=8)


def test_integers_specialized_only_when_named():
    def kernel(x_ptr, n, stride, BLOCK: tl.constexpr):
        pass

    assert Kernel(kernel).jit.do_not_specialize == ["n", "stride"]
    assert Kernel.specializing(("stride",))(kernel).jit.do_not_specialize == ["n"]

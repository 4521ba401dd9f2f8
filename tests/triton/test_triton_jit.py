import re
import types

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from triton.runtime.jit import JITFunction  # noqa: E402

from ger_kernels.triton import interpreting  # noqa: E402
from ger_kernels.triton.jit import DeviceFunction, Kernel, programs_per_multiprocessor  # noqa: E402


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


H100 = types.SimpleNamespace(regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
                             shared_memory_per_multiprocessor=233472)


@pytest.mark.parametrize("registers,shared,warps,programs", [
    (122, 98304, 8, 2),  # channels weight gradient 128x128x64, 3 stages: registers and shared memory allow 2
    (232, 147456, 8, 1),  # 128x256: one
    (64, 57392, 8, 3),  # 128x64 TMA: registers would allow 4, shared memory 3
    (169, 0, 4, 2),  # 169 registers take 176 (units of 256 a warp): 22 Ki a program, not 21.1 Ki (3)
    (64, 116224, 4, 1),  # 1 KiB more a program: 117248 bytes, not 2 x 116224
    (120, 0, 8, 2), (32, 0, 4, 16),  # threads: 2048 / 128
    (255, 232448, 8, 1), (255, 240000, 8, 1),  # at least one
])
def test_programs_per_multiprocessor(registers, shared, warps, programs):
    assert programs_per_multiprocessor(registers, shared, warps, H100) == programs
    assert programs_per_multiprocessor(registers, shared, warps, types.SimpleNamespace()) == programs  # defaults


def test_resident_programs_compiles_once_per_launch_kind(monkeypatch):
    """On a GPU the count comes from the compiled kernel (registers, shared memory, warps) and the
    device's limits, compiled once per device, keyword arguments and argument dtypes; 1 in the
    interpreter and for CPU tensors. The GPU is faked: the compiler's warmup and the properties."""
    kernel = Kernel(_add_one.fn)
    compiled = []

    def warmup(*args, grid, **kwargs):
        handle = types.SimpleNamespace(n_regs=None, metadata=types.SimpleNamespace(shared=98304, num_warps=8))
        handle._init_handles = lambda: setattr(handle, "n_regs", 122)  # loaded: the register count is known
        compiled.append((args, kwargs))
        return handle

    monkeypatch.setattr(kernel.jit, "warmup", warmup)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: H100)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cuda, x = torch.device("cuda", 0), torch.zeros(4)
    assert kernel.resident_programs(cuda, x, 4, BLOCK=8) == 2
    assert kernel.resident_programs(cuda, x, 5, BLOCK=8) == 2 and len(compiled) == 1  # remembered
    assert kernel.resident_programs(cuda, x.half(), 4, BLOCK=8) == 2 and len(compiled) == 2  # another dtype
    assert kernel.resident_programs(cuda, x, 4, BLOCK=16) == 2 and len(compiled) == 3
    assert compiled[0] == ((x, 4), {"BLOCK": 8})
    assert kernel.resident_programs(torch.device("cpu"), x, 4, BLOCK=8) == 1
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernel.resident_programs(cuda, x, 4, BLOCK=32) == 1 and len(compiled) == 3


def test_resident_programs_of_a_kernel_whose_resources_are_unknown(monkeypatch):
    """A triton whose compiled kernels lack the register count: one program per multiprocessor,
    with a warning (the launch itself is unaffected)."""
    kernel = Kernel(_add_one.fn)
    monkeypatch.setattr(kernel.jit, "warmup", lambda *args, grid, **kwargs: types.SimpleNamespace(
        _init_handles=lambda: None, metadata=types.SimpleNamespace(shared=0, num_warps=4)))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: H100)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.warns(UserWarning, match="_add_one: cannot read the compiled kernel's resources"):
        assert kernel.resident_programs(torch.device("cuda", 0), torch.zeros(4), 4, BLOCK=8) == 1

"""One Triton kernel, compiled or interpreted, chosen at launch time.

``triton.jit`` decides between the compiler and the interpreter when a kernel is
*defined* (it reads ``TRITON_INTERPRET`` at decoration), so a process that imported
the kernels first could never interpret them later, and an interpreted kernel cannot
be compiled ahead of time. ``Kernel`` keeps both views of the same Python function:
``kernel[grid](...)`` interprets when ``TRITON_INTERPRET=1`` at the call, else it runs
the compiled kernel; ``kernel.jit`` is always the compiler's ``JITFunction`` (for AOT
compilation). Kernels must not call ``@triton.jit`` functions, the ones of
``triton.language`` included (``tl.cdiv``, ``tl.zeros``): their interpreted form exists
only when ``TRITON_INTERPRET=1`` was set before triton was imported. They may call
``@DeviceFunction`` functions: the compiler inlines them, the interpreter calls them as Python.
``Kernel.resident_programs`` says how many programs of a compiled kernel one multiprocessor holds.
"""

from __future__ import annotations

import inspect
import math
import warnings

import torch
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from ger_kernels.triton import interpreting

__all__ = ["DeviceFunction", "Kernel", "programs_per_multiprocessor"]


class Kernel:
    """Decorator: ``@Kernel`` on a function written in ``triton.language``, or
    ``@Kernel.specializing(names)``: integer arguments are compiled for their values only
    when named there (the JIT's specialization on value 1 and on divisibility by 16), so
    layers of other sizes reuse the compiled kernel."""

    def __init__(self, fn, specialize: tuple[str, ...] = ()):
        self.fn = fn
        names = inspect.signature(fn).parameters
        generic = [name for name, p in names.items()
                   if p.annotation is inspect.Parameter.empty and not name.endswith("_ptr") and name not in specialize]
        self.jit = JITFunction(fn, do_not_specialize=generic)
        self._interpreted = InterpretedFunction(fn)
        self._resident: dict[tuple, int] = {}
        self.__name__ = fn.__name__

    @classmethod
    def specializing(cls, names: tuple[str, ...]):
        return lambda fn: cls(fn, names)

    def __getitem__(self, grid):
        return (self._interpreted if interpreting() else self.jit)[grid]

    def resident_programs(self, device: torch.device, *args, **kwargs) -> int:
        """How many programs of this kernel, compiled for a launch with ``args`` and ``kwargs``
        (the grid aside), one multiprocessor of ``device`` runs at once (compiling it if needed);
        1 in the interpreter. Remembered per device, keyword arguments (constexprs, warps, stages)
        and argument dtypes."""
        if interpreting() or device.type != "cuda":
            return 1
        key = (device, tuple(sorted(kwargs.items())), tuple(str(getattr(a, "dtype", type(a))) for a in args))
        if key not in self._resident:
            compiled = self.jit.warmup(*args, grid=(1,), **kwargs)
            try:
                compiled._init_handles()  # loads the binary: its register count
                counts = compiled.n_regs, compiled.metadata.shared, compiled.metadata.num_warps
            except (AttributeError, TypeError) as error:  # a triton whose compiled kernels say less: 1, said once
                warnings.warn(f"{self.__name__}: cannot read the compiled kernel's resources ({error!r}); "
                              "counting one program per multiprocessor")
                self._resident[key] = 1
            else:
                self._resident[key] = programs_per_multiprocessor(*counts, torch.cuda.get_device_properties(device))
        return self._resident[key]


def programs_per_multiprocessor(registers: int, shared_bytes: int, num_warps: int, properties) -> int:
    """Programs of ``num_warps`` warps using ``registers`` per thread and ``shared_bytes`` of shared
    memory that one multiprocessor holds at once (at least 1): registers go to warps in units of 256,
    each program reserves 1 KiB of shared memory more (sm_80 and later). ``properties``: a
    ``torch.cuda.get_device_properties`` result; the Hopper/Ampere limits (64 Ki registers, 2048
    threads, 228 KiB) where it lacks a field."""
    register_file = getattr(properties, "regs_per_multiprocessor", 0) or 65536
    threads = getattr(properties, "max_threads_per_multi_processor", 0) or 2048
    shared = getattr(properties, "shared_memory_per_multiprocessor", 0) or 228 * 1024
    per_warp = math.ceil(registers * 32 / 256) * 256
    by_registers = register_file // max(1, per_warp * num_warps)
    by_shared = shared // (shared_bytes + 1024)
    by_threads = threads // (num_warps * 32)
    return max(1, min(by_registers, by_shared, by_threads, 32))


class DeviceFunction(JITFunction):
    """Decorator: a function written in ``triton.language`` that ``Kernel`` s call. The compiler
    sees a ``JITFunction`` (and inlines it); under the interpreter a call runs the Python function,
    whatever ``TRITON_INTERPRET`` was when triton was imported."""

    def __call__(self, *args, **kwargs):
        if interpreting():
            return self.fn(*args, **kwargs)
        return super().__call__(*args, **kwargs)

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
"""

from __future__ import annotations

import inspect

from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from ger_kernels.triton import interpreting

__all__ = ["DeviceFunction", "Kernel"]


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
        self.__name__ = fn.__name__

    @classmethod
    def specializing(cls, names: tuple[str, ...]):
        return lambda fn: cls(fn, names)

    def __getitem__(self, grid):
        return (self._interpreted if interpreting() else self.jit)[grid]


class DeviceFunction(JITFunction):
    """Decorator: a function written in ``triton.language`` that ``Kernel`` s call. The compiler
    sees a ``JITFunction`` (and inlines it); under the interpreter a call runs the Python function,
    whatever ``TRITON_INTERPRET`` was when triton was imported."""

    def __call__(self, *args, **kwargs):
        if interpreting():
            return self.fn(*args, **kwargs)
        return super().__call__(*args, **kwargs)

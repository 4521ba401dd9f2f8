"""One Triton kernel, compiled or interpreted, chosen at launch time.

``triton.jit`` decides between the compiler and the interpreter when a kernel is
*defined* (it reads ``TRITON_INTERPRET`` at decoration), so a process that imported
the kernels first could never interpret them later, and an interpreted kernel cannot
be compiled ahead of time. ``Kernel`` keeps both views of the same Python function:
``kernel[grid](...)`` interprets when ``TRITON_INTERPRET=1`` at the call, else it runs
the compiled kernel; ``kernel.jit`` is always the compiler's ``JITFunction`` (for AOT
compilation). Kernels must not call ``@triton.jit`` functions, the ones of
``triton.language`` included (``tl.cdiv``, ``tl.zeros``): their interpreted form exists only when
``TRITON_INTERPRET=1`` was set before triton was imported.
"""

from __future__ import annotations

import os

from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

__all__ = ["Kernel", "interpreting"]


def interpreting() -> bool:
    """Whether kernels run in the Triton interpreter (``TRITON_INTERPRET=1``), now."""
    return os.environ.get("TRITON_INTERPRET") == "1"


class Kernel:
    """Decorator: ``@Kernel`` on a function written in ``triton.language``."""

    def __init__(self, fn):
        self.fn = fn
        self.jit = JITFunction(fn)
        self._interpreted = InterpretedFunction(fn)
        self.__name__ = fn.__name__

    def __getitem__(self, grid):
        return (self._interpreted if interpreting() else self.jit)[grid]

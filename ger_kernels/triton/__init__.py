"""Fused group convolution kernels in Triton (SPEC section 3), behind the backend switch.

``status()`` says whether they can run here; ``group_conv2d`` has the contract of
``ger_kernels.reference.conv_expanded``. Importing this package never needs triton: the
kernels (``ger_kernels.triton.group_conv``) load on first use.
"""

from __future__ import annotations

import os

import torch

from ger_kernels.groups import Group

__all__ = ["DTYPES", "status", "group_conv2d", "interpreting"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the Triton kernels take


def interpreting() -> bool:
    """Whether kernels run in the Triton interpreter (``TRITON_INTERPRET=1``), now."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def status(device_type: str | None = None) -> tuple[bool, str]:
    """(available, why) for tensors of ``device_type`` ("cuda": a CUDA device; "cpu": the
    interpreter, ``TRITON_INTERPRET=1``), or for either when it is None."""
    try:
        import triton
    except ImportError:
        return False, "triton is not installed (pip install triton)"

    interpreter = interpreting()
    if device_type in (None, "cpu") and interpreter:
        return True, (f"triton {triton.__version__} interpreter (TRITON_INTERPRET=1): slow, for tests; "
                      "convolutions in float32 or float16 (its bfloat16 dots are wrong)")
    if device_type in (None, "cuda") and torch.cuda.is_available():
        return True, f"triton {triton.__version__} on {torch.cuda.get_device_name()}"
    if device_type == "cpu":
        return False, (f"triton {triton.__version__} runs CPU tensors only in its interpreter "
                       "(TRITON_INTERPRET=1, slow, for tests)")
    if device_type == "cuda":
        return False, f"triton {triton.__version__} is installed but there is no CUDA device"
    return False, (f"triton {triton.__version__} is installed but there is no CUDA device "
                   "(TRITON_INTERPRET=1 runs the kernels on CPU tensors in the interpreter)")


def group_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                 padding: int, dilation: int, group: Group) -> torch.Tensor:
    """Fused ``conv2d(input, W~, bias.repeat_interleave(S), stride, padding, dilation)`` on
    arguments already checked; differentiable w.r.t. input, weight and bias."""
    from ger_kernels.triton import group_conv

    return group_conv.group_conv2d(input, weight, bias, stride, padding, dilation, group)

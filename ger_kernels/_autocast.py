"""``torch.autocast`` for the custom group-convolution ops, with ``F.conv2d``'s rule.

Inside an autocast region of a device type, every floating-point tensor argument on that
device type except float64 ones (activations and float32 master weights alike) is cast to the
region's dtype (bfloat16 or float16), and the op runs with autocast off; autograd sees the
casts, so weight gradients come back in the weights' dtype. ``torch.library.register_autocast``
casts to one fixed dtype per device type; this follows the region's dtype instead.
"""

from __future__ import annotations

import torch

__all__ = ["register_autocast", "casts"]

_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}
_LIBRARIES: dict[str, torch.library.Library] = {}  # registrations live as long as their Library


def _eligible(value, device_type: str) -> bool:
    """Whether an autocast region of ``device_type`` casts ``value`` (the rule of ``F.conv2d``)."""
    return (isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64
            and value.device.type == device_type)


def casts(tensor: torch.Tensor) -> bool:
    """Whether the autocast region active now on ``tensor``'s device type casts it."""
    device_type = tensor.device.type
    return device_type in _KEYS and torch.is_autocast_enabled(device_type) and _eligible(tensor, device_type)


def _kernel(op, device_type: str):
    excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, _KEYS[device_type]))

    def kernel(_keys, *args):
        dtype = torch.get_autocast_dtype(device_type)
        args = tuple(a.to(dtype) if _eligible(a, device_type) else a for a in args)
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return op(*args)

    return kernel


def register_autocast(qualname: str) -> None:
    """Registers the autocast rule above for op ``namespace::name`` (positional arguments only)
    on CPU and CUDA."""
    namespace, name = qualname.split("::")
    if namespace not in _LIBRARIES:
        _LIBRARIES[namespace] = torch.library.Library(namespace, "IMPL")
    op = getattr(getattr(torch.ops, namespace), name).default
    for device_type, key in _KEYS.items():
        _LIBRARIES[namespace].impl(name, _kernel(op, device_type), key, with_keyset=True)

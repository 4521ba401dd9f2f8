"""Switching the backend of every group convolution in a model."""

from __future__ import annotations

from torch import nn

from ger_kernels.backends import check_backend_name
from ger_kernels.nn import GroupConv2d

__all__ = ["set_backend"]


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Sets ``backend`` on every group convolution in ``model`` (in place; weights untouched).
    Raises before changing anything when ``backend`` is unknown or unavailable here."""
    check_backend_name(backend)
    for module in model.modules():
        if isinstance(module, GroupConv2d):
            module.backend = backend
    return model

"""ger-kernels: fast p4m / p4 group-equivariant convolutions for PyTorch.

Conventions (``SPEC.md``): GrouPy's group indexing, feature maps ``(B, C*S, H, W)``
with the orientation index fastest, weights ``(C_out, C_in, S_in, k, k)``.
"""

from ger_kernels import nn, reference, testing
from ger_kernels.backends import BACKENDS, BackendStatus, backends
from ger_kernels.functional import group_conv2d
from ger_kernels.groups import P4, P4M, Group, get_group
from ger_kernels.testing import check_equivariance

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "BackendStatus", "backends", "group_conv2d", "Group", "P4M", "P4", "get_group",
    "check_equivariance", "nn", "reference", "testing", "__version__",
]

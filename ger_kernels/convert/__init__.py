"""Adopting the layers in existing models, and shipping models without this package.

- ``set_backend(model, backend)``: switch every group convolution's backend in place.
- ``from_groupy(model)``: GrouPy (PyTorch port) group convolutions -> ours, keeping GrouPy's
  interface and parameter names.
- ``from_e2cnn(module)``: an e2cnn ``R2Conv`` (or batch norm, pool, nonlinearity, ``SequentialModule``)
  on regular p4m/p4 fields -> ours; ``e2cnn_to_ours(x, group)`` reorders e2cnn's channels.
- ``export(model)``: every layer of ours -> plain ``torch.nn`` modules (eval mode).
"""

from ger_kernels.convert.backend import set_backend
from ger_kernels.convert.e2cnn import E2CNN_P4M_PERMUTATION, e2cnn_to_ours, from_e2cnn
from ger_kernels.convert.export import export, plain_module
from ger_kernels.convert.groupy import GroupyLayout, from_groupy, is_groupy_conv

__all__ = ["set_backend", "from_groupy", "GroupyLayout", "is_groupy_conv", "from_e2cnn", "e2cnn_to_ours",
           "E2CNN_P4M_PERMUTATION", "export", "plain_module"]

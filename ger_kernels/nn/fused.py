"""Group convolutions fused with the group batch norms around them (conv -> BN -> ReLU -> conv).

On the Triton backend (a conv whose ``backend`` is "triton", or ``auto`` where the measured path
table of ``ger_kernels.auto_paths`` puts all three passes of the layer on Triton), a
convolution writes the per-field batch statistics of its output from its epilogue, so the batch
norm after it skips its statistics pass, and it reads its input through the batch norm (+ ReLU)
before it, applied while loading, so the normalized map is never written (nor kept for the
backward: its input gradient's epilogue recomputes the ReLU's mask from the input). Elsewhere the
same modules run unfused, with the same result:
fusion changes no parameter, buffer, state dict or result beyond rounding.

- ``fused_conv(conv, input, norm=None, norm_statistics=None, statistics=False)``: the functional form.
- ``FusedSequential``: an ``nn.Sequential`` that fuses each ``GroupConv2d`` followed by a
  ``GroupBatchNorm2d``, and each ``GroupBatchNorm2d`` followed by a ``GroupConv2d`` (``nn.Identity``
  between them is skipped: GER-UNet's ReLU placeholders). GER-UNet's blocks are built from it.
"""

from __future__ import annotations

import torch
from torch import nn

from ger_kernels._autocast import casts
from ger_kernels._validation import check_conv_args
from ger_kernels.backends import pass_paths
from ger_kernels.group_batch_norm import takes_statistics
from ger_kernels.nn.conv import GroupConv2d
from ger_kernels.nn.norm import GroupBatchNorm2d
from ger_kernels.triton import DTYPES

__all__ = ["fused_conv", "FusedSequential", "fuses"]


def _plain_call(module: nn.Module, base: type) -> bool:
    """Whether calling ``module`` runs ``base.forward`` and nothing else: no forward of a subclass
    (``GroupyLayout``'s 5-D output), no hooks (an old-style ``weight_norm``'s pre-hook, forward and
    backward hooks of the module or global ones), which a fused call would skip."""
    hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks,
             *(getattr(nn.modules.module, name, {}) for name in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                                               "_global_backward_hooks",
                                                               "_global_backward_pre_hooks")))
    return type(module).forward is base.forward and not any(hooks)


def fuses(conv: GroupConv2d, input: torch.Tensor) -> bool:
    """Whether ``fused_conv`` runs ``conv`` on ``input`` with the fused Triton kernels: every pass of
    the layer runs on Triton (``backend="triton"``, or ``auto`` where the measured path table says
    so for all three passes)."""
    dtype = torch.get_autocast_dtype(input.device.type) if casts(input) else input.dtype
    if dtype not in DTYPES or not _plain_call(conv, GroupConv2d):
        return False
    paths = pass_paths(conv.backend, input, conv.weight, conv.group, conv.stride, conv.padding, conv.dilation)
    return paths.forward == paths.input_grad == paths.weight_grad == "triton"


def _applies_on_load(norm: GroupBatchNorm2d, conv: GroupConv2d, conv_fuses: bool) -> bool:
    """Whether ``conv`` applies ``norm`` while loading its input: it runs fused (``conv_fuses``),
    ``norm`` normalizes fields of the conv's input orientations (not a lifting conv's planar
    channels), may run there (``normalizes_on_load``) and would run nothing else."""
    return (conv_fuses and norm.group.order == conv.in_orientations and norm.normalizes_on_load()
            and _plain_call(norm, GroupBatchNorm2d))


def fused_conv(conv: GroupConv2d, input: torch.Tensor, norm: GroupBatchNorm2d | None = None,
               norm_statistics: torch.Tensor | None = None,
               statistics: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(conv(norm(input)), stats)``: ``norm`` (with its own ``relu``; none when None) applied to
    ``input``, whose per-field (count, mean, M2) ``norm_statistics`` may come from the conv that
    wrote it; ``stats`` the same (3, C_out) statistics of the output when ``statistics`` and the
    convolution ran fused (pass them to the next ``GroupBatchNorm2d`` as ``statistics=``), else
    None. ``norm`` updates its running statistics as its forward would; one the conv cannot apply
    on load (``_applies_on_load``) runs first, as a module."""
    fused = fuses(conv, input)  # the batch norm keeps the input's dtype and device: the same after it
    if norm is not None and not _applies_on_load(norm, conv, fused):
        input, norm = norm(input, statistics=norm_statistics), None
    if fused:
        return _fused(conv, input, norm, norm_statistics, statistics)
    return conv(input), None


def _fused(conv: GroupConv2d, input: torch.Tensor, norm: GroupBatchNorm2d | None,
           norm_statistics: torch.Tensor | None, statistics: bool):
    from ger_kernels.triton.conv_norm import bn_group_conv2d

    weight, bias = conv.weight, conv.bias
    check_conv_args(input, weight, bias, conv.group)
    conv.check_grid(input)
    terms = norm.input_normalization(input, norm_statistics) if norm is not None else None
    if casts(input):  # F.conv2d's autocast rule for the conv's tensors; the batch norm's stay float32
        dtype = torch.get_autocast_dtype(input.device.type)
        input, weight = input.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    norm_args = (terms.mean, terms.invstd, terms.weight, terms.bias) if terms is not None else (None,) * 4
    with torch.autocast(input.device.type, enabled=False):
        output, stats = bn_group_conv2d(input, weight, bias, *norm_args, conv.stride, conv.padding, conv.dilation,
                                        conv.group.order, norm is not None and norm.relu,
                                        terms is not None and terms.batch_statistics, statistics)
    return output, stats if statistics else None


def _uses_statistics(module: nn.Module | None, after: nn.Module | None, input: torch.Tensor) -> bool:
    """Whether the batch statistics of ``module``'s input, written by the conv that reads ``input``,
    serve ``module``: a group batch norm that computes batch statistics, applied on load by the conv
    ``after`` it, or run as a module on its staged kernels (``group_batch_norm.takes_statistics``;
    ATen's batch norm, or one reducing over processes, computes its own)."""
    if not (isinstance(module, GroupBatchNorm2d) and type(module).forward is GroupBatchNorm2d.forward
            and (module.training or module.running_mean is None)):
        return False
    if isinstance(after, GroupConv2d) and _applies_on_load(module, after, fuses(after, input)):
        return True
    return module.normalizes_on_load() and takes_statistics(input)


class FusedSequential(nn.Sequential):
    """``nn.Sequential`` whose group convolutions fuse the group batch norms around them (module
    docstring); the same modules, state dict and result as the plain ``nn.Sequential``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.forward_with_statistics(input)[0]

    def forward_with_statistics(self, input: torch.Tensor,
                                consumer: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(output, stats): ``stats`` the (3, C) per-field statistics of the output when the last
        module is a ``GroupConv2d`` that ran fused and ``consumer``, the module the output goes
        to, is a ``GroupBatchNorm2d`` that uses batch statistics (pass them to it), else None."""
        modules = [m for m in self if not isinstance(m, nn.Identity)]
        x, stats, pending = input, None, None  # pending: a batch norm of x the next conv applies
        for i, module in enumerate(modules):
            following = modules[i + 1] if i + 1 < len(modules) else consumer
            after = modules[i + 2] if i + 2 < len(modules) else None  # a conv that may apply `following`
            if isinstance(module, GroupConv2d):
                x, stats = fused_conv(module, x, pending, stats, _uses_statistics(following, after, x))
                pending = None
            elif isinstance(module, GroupBatchNorm2d) and i + 1 < len(modules) and isinstance(following, GroupConv2d):
                pending = module
            elif isinstance(module, GroupBatchNorm2d) and stats is not None:
                x, stats = module(x, statistics=stats), None
            else:
                x, stats = module(x), None
        return x, stats

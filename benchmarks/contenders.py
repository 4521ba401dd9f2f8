"""The implementations a benchmark compares. Each is ``prepare(layer, x, mode) -> step`` where
``step()`` runs one pass of the same group convolution as ``layer``: ``mode`` is "forward",
"backward" (gradients of input and weight from a graph built once) or "forward+backward"."""

from __future__ import annotations

import copy

from typing import Callable

import torch
import torch.nn.functional as F

import ger_kernels
from ger_kernels import reference

Step = Callable[[], object]


def _step(forward: Callable[[], torch.Tensor], inputs: list[torch.Tensor], mode: str) -> Step:
    if mode == "forward":
        def step():
            with torch.no_grad():
                return forward()
    elif mode == "backward":
        out = forward()
        grad = torch.ones_like(out)

        def step():
            return torch.autograd.grad(out, inputs, grad, retain_graph=True)
    else:
        def step():
            out = forward()
            return torch.autograd.grad(out, inputs, torch.ones_like(out))
    return step


def backend(name: str):
    """A backend of ours (``reference`` included): it expands, or fuses, on every call, as in training."""
    def prepare(layer, x, mode):
        layer = copy.deepcopy(layer)  # its own backend: steps of all contenders are prepared before any runs
        layer.backend = name
        return _step(lambda: layer(x), [x, layer.weight], mode)
    return prepare


def pre_expanded(layer, x, mode):
    """``F.conv2d`` on ``W~`` expanded once beforehand: the ceiling of a plain convolution library
    (not a training path: the expansion is left out of the timed step)."""
    w = reference.expand_filter(layer.weight.detach(), layer.group).requires_grad_(mode != "forward")
    bias = layer.bias.detach().repeat_interleave(layer.group.order) if layer.bias is not None else None
    return _step(lambda: F.conv2d(x, w, bias, layer.stride, layer.padding, layer.dilation), [x, w], mode)


def compiled(layer, x, mode):
    """The reference under ``torch.compile`` (compilation happens during the warm-up)."""
    fn = torch.compile(lambda x, w, b: reference.group_conv2d(x, w, b, layer.stride, layer.padding,
                                                              layer.dilation, layer.group))
    return _step(lambda: fn(x, layer.weight, layer.bias), [x, layer.weight], mode)


def in_process(device: torch.device, with_compile: bool = True) -> dict[str, Callable | str]:
    """Contenders runnable in this process on ``device``; unavailable ones map to the reason why."""
    contenders: dict[str, Callable | str] = {}
    for name, status in ger_kernels.backends(device).items():
        contenders[name] = backend(name) if status.available else status.reason
    contenders["pre-expanded"] = pre_expanded
    contenders["compiled"] = compiled if with_compile else "skipped (--no-compile)"
    return contenders

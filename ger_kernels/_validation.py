"""Argument checks shared by the reference, the functional API and the layers.

Every error names the argument, what was expected and what was given.
"""

from __future__ import annotations

import torch

from ger_kernels._autocast import casts
from ger_kernels.groups import Group


def check_int(value, name: str, minimum: int = 1) -> int:
    """``value`` if it is an int >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def square_param(value, name: str, minimum: int) -> int:
    """An int, or a pair of equal ints (quarter turns need the same value on both axes)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(
                f"{name} must be an int or a pair of equal ints (a quarter turn swaps H and W), got {tuple(value)}"
            )
        value = value[0]
    return check_int(value, name, minimum)


def check_4d(x: torch.Tensor, name: str, layout: str) -> None:
    """``x`` is a 4-D tensor; ``layout`` describes it in the message."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D {layout}, got {x.dim()}-D with shape {tuple(x.shape)}")


def check_feature_map(x: torch.Tensor, channels: int, name: str, layout: str) -> None:
    """``x`` is a 4-D tensor with ``channels`` channels."""
    check_4d(x, name, layout)
    if x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels ({layout}), got {x.shape[1]}")


def check_fields(x: torch.Tensor, group: Group, name: str) -> int:
    """``x`` is a 4-D group feature map ``(B, C*S, H, W)``; returns ``C``."""
    layout = f"{group.name} feature map (B, C*{group.order}, H, W)"
    check_4d(x, name, layout)
    if x.shape[1] % group.order:
        raise ValueError(f"{name} must be a {layout}: channels a multiple of {group.order}, got {x.shape[1]}")
    return x.shape[1] // group.order


def conv_output_size(size: int, kernel_size: int, stride: int, padding: int, dilation: int) -> int:
    """``F.conv2d``'s output size along one axis (< 1 when the dilated kernel does not fit)."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def check_exact_grid(layer: str, height: int, width: int, kernel_size: int, stride: int, padding: int,
                     dilation: int = 1) -> None:
    """SPEC section 5: a strided window is exactly equivariant iff
    ``(size + 2*padding - dilation*(kernel_size-1) - 1) % stride == 0`` on both axes; the padded input must
    hold the window at least once."""
    span = dilation * (kernel_size - 1) + 1
    for axis, size in (("H", height), ("W", width)):
        if size + 2 * padding < span:
            raise ValueError(f"{layer}: input {axis}={size} with padding={padding} is smaller than the window, "
                             f"{span} wide (kernel_size={kernel_size}, dilation={dilation})")
        rest = (size + 2 * padding - span) % stride
        if rest:
            raise ValueError(
                f"{layer}: input {axis}={size} breaks exact equivariance with kernel_size={kernel_size}, "
                f"stride={stride}, padding={padding}, dilation={dilation}: "
                f"({axis} + 2*padding - dilation*(kernel_size-1) - 1) % stride = {rest}, expected 0. "
                f"Use an {axis} that makes it 0, or pass strict_equivariance=False."
            )


def check_weight(weight: torch.Tensor, group: Group) -> tuple[int, int, int, int]:
    """``weight`` is a ``(C_out, C_in, S_in, k, k)`` tensor with ``S_in`` 1 or S and square taps;
    returns ``(C_out, C_in, S_in, k)``."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 5:
        raise ValueError(
            f"weight must be 5-D (C_out, C_in, S_in, k, k) with S_in in (1, {group.order}), "
            f"got shape {tuple(weight.shape)}"
        )
    c_out, c_in, s_in, k, k_w = weight.shape
    if s_in not in (1, group.order):
        raise ValueError(
            f"weight.shape[2] (S_in) must be 1 (lifting) or {group.order} ({group.name} to {group.name}), got {s_in}"
        )
    if k != k_w:
        raise ValueError(f"weight must have square k x k taps (a quarter turn swaps them), got {k} x {k_w}")
    return c_out, c_in, s_in, k


def check_output_size(input_size, kernel_size: int, stride: int, padding: int, dilation: int) -> list[int]:
    """Output (H_out, W_out) of an input of size (..., H, W), as ``F.conv2d``; ``ValueError`` unless the padded
    input holds the dilated kernel at least once."""
    size = [conv_output_size(n, kernel_size, stride, padding, dilation) for n in input_size[-2:]]
    if min(size) < 1:
        span = dilation * (kernel_size - 1) + 1
        raise ValueError(f"input (H, W) = {tuple(input_size[-2:])} is smaller than the dilated kernel {span} x {span} "
                         f"with padding {padding}")
    return size


def check_conv_args(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    group: Group) -> tuple[int, int, int, int]:
    """Checks a group convolution's tensors; returns ``(C_out, C_in, S_in, k)``. Their dtypes
    match, or, as for ``F.conv2d``, the autocast region active on the input's device casts them
    all (float32 weights with bfloat16 activations under ``torch.autocast``). An empty batch gives an
    empty output; no backend takes ``C_in = 0``, ``C_out = 0`` or an empty H or W."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    c_out, c_in, s_in, k = check_weight(weight, group)
    layout = "planar (B, C_in, H, W)" if s_in == 1 else f"(B, C_in*{group.order}, H, W)"
    check_feature_map(input, c_in * s_in, "input", layout)
    if 0 in (c_in, c_out, *input.shape[2:]):
        raise ValueError(f"a group convolution needs C_in, C_out >= 1 fields and an input H, W >= 1 (the batch may "
                         f"be empty), got input shape {tuple(input.shape)} and weight shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating point tensor, got {weight.dtype}")
    tensors = [("weight", weight)] + ([("bias", bias)] if bias is not None else [])
    for name, t in tensors:
        if t.dtype != input.dtype and not (casts(t) and casts(input)):
            raise TypeError(f"{name}.dtype must match input.dtype {input.dtype}, got {t.dtype} (convert the layer "
                            f"with .to(dtype), or run it under torch.autocast)")
        if t.device != input.device:
            raise ValueError(f"{name}.device must match input.device {input.device}, got {t.device}")
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(
            f"bias must have shape ({c_out},): one value per output field, shared by its {group.order} "
            f"orientations; got {tuple(bias.shape)}"
        )
    return c_out, c_in, s_in, k

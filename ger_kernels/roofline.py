"""FLOPs and minimal memory traffic of a group convolution layer, for achieved-throughput
and fraction-of-peak figures in benchmarks (SPEC section 3 shapes).

A layer maps ``(B, C_in*S_in, H, W)`` to ``(B, C_out*S, H_out, W_out)`` with base weight
``(C_out, C_in, S_in, k, k)``. Each pass is one GEMM-sized reduction of
``2 * B * C_out*S * H_out*W_out * C_in*S_in*k*k`` FLOPs (forward, input gradient, weight
gradient alike). Minimal bytes read each operand once and write each result once.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConvShape", "conv_flops", "conv_min_bytes"]


@dataclass(frozen=True)
class ConvShape:
    batch: int
    in_fields: int
    in_orientations: int  # 1 for lifting layers
    out_fields: int
    group_order: int
    height: int
    width: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    dilation: int = 1

    @property
    def out_size(self) -> tuple[int, int]:
        span = self.dilation * (self.kernel_size - 1) + 1
        return tuple((n + 2 * self.padding - span) // self.stride + 1 for n in (self.height, self.width))

    def numels(self) -> dict[str, int]:
        h_out, w_out = self.out_size
        return {
            "input": self.batch * self.in_fields * self.in_orientations * self.height * self.width,
            "output": self.batch * self.out_fields * self.group_order * h_out * w_out,
            "weight": self.out_fields * self.in_fields * self.in_orientations * self.kernel_size ** 2,
        }


def conv_flops(shape: ConvShape, passes: str = "forward") -> int:
    """FLOPs of ``passes``: "forward", "backward" (input and weight gradients) or "forward+backward"."""
    h_out, w_out = shape.out_size
    one = (2 * shape.batch * shape.out_fields * shape.group_order * h_out * w_out
           * shape.in_fields * shape.in_orientations * shape.kernel_size ** 2)
    return one * {"forward": 1, "backward": 2, "forward+backward": 3}[passes]


def conv_min_bytes(shape: ConvShape, passes: str = "forward", element_size: int = 4) -> int:
    """Bytes a fused kernel must move at least: forward reads input and weight and writes the
    output; backward reads output gradient, input and weight and writes both gradients."""
    n = shape.numels()
    forward = n["input"] + n["weight"] + n["output"]
    backward = 2 * n["output"] + 2 * n["input"] + 2 * n["weight"]
    elements = {"forward": forward, "backward": backward, "forward+backward": forward + backward}[passes]
    return elements * element_size

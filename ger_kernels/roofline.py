"""FLOPs and minimal memory traffic of a group convolution layer, for achieved-throughput
and fraction-of-peak figures in benchmarks (SPEC section 3 shapes).

A layer maps ``(B, C_in*S_in, H, W)`` to ``(B, C_out*S, H_out, W_out)`` with base weight
``(C_out, C_in, S_in, k, k)``. Each pass is one GEMM-sized reduction of
``2 * B * C_out*S * H_out*W_out * C_in*S_in*k*k`` FLOPs (forward, input gradient, weight
gradient alike). Minimal bytes read each operand once and write each result once.

Passes: "forward", "input_grad", "weight_grad", "backward" (both gradients) and
"forward+backward".
"""

from __future__ import annotations

from dataclasses import dataclass

from ger_kernels._validation import conv_output_size

__all__ = ["ConvShape", "PASSES", "conv_flops", "conv_min_bytes", "throughput"]

# GEMM-sized reductions per pass
PASSES = {"forward": 1, "input_grad": 1, "weight_grad": 1, "backward": 2, "forward+backward": 3}


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
        return tuple(conv_output_size(n, self.kernel_size, self.stride, self.padding, self.dilation)
                     for n in (self.height, self.width))

    def numels(self) -> dict[str, int]:
        h_out, w_out = self.out_size
        return {
            "input": self.batch * self.in_fields * self.in_orientations * self.height * self.width,
            "output": self.batch * self.out_fields * self.group_order * h_out * w_out,
            "weight": self.out_fields * self.in_fields * self.in_orientations * self.kernel_size ** 2,
        }


def conv_flops(shape: ConvShape, passes: str = "forward") -> int:
    """FLOPs of ``passes`` (a key of ``PASSES``)."""
    h_out, w_out = shape.out_size
    one = (2 * shape.batch * shape.out_fields * shape.group_order * h_out * w_out
           * shape.in_fields * shape.in_orientations * shape.kernel_size ** 2)
    return one * PASSES[passes]


def conv_min_bytes(shape: ConvShape, passes: str = "forward", element_size: int = 4) -> int:
    """Bytes a fused kernel must move at least: forward reads input and weight and writes the
    output; the input gradient reads output gradient and weight and writes the input gradient;
    the weight gradient reads output gradient and input and writes the weight gradient."""
    n = shape.numels()
    forward = n["input"] + n["weight"] + n["output"]
    input_grad = n["output"] + n["weight"] + n["input"]
    weight_grad = n["output"] + n["input"] + n["weight"]
    elements = {"forward": forward, "input_grad": input_grad, "weight_grad": weight_grad,
                "backward": input_grad + weight_grad, "forward+backward": forward + input_grad + weight_grad}[passes]
    return elements * element_size


def throughput(shape: ConvShape, passes: str, milliseconds: float, peak_tflops: float) -> tuple[float, float]:
    """(achieved TFLOP/s, fraction of ``peak_tflops``) of ``passes`` run in ``milliseconds``."""
    tflops = conv_flops(shape, passes) / (milliseconds * 1e9)
    return tflops, tflops / peak_tflops

"""A fused backend's group-convolution kernels (--backend triton, or cpp: the ops of ger_kernels._C)
against cuDNN on the expanded filter, per pass (forward, input gradient, weight gradient), at GER-UNet's
layer shapes (batch 4: the lifting layer at
448x448, group layers of 23 fields at 448, 45 at 224, 91 at 112, 181 at 56; k = 3, padding 1).

cuDNN runs ``F.conv2d`` (and its backward) on ``W~`` precomputed once, channels_last, with
``torch.backends.cudnn.benchmark = True`` and TF32 off; its weight gradient is dW~, without the
fold to the base weight the fused kernel includes. Times are medians of interleaved repeats;
TFLOP/s from ``ger_kernels.roofline``, fraction of the measured bf16/fp32 matmul peak. Each
row also gives the fused result's relative difference from cuDNN's. Writes results.md and
results.json to --out.

    python benchmarks/bench_triton.py --out benchmarks/results/triton-h100 [--dtypes bfloat16 float32]
    python benchmarks/bench_triton.py --backend cpp --out benchmarks/results/cpp-h100
    TRITON_INTERPRET=1 python benchmarks/bench_triton.py --device cpu --quick --dtypes float32 --out /tmp/b
                                                  # a smoke test of the script, without a GPU
    python benchmarks/bench_triton.py --backend cpp --device cpu --quick --dtypes float32 --out /tmp/b
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from measure import interleaved_medians, machine_peaks  # noqa: E402
from run import SHAPES, label  # noqa: E402

from ger_kernels import reference  # noqa: E402
from ger_kernels._io import write_text_atomically  # noqa: E402
from ger_kernels.backends import backends  # noqa: E402
from ger_kernels.groups import P4M  # noqa: E402
from ger_kernels.machine import machine_description  # noqa: E402
from ger_kernels.roofline import ConvShape, throughput  # noqa: E402

# the p4m layers of the comparison runner's shape sets (k = 3, stride 1, padding 1)
LAYERS = [shape for shape in SHAPES["ger-unet"] if shape.group_order == 8]
QUICK_LAYERS = [shape for shape in SHAPES["quick"] if shape.group_order == 8]


def rel_diff(actual, expected) -> float:
    """Largest ``|actual - expected|`` over largest ``|expected|``; of tensor tuples, the largest of
    each pair's."""
    if isinstance(expected, (tuple, list)):
        return max(rel_diff(a, e) for a, e in zip(actual, expected, strict=True))
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def fused_passes(backend: str) -> tuple[Callable, Callable, Callable]:
    """forward(x, w, b, stride, padding, dilation, order), input_grad(dy, w, input_size, stride, padding,
    dilation, order) and weight_grad(dy, x, k, s_in, stride, padding, dilation, order) of a fused backend."""
    if backend == "cpp":
        ops = torch.ops.ger_kernels
        return ops.group_conv2d, ops.group_conv2d_input_grad, ops.group_conv2d_weight_grad
    from ger_kernels.triton import group_conv

    return (lambda x, w, b, *conv: group_conv.forward(x, w, b, *conv, False)[0],
            lambda dy, w, size, *conv: group_conv.input_grad(dy, w, size, True, *conv),
            group_conv.weight_grad)


PASSES = ("forward", "input_grad", "weight_grad")


def layer_steps(shape: ConvShape, dtype: torch.dtype, device: torch.device,
                fused: tuple[Callable, Callable, Callable]) -> dict[str, tuple[Callable, Callable, torch.Tensor]]:
    """Per pass of ``PASSES``: (fused step, cuDNN step, cuDNN's result as the fused step returns it).

    One random p4m problem of ``shape``: x channels_last, w (C_out, C_in, S_in, k, k), b (C_out,), dy;
    ``fused`` is ``fused_passes(backend)``. cuDNN runs on ``W~`` expanded once; its weight gradient
    dW~ is folded to the base weight (the vjp of ``reference.expand_filter``) for the expected result
    only. Computing the expected results runs each cuDNN step once (it picks its algorithms)."""
    forward, input_grad, weight_grad = fused
    c_in, s_in, c_out, k = shape.in_fields, shape.in_orientations, shape.out_fields, shape.kernel_size
    conv = (shape.stride, shape.padding, shape.dilation)
    x = torch.randn(shape.batch, c_in * s_in, shape.height, shape.width, device=device, dtype=dtype)
    x = x.to(memory_format=torch.channels_last)
    w = torch.randn(c_out, c_in, s_in, k, k, device=device, dtype=dtype) / (c_in * s_in * k * k) ** 0.5
    b = torch.randn(c_out, device=device, dtype=dtype)
    expanded = reference.expand_filter(w, P4M)
    expanded_bias = b.repeat_interleave(P4M.order)
    dy = torch.randn_like(F.conv2d(x, expanded, expanded_bias, *conv))

    def cudnn_grad(mask):
        return torch.ops.aten.convolution_backward(dy, x, expanded, None, [shape.stride] * 2, [shape.padding] * 2,
                                                   [shape.dilation] * 2, False, [0, 0], 1, mask)

    steps = {
        "forward": (lambda: forward(x, w, b, *conv, P4M.order),
                    lambda: F.conv2d(x, expanded, expanded_bias, *conv)),
        "input_grad": (lambda: input_grad(dy, w, list(x.shape), *conv, P4M.order),
                       lambda: cudnn_grad([True, False, False])[0]),
        "weight_grad": (lambda: weight_grad(dy, x, k, s_in, *conv, P4M.order),
                        lambda: cudnn_grad([False, True, False])[1]),
    }
    fold = torch.func.vjp(lambda v: reference.expand_filter(v, P4M), w.float())[1]
    expected = {name: cudnn() for name, (_, cudnn) in steps.items()}
    expected["weight_grad"] = fold(expected["weight_grad"].float())[0]
    return {name: (*steps[name], expected[name]) for name in PASSES}


def bench_layer(shape: ConvShape, dtype: torch.dtype, device: torch.device, repeats: int,
                peak_tflops: float, backend: str = "triton") -> list[dict]:
    """One row per pass: the backend's and cuDNN's milliseconds, their ratio, TFLOP/s, fraction of peak."""
    rows = []
    for name, (fused, cudnn, expected) in layer_steps(shape, dtype, device, fused_passes(backend)).items():
        fused_result = fused()  # the first call tunes
        ms = interleaved_medians({"fused": fused, "cudnn": cudnn}, device, repeats)
        fused_tflops, fused_fraction = throughput(shape, name, ms["fused"], peak_tflops)
        cudnn_tflops, cudnn_fraction = throughput(shape, name, ms["cudnn"], peak_tflops)
        rows.append({"backend": backend, "layer": label(shape), "dtype": str(dtype).split(".")[-1],
                     "pass": name, "fused_ms": ms["fused"], "cudnn_ms": ms["cudnn"],
                     "fused_over_cudnn": ms["fused"] / ms["cudnn"], "fused_tflops": fused_tflops,
                     "cudnn_tflops": cudnn_tflops, "fused_fraction_of_peak": fused_fraction,
                     "cudnn_fraction_of_peak": cudnn_fraction, "rel_diff": rel_diff(fused_result, expected)})
    return rows


def markdown(rows: list[dict], header: str, backend: str) -> str:
    lines = [header, "",
             f"| layer | dtype | pass | {backend} ms | cuDNN ms | {backend} / cuDNN | {backend} TFLOP/s (peak) | "
             "cuDNN TFLOP/s (peak) | rel. diff |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['dtype']} | {r['pass']} | {r['fused_ms']:.3f} | {r['cudnn_ms']:.3f} | "
              f"{r['fused_over_cudnn']:.2f} | {r['fused_tflops']:.1f} ({r['fused_fraction_of_peak']:.0%}) | "
              f"{r['cudnn_tflops']:.1f} ({r['cudnn_fraction_of_peak']:.0%}) | {r['rel_diff']:.1e} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for results.md and results.json")
    parser.add_argument("--backend", default="triton", choices=["triton", "cpp"], help="the fused kernels timed")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                        choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu with TRITON_INTERPRET=1 (smoke test)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"bench_triton: skipped, no CUDA device (the {args.backend} kernels are benchmarked on a GPU)")
        return 0
    status = backends(device)[args.backend]
    if not status.available:
        print(f"bench_triton: skipped, the {args.backend} kernels are not available: {status.reason}")
        return 0
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    machine = machine_description(device)
    header = f"backend: {args.backend}; machine: {machine}"
    print(header)
    rows = []
    for name in args.dtypes:
        dtype = getattr(torch, name)
        peak = machine_peaks(device, dtype)["matmul_tflops"]
        print(f"{name}: measured matmul peak {peak:.1f} TFLOP/s")
        for shape in QUICK_LAYERS if args.quick else LAYERS:
            for row in bench_layer(shape, dtype, device, 1 if args.quick else args.repeats, peak, args.backend):
                row["peak_tflops"] = peak
                rows.append(row)
                print(markdown([row], "", args.backend).splitlines()[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(str(args.out / "results.md"), markdown(rows, header, args.backend))
    write_text_atomically(str(args.out / "results.json"), json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(markdown(rows, header, args.backend))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fused group batch norm against ``BatchNorm3d`` on the 5-D view, training mode, at GER-UNet's
map shapes (batch 4, paper widths: 23 fields at 448x448, 45 at 224, 91 at 112, 181 at 56, p4m),
channels_last, forward and forward+backward, plain BN and the ResBlock's ``relu(bn(x) + r)``.

Times are medians of interleaved repeats; GB/s divide the minimal bytes of the pass
(``ger_kernels.group_batch_norm.min_bytes``, the same count for both contenders) by the time,
and are compared with the measured copy bandwidth. Writes results.md and results.json to --out.

    python benchmarks/bench_group_bn.py --out benchmarks/results/group-bn-h200
    TRITON_INTERPRET=1 python benchmarks/bench_group_bn.py --device cpu --quick --dtype float32 --out /tmp/b
                                                  # a smoke test of the script, without a GPU
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from measure import interleaved_medians, machine_peaks  # noqa: E402

from ger_kernels._io import write_text_atomically  # noqa: E402
from ger_kernels.group_batch_norm import min_bytes  # noqa: E402
from ger_kernels.machine import machine_description  # noqa: E402
from ger_kernels.nn import GroupBatchNorm2d  # noqa: E402

ORDER = 8
# (batch, fields, size): GER-UNet's maps at paper widths, and tiny ones for the smoke test
SHAPES = [(4, 23, 448), (4, 45, 224), (4, 91, 112), (4, 181, 56)]
QUICK_SHAPES = [(2, 3, 8), (1, 2, 5)]
PASSES = ("forward", "forward+backward")


def pass_bytes(numel: int, element_size: int, passes: str, fused_add_relu: bool) -> int:
    """Minimal bytes of a training forward (statistics, normalize), and of its backward too."""
    kernels = ["statistics", "normalize"] + (["grad_sums", "input_grad"] if passes == "forward+backward" else [])
    return sum(min_bytes(numel, element_size, k, relu=fused_add_relu, residual=fused_add_relu) for k in kernels)


def bench_shape(batch: int, fields: int, size: int, dtype: torch.dtype, device: torch.device, repeats: int,
                copy_gbs: float) -> list[dict]:
    """One row per (case, pass): fused and BatchNorm3d milliseconds, GB/s, fraction of copy bandwidth."""
    x = torch.randn(batch, fields * ORDER, size, size, device=device, dtype=dtype)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    residual = torch.randn_like(x).requires_grad_()
    grad = torch.randn_like(x)
    fused = GroupBatchNorm2d(fields).to(device)
    plain = nn.BatchNorm3d(fields).to(device)
    rows = []
    for case in ("bn", "bn+add+relu"):
        add_relu = case == "bn+add+relu"

        def run_fused():
            return fused(x, residual, relu=True) if add_relu else fused(x)

        def run_plain():
            y = plain(x.unflatten(1, (fields, ORDER))).flatten(1, 2)
            return torch.relu(y + residual) if add_relu else y

        for passes in PASSES:
            if passes == "forward":
                steps = {"fused": run_fused, "BatchNorm3d": run_plain}
            else:
                steps = {"fused": lambda: run_fused().backward(grad), "BatchNorm3d": lambda: run_plain().backward(grad)}
            ms = interleaved_medians(steps, device, repeats)
            size_bytes = pass_bytes(x.numel(), x.element_size(), passes, add_relu)
            row = {"map": f"{batch}x({fields}*{ORDER})x{size}x{size}", "dtype": str(dtype).split(".")[-1],
                   "case": case, "pass": passes, "bytes": size_bytes, "copy_gbs": copy_gbs}
            for name, t in ms.items():
                row[f"{name}_ms"] = t
                row[f"{name}_gbs"] = size_bytes / t / 1e6
                row[f"{name}_fraction_of_copy"] = row[f"{name}_gbs"] / copy_gbs
            rows.append(row)
    x.grad = residual.grad = None
    return rows


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| map | dtype | case | pass | MB | fused ms | BatchNorm3d ms | fused GB/s (of copy) | "
             "BatchNorm3d GB/s (of copy) |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['map']} | {r['dtype']} | {r['case']} | {r['pass']} | {r['bytes'] / 1e6:.1f} | "
              f"{r['fused_ms']:.3f} | {r['BatchNorm3d_ms']:.3f} | {r['fused_gbs']:.0f} "
              f"({r['fused_fraction_of_copy']:.0%}) | {r['BatchNorm3d_gbs']:.0f} "
              f"({r['BatchNorm3d_fraction_of_copy']:.0%}) |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for results.md and results.json")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu with TRITON_INTERPRET=1 (smoke test)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_group_bn: skipped, no CUDA device")
        return 0
    dtype = getattr(torch, args.dtype)
    copy_gbs = machine_peaks(device, dtype)["copy_gbs"]
    header = f"machine: {machine_description(device)}; measured copy bandwidth {copy_gbs:.0f} GB/s"
    print(header)
    rows = []
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        for row in bench_shape(*shape, dtype, device, 1 if args.quick else args.repeats, copy_gbs):
            rows.append(row)
            print(markdown([row], "").splitlines()[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(str(args.out / "results.md"), markdown(rows, header))
    write_text_atomically(str(args.out / "results.json"), json.dumps({"machine": header, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GER-UNet's block body, conv -> group BN -> ReLU -> conv -> group BN, forward + backward (training
mode), fused (``ger_kernels.nn.FusedSequential`` on the Triton backend: each conv's epilogue writes
the next batch norm's statistics, the second conv applies the first BN-ReLU on load) against cuDNN
on the expanded filters with ``BatchNorm3d`` and ReLU (issue 12's target: at least 1.3x), and the
same group modules unfused on the Triton backend (what the fusion alone gains); and the peak memory
of one step of each (the fused block keeps no normalized map for its backward).

p4m, batch 4, channels_last, 3x3 padding 1, GER-UNet's widths (23 fields at 448x448, 45 at 224,
91 at 112, 181 at 56); medians of interleaved repeats. The first fused output is checked against
the cuDNN contender's (a wrong kernel is never "fast"). Writes results.md and results.json to --out.
The group batch norm's Triton kernels run (``GER_KERNELS_TRITON_BN=1`` is set here).

    python benchmarks/bench_conv_norm.py --out benchmarks/results/conv-norm-h200
    TRITON_INTERPRET=1 python benchmarks/bench_conv_norm.py --device cpu --quick --dtype float32 --out /tmp/b
                                                  # a smoke test of the script, without a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from measure import interleaved_medians, peak_memory_bytes  # noqa: E402

from ger_kernels import reference  # noqa: E402
from ger_kernels._io import write_text_atomically  # noqa: E402
from ger_kernels.groups import P4M  # noqa: E402
from ger_kernels.machine import machine_description  # noqa: E402
from ger_kernels.nn import FusedSequential, GroupBatchNorm2d, P4MConvP4M  # noqa: E402

SHAPES = [(4, 23, 448), (4, 45, 224), (4, 91, 112), (4, 181, 56)]  # (batch, fields, size)
QUICK_SHAPES = [(2, 1, 4)]
CONTENDERS = ("fused", "unfused", "cudnn")
TOLERANCE = 5e-2  # relative to the largest magnitude; bf16 rounding is ~1e-2, a wrong kernel O(1)


def group_block(fields: int, device, dtype) -> FusedSequential:
    return FusedSequential(P4MConvP4M(fields, fields, 3, padding=1, bias=False, backend="triton"),
                           GroupBatchNorm2d(fields, relu=True), nn.Identity(),
                           P4MConvP4M(fields, fields, 3, padding=1, bias=False, backend="triton"),
                           GroupBatchNorm2d(fields)).to(device=device, dtype=dtype,
                                                        memory_format=torch.channels_last)


class CudnnBlock(nn.Module):
    """The same block on the expanded filters (expanded once, outside the timing): F.conv2d,
    BatchNorm3d on the 5-D view, ReLU."""

    def __init__(self, block: FusedSequential):
        super().__init__()
        self.w1 = nn.Parameter(reference.expand_filter(block[0].weight.detach(), P4M).contiguous(
            memory_format=torch.channels_last))
        self.w2 = nn.Parameter(reference.expand_filter(block[3].weight.detach(), P4M).contiguous(
            memory_format=torch.channels_last))
        fields = block[0].out_channels
        self.bn1, self.bn2 = nn.BatchNorm3d(fields), nn.BatchNorm3d(fields)
        self.to(block[0].weight.device, block[0].weight.dtype)

    def forward(self, x):
        y = F.conv2d(x, self.w1, padding=1)
        y = torch.relu(self.bn1(y.unflatten(1, (-1, 8))).flatten(1, 2))
        y = F.conv2d(y, self.w2, padding=1)
        return self.bn2(y.unflatten(1, (-1, 8))).flatten(1, 2)


def bench_shape(batch: int, fields: int, size: int, dtype, device, repeats: int) -> dict:
    block = group_block(fields, device, dtype)
    unfused = nn.Sequential(*block)  # the same modules, not fused
    cudnn = CudnnBlock(block)
    x = torch.randn(batch, fields * 8, size, size, device=device, dtype=dtype)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn_like(x)
    models = {"fused": block, "unfused": unfused, "cudnn": cudnn}
    outputs = {name: model(x) for name, model in models.items()}
    scale = outputs["cudnn"].abs().max().item()
    diffs = {name: (out - outputs["cudnn"]).abs().max().item() / scale for name, out in outputs.items()}

    def step(model):
        def run():
            model(x).backward(grad)
        return run

    times = interleaved_medians({name: step(model) for name, model in models.items()}, device, repeats)
    peaks = {name: peak_memory_bytes(step(model), device) / 2 ** 20 for name, model in models.items()}
    return {"map": f"{batch}x({fields}*8)x{size}x{size}", **{f"{n}_ms": times[n] for n in CONTENDERS},
            **{f"{n}_peak_mib": peaks[n] for n in CONTENDERS},
            "fused_vs_cudnn": times["cudnn"] / times["fused"], "fused_vs_unfused": times["unfused"] / times["fused"],
            "rel_diff": {n: diffs[n] for n in ("fused", "unfused")},
            "correct": all(d <= TOLERANCE for d in diffs.values())}


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| map | fused ms | unfused (Triton) ms | cuDNN + BatchNorm3d ms | fused x cuDNN | "
             "fused x unfused | peak MiB fused / unfused / cuDNN | correct |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['map']} | {r['fused_ms']:.3f} | {r['unfused_ms']:.3f} | {r['cudnn_ms']:.3f} | "
              f"{r['fused_vs_cudnn']:.2f} | {r['fused_vs_unfused']:.2f} | {r['fused_peak_mib']:.0f} / "
              f"{r['unfused_peak_mib']:.0f} / {r['cudnn_peak_mib']:.0f} | {'yes' if r['correct'] else 'NO'} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 repeats (smoke test)")
    args = parser.parse_args(argv)
    os.environ["GER_KERNELS_TRITON_BN"] = "1"
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.backends.cudnn.benchmark = True
    rows = []
    for batch, fields, size in QUICK_SHAPES if args.quick else SHAPES:
        rows.append(bench_shape(batch, fields, size, dtype, device, 2 if args.quick else args.repeats))
        header = (f"# conv -> group BN -> ReLU -> conv -> group BN, forward + backward, {args.dtype}, "
                  f"channels_last\n\n{machine_description(device)}")
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.out / "results.md", markdown(rows, header))
        write_text_atomically(args.out / "results.json", json.dumps({"dtype": args.dtype, "rows": rows}, indent=1))
        print(markdown(rows[-1:], "").splitlines()[-1], flush=True)
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

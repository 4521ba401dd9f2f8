"""Filter expansion W~ = expand(w): the pure-PyTorch reference (index gather) against
the C++ op ger_kernels::expand_filter, at GER-UNet layer shapes, in one process,
interleaved, median of repeats: forward, and forward+backward (the gather's gradient folds
back through autograd's index_put, the op's through expand_filter_backward). Prints a
markdown table and the machine.

    python benchmarks/bench_expand_filter.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from measure import interleaved_medians  # noqa: E402

from ger_kernels import ops, reference  # noqa: E402
from ger_kernels.machine import machine_description  # noqa: E402

# (C_out, C_in, S_in) of GER-UNet's group layers at widths 23/45/91/181, k = 3
GER_UNET_LAYERS = [(23, 3, 1), (23, 23, 8), (45, 45, 8), (91, 91, 8), (181, 181, 8)]
QUICK_LAYERS = [(4, 3, 1), (4, 4, 8)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat (a smoke test)")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    print(f"machine: {machine_description(cpu)}")
    if not ops.has_op("expand_filter"):
        print(f"cpp: unavailable ({ops.EXTENSION_ERROR})")
    print("| weight (C_out, C_in, S_in, k, k) | W~ MB | reference ms | cpp ms | reference / cpp "
          "| fwd+bwd reference ms | fwd+bwd cpp ms | reference / cpp |")
    print("|---|---|---|---|---|---|---|---|")
    for c_out, c_in, s_in in QUICK_LAYERS if args.quick else GER_UNET_LAYERS:
        w = torch.randn(c_out, c_in, s_in, 3, 3, requires_grad=True)
        grad = torch.randn(c_out * 8, c_in * s_in, 3, 3)
        expansions = {"reference": lambda: reference.expand_filter(w, "p4m")}
        if ops.has_op("expand_filter"):
            expansions["cpp"] = lambda: torch.ops.ger_kernels.expand_filter(w, 8)
        steps = {name: torch.no_grad()(expand) for name, expand in expansions.items()}
        steps.update({f"{name} fwd+bwd": lambda expand=expand: torch.autograd.grad(expand(), w, grad)
                      for name, expand in expansions.items()})
        ms = interleaved_medians(steps, cpu, 1 if args.quick else args.repeats)
        row = [f"{(c_out, c_in, s_in, 3, 3)}", f"{8 * w.numel() * 4 / 2**20:.2f}"]
        for suffix in ("", " fwd+bwd"):
            row.append(f"{ms['reference' + suffix]:.3f}")
            row += ([f"{ms['cpp' + suffix]:.3f}", f"{ms['reference' + suffix] / ms['cpp' + suffix]:.2f}"]
                    if "cpp" in expansions else ["-", "-"])
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

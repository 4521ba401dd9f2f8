"""Filter expansion W~ = expand(w): the pure-PyTorch reference (index gather) against
the C++ op ger_kernels::expand_filter, at GER-UNet layer shapes, in one process,
interleaved, median of repeats. Prints a markdown table and the machine.

    python benchmarks/bench_expand_filter.py [--quick] [--repeats N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch

from ger_kernels import ops, reference

# (C_out, C_in, S_in) of GER-UNet's group layers at widths 23/45/91/181, k = 3
GER_UNET_LAYERS = [(23, 3, 1), (23, 23, 8), (45, 45, 8), (91, 91, 8), (181, 181, 8)]
QUICK_LAYERS = [(4, 3, 1), (4, 4, 8)]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run(layers, repeats: int, dtype=torch.float32) -> list[dict]:
    contenders = {"reference": lambda w: reference.expand_filter(w, "p4m")}
    if ops.has_op("expand_filter"):
        contenders["cpp"] = lambda w: torch.ops.ger_kernels.expand_filter(w, 8)
    rows = []
    for c_out, c_in, s_in in layers:
        w = torch.randn(c_out, c_in, s_in, 3, 3, dtype=dtype)
        for fn in contenders.values():  # warm-up
            fn(w)
        samples = {name: [] for name in contenders}
        for _ in range(repeats):  # interleaved, so drift hits every contender alike
            for name, fn in contenders.items():
                samples[name].append(median_ms(lambda: fn(w), 1))
        row = {"weight": [c_out, c_in, s_in, 3, 3], "expanded_mb": 8 * w.numel() * w.element_size() / 2**20}
        row.update({f"{name}_ms": statistics.median(t) for name, t in samples.items()})
        rows.append(row)
    return rows


def write_json_atomically(path: str, payload: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as f:
        json.dump(payload, f, indent=2)
    os.replace(f.name, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat (a smoke test)")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    rows = run(QUICK_LAYERS if args.quick else GER_UNET_LAYERS, 1 if args.quick else args.repeats)
    print(f"machine: {machine()}")
    if not ops.has_op("expand_filter"):
        print(f"cpp: unavailable ({ops.EXTENSION_ERROR})")
    print("| weight (C_out, C_in, S_in, k, k) | W~ MB | reference ms | cpp ms | reference / cpp |")
    print("|---|---|---|---|---|")
    for row in rows:
        cpp = row.get("cpp_ms")
        ratio = f"{row['reference_ms'] / cpp:.2f}" if cpp else "-"
        print(f"| {tuple(row['weight'])} | {row['expanded_mb']:.2f} | {row['reference_ms']:.3f} | "
              f"{f'{cpp:.3f}' if cpp else '-'} | {ratio} |")
    if args.json:
        write_json_atomically(args.json, {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "rows": rows})


if __name__ == "__main__":
    main()

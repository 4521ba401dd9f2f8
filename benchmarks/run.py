"""Comparison runner: every contender at each layer shape, in one process (e2cnn in its own
venv, same machine), interleaved, warm-up, median of repeats; plus a full GER-UNet training
step per backend. Writes results.md, results.json and ratio.png to --out and prints the table. Fractions of
the machine's measured peaks: FLOPs over the matmul peak, minimal bytes (ger_kernels.roofline)
over the copy bandwidth; peak MB is what one step allocates beyond its inputs.

    python benchmarks/run.py                                  # CPU, small shapes, float32
    python benchmarks/run.py --device cuda --dtype bfloat16 --shapes ger-unet --out benchmarks/results/h100-bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import contenders  # noqa: E402
from measure import describe, interleaved_medians, machine_peaks, peak_memory_bytes  # noqa: E402

from ger_kernels import backends  # noqa: E402
from ger_kernels.groups import get_group  # noqa: E402
from ger_kernels.machine import machine_description  # noqa: E402
from ger_kernels._io import write_atomically, write_text_atomically  # noqa: E402
from ger_kernels.models import GERUNet, RUNet, count_parameters, group_widths  # noqa: E402
from ger_kernels.nn import conv_class  # noqa: E402
from ger_kernels.roofline import ConvShape, conv_flops, conv_min_bytes  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODES = ("forward", "forward+backward")


def _shape(batch, c_in, s_in, c_out, order, size) -> ConvShape:
    return ConvShape(batch, c_in, s_in, c_out, order, size, size)


SHAPES = {
    "quick": [_shape(1, 3, 1, 2, 8, 8), _shape(1, 2, 8, 2, 8, 8), _shape(1, 3, 1, 2, 4, 8), _shape(1, 2, 4, 2, 4, 8)],
    # GER-UNet's layers (fields 23/45/91/181) at CPU-sized resolutions, and p4 at equal parameters
    "small": [_shape(2, 3, 1, 23, 8, 64), _shape(2, 23, 8, 23, 8, 64), _shape(2, 45, 8, 45, 8, 32),
              _shape(2, 91, 8, 91, 8, 16), _shape(2, 181, 8, 181, 8, 8), _shape(2, 3, 1, 32, 4, 64),
              _shape(2, 32, 4, 32, 4, 64)],
    # GER-UNet at the paper's input (448x448, batch 4), and p4 at equal parameters
    "ger-unet": [_shape(4, 3, 1, 23, 8, 448), _shape(4, 23, 8, 23, 8, 448), _shape(4, 45, 8, 45, 8, 224),
                 _shape(4, 91, 8, 91, 8, 112), _shape(4, 181, 8, 181, 8, 56), _shape(4, 3, 1, 32, 4, 448),
                 _shape(4, 32, 4, 32, 4, 448)],
}


def label(shape: ConvShape) -> str:
    group = get_group(shape.group_order).name
    kind = "Z2" if shape.in_orientations == 1 else group
    return f"{kind}->{group} {shape.in_fields}->{shape.out_fields} @{shape.height} b{shape.batch}"


def e2cnn_results(shapes: list[ConvShape], args) -> dict | str:
    python = ROOT / ".venv-e2cnn" / "bin" / "python"
    if not python.exists():
        return "e2cnn needs numpy<2: its venv .venv-e2cnn is missing (`make test-e2cnn` creates it)"
    payload = json.dumps([{"label": label(s), **dataclasses.asdict(s)} for s in shapes])
    result = subprocess.run([str(python), str(ROOT / "benchmarks" / "e2cnn_contender.py"), payload, "--device",
                             args.device, "--dtype", args.dtype, "--repeats", str(args.repeats)],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if result.returncode:
        return f"e2cnn run failed: {result.stderr.strip().splitlines()[-1] if result.stderr else result.returncode}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def layer_rows(shapes, args, device, dtype) -> list[dict]:
    rows = []
    candidates = contenders.in_process(device, with_compile=not args.no_compile)
    external = e2cnn_results(shapes, args) if not args.no_e2cnn else "skipped (--no-e2cnn)"
    for shape in shapes:
        torch.manual_seed(0)
        layer = conv_class(shape.in_orientations, shape.group_order)(
            shape.in_fields, shape.out_fields, shape.kernel_size, shape.stride, shape.padding).to(device, dtype)
        x = torch.randn(shape.batch, shape.in_fields * shape.in_orientations, shape.height, shape.width,
                        device=device, dtype=dtype, requires_grad=True)
        for mode in MODES:
            steps = {name: prepare(layer, x, mode) for name, prepare in candidates.items() if callable(prepare)}
            times = interleaved_medians(steps, device, args.repeats)
            measured = {name: {"ms": ms, "peak_bytes": peak_memory_bytes(steps[name], device)}
                        for name, ms in times.items()}
            if isinstance(external, dict):
                measured["e2cnn (own process)"] = external[label(shape)][mode]
            for name, m in measured.items():
                rows.append({"shape": label(shape), "mode": mode, "contender": name, **m,
                             "flops": conv_flops(shape, mode),
                             "min_bytes": conv_min_bytes(shape, mode, x.element_size())})
            for name, reason in list(candidates.items()) + [("e2cnn", external)]:
                if isinstance(reason, str):
                    rows.append({"shape": label(shape), "mode": mode, "contender": name, "unavailable": reason})
    return rows


def train_step_rows(args, device, dtype) -> list[dict]:
    """One Adam step of GER-UNet per available backend and ``auto``, and of R-UNet at equal parameters."""
    paper = args.shapes == "ger-unet"
    size, batch = (448, 4) if paper else ((16, 1) if args.shapes == "quick" else (64, 4))
    widths = (64, 128, 256, 512) if paper else (16, 32, 64, 128)
    names = ["auto"] + [name for name, status in backends(device).items() if status.available]
    models = {f"GER-UNet ({name})": lambda name=name: GERUNet(widths=group_widths(widths), backend=name)
              for name in names}
    models["R-UNet (plain conv)"] = lambda: RUNet(widths=widths)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch, size, size), device=device)
    steps, params, errors = {}, {}, {}
    for name, build in models.items():
        torch.manual_seed(0)
        model = build().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
        params[name] = count_parameters(model)

        def step(model=model, optimizer=optimizer):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        try:
            step()  # a model whose step fails is a row with its error, not the end of the run
            steps[name] = step
        except Exception as error:
            errors[name] = describe(error)
    times = interleaved_medians(steps, device, max(3, args.repeats // 2), warmup=1)
    return [{"model": name, "input": f"{batch}x3x{size}x{size}", "parameters": params[name]}
            | ({"error": errors[name]} if name in errors else
               {"ms": times[name], "peak_bytes": peak_memory_bytes(steps[name], device)}) for name in models]


def markdown(report: dict) -> str:
    peak = report["peaks"]
    lines = [f"# Group convolution benchmark ({report['device']}, {report['dtype']})", "",
             f"{report['date']}; {report['machine']}", "",
             f"Measured peaks: matmul {peak['matmul_tflops']:.3f} TFLOP/s ({report['dtype']}), copy "
             f"{peak['copy_gbs']:.1f} GB/s. Command: `{report['command']}`", "",
             "| layer | pass | contender | ms | reference / contender | GFLOP/s | % of matmul peak "
             "| % of copy peak | peak MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    reference_ms = {(r["shape"], r["mode"]): r["ms"] for r in report["layers"] if r["contender"] == "reference"}
    for r in report["layers"]:
        if "unavailable" in r:
            continue
        gflops = r["flops"] / r["ms"] / 1e6
        lines.append(f"| {r['shape']} | {r['mode']} | {r['contender']} | {r['ms']:.2f} | "
                     f"{reference_ms[(r['shape'], r['mode'])] / r['ms']:.2f} | {gflops:.1f} | "
                     f"{0.1 * gflops / peak['matmul_tflops']:.0f} | "
                     f"{100 * r['min_bytes'] / r['ms'] / 1e6 / peak['copy_gbs']:.0f} | {r['peak_bytes'] / 2**20:.1f} |")
    unavailable = {r["contender"]: r["unavailable"] for r in report["layers"] if "unavailable" in r}
    lines += [""] + [f"- {name}: unavailable ({reason})" for name, reason in unavailable.items()]
    lines += ["", "Training step (forward, backward, Adam):", "", "| model | input | parameters | ms | peak MB |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['input']} | {r['parameters']:,} | FAILED: {r['error']} | - |" if "error" in r else
              f"| {r['model']} | {r['input']} | {r['parameters']:,} | {r['ms']:.1f} | {r['peak_bytes'] / 2**20:.1f} |"
              for r in report["train_step"]]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str) -> None:
    fig, ax = plt.subplots(figsize=(9, 4))
    rows = [r for r in report["layers"] if "unavailable" not in r and r["mode"] == "forward+backward"]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    reference_ms = {r["shape"]: r["ms"] for r in rows if r["contender"] == "reference"}
    for name in dict.fromkeys(r["contender"] for r in rows):
        ratio = {r["shape"]: reference_ms[r["shape"]] / r["ms"] for r in rows if r["contender"] == name}
        ax.plot(range(len(shapes)), [ratio.get(s, float("nan")) for s in shapes], marker="o", label=name)
    ax.set_xticks(range(len(shapes)), shapes, rotation=20, ha="right", fontsize=7)
    ax.set(ylabel="speed vs reference (higher is faster)", title=f"forward+backward, {report['device']}")
    ax.axhline(1.0, color="gray", linewidth=0.5)
    ax.legend(fontsize=7)
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--shapes", default="small", choices=sorted(SHAPES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/latest")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-e2cnn", action="store_true")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # SPEC section 8
    torch.backends.cudnn.benchmark = True
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": args.device, "dtype": args.dtype,
              "machine": machine_description(device), "peaks": machine_peaks(device, dtype),
              "command": "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    report["layers"] = layer_rows(SHAPES[args.shapes], args, device, dtype)
    report["train_step"] = train_step_rows(args, device, dtype)
    os.makedirs(args.out, exist_ok=True)
    text = markdown(report)
    write_text_atomically(os.path.join(args.out, "results.md"), text)
    write_text_atomically(os.path.join(args.out, "results.json"), json.dumps(report, indent=1))
    plot(report, os.path.join(args.out, "ratio.png"))
    print(text)
    return report


if __name__ == "__main__":
    main()

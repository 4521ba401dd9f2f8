"""Every launch config of the Triton group-conv kernels, per pass and GER-UNet layer shape, timed
against cuDNN on the expanded filter, in one GPU call of at most --budget-s seconds.

For each dtype (bfloat16 first), each p4m layer of GER-UNet (batch 4, channels_last, k = 3,
padding 1: lifting 3->23 fields @448, 23->23 @448, 45->45 @224, 91->91 @112, 181->181 @56) and
each pass (forward, input_grad, weight_grad), every config of ``tuning.CONFIGS`` is forced in
turn (``GER_KERNELS_TRITON_CONFIG``), in two rounds over the layers (``rounds``: first the config
the shipped table names and the first of each variant, then the others, so that a sweep the budget
stops still covers every layer, pass and variant). Its first result is checked against cuDNN's
(``F.conv2d`` and its backward on ``W~`` expanded once, ``cudnn.benchmark``, TF32 off; the weight
gradient folded to the base weight), then timed (``triton.testing.do_bench``, median). A config that fails to
compile or run, or whose result differs from cuDNN's by more than ``TOLERANCE`` (relative to the
largest magnitude), is recorded as wrong and never chosen. The sweep is how the kernels of
``tuning.UNVERIFIED`` configs are first checked on a GPU: a table entry naming one is followed by
the tuner, which otherwise leaves them out (``GER_KERNELS_TRITON_UNVERIFIED``).

A third round times the kernels ``FusedSequential`` runs with a batch norm fused (pass ``forward+bn``
etc.: a block's second convolution, its input's batch norm and ReLU applied on load and its output's
statistics written by the epilogue; ``norm_steps``) at the shipped table's fused config and the
``FUSED_CANDIDATES`` fastest correct plain ones that do not spill fused, checked against cuDNN on the
normalized input. Their best configs are the table's entries of the fused problem classes (the
problem class followed by ``bn``), which the launchers otherwise fill with the plain kernel's.

Per layer and pass it also times the paths ``backend="auto"`` chooses among (``ger_kernels.auto_paths``):
the reference (``F.conv2d``'s passes on ``W~`` expanded in the step, the weight gradient folded) and
the cpp kernels where they run, checked against the reference, beside the best Triton config.

Writes to --out, atomically after every layer of a round (a timeout keeps what is done): sweep.md and
sweep.json (every config's milliseconds, TFLOP/s, ratio to cuDNN, relative difference; the paths'
milliseconds), ``configs_<arch>.json``: the default-config table of ``ger_kernels/triton/`` with the
fastest correct config per (pass, problem class) merged in, and ``auto_paths_<arch>.json``: the path
table of ``ger_kernels/`` with the fastest correct path per (pass, problem class) merged in. Copying
them over ``ger_kernels/triton/configs_<arch>.json`` and ``ger_kernels/auto_paths_<arch>.json`` and
committing them updates the defaults.

With ``--precompile N`` every config's kernels are first compiled in N processes (into Triton's disk
cache, which the sweep's own compiles then hit): compiling is most of a sweep's time otherwise.

    python benchmarks/gpu_sweep.py --out OUT [--budget-s 450] [--dtypes bfloat16 float32] [--variants fields tma]
        [--precompile 12]
    TRITON_INTERPRET=1 python benchmarks/gpu_sweep.py --device cpu --quick --dtypes float32 \\
        --max-configs 2 --out /tmp/sweep      # a smoke test of the script, without a GPU
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import multiprocessing
import os
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_triton import LAYERS, PASSES, QUICK_LAYERS, fused_passes, layer_steps, rel_diff  # noqa: E402
from measure import describe, timed_ms  # noqa: E402
from run import label  # noqa: E402

from ger_kernels import auto_paths, reference  # noqa: E402
from ger_kernels._io import write_text_atomically  # noqa: E402
from ger_kernels.backends import backends  # noqa: E402
from ger_kernels.groups import P4M  # noqa: E402
from ger_kernels.machine import machine_description  # noqa: E402
from ger_kernels.roofline import ConvShape, conv_flops  # noqa: E402
from ger_kernels.triton import tuning  # noqa: E402

# largest |triton - cuDNN| / max |cuDNN| of a correct config; a wrong index map is off by O(1)
TOLERANCE = {"float32": 1e-3, "half": 3e-2}
# the fastest correct configs of a pass (and the shipped table's) whose kernel is timed again with a
# batch norm fused ("+bn"): those kernels hold more registers, so the plain ranking may not carry over
FUSED_CANDIDATES = 2


@contextlib.contextmanager
def forced(config: tuning.Config):
    """Launches inside use ``config`` (in the lists that hold it)."""
    previous = os.environ.get(tuning.FORCE_ENV)
    os.environ[tuning.FORCE_ENV] = config.name
    try:
        yield
    finally:
        if previous is None:
            del os.environ[tuning.FORCE_ENV]
        else:
            os.environ[tuning.FORCE_ENV] = previous


def time_ms(step, device: torch.device) -> float:
    """Median milliseconds of ``step()``: CUDA events over repeats on a GPU (L2 flushed between
    runs), one wall-clock run elsewhere (the interpreter: a smoke test, not a measurement)."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(step, warmup=10, rep=40, return_mode="median")
    return timed_ms(step, device)


def sweep_pass(shape: ConvShape, dtype: torch.dtype, family: str, steps: tuple, configs: list[tuning.Config],
               device: torch.device, deadline: float, cudnn_ms: float | None = None,
               with_norm: bool = False) -> list[dict]:
    """One row per config of ``family`` tried before ``deadline`` (``time.monotonic()``), against
    ``cudnn_ms`` (timed here when None). ``with_norm``: the steps are ``norm_steps``' (the row's
    pass is ``family+bn``; cuDNN's time is still that of its plain convolution)."""
    fused, cudnn, expected = steps
    kind = tuning.dtype_class(dtype)
    if cudnn_ms is None:
        cudnn_ms = time_ms(cudnn, device)
    flops = conv_flops(shape, family)
    rows = []
    for config in configs:
        if time.monotonic() > deadline:
            break
        row = {"layer": label(shape), "dtype": str(dtype).split(".")[-1],
               "pass": f"{family}+{tuning.FUSED_TAG}" if with_norm else family, "config": config.name,
               "cudnn_ms": cudnn_ms, "cudnn_tflops": flops / (cudnn_ms * 1e9)}
        try:
            with forced(config):
                row["rel_diff"] = rel_diff(fused(), expected)
                row["ms"] = time_ms(fused, device)
        except Exception as error:  # a config that does not compile or run here is recorded, not fatal
            row.update(ok=False, error=describe(error))
        else:
            row.update(ok=row["rel_diff"] <= TOLERANCE[kind], tflops=flops / (row["ms"] * 1e9),
                       x_cudnn=cudnn_ms / row["ms"])
        rows.append(row)
    return rows


def norm_rows(fields: int, device: torch.device) -> torch.Tensor:
    """(3, fields) float32 rows (mean, scale, shift) of a batch norm applied on load: multiples of
    1/8 up to 1/2, powers of two and multiples of 1/16, with ``shift != mean * scale``. For ``x`` on
    the bfloat16 grid, ``z = (x - mean) * scale + shift`` is then exact in float32 where
    ``|x| >= 2**-15``, and elsewhere within 2**-20 of ``shift - mean * scale``, a nonzero multiple of
    1/16: z's sign, the ReLU's mask, does not depend on how the kernel rounds (a fused multiply-add or
    not), so the mask the sweep expects is the kernel's."""
    mean = torch.randint(-4, 5, (fields,)) / 8
    scale = 2.0 ** torch.randint(-1, 2, (fields,))
    shift = torch.randint(-8, 9, (fields,)) / 16
    shift = torch.where(shift == mean * scale, shift + 1 / 16, shift)
    return torch.stack([mean, scale, shift]).float().to(device)


def norm_steps(shape: ConvShape, dtype: torch.dtype, device: torch.device) -> dict[str, tuple]:
    """Per pass that ``FusedSequential`` fuses a batch norm into at this layer: (step, None,
    expected), as ``layer_steps`` (no cuDNN step: the plain one's time is the reference). A group
    layer's step is a block's second convolution: the first batch norm and its ReLU applied on load
    (``norm_rows``), its output's batch statistics from the forward's epilogue, the ReLU's mask in
    the input gradient's epilogue, the normalized input in the weight gradient. A lifting layer's
    (GER-UNet's input layer) is the forward with the statistics only. The forward's result is the
    output with each output field's mean and variance; expected results are cuDNN's on the
    normalized input ``z``, computed in float32 and rounded to ``dtype``, with x on the bfloat16
    grid."""
    from ger_kernels.triton import group_conv

    c_in, s_in, c_out, k = shape.in_fields, shape.in_orientations, shape.out_fields, shape.kernel_size
    conv = (shape.stride, shape.padding, shape.dilation)
    lifting = s_in == 1
    x = torch.randn(shape.batch, c_in * s_in, shape.height, shape.width, device=device).bfloat16().to(dtype)
    x = x.to(memory_format=torch.channels_last)
    w = torch.randn(c_out, c_in, s_in, k, k, device=device, dtype=dtype) / (c_in * s_in * k * k) ** 0.5
    norm = None if lifting else norm_rows(c_in, device)
    if norm is None:
        z = x
    else:
        mean, scale, shift = (row.repeat_interleave(s_in)[:, None, None] for row in norm)
        z_float = (x.float() - mean) * scale + shift
        z = z_float.relu().to(dtype)
    expanded = reference.expand_filter(w, P4M)
    out = F.conv2d(z, expanded, None, *conv)
    fields = out.float().unflatten(1, (c_out, P4M.order))
    var, mean_out = torch.var_mean(fields, dim=(0, 2, 3, 4), correction=0)

    def forward():
        output, partials = group_conv.forward(x, w, None, *conv, P4M.order, False, norm, norm is not None, True)
        count, field_mean, m2 = group_conv.statistics_of_fields(partials, P4M.order)
        return output, field_mean, m2 / count

    steps = {"forward": (forward, None, (out, mean_out, var))}
    if lifting:
        return steps
    dy = torch.randn_like(out)
    dz, dexpanded = torch.ops.aten.convolution_backward(dy, z, expanded, None, [shape.stride] * 2,
                                                        [shape.padding] * 2, [shape.dilation] * 2, False, [0, 0], 1,
                                                        [True, True, False])[:2]
    fold = torch.func.vjp(lambda v: reference.expand_filter(v, P4M), w.float())[1]
    steps["input_grad"] = (lambda: group_conv.input_grad(dy, w, list(x.shape), True, *conv, P4M.order,
                                                         relu_of=(x, norm)),
                           None, dz * (z_float > 0))
    steps["weight_grad"] = (lambda: group_conv.weight_grad(dy, x, k, s_in, *conv, P4M.order, norm, True), None,
                            fold(dexpanded.float())[0])
    return steps


def norm_candidates(family: str, configs: list[tuning.Config], rows: list[dict],
                    shipped: str | None) -> list[tuning.Config]:
    """The configs of ``family`` whose kernel with a batch norm fused is timed: the shipped table's
    for the fused problem class (``shipped``), then the ``FUSED_CANDIDATES`` fastest correct of
    the plain ``rows`` (this layer and pass), none that spills fused (``tuning.FUSED_SPILLS``)."""
    by_name = {c.name: c for c in configs}
    spilling = tuning.FUSED_SPILLS[family]
    fastest = [r["config"] for r in sorted((r for r in rows if r["ok"]), key=lambda r: r["ms"])]
    names = ([shipped] if shipped in by_name else []) + [n for n in fastest if n not in spilling][:FUSED_CANDIDATES]
    return [by_name[n] for n in dict.fromkeys(names) if n not in spilling]


def rounds(configs: list[tuning.Config], previous: str | None) -> tuple[list[tuning.Config], list[tuning.Config]]:
    """``configs`` of one pass in two rounds: first the config named ``previous`` (the shipped
    table's for the problem class: the fastest measured before) and the first of each variant, then
    the others in list order. Every layer gets its first round before any its second, so a sweep
    stopped by its budget still covers each layer, pass and variant."""
    first = [c for c in configs if c.name == previous]
    for config in configs:
        if all(c.variant != config.variant for c in first) and config not in first:
            first.append(config)
    return first, [c for c in configs if c not in first]


def shards(configs: dict[str, list[tuning.Config]], count: int) -> list[dict[str, list[str]]]:
    """The config names of each pass dealt round robin into ``count`` shards (each a mix of passes
    and variants), none empty."""
    dealt = [{} for _ in range(count)]
    flat = [(family, config.name) for family, listed in configs.items() for config in listed]
    for index, (family, name) in enumerate(flat):
        dealt[index % count].setdefault(family, []).append(name)
    return [shard for shard in dealt if shard]


def _compile_shard(dtype_name: str, quick: bool, device_name: str, names: dict[str, list[str]],
                   deadline: float) -> int:
    """In a worker process: runs each config of ``names`` once per layer (which compiles its
    kernels into Triton's disk cache), until ``deadline`` (``time.monotonic()``, the same clock in
    every process); failures are left to the sweep to record. Returns how many runs succeeded."""
    dtype, device = getattr(torch, dtype_name), torch.device(device_name)
    kind = tuning.dtype_class(dtype)
    by_name = {c.name: c for listed in tuning.CONFIGS[kind].values() for c in listed}
    done = 0
    for shape in QUICK_LAYERS if quick else LAYERS:
        if time.monotonic() > deadline:
            break
        steps = layer_steps(shape, dtype, device, fused_passes("triton"))
        for family, listed in names.items():
            for name in listed:
                if time.monotonic() > deadline:
                    break
                try:
                    with forced(by_name[name]):
                        steps[family][0]()
                except Exception:  # noqa: BLE001 - the sweep runs it again and records why
                    continue
                done += 1
        del steps
    return done


def precompile(dtype_name: str, quick: bool, device: torch.device, configs: dict[str, list[tuning.Config]],
               workers: int, deadline: float) -> int:
    """Compiles the kernels of ``configs`` for every layer in ``workers`` processes before the sweep
    times them, so that the sweep's own compiles hit Triton's disk cache (compiling one kernel per
    config and layer kind, a second or two each, is most of a sweep's time otherwise). Stops at
    ``deadline``; returns the runs that succeeded. Best effort: a worker that fails (out of memory, a
    crash) only leaves its configs to be compiled by the sweep."""
    context = multiprocessing.get_context("spawn")  # CUDA in the workers
    runs = 0
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        jobs = [pool.submit(_compile_shard, dtype_name, quick, str(device), shard, deadline)
                for shard in shards(configs, workers)]
        for job in jobs:
            try:
                runs += job.result()
            except Exception as error:  # noqa: BLE001 - including a worker that died
                print(f"precompile: a worker failed ({describe(error)}); the sweep compiles its configs", flush=True)
    return runs


def best_rows(rows: list[dict]) -> list[dict]:
    """The fastest correct row per (layer, dtype, pass), in order of first appearance."""
    best: dict[tuple, dict] = {}
    for row in rows:
        group = (row["layer"], row["dtype"], row["pass"])
        if row["ok"] and (group not in best or row["ms"] < best[group]["ms"]):
            best[group] = row
    return list(best.values())


def _problem(shape: ConvShape, dtype: torch.dtype) -> auto_paths.ConvProblem:
    """The p4m convolution of ``shape`` in ``dtype`` on channels_last maps, as ``auto`` sees it."""
    return auto_paths.ConvProblem(dtype, (shape.batch, shape.in_fields * shape.in_orientations, shape.height,
                                          shape.width),
                                  (shape.out_fields, shape.in_fields, shape.in_orientations, shape.kernel_size,
                                   shape.kernel_size), shape.stride, shape.padding, shape.dilation, P4M.order, True)


def measure_paths(shape: ConvShape, dtype: torch.dtype, device: torch.device) -> dict[str, dict]:
    """Per pass, the milliseconds of the reference and cpp paths of ``auto`` measured here
    (``auto_paths.measure``; None: wrong or failed)."""
    paths = [name for name in ("reference", "cpp") if backends(device)[name].available]
    return auto_paths.measure(_problem(shape, dtype), device, paths, lambda name, path, step: time_ms(step, device))


def path_rows(shape: ConvShape, dtype: torch.dtype, measured: dict[str, dict], triton_rows: list[dict]) -> list[dict]:
    """Per pass: the milliseconds of each path ``auto`` chooses among (None: wrong or failed), the
    reference and cpp ``measured`` (``measure_paths``), triton the best correct row of ``triton_rows``
    (this layer's configs), and the fastest correct path with its table entry."""
    rows = []
    for family, entry in zip(measured, auto_paths.pass_entries(auto_paths.pass_classes(_problem(shape, dtype)))):
        best = best_rows([r for r in triton_rows if r["pass"] == family])
        ms = {**measured[family], "triton": best[0]["ms"] if best else None}
        correct = {path: value for path, value in ms.items() if value is not None}
        rows.append({"layer": label(shape), "dtype": str(dtype).split(".")[-1], "pass": family, "entry": entry,
                     "ms": ms, "path": min(correct, key=correct.get)})
    return rows


def path_table(rows: list[dict], arch: str, source: str, date: str) -> dict:
    """The shipped path table of ``arch`` with ``path_rows``' choices merged in."""
    path = auto_paths.table_path(arch)
    table = json.loads(path.read_text()) if path.exists() else {"arch": arch, "entries": {}}
    table["note"] = (f"Fastest correct path per pass measured by benchmarks/gpu_sweep.py ({source}; each entry says "
                     "when); problem classes without an entry are timed on first use.")
    for row in rows:
        table["entries"][row["entry"]] = {
            "path": row["path"], "ms": {p: None if ms is None else round(ms, 4) for p, ms in row["ms"].items()},
            "layer": row["layer"], "measured": f"{source}, {date}",
            "source": "benchmarks/gpu_sweep.py: reference and cpp timed per pass, triton its best config"}
    table["entries"] = dict(sorted(table["entries"].items()))
    return table


def default_table(best: list[dict], arch: str, source: str, date: str) -> dict:
    """The shipped default-config table of ``arch`` with the ``best`` rows merged in (each row
    carries its problem class as ``"entry"``)."""
    path = tuning.defaults_path(arch)
    table = json.loads(path.read_text()) if path.exists() else {"arch": arch, "entries": {}}
    table["note"] = (f"Best configs measured by benchmarks/gpu_sweep.py ({source}; each entry says when); "
                     "problem classes without an entry are tuned by timing on first use.")
    for row in best:
        table["entries"][row["entry"]] = {"config": row["config"], "ms": round(row["ms"], 4),
                                          "cudnn_ms": round(row["cudnn_ms"], 4), "layer": row["layer"],
                                          "measured": f"{source}, {date}"}
    table["entries"] = dict(sorted(table["entries"].items()))
    return table


def markdown(report: dict) -> str:
    lines = [f"# Triton config sweep: {report['machine']}", "",
             f"{report['date']}, budget {report['budget_s']} s, "
             + ("complete" if report["complete"] else "STOPPED at the budget: layers or configs missing"), "",
             "Best correct config per layer and pass (x cuDNN > 1: faster than cuDNN on W~; a pass `+bn` is the "
             "kernel with a batch norm fused, against cuDNN's plain convolution):", "",
             "| layer | dtype | pass | best config | ms | cuDNN ms | x cuDNN | TFLOP/s | cuDNN TFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['dtype']} | {r['pass']} | {r['config']} | {r['ms']:.3f} | {r['cudnn_ms']:.3f} | "
              f"{r['x_cudnn']:.2f} | {r['tflops']:.1f} | {r['cudnn_tflops']:.1f} |" for r in report["best"]]
    lines += ["", "Path `auto` chooses per layer and pass (ms of each path; - wrong or not run):", "",
              "| layer | dtype | pass | reference ms | cpp ms | triton ms | path |", "|---|---|---|---|---|---|---|"]
    for r in report.get("paths", []):
        ms = ["-" if r["ms"].get(p) is None else f"{r['ms'][p]:.3f}" for p in ("reference", "cpp", "triton")]
        lines.append(f"| {r['layer']} | {r['dtype']} | {r['pass']} | {' | '.join(ms)} | {r['path']} |")
    lines += ["", "Every config:", "",
              "| layer | dtype | pass | config | ms | x cuDNN | TFLOP/s | rel. diff | status |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['layer']} | {r['dtype']} | {r['pass']} | {r['config']} | | | | | {r['error']} |")
        else:
            lines.append(f"| {r['layer']} | {r['dtype']} | {r['pass']} | {r['config']} | {r['ms']:.3f} | "
                         f"{r['x_cudnn']:.2f} | {r['tflops']:.1f} | {r['rel_diff']:.1e} | "
                         f"{'ok' if r['ok'] else 'WRONG'} |")
    return "\n".join(lines) + "\n"


def write(report: dict, out: pathlib.Path) -> None:
    report["best"] = best_rows(report["rows"])
    source = f"{report['gpu']}, triton {report['triton']}"
    table = default_table(report["best"], report["arch"], source, report["date"])
    write_text_atomically(str(out / "sweep.json"), json.dumps(report, indent=1))
    write_text_atomically(str(out / "sweep.md"), markdown(report))
    write_text_atomically(str(out / f"configs_{report['arch']}.json"), json.dumps(table, indent=1) + "\n")
    paths = path_table(report["paths"], report["arch"], f"{report['gpu']}, {report['versions']}", report["date"])
    write_text_atomically(str(out / f"auto_paths_{report['arch']}.json"), json.dumps(paths, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True,
                        help="folder for sweep.md, sweep.json and configs_<arch>.json")
    parser.add_argument("--budget-s", type=float, default=450,
                        help="stop starting configs after this many seconds (results so far are kept)")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                        choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--max-configs", type=int, default=None, help="only the first N configs of each list")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="only configs of these variants ('' names the plain kernels), "
                        "e.g. fields tma channels-tma")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    parser.add_argument("--precompile", type=int, default=0, metavar="WORKERS",
                        help="compile every config's kernels in this many processes first (0: in the sweep)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu with TRITON_INTERPRET=1 (smoke test)")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    if args.max_configs is not None and args.max_configs < 1:
        parser.error(f"--max-configs must be at least 1, got {args.max_configs}")
    if args.precompile < 0:
        parser.error(f"--precompile must be 0 or more workers, got {args.precompile}")
    deadline = time.monotonic() + args.budget_s
    device = torch.device(args.device)
    from ger_kernels.triton import status

    available, reason = status(device.type)
    if not available:
        print(f"gpu_sweep: skipped, the Triton kernels cannot run on {device.type}: {reason}")
        return 0
    import triton

    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    report = {"machine": machine_description(device), "date": datetime.date.today().isoformat(),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)",
              "arch": tuning.arch_name(device), "triton": triton.__version__, "budget_s": args.budget_s,
              "versions": f"torch {torch.__version__}, triton {triton.__version__}", "complete": False, "rows": [],
              "paths": []}
    args.out.mkdir(parents=True, exist_ok=True)
    from ger_kernels.triton import group_conv

    complete = True
    layers = QUICK_LAYERS if args.quick else LAYERS
    measured_paths = {}  # (dtype, layer index) -> measure_paths

    def order(row: dict) -> tuple:  # the report lists rows by dtype, layer, pass (plain first) and config list
        family, kind = row["pass"].split("+")[0], tuning.dtype_class(getattr(torch, row["dtype"]))
        names = [c.name for c in tuning.CONFIGS[kind][family]]
        return (args.dtypes.index(row["dtype"]), [label(shape) for shape in layers].index(row["layer"]),
                PASSES.index(family), row["pass"] != family, names.index(row["config"]))

    for name in args.dtypes:
        dtype = getattr(torch, name)
        kind = tuning.dtype_class(dtype)
        defaults = tuning.read_defaults(report["arch"])
        configs_of = {family: [c for c in tuning.CONFIGS[kind][family]
                               if args.variants is None or c.variant in args.variants][:args.max_configs]
                      for family in PASSES}
        if args.precompile:
            started = time.monotonic()
            runs = precompile(name, args.quick, device, configs_of, args.precompile, deadline)
            print(f"precompiled {name}: {runs} runs in {args.precompile} processes, "
                  f"{time.monotonic() - started:.0f} s", flush=True)
        steps, cudnn_ms = {}, {}
        for round_index in (0, 1, 2):  # round 2: the kernels with a batch norm fused, at the fastest configs
            with_norm = round_index == 2
            for index, shape in enumerate(layers):
                if time.monotonic() > deadline:
                    complete = False
                    break
                problem = _problem(shape, dtype)
                if round_index == 0:
                    steps[index] = layer_steps(shape, dtype, device, fused_passes("triton"))
                elif with_norm:
                    steps[index] = norm_steps(shape, dtype, device)
                for family, step in steps[index].items():
                    configs = configs_of[family]
                    key = group_conv.problem_class(family, dtype, problem.input_shape, problem.weight_shape,
                                                   problem.stride, problem.padding, problem.dilation, problem.order)
                    entry = tuning.entry(family, kind, key + ((tuning.FUSED_TAG,) if with_norm else ()))
                    shipped = defaults.get(entry, {}).get("config")
                    if with_norm:  # cuDNN was timed in round 0, which reached this layer before the deadline
                        todo = norm_candidates(family, configs, [r for r in report["rows"] if (
                            r["dtype"], r["layer"], r["pass"]) == (name, label(shape), family)], shipped)
                    else:
                        todo = rounds(configs, shipped)[round_index]
                    if (index, family) not in cudnn_ms:
                        cudnn_ms[index, family] = time_ms(step[1], device)
                    rows = sweep_pass(shape, dtype, family, step, todo, device, deadline, cudnn_ms[index, family],
                                      with_norm)
                    complete &= len(rows) == len(todo)
                    for row in rows:
                        row["entry"] = entry
                        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in row.items() if k != "entry"), flush=True)
                    report["rows"] += rows
                if round_index == 0:
                    measured_paths[name, index] = measure_paths(shape, dtype, device)
                report["rows"].sort(key=order)
                report["paths"] = [row for (dtype_name, i), measured in measured_paths.items()
                                   for row in path_rows(layers[i], getattr(torch, dtype_name), measured,
                                                        [r for r in report["rows"] if r["dtype"] == dtype_name
                                                         and r["layer"] == label(layers[i])])]
                if with_norm:
                    del steps[index]
                write(report, args.out)
        steps.clear()  # the next dtype's maps replace these
    report["complete"] = complete
    write(report, args.out)
    print(markdown(report).split("\n\nEvery config:")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())

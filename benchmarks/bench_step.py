"""Training step benchmark: GER-UNet against R-UNet (equal parameters), one full step (forward,
cross-entropy loss, backward, Adam), per precision, memory layout, backend, eager or compiled.

Precisions: ``fp32``; ``bf16-autocast`` (float32 weights, ``torch.autocast`` to bfloat16: what
``ger-unet train`` runs on CUDA); ``bf16`` (``model.to(torch.bfloat16)``). Layouts: ``nchw`` and
``channels_last`` (model and input). Each configuration is one row: median, min and max ms of
up to --steps steps after --warmup warm-up steps (compilation and autotuning happen there),
each timed from a synchronized start to a synchronized end; the peak memory of one step beyond
what was allocated before it (parameters, gradients, Adam state; CUDA: the caching allocator,
CPU: torch.profiler's allocation events); and the top kernels of one profiled step (self device
time on CUDA, self CPU time on CPU) with the share of each category. A configuration that fails
(an exception, out of memory, an unavailable backend, its time budget run out) is a row with the
error, and the run goes on.

Rows run most important first, so that a short --budget-s measures those: by --precisions, then
--layouts (each in the order given; CUDA: bf16-autocast and channels_last first, what `ger-unet
train` would run there), then GER-UNet auto, R-UNet (its baseline), the other GER-UNet backends in
--backends order; compiled rows last. Each row gets what is left of --budget-s, at most
--row-budget-s; a row starts only when at least MIN_ROW_S (or --row-budget-s if less) is left, and
what does not start is listed as skipped. --compile-budget-s (at most --budget-s) is kept for the
compiled rows, each of which gets all the time left, from every eager row but those of the first
precision and layout; a compiled row starts with at least a third of it.
When the budget runs out in a warm-up step after one has finished, the row still times one step
(see run_row). results.md and results.json in --out are rewritten after every row.

    python benchmarks/bench_step.py --out benchmarks/results/step-h200   # CUDA: 4x3x448x448, paper widths
    python benchmarks/bench_step.py --out benchmarks/results/step-cpu    # CPU: 4x3x64x64, demo widths
    python benchmarks/bench_step.py --out /tmp/s --size 16 --batch 1 --widths 4 8 8 8 --quick --compile none
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import pathlib
import platform
import re
import shlex
import signal
import statistics
import sys
import threading
import time
from typing import Callable, Iterator

import torch
import torch._dynamo
import torch.nn.functional as F
from torch._dynamo.utils import counters

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from measure import describe, profiled_step, timed_ms  # noqa: E402

from ger_kernels import backends  # noqa: E402
from ger_kernels._io import write_text_atomically  # noqa: E402
from ger_kernels.backends import BACKENDS  # noqa: E402
from ger_kernels.convert import set_backend  # noqa: E402
from ger_kernels.machine import machine_description  # noqa: E402
from ger_kernels.models import GERUNet, RUNet, count_parameters, group_widths  # noqa: E402

MODELS = ("R-UNet", "GER-UNet")
PRECISIONS = ("fp32", "bf16-autocast", "bf16")
LAYOUTS = ("nchw", "channels_last")
# Defaults per device, most important precision and layout first: CUDA at the paper's size within
# one ~4-minute GPU call, CPU at the demo's size.
DEFAULTS = {
    "cuda": dict(size=448, batch=4, widths=[64, 128, 256, 512], precisions=["bf16-autocast", "bf16"],
                 layouts=["channels_last", "nchw"], budget_s=210.0, row_budget_s=30.0, compile_budget_s=90.0),
    "cpu": dict(size=64, batch=4, widths=[16, 32, 64, 128], precisions=list(PRECISIONS),
                layouts=["nchw", "channels_last"], budget_s=900.0, row_budget_s=60.0, compile_budget_s=300.0),
}
# Seconds a row needs at least to finish its warm-up: a row starts only with this much of the
# budget left (or all of --row-budget-s, if that is less). On the H200 the first step of R-UNet at
# the paper's size took over 10 s (CUDA context, cuDNN benchmark autotuning of every convolution,
# forward and backward); GER-UNet's Triton kernels also compile in their first step. On CPU
# the first step at the demo's size takes under 1 s.
MIN_ROW_S = {"cuda": 20.0, "cpu": 5.0}
# When the budget has run out in the warm-up, one step is still timed, within this many times the
# last finished warm-up step plus a second (a bound, not what it takes: the first warm-up step,
# with autotuning or compiling, is the slowest).
PAST_BUDGET_STEPS = 1.5
# Kernel (CUDA) or op (CPU) names by category: the first pattern that matches (case-insensitive)
# wins; dtype casts of autocast are copies too, so they count as "layout/copy". A name that matches
# none (Triton kernels are named after their function only) takes the category of the nearest op
# around it that has one (ger_kernels::group_bn_*, ger_kernels_triton::group_conv2d*, ...).
CATEGORIES = (
    ("batch norm", r"batch_?norm|welford|(^|[^a-z])bn([^a-z]|$)"),
    ("W~ expand/fold", r"expand_filter|index|gather|scatter"),
    ("optimizer", r"optimizer|adam|foreach|multi_tensor"),
    ("layout/copy", r"nchwtonhwc|nhwctonchw|copy|clone|contiguous|transpose|permute"),
    ("convolution", r"conv|gemm|xmma|cudnn|mkldnn|implicit|wgrad|dgrad|fprop|winograd|cutlass"),
)
OTHER = "other"
CATEGORY_NAMES = [*dict(CATEGORIES), OTHER]
TOP_KERNELS = 10


@dataclasses.dataclass(frozen=True)
class Config:
    model: str       # "GER-UNet" or "R-UNet"
    backend: str     # a GER-UNet backend or "auto"; "-" for R-UNet (nn.Conv2d)
    precision: str   # one of PRECISIONS
    layout: str      # one of LAYOUTS
    compiled: bool   # torch.compile(model)

    def label(self) -> str:
        backend = "" if self.backend == "-" else f" {self.backend}"
        return f"{self.model}{backend}, {self.precision}, {self.layout}, {'compiled' if self.compiled else 'eager'}"


class BudgetExceeded(BaseException):
    """A row ran out of its time budget; a BaseException, like KeyboardInterrupt, so that the
    ``except Exception`` of torch.compile or an autotuner does not swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raises BudgetExceeded in the main thread once ``seconds`` have passed, so that one row
    that overruns (a long compile, a slow backend) is stopped, not the run."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise BudgetExceeded(f"its time budget of {seconds:.0f} s ran out")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def category(name: str) -> str:
    return next((what for what, pattern in CATEGORIES if re.search(pattern, name, re.IGNORECASE)), OTHER)


def event_category(name: str, op) -> str:
    """The category of kernel or op ``name`` run inside the profiled op ``op`` (for a CPU op: the
    op itself; None if unknown): "optimizer" inside a torch.optim range (such as
    ``Optimizer.step#Adam.step``, whose per-parameter ops have generic names), else by ``name``,
    else by the nearest enclosing op that has a category."""
    enclosing = []
    while op is not None:
        enclosing.append(op.name)
        op = op.cpu_parent
    if any(n.startswith("Optimizer.") for n in enclosing):
        return "optimizer"
    return next((what for what in map(category, [name, *enclosing]) if what != OTHER), OTHER)


def kernel_summary(prof, device: torch.device) -> dict:
    """Top kernels (CUDA: self device time of each kernel; CPU: self CPU time of each op) by name
    and category, with their share of the total, and the share of each category."""
    events = prof.events()
    cpu = torch.autograd.DeviceType.CPU
    if device.type == "cuda":
        # a kernel's linked correlation id is the id of the op that launched it (as torch.profiler
        # itself links them); CPU ops' own device time is their kernels', so it is not added again
        ops = {e.id: e for e in events if e.device_type == cpu and not getattr(e, "linked_correlation_id", 0)}
        timed = [(e.name, ops.get(getattr(e, "linked_correlation_id", 0) or None), e.self_device_time_total)
                 for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    else:
        timed = [(e.name, e, e.self_cpu_time_total) for e in events]
    totals: dict[tuple[str, str], float] = {}
    for name, op, us in timed:
        if us > 0:
            key = (name, event_category(name, op))
            totals[key] = totals.get(key, 0.0) + us
    total = sum(totals.values()) or 1.0
    shares = dict.fromkeys(CATEGORY_NAMES, 0.0)
    for (_, what), us in totals.items():
        shares[what] += us / total
    top = sorted(totals.items(), key=lambda item: -item[1])[:TOP_KERNELS]
    return {"profiled_ms": total / 1e3, "categories": shares,
            "top_kernels": [{"name": name[:200], "category": what, "ms": us / 1e3, "share": us / total}
                            for (name, what), us in top]}


def dynamo_counts() -> dict[str, int]:
    """Graphs compiled and graph breaks since the last reset of torch._dynamo's counters."""
    return {"graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def build_model(config: Config, widths: list[int], device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    if config.model == "R-UNet":
        model = RUNet(widths=widths)
    else:
        model = set_backend(GERUNet(widths=group_widths(widths)), config.backend)
    model = model.to(device)
    if config.precision == "bf16":
        model = model.to(torch.bfloat16)
    if config.layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    return model


def training_step(model: torch.nn.Module, forward: Callable, x: torch.Tensor, y: torch.Tensor,
                  autocast: bool) -> Callable[[], None]:
    """One Adam step of ``model`` (called as ``forward``: the model or its compiled version)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(forward(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def run_row(config: Config, args, device: torch.device, budget_s: float) -> dict:
    """Measures one configuration within ``budget_s`` seconds; a failure becomes the row's error.
    When the budget runs out in the warm-up after at least one warm-up step has finished, the
    warm-up stops there and one step is still timed (within PAST_BUDGET_STEPS times the last
    warm-up step, plus a second); when it runs out in the timing, the steps timed so far count."""
    row: dict = {**dataclasses.asdict(config), "budget_s": round(budget_s, 1), "notes": []}
    deadline = time.perf_counter() + budget_s

    def left_ms() -> float:
        return (deadline - time.perf_counter()) * 1e3

    phase = "setup"
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    if config.compiled:
        torch._dynamo.reset()
        counters.clear()
    try:
        warmup: list[float] = []
        with time_limit(budget_s):
            model = build_model(config, args.widths, device)
            row["parameters"] = count_parameters(model)
            torch.manual_seed(0)
            dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
            x = torch.randn(args.batch, 3, args.size, args.size, device=device, dtype=dtype)
            if config.layout == "channels_last":
                x = x.to(memory_format=torch.channels_last)
            y = torch.randint(0, 2, (args.batch, args.size, args.size), device=device)
            forward = torch.compile(model) if config.compiled else model
            step = training_step(model, forward, x, y, config.precision == "bf16-autocast")

            phase = "warm-up"
            # a compiled model may compile again on its second call: that belongs to the warm-up
            minimum = min(args.warmup, 2 if config.compiled else 1)
            try:
                while len(warmup) < args.warmup and (len(warmup) < minimum or left_ms() > 3 * warmup[-1]):
                    warmup.append(timed_ms(step, device))
            except BudgetExceeded:
                if not warmup:
                    raise
                row["notes"].append(f"{len(warmup)} warm-up steps (budget ran out in step {len(warmup) + 1})")
            else:
                if len(warmup) < args.warmup:
                    row["notes"].append(f"{len(warmup)} warm-up steps (budget)")
        row["warmup_s"] = sum(warmup) / 1e3
        if config.compiled:
            row["dynamo"] = dynamo_counts()
        phase = "timing"
        if left_ms() <= 0:
            row["notes"].append("timed after its budget ran out")
        times: list[float] = []
        with time_limit(max(left_ms(), PAST_BUDGET_STEPS * warmup[-1] + 1e3) / 1e3):
            try:
                while not times or (len(times) < args.steps and left_ms() > 2 * times[-1]):
                    times.append(timed_ms(step, device))
            except BudgetExceeded:
                if not times:
                    raise
        row.update(steps=len(times), ms=statistics.median(times), ms_min=min(times), ms_max=max(times))
        if len(times) < args.steps:
            row["notes"].append(f"{len(times)} of {args.steps} steps (budget)")
        if config.compiled:
            graphs = dynamo_counts()["graphs"] - row["dynamo"]["graphs"]
            if graphs:
                row["notes"].append(f"{graphs} graphs compiled during timing")
        if cuda:
            row["peak_total_bytes"] = torch.cuda.max_memory_allocated(device) - baseline
        # outside the time limit: stopping the profiler halfway could leave it unusable for the next rows
        phase = "profile"
        if left_ms() > 1.5 * row["ms"] + 2e3:
            prof, row["peak_extra_bytes"] = profiled_step(step, device)
            row.update(kernel_summary(prof, device))
        else:
            row["notes"].append("not profiled (budget)")
    except (Exception, BudgetExceeded) as error:  # out of memory, unavailable backend, ...
        row["error"] = f"{phase}: {describe(error)}"
    return row


def release(device: torch.device, compiled: bool) -> None:
    """Frees what a finished row left behind, so the next one starts from the same memory."""
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def eager_configs(args) -> list[Config]:
    """In order of importance, since the tail may not fit the budget: by --precisions, then by
    --layouts (each in the order given), then GER-UNet auto, R-UNet (the baseline it is compared
    to) and the other GER-UNet backends in --backends order."""
    ger_backends = args.backends if "GER-UNet" in args.models else []
    models = [("GER-UNet", b) for b in ger_backends if b == "auto"]
    models += [("R-UNet", "-")] if "R-UNet" in args.models else []
    models += [("GER-UNet", b) for b in ger_backends if b != "auto"]
    return [Config(model, backend, precision, layout, False)
            for precision in args.precisions for layout in args.layouts for model, backend in models]


def compiled_configs(args, rows: list[dict]) -> tuple[list[Config], list[str]]:
    """``--compile all``: every eager configuration; ``best``: the fastest eager one of each model
    (GER-UNet first). Returns the configurations and why any model has none."""
    if args.compile == "none":
        return [], []
    if args.compile == "all":
        return [dataclasses.replace(c, compiled=True) for c in eager_configs(args)], []
    configs, missing = [], []
    for model in sorted(args.models, key=lambda m: m != "GER-UNet"):
        measured = [r for r in rows if r["model"] == model and not r["compiled"] and "ms" in r]
        if not measured:
            missing.append(f"{model}, compiled: no eager configuration was measured")
            continue
        best = min(measured, key=lambda r: r["ms"])
        configs.append(Config(model, best["backend"], best["precision"], best["layout"], True))
    return configs, missing


def _size(nbytes) -> str:
    if nbytes is None:
        return "n/a"
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def row_line(row: dict) -> str:
    backend = row["backend"]
    mode = "compiled" if row["compiled"] else "eager"
    if "ms" in row:
        timing = (f"{row['ms']:.1f} | {row['ms_min']:.1f}-{row['ms_max']:.1f} | {row['steps']} | "
                  f"{row['warmup_s']:.1f}")
    else:
        timing = "- | - | - | " + (f"{row['warmup_s']:.1f}" if "warmup_s" in row else "-")
    shares = row.get("categories")
    share_cells = " | ".join(f"{100 * shares[what]:.0f}" if shares else "-" for what in CATEGORY_NAMES)
    notes = list(row["notes"])
    if "dynamo" in row:
        notes.insert(0, f"{row['dynamo']['graphs']} graphs, {row['dynamo']['graph_breaks']} graph breaks")
    if "error" in row:
        notes.insert(0, f"FAILED in {row['error']}")
    text = "; ".join(notes).replace("|", "\\|")
    return (f"| {row['model']} | {backend} | {row['precision']} | {row['layout']} | {mode} | {timing} | "
            f"{_size(row.get('peak_extra_bytes'))} | {_size(row.get('peak_total_bytes'))} | {share_cells} | {text} |")


COLUMNS = ["model", "backend", "precision", "layout", "mode", "ms/step", "min-max", "steps", "warm-up s",
           "peak extra", "peak total", *(f"{what} %" for what in CATEGORY_NAMES), "notes"]
TABLE_HEADER = "| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|"


def markdown(report: dict) -> str:
    s = report["setup"]
    lines = [f"# Training step benchmark ({report['device']})", "",
             f"{report['date']}; {report['machine']}", "",
             f"Command: `{report['command']}`", "",
             f"Input {s['input']}, cross-entropy, Adam (lr 2e-4); R-UNet widths {s['widths']['R-UNet']}, "
             f"GER-UNet (p4m fields) {s['widths']['GER-UNet']}. Median and min-max of up to {s['steps']} steps "
             f"after {s['warmup']} warm-up steps (warm-up s includes compiling, shorter when torch's on-disk "
             f"compile cache is warm). Peak extra: the most one step "
             f"allocates at once beyond what was allocated before it; peak total (CUDA): the most allocated "
             f"at once from building the model to the last timed step. Shares by category of the "
             f"{'self device time of the kernels' if report['device'] == 'cuda' else 'self CPU time of the ops'} "
             f"of one profiled step (batch norm: group BN in GER-UNet; layout/copy includes autocast's casts). "
             f"Settings: {', '.join(f'{k}={v}' for k, v in s['settings'].items())}.", "",
             TABLE_HEADER]
    lines += [row_line(row) for row in report["rows"]]
    if report["skipped"]:
        lines += ["", "Skipped:", ""] + [f"- {reason}" for reason in report["skipped"]]
    lines += ["", f"## Top {TOP_KERNELS} kernels per configuration (one profiled step)"]
    for row in report["rows"]:
        if "top_kernels" not in row:
            continue
        lines += ["", f"### {Config(*(row[f.name] for f in dataclasses.fields(Config))).label()}", "",
                  f"Profiled total {row['profiled_ms']:.1f} ms.", "",
                  "| kernel | category | ms | % |", "|---|---|---|---|"]
        lines += [f"| `{k['name'][:100].replace('|', '/')}` | {k['category']} | {k['ms']:.2f} | "
                  f"{100 * k['share']:.1f} |" for k in row["top_kernels"]]
    return "\n".join(lines) + "\n"


def write(report: dict, out: pathlib.Path) -> None:
    write_text_atomically(str(out / "results.json"), json.dumps(report, indent=1))
    write_text_atomically(str(out / "results.md"), markdown(report))


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for results.md and results.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--size", type=int, help="input height and width, a multiple of 8 (cuda 448, cpu 64)")
    parser.add_argument("--batch", type=int, help="batch size (4)")
    parser.add_argument("--widths", type=int, nargs=4, help="R-UNet widths; GER-UNet gets group_widths of them "
                        "(cuda 64 128 256 512, cpu 16 32 64 128)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--backends", nargs="+", choices=["auto", *BACKENDS],
                        help="GER-UNet backends (default: auto, triton, cpp, reference, those available on --device)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS,
                        help="cuda: bf16-autocast bf16; cpu: fp32 bf16-autocast bf16")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS,
                        help="cuda: channels_last nchw; cpu: nchw channels_last")
    parser.add_argument("--compile", default="best", choices=["none", "best", "all"],
                        help="compiled rows: none, the fastest eager configuration of each model, or all")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (at most)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per row (at most)")
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 1 timed step (a smoke test)")
    parser.add_argument("--budget-s", type=float, help="time for the whole run (cuda 210, cpu 900)")
    parser.add_argument("--row-budget-s", type=float, help="time for one eager row at most (cuda 30, cpu 60)")
    parser.add_argument("--compile-budget-s", type=float,
                        help="part of --budget-s kept for the compiled rows from the eager rows after those of "
                        "the first precision and layout (cuda 90, cpu 300)")
    parser.add_argument("--deterministic", action="store_true",
                        help="torch.use_deterministic_algorithms (as `ger-unet train` by default)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: there is no CUDA device")
    for name, value in DEFAULTS[args.device].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.backends is None:
        available = backends(args.device)
        args.backends = [b for b in ("auto", "triton", "cpp", "reference") if b == "auto" or available[b].available]
    if args.quick:
        args.steps = args.warmup = 1
    if args.size < 8 or args.size % 8:
        parser.error(f"--size must be a positive multiple of 8 (three 2x2 poolings), got {args.size}")
    for name in ("batch", "steps", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if min(args.widths) < 1:
        parser.error(f"--widths must be positive, got {args.widths}")
    for name in ("budget_s", "compile_budget_s"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be at least 0, got {getattr(args, name)}")
    if args.row_budget_s <= 0:
        parser.error(f"--row-budget-s must be positive, got {args.row_budget_s}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.use_deterministic_algorithms(args.deterministic, warn_only=True)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": args.device,
        "machine": machine_description(device),
        "versions": {"torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
                     "python": platform.python_version()},
        "command": shlex.join(["python", "benchmarks/bench_step.py", *(sys.argv[1:] if argv is None else argv)]),
        "setup": {"input": f"{args.batch}x3x{args.size}x{args.size}",
                  "widths": {"R-UNet": args.widths, "GER-UNet": list(group_widths(args.widths))},
                  "steps": args.steps, "warmup": args.warmup, "budget_s": args.budget_s,
                  "row_budget_s": args.row_budget_s, "compile_budget_s": args.compile_budget_s,
                  "settings": {"cudnn.benchmark": True, "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                               "deterministic": args.deterministic, "threads": torch.get_num_threads()}},
        "rows": [], "skipped": [],
    }
    if "GER-UNet" in args.models:
        for name, status in backends(args.device).items():
            if name not in args.backends and not status.available:
                report["skipped"].append(f"GER-UNet {name}: not available on {args.device} ({status.reason})")
    args.out.mkdir(parents=True, exist_ok=True)
    write(report, args.out)
    print(f"{report['machine']}\n{report['command']}\n\n{TABLE_HEADER}", flush=True)
    deadline = start + args.budget_s
    # kept for the compiled rows from the eager rows after those of the first precision and layout
    reserve = min(args.compile_budget_s, args.budget_s) if args.compile != "none" else 0.0
    eager_minimum_s = min(MIN_ROW_S[args.device], args.row_budget_s)

    def run(config: Config, cap_s: float, kept_s: float, minimum_s: float) -> None:
        budget_s = min(cap_s, deadline - kept_s - time.perf_counter())
        if budget_s < minimum_s:
            kept = f" after the {kept_s:.0f} s kept for compiled rows" if kept_s else ""
            reason = (f"{config.label()}: skipped, {max(budget_s, 0):.0f} s of the time budget left{kept} "
                      f"(a row starts with at least {minimum_s:.0f} s)")
            report["skipped"].append(reason)
            print(f"[{reason}]", flush=True)
        else:
            report["rows"].append(run_row(config, args, device, budget_s))
            release(device, config.compiled)
            print(row_line(report["rows"][-1]), flush=True)
        write(report, args.out)

    first = (args.precisions[0], args.layouts[0])
    for config in eager_configs(args):
        kept_s = 0.0 if (config.precision, config.layout) == first else reserve
        run(config, args.row_budget_s, kept_s, eager_minimum_s)
    configs, missing = compiled_configs(args, report["rows"])
    report["skipped"] += missing
    for config in configs:
        run(config, float("inf"), 0.0, max(reserve / 3, eager_minimum_s))
    write(report, args.out)
    print(f"\nwrote {args.out / 'results.md'} and results.json in {time.perf_counter() - start:.0f} s", flush=True)
    return report


if __name__ == "__main__":
    main()

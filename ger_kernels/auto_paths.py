"""Which path (``reference``, ``cpp``, ``triton``) each pass of a group convolution runs under
``backend="auto"``, chosen per GPU architecture, dtype and problem class from measurements.

A pass (``forward``, ``input_grad``, ``weight_grad``) of one layer is looked up by its table
entry ``pass|kind|problem class`` (``kind`` the dtype class, "float32" or "half"; the problem
class, ``problem_class``, is also the Triton tuner's key; computing it imports no triton), in this order:

1. this process's earlier choices;
2. the table of the device's architecture, ``auto_paths_<arch>.json`` beside this module
   (``sm90``; ``benchmarks/gpu_sweep.py`` writes it), whose ``entries`` map the entry to
   ``{"path": name, "ms": {path: milliseconds or null (wrong or failed)}, "measured", "source"}``;
3. the user cache ``auto_paths.json`` beside the Triton tuner's (``tuning.cache_path()``:
   ``$GER_KERNELS_CACHE_DIR``, else ``$XDG_CACHE_HOME/ger_kernels``, else ``~/.cache/ger_kernels``),
   per device (GPU name, torch and triton versions), written atomically;
4. with ``GER_KERNELS_AUTO_TIMING=1`` on CUDA, a first call times every available path on random
   tensors of the layer's shape (``ConvProblem``), checks each result against the reference's, and
   keeps the fastest correct one, in memory and in the user cache. Opt-in: every fused pass
   measured so far loses to the reference, and a first call of the Triton path tunes its configs
   (seconds to minutes per layer shape), so without a table entry ``auto`` keeps its rule.

A path a table names that is not available here is skipped. Without any of these (CPU without a
table, or under ``torch.compile``, which never times) the pass has no choice: the caller's rule
decides (``ger_kernels.backends``).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import pathlib
import statistics
from typing import Callable, NamedTuple

import torch

from ger_kernels import conv_passes
from ger_kernels._io import read_json_object, read_table_entries, update_json_object
from ger_kernels._validation import conv_output_size
from ger_kernels.conv_passes import PASSES
from ger_kernels.triton import tuning

__all__ = ["AUTO_TIMING_ENV", "CHOOSER", "Choice", "ConvProblem", "PathChooser", "TABLE_DIR", "cache_path",
           "cuda_median_ms", "layer_problem", "measure", "pass_classes", "pass_entries", "precision", "problem_class",
           "read_table", "table_path",
           "tolerance"]

TABLE_DIR = pathlib.Path(__file__).resolve().parent
TF32_ENV = "GER_KERNELS_TRITON_TF32"
AUTO_TIMING_ENV = "GER_KERNELS_AUTO_TIMING"


class ConvProblem(NamedTuple):
    """One layer's convolution as the choice sees it: ``dtype`` the passes compute in (the
    autocast dtype inside autocast), input ``(B, C_in*S_in, H, W)`` and weight
    ``(C_out, C_in, S_in, k, k)`` shapes, and whether the input is channels_last."""
    dtype: torch.dtype
    input_shape: tuple[int, int, int, int]
    weight_shape: tuple[int, int, int, int, int]
    stride: int
    padding: int
    dilation: int
    order: int
    channels_last: bool


class Choice(NamedTuple):
    """A pass's path, where it comes from, and the milliseconds of each path measured
    (None: wrong or failed) when it was measured."""
    path: str
    source: str
    ms: dict


def layer_problem(input: torch.Tensor, weight: torch.Tensor, stride: int, padding: int, dilation: int,
                  order: int) -> ConvProblem:
    """The problem of a layer with ``input`` and ``weight`` (in the autocast dtype inside autocast)."""
    device_type = input.device.type
    autocast = device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type) if autocast and input.dtype != torch.float64 else input.dtype
    return ConvProblem(dtype, tuple(input.shape), tuple(weight.shape), stride, padding, dilation, order,
                       input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous())


def precision(dtype: torch.dtype) -> str:
    """The Triton kernels' ``tl.dot`` input_precision: IEEE float32 unless ``GER_KERNELS_TRITON_TF32=1``
    opts in (part of a problem class)."""
    return "tf32" if dtype == torch.float32 and os.environ.get(TF32_ENV) == "1" else "ieee"


def problem_class(pass_name: str, problem: ConvProblem) -> tuple:
    """The problem class of ``pass_name`` (a family of the Triton kernels) for ``problem``: dtype, group
    order, S_in, k, stride, precision and the power-of-two buckets of the pass's GEMM (M, N, K)
    (forward: pixels, output channels, C*k*k; input_grad: input pixels, C, C_out*S*k*k;
    weight_grad: C_out, C, pixels)."""
    batch, channels, height, width = problem.input_shape
    c_out, _, s_in, k, _ = problem.weight_shape
    h_out, w_out = (conv_output_size(n, k, problem.stride, problem.padding, problem.dilation) for n in (height, width))
    n, pixels = c_out * problem.order, batch * h_out * w_out
    gemm = {"forward": (pixels, n, channels * k * k), "input_grad": (batch * height * width, channels, n * k * k),
            "weight_grad": (c_out, channels, pixels)}[pass_name]
    return (problem.dtype, problem.order, s_in, k, problem.stride, precision(problem.dtype),
            *map(tuning.size_bucket, gemm))


def pass_classes(problem: ConvProblem) -> tuple[tuple, tuple, tuple]:
    """The problem classes of the three passes of ``problem`` (traceable by ``torch.compile``)."""
    return tuple(problem_class(name, problem) for name in PASSES)


@functools.lru_cache(maxsize=4096)
def pass_entries(classes: tuple[tuple, tuple, tuple]) -> tuple[str, str, str]:
    """The table entries ``pass|kind|problem class`` of the passes of problem classes ``classes``."""
    return tuple(tuning.entry(name, tuning.dtype_class(cls[0]), cls) for name, cls in zip(PASSES, classes))


def table_path(arch: str, directory: pathlib.Path | None = None) -> pathlib.Path:
    """The path table of GPU architecture ``arch`` (``sm90``; ``cpu`` for CPU tensors)."""
    return (directory or TABLE_DIR) / f"auto_paths_{arch}.json"


def read_table(arch: str, directory: pathlib.Path | None = None) -> dict[str, dict]:
    """The ``entries`` of ``arch``'s path table; empty when there is none."""
    return read_table_entries(table_path(arch, directory), "path table",
                              lambda e: isinstance(e, dict) and e.get("path") in conv_passes.PATHS,
                              f"'pass|kind|problem class' to {{\"path\": one of {list(conv_passes.PATHS)}, ...}}")


def cache_path() -> pathlib.Path:
    """``auto_paths.json`` in the user cache directory (beside the Triton tuner's cache)."""
    return tuning.cache_path().with_name("auto_paths.json")


def tolerance(dtype: torch.dtype) -> float:
    """Largest ``max|path - reference| / max|reference|`` of a correct pass: a wrong index map is off
    by O(1); float32 allows cuDNN's TF32, 16-bit dtypes their rounding."""
    return {torch.float64: 1e-9, torch.float32: 1e-2}.get(dtype, 3e-2)


def cuda_median_ms(pass_name: str, path: str, step: Callable[[], object], repeats: int = 5) -> float:
    """Median milliseconds of ``step()`` over ``repeats`` runs, by CUDA events (after one warm-up)."""
    step()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _pass_steps(problem: ConvProblem, device: torch.device) -> dict[str, Callable[[str], torch.Tensor]]:
    """Per pass, ``run(path)`` on random tensors of ``problem`` (seeded: the caller's random state is untouched)."""
    generator = torch.Generator(device).manual_seed(0)
    conv = (problem.stride, problem.padding, problem.dilation, problem.order)
    c_out, c_in, s_in, k, _ = problem.weight_shape

    def randn(*shape):
        return torch.randn(shape, generator=generator, device=device, dtype=problem.dtype)

    layout = torch.channels_last if problem.channels_last else torch.contiguous_format
    x = randn(*problem.input_shape).contiguous(memory_format=layout)
    w = randn(*problem.weight_shape) / (c_in * s_in * k * k) ** 0.5
    b = randn(c_out)
    size = [conv_output_size(n, k, *conv[:3]) for n in problem.input_shape[2:]]
    dy = randn(problem.input_shape[0], c_out * problem.order, *size).contiguous(memory_format=layout)
    return {"forward": lambda path: conv_passes.forward(path, x, w, b, *conv),
            "input_grad": lambda path: conv_passes.input_grad(path, dy, w, x.shape, problem.channels_last, *conv),
            "weight_grad": lambda path: conv_passes.weight_grad(path, dy, x, k, s_in, *conv)}


def measure(problem: ConvProblem, device: str | torch.device, paths, time_ms, passes=PASSES) -> dict[str, dict]:
    """Per pass of ``passes``, ``{path: ms}`` for each of ``paths``: None where the path fails or its
    result differs from the reference's by more than ``tolerance`` (every path, where the reference
    itself fails); ``time_ms(pass, path, step)`` times the others. Runs on ``device`` as the current
    device, with autocast off, without autograd."""
    device = torch.device(device)
    results = {}
    current = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with current, torch.no_grad(), torch.autocast(device.type, enabled=False):
        steps = _pass_steps(problem, device)
        for name in passes:
            try:
                expected = steps[name]("reference").float()
            except Exception:  # e.g. out of memory: nothing can be checked, so nothing is chosen
                results[name] = dict.fromkeys(paths)
                continue
            results[name] = {}
            for path in paths:
                step = functools.partial(steps[name], path)
                try:
                    diff = (step().float() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)
                except Exception:  # a path that cannot run this problem is never chosen
                    results[name][path] = None
                    continue
                results[name][path] = time_ms(name, path, step) if diff.item() <= tolerance(problem.dtype) else None
    return results


@functools.cache
def _device_key(device: str) -> tuple[str, ...]:
    """What a timed choice depends on beyond the problem: the device, torch's and triton's versions."""
    device = torch.device(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "no triton"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return name, f"torch {torch.__version__}", f"triton {triton_version}"


@functools.cache
def _arch(device: str) -> str:
    return tuning.arch_name(torch.device(device))


class PathChooser:
    """The choice of path per pass (module docstring), with the path tables in ``table_dir``
    (default ``TABLE_DIR``), the cache file ``cache_file`` (default ``cache_path()`` at each
    use), timing by ``time_ms(pass, path, step)`` (default ``cuda_median_ms``) on the device
    types ``timed_device_types`` (default: CUDA with ``GER_KERNELS_AUTO_TIMING=1``, read when a
    layer's passes are first looked up)."""

    def __init__(self, cache_file: pathlib.Path | None = None, table_dir: pathlib.Path | None = None,
                 time_ms: Callable | None = None, timed_device_types: tuple[str, ...] | None = None):
        self.cache_file = cache_file
        self.table_dir = table_dir
        self.time_ms = time_ms or cuda_median_ms
        self._timed_device_types = timed_device_types
        self.memory: dict[str, Choice | None] = {}
        self._tables: dict[str, dict[str, dict]] = {}
        self._consults: dict[str, bool] = {}

    def timed_device_types(self) -> tuple[str, ...]:
        if self._timed_device_types is not None:
            return self._timed_device_types
        return ("cuda",) if os.environ.get(AUTO_TIMING_ENV) == "1" else ()

    def consults(self, device_type: str) -> bool:
        """Whether a choice can exist for tensors of ``device_type``: CUDA (path tables are per GPU
        architecture), a device type that times, or one with a table of its own (``cpu``)."""
        if device_type not in self._consults:
            self._consults[device_type] = (device_type == "cuda" or device_type in self.timed_device_types()
                                           or table_path(device_type, self.table_dir).exists())
        return self._consults[device_type]

    def table(self, arch: str) -> dict[str, dict]:
        if arch not in self._tables:
            self._tables[arch] = read_table(arch, self.table_dir)
        return self._tables[arch]

    def _cache(self) -> pathlib.Path:
        return self.cache_file or cache_path()

    def _read_cache(self) -> dict[str, dict]:
        """The cache file's entries; {} when it is missing, unreadable or not a JSON object."""
        return read_json_object(self._cache())

    def _write_cache(self, choices: dict[str, Choice]) -> None:
        """Adds entries to the cache file (``update_json_object``: locked, atomic)."""
        if choices:
            update_json_object(self._cache(), {name: choice._asdict() for name, choice in choices.items()})

    def _known(self, entry: str, cache_key: str, arch: str, file: dict) -> Choice | None:
        """The choice for ``entry`` from the table or the cache file's contents ``file``."""
        if entry in self.table(arch):
            found = self.table(arch)[entry]
            return Choice(found["path"], f"table {arch} ({found.get('measured', 'no date')})", found.get("ms", {}))
        found = file.get(cache_key)
        if isinstance(found, dict) and "path" in found:
            return Choice(found["path"], f"cache {self._cache()} ({found.get('source')})", found.get("ms", {}))
        return None

    def choose(self, device: str, entries: tuple[str, ...], candidates: tuple[str, ...],
               problem: ConvProblem | None = None) -> dict[str, Choice | None]:
        """Per pass, the choice for the table ``entries`` of the passes (``pass_entries``) among the
        paths ``candidates`` available on ``device`` ("cuda:0"); None where there is none. Times
        the passes without one when ``problem`` is given and ``device`` is of a timed type; a
        pass's choice (or, where nothing times, its absence) is looked up once per process."""
        device_key = _device_key(device)
        cache_keys = dict(zip(PASSES, ("|".join(device_key + (entry,)) for entry in entries)))
        timing_here = torch.device(device).type in self.timed_device_types()
        missing = [(name, entry) for name, entry in zip(PASSES, entries) if cache_keys[name] not in self.memory]
        if missing:
            file = self._read_cache()
            for name, entry in missing:
                known = self._known(entry, cache_keys[name], _arch(device), file)
                if known is not None or not timing_here:
                    self.memory[cache_keys[name]] = known
        choices = {name: self.memory.get(cache_keys[name]) for name in PASSES}
        choices = {name: c if c is not None and c.path in candidates else None for name, c in choices.items()}
        untimed = [name for name, _ in missing if choices[name] is None]  # first looked up now, with no choice
        if untimed and timing_here and problem is not None and len(candidates) <= 1:
            self.memory.update({cache_keys[name]: None for name in untimed})  # nothing to choose among
        elif untimed and timing_here and problem is not None:
            measured = measure(problem, device, candidates, self.time_ms, untimed)
            when = ", ".join(device_key + (datetime.date.today().isoformat(),))
            new = {}
            for name in untimed:
                correct = {path: ms for path, ms in measured[name].items() if ms is not None}
                if correct:
                    choices[name] = new[cache_keys[name]] = Choice(min(correct, key=correct.get), f"timed: {when}",
                                                                   measured[name])
            self.memory.update({cache_keys[name]: None for name in untimed if cache_keys[name] not in new})
            self.memory.update(new)  # passes with no correct path are not timed again in this process
            self._write_cache(new)
        return choices


CHOOSER = PathChooser()

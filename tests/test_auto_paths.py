"""The choice of a path per pass under backend="auto": table lookup, timing of a first call (with
a fake timer: no timed unit tests), the cache, and the shipped sm90 table."""

import json

import pytest
import torch

from ger_kernels import auto_paths, conv_passes
from ger_kernels.auto_paths import ConvProblem, PathChooser
from ger_kernels.triton import tuning

CPU_PATHS = ("reference", "cpp")
PROBLEM = ConvProblem(torch.float64, (2, 16, 6, 5), (3, 2, 8, 3, 3), 1, 1, 1, 8, False)


def write_table(directory, arch, paths_by_entry):
    table = {"arch": arch, "entries": {entry: {"path": path, "ms": {path: 1.0}, "measured": "test machine, today"}
                                       for entry, path in paths_by_entry.items()}}
    auto_paths.table_path(arch, directory).write_text(json.dumps(table))


class FakeTimer:
    """Milliseconds per (pass, path) from a table; records what it timed and runs each step once."""

    def __init__(self, ms):
        self.ms = ms
        self.timed = []

    def __call__(self, name, path, step):
        step()
        self.timed.append((name, path))
        return self.ms[name, path]


def entries(problem=PROBLEM):
    return auto_paths.pass_entries(auto_paths.pass_classes(problem))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GER_KERNELS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def cpp_available():
    from ger_kernels.backends import backends

    if not backends("cpu")["cpp"].available:
        pytest.skip(backends("cpu")["cpp"].reason)


def test_problem_class_keys_the_measured_tables(monkeypatch):
    """The classes of GER-UNet's 23->23 layer @448 (bf16, batch 4) are the keys the H200 sweep wrote
    in the Triton config table; TF32 is part of a float32 class; buckets are tuning's."""
    problem = ConvProblem(torch.bfloat16, (4, 184, 448, 448), (23, 23, 8, 3, 3), 1, 1, 1, 8, True)
    keys = set(json.loads((tuning.DEFAULTS_DIR / "configs_sm90.json").read_text())["entries"])
    for name in conv_passes.PASSES:
        assert tuning.entry(name, "half", auto_paths.problem_class(name, problem)) in keys, name
    assert auto_paths.problem_class("weight_grad", problem)[-3:] == (32, 256, 1048576)  # C_out, C, pixels
    fp32 = problem._replace(dtype=torch.float32)
    assert auto_paths.problem_class("forward", fp32)[5] == "ieee"
    monkeypatch.setenv(auto_paths.TF32_ENV, "1")
    assert auto_paths.problem_class("forward", fp32)[5] == "tf32"


def test_entries_name_pass_kind_and_class():
    forward, input_grad, weight_grad = entries()
    # M = 2*6*5 pixels, N = 3*8 channels, K = 16*3*3, in power-of-two buckets
    assert forward == "forward|half|torch.float64|8|8|3|1|ieee|64|32|256"
    assert input_grad.startswith("input_grad|") and weight_grad.startswith("weight_grad|")


def test_table_lookup_picks_the_recorded_path_per_pass(tmp_path, cache_dir):
    forward, input_grad, weight_grad = entries()
    write_table(tmp_path, "cpu", {forward: "cpp", input_grad: "reference", weight_grad: "cpp"})
    timer = FakeTimer({})
    chooser = PathChooser(table_dir=tmp_path, time_ms=timer, timed_device_types=("cpu",))
    choices = chooser.choose("cpu", entries(), CPU_PATHS, PROBLEM)
    assert [c.path for c in choices.values()] == ["cpp", "reference", "cpp"]
    assert choices["forward"].source == "table cpu (test machine, today)"
    assert timer.timed == [] and not cache_dir.exists()
    # a path the table names that is not available here is no choice
    only_reference = chooser.choose("cpu", entries(), ("reference",), None)
    assert only_reference["forward"] is None and only_reference["weight_grad"] is None
    assert only_reference["input_grad"].path == "reference"


def test_an_unknown_problem_is_timed_and_the_fastest_correct_path_cached(tmp_path, cache_dir, cpp_available):
    timer = FakeTimer({("forward", "reference"): 2.0, ("forward", "cpp"): 1.0,
                       ("input_grad", "reference"): 1.0, ("input_grad", "cpp"): 3.0,
                       ("weight_grad", "reference"): 5.0, ("weight_grad", "cpp"): 4.0})
    chooser = PathChooser(table_dir=tmp_path, time_ms=timer, timed_device_types=("cpu",))
    state = torch.get_rng_state()
    choices = chooser.choose("cpu", entries(), CPU_PATHS, PROBLEM)
    assert torch.equal(torch.get_rng_state(), state)  # the timing's random tensors leave the caller's alone
    assert [c.path for c in choices.values()] == ["cpp", "reference", "cpp"]
    assert choices["forward"].ms == {"reference": 2.0, "cpp": 1.0}
    assert choices["forward"].source.startswith("timed: cpu, torch ")
    assert sorted(timer.timed) == sorted((name, path) for name in conv_passes.PASSES for path in CPU_PATHS)

    # in memory: not timed again
    assert chooser.choose("cpu", entries(), CPU_PATHS, PROBLEM) == choices and len(timer.timed) == 6
    # in the cache file: a new process (a new chooser) reads it instead of timing
    cached = json.loads((cache_dir / "auto_paths.json").read_text())
    assert sorted(cached) == sorted("|".join(auto_paths._device_key("cpu") + (e,)) for e in entries())
    fresh = PathChooser(table_dir=tmp_path, time_ms=FakeTimer({}), timed_device_types=("cpu",))
    again = fresh.choose("cpu", entries(), CPU_PATHS, PROBLEM)
    assert [c.path for c in again.values()] == ["cpp", "reference", "cpp"]
    assert again["weight_grad"].source.startswith(f"cache {cache_dir / 'auto_paths.json'} (timed: cpu, ")


@pytest.mark.parametrize("content", ["[]", "null", "not json"])
def test_a_cache_file_without_a_json_object_counts_as_empty(tmp_path, cache_dir, cpp_available, content):
    cache_dir.mkdir()
    (cache_dir / "auto_paths.json").write_text(content)
    timer = FakeTimer({(name, path): 1.0 if path == "cpp" else 2.0 for name in conv_passes.PASSES
                       for path in CPU_PATHS})
    chooser = PathChooser(table_dir=tmp_path, time_ms=timer, timed_device_types=("cpu",))
    assert [c.path for c in chooser.choose("cpu", entries(), CPU_PATHS, PROBLEM).values()] == ["cpp"] * 3
    assert len(json.loads((cache_dir / "auto_paths.json").read_text())) == 3  # rewritten as an object


def test_a_wrong_or_failing_path_is_never_chosen(tmp_path, cache_dir, monkeypatch, cpp_available):
    forward, weight_grad = conv_passes.forward, conv_passes.weight_grad

    def wrong_cpp_weight_grad(path, *args):
        result = weight_grad(path, *args)
        return result * 1.01 if path == "cpp" else result

    def failing_cpp_forward(path, *args):
        if path == "cpp":
            raise RuntimeError("no kernel for this problem")
        return forward(path, *args)

    monkeypatch.setattr(conv_passes, "weight_grad", wrong_cpp_weight_grad)
    monkeypatch.setattr(conv_passes, "forward", failing_cpp_forward)
    fast_cpp = FakeTimer({(name, path): 1.0 if path == "cpp" else 9.0 for name in conv_passes.PASSES
                          for path in CPU_PATHS})
    chooser = PathChooser(table_dir=tmp_path, time_ms=fast_cpp, timed_device_types=("cpu",))
    choices = chooser.choose("cpu", entries(), CPU_PATHS, PROBLEM)
    assert [c.path for c in choices.values()] == ["reference", "cpp", "reference"]
    assert choices["weight_grad"].ms == {"reference": 9.0, "cpp": None}
    assert choices["forward"].ms == {"reference": 9.0, "cpp": None}
    assert ("weight_grad", "cpp") not in fast_cpp.timed


def test_a_failing_reference_chooses_nothing_and_is_not_timed_again(tmp_path, cache_dir, monkeypatch):
    """Where the reference pass itself fails (out of memory, say) nothing can be checked: the pass
    has no choice (the caller's rule runs), the error does not reach the caller, and the pass is not
    measured again in this process."""
    forward, attempts = conv_passes.forward, []

    def failing_reference_forward(path, *args):
        attempts.append(path)
        if path == "reference":
            raise RuntimeError("out of memory")
        return forward(path, *args)

    monkeypatch.setattr(conv_passes, "forward", failing_reference_forward)
    timer = FakeTimer({(name, path): 1.0 for name in conv_passes.PASSES for path in CPU_PATHS})
    chooser = PathChooser(table_dir=tmp_path, time_ms=timer, timed_device_types=("cpu",))
    for _ in range(2):
        choices = chooser.choose("cpu", entries(), CPU_PATHS, PROBLEM)
        assert choices["forward"] is None and choices["input_grad"].path in CPU_PATHS
    assert attempts == ["reference"]


def test_nothing_is_timed_without_a_problem_or_off_the_timed_devices(tmp_path, cache_dir):
    timer = FakeTimer({})
    # under torch.compile the problem is None: no timing, no choice, and a later eager call still times
    chooser = PathChooser(table_dir=tmp_path, time_ms=timer, timed_device_types=("cpu",))
    assert chooser.choose("cpu", entries(), CPU_PATHS, None) == dict.fromkeys(conv_passes.PASSES)
    assert chooser.memory == {}
    # a device type that does not time (CPU by default) remembers that it has no choice
    chooser = PathChooser(table_dir=tmp_path, time_ms=timer)
    assert chooser.choose("cpu", entries(), CPU_PATHS, PROBLEM) == dict.fromkeys(conv_passes.PASSES)
    assert timer.timed == [] and not cache_dir.exists() and set(chooser.memory.values()) == {None}
    assert not chooser.consults("cpu") and chooser.consults("cuda")
    write_table(tmp_path, "cpu", {})
    assert PathChooser(table_dir=tmp_path).consults("cpu")


def test_timing_on_cuda_is_opt_in(monkeypatch, tmp_path):
    """By default nothing times (every fused pass measured so far lost, and Triton tunes on a first
    call): CUDA reads its tables only; GER_KERNELS_AUTO_TIMING=1 times there."""
    monkeypatch.delenv(auto_paths.AUTO_TIMING_ENV, raising=False)
    chooser = PathChooser(table_dir=tmp_path)
    assert chooser.timed_device_types() == () and chooser.consults("cuda")
    monkeypatch.setenv(auto_paths.AUTO_TIMING_ENV, "1")
    assert chooser.timed_device_types() == ("cuda",)
    assert PathChooser(table_dir=tmp_path, timed_device_types=("cpu",)).timed_device_types() == ("cpu",)


def test_no_cpu_table_ships():
    """CPU keeps its rule (cpp for a large W~, else reference): auto consults no table there."""
    assert not auto_paths.table_path("cpu").exists()
    assert not auto_paths.CHOOSER.consults("cpu")


def test_bad_tables_are_refused_naming_the_file(tmp_path):
    auto_paths.table_path("sm90", tmp_path).write_text("{not json")
    with pytest.raises(ValueError, match="auto_paths_sm90.json is not valid JSON"):
        auto_paths.read_table("sm90", tmp_path)
    write_table(tmp_path, "sm90", {"forward|x": "cudnn"})
    with pytest.raises(ValueError, match=r"needs an object 'entries' .*\"path\": one of \['reference', 'cpp', "):
        auto_paths.read_table("sm90", tmp_path)
    assert auto_paths.read_table("sm80", tmp_path) == {}


def ger_unet_problems():
    """GER-UNet's p4m layers as measured on the H200 (bfloat16, batch 4, channels_last, 3x3, padding 1)."""
    yield ConvProblem(torch.bfloat16, (4, 3, 448, 448), (23, 3, 1, 3, 3), 1, 1, 1, 8, True)
    for fields, size in ((23, 448), (45, 224), (91, 112), (181, 56)):
        yield ConvProblem(torch.bfloat16, (4, fields * 8, size, size), (fields, fields, 8, 3, 3), 1, 1, 1, 8, True)


def test_the_sm90_table_runs_the_reference_at_ger_unets_measured_layers(monkeypatch, cache_dir):
    table = auto_paths.read_table("sm90")
    assert sorted(table) == sorted(tuning.read_defaults("sm90"))  # the problem classes the sweep measured
    for entry in table.values():
        assert set(entry["ms"]) == {"reference", "cpp", "triton"}
        assert entry["path"] == "reference" == min(entry["ms"], key=entry["ms"].get)
        assert "the reference is fastest" in entry["source"] and "2026-11-29" in entry["measured"]
    monkeypatch.setattr(auto_paths, "_device_key", lambda device: ("NVIDIA H200", "torch", "triton"))
    monkeypatch.setattr(auto_paths, "_arch", lambda device: "sm90")
    chooser = PathChooser(time_ms=FakeTimer({}))
    for problem in ger_unet_problems():
        choices = chooser.choose("cuda:0", entries(problem), ("reference", "cpp", "triton"), problem)
        assert {c.path for c in choices.values()} == {"reference"}
        assert all(c.source.startswith("table sm90 (NVIDIA H200") for c in choices.values())
    assert not cache_dir.exists()


def test_layer_problem_reads_the_autocast_dtype_and_layout():
    x = torch.randn(2, 16, 6, 5).to(memory_format=torch.channels_last)
    w = torch.randn(3, 2, 8, 3, 3)
    assert auto_paths.layer_problem(x, w, 1, 1, 1, 8) == ConvProblem(torch.float32, (2, 16, 6, 5), (3, 2, 8, 3, 3),
                                                                     1, 1, 1, 8, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert auto_paths.layer_problem(x.contiguous(), w, 2, 0, 1, 8).dtype == torch.bfloat16
        assert not auto_paths.layer_problem(x.contiguous(), w, 2, 0, 1, 8).channels_last
        assert auto_paths.layer_problem(x.double(), w, 2, 0, 1, 8).dtype == torch.float64

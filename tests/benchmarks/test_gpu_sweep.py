"""The config sweep in the interpreter (a smoke test, so it cannot rot before a GPU runs it), and
its rules: wrong or failing configs are recorded and never chosen, the budget stops it, and the
table it writes is the default-config table the launchers look up."""

import json
import os
import pathlib
import sys
import time
import types

import pytest
import torch

pytest.importorskip("triton")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_sweep  # noqa: E402
from bench_triton import PASSES  # noqa: E402

from ger_kernels import auto_paths  # noqa: E402
from ger_kernels.backends import backends  # noqa: E402
from ger_kernels.triton import tuning  # noqa: E402
from ger_kernels.triton.tuning import CONFIGS, Config, Tuner  # noqa: E402


class RecordingTuner:
    """Stands in for the launchers' tuner: records the table entry each launch looks up."""

    def __init__(self):
        self.entries = []

    def choose(self, family, kind, key, time_ms, device=(), arch=None):
        self.entries.append(tuning.entry(family, kind, key))
        return CONFIGS[kind][family][0]


def test_quick_sweep_in_the_interpreter_writes_the_default_table(tmp_path, monkeypatch, interpreter):
    assert gpu_sweep.main(["--device", "cpu", "--quick", "--dtypes", "float32", "--max-configs", "2",
                           "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert report["complete"] and report["arch"] == "cpu"
    plain = [r for r in report["rows"] if "+" not in r["pass"]]
    assert [(r["layer"], r["pass"], r["config"]) for r in plain] == [
        (gpu_sweep.label(shape), family, config.name) for shape in gpu_sweep.QUICK_LAYERS
        for family in PASSES for config in CONFIGS["float32"][family][:2]]
    # the third round: the kernels with a batch norm fused, at the fastest plain configs; of the lifting
    # layer only the forward (GER-UNet's input layer writes its output's statistics, its input is the image)
    fused = [r for r in report["rows"] if "+" in r["pass"]]
    lifting, group = (gpu_sweep.label(shape) for shape in gpu_sweep.QUICK_LAYERS)
    assert list(dict.fromkeys((r["layer"], r["pass"]) for r in fused)) == [(lifting, "forward+bn")] + [
        (group, f"{family}+bn") for family in PASSES]
    for row in fused:
        family = row["pass"].split("+")[0]
        same = sorted((r for r in plain if (r["layer"], r["pass"]) == (row["layer"], family)), key=lambda r: r["ms"])
        assert row["config"] in [r["config"] for r in same[:gpu_sweep.FUSED_CANDIDATES]]
        assert row["entry"] == f"{same[0]['entry']}|bn"
    assert all(r["ok"] and r["rel_diff"] < 1e-5 for r in report["rows"])
    assert "| best config |" in (tmp_path / "sweep.md").read_text()

    # the table's entries are the problem classes the launchers look up, with the fastest config
    recorder = RecordingTuner()
    from ger_kernels.triton import group_conv

    monkeypatch.setattr(group_conv, "_TUNER", recorder)
    for shape in gpu_sweep.QUICK_LAYERS:
        for step in gpu_sweep.layer_steps(shape, torch.float32, torch.device("cpu"),
                                           gpu_sweep.fused_passes("triton")).values():
            step[0]()
        for step in gpu_sweep.norm_steps(shape, torch.float32, torch.device("cpu")).values():
            step[0]()
    entries = tuning.read_defaults("cpu", tmp_path)
    assert sorted(entries) == sorted(recorder.entries)
    for row in report["best"]:
        same = [r for r in report["rows"] if (r["layer"], r["pass"]) == (row["layer"], row["pass"])]
        assert row["ms"] == min(r["ms"] for r in same)
        assert entries[row["entry"]]["config"] == row["config"]

    # the path table: per layer and pass the fastest correct path, under the entries backend="auto" looks up
    paths = auto_paths.read_table("cpu", tmp_path)
    assert [(r["layer"], r["pass"]) for r in report["paths"]] == [
        (gpu_sweep.label(shape), family) for shape in gpu_sweep.QUICK_LAYERS for family in PASSES]
    for row in report["paths"]:
        assert set(row["ms"]) == {"reference", "triton"} | ({"cpp"} if backends("cpu")["cpp"].available else set())
        assert row["ms"]["triton"] == next(r["ms"] for r in report["best"]
                                           if (r["layer"], r["pass"]) == (row["layer"], row["pass"]))
        assert paths[row["entry"]]["path"] == row["path"] == min(row["ms"], key=row["ms"].get)
    for shape in gpu_sweep.QUICK_LAYERS:
        problem = auto_paths.ConvProblem(torch.float32, (shape.batch, shape.in_fields * shape.in_orientations,
                                                         shape.height, shape.width),
                                         (shape.out_fields, shape.in_fields, shape.in_orientations, 3, 3), 1, 1, 1, 8,
                                         True)
        assert set(auto_paths.pass_entries(auto_paths.pass_classes(problem))) <= set(paths)
    assert "| layer | dtype | pass | reference ms | cpp ms | triton ms | path |" in (tmp_path / "sweep.md").read_text()

    # and a tuner reading that table picks its config without timing
    monkeypatch.delenv("TRITON_INTERPRET")
    family, kind, *key = report["best"][0]["entry"].split("|")
    chosen = Tuner(tmp_path / "cache.json", tmp_path).choose(family, kind, tuple(key), None, (), "cpu")
    assert chosen.name == report["best"][0]["config"]


def test_wrong_and_failing_configs_are_recorded_never_chosen(monkeypatch):
    monkeypatch.delenv(tuning.FORCE_ENV, raising=False)
    shape = gpu_sweep.QUICK_LAYERS[1]
    configs = CONFIGS["float32"]["forward"][:3]
    expected = torch.ones(3)

    def fused():
        name = os.environ[tuning.FORCE_ENV]
        if name == configs[0].name:
            return expected + 0.5  # fast but wrong
        if name == configs[1].name:
            raise RuntimeError("out of resources\nmore detail")
        time.sleep(0.01)
        return expected.clone()

    rows = gpu_sweep.sweep_pass(shape, torch.float32, "forward", (fused, expected.clone, expected),
                                configs, torch.device("cpu"), time.monotonic() + 60)
    assert [r["ok"] for r in rows] == [False, False, True]
    assert rows[0]["rel_diff"] == pytest.approx(0.5) and rows[0]["ms"] < rows[2]["ms"]
    assert rows[1]["error"] == "RuntimeError: out of resources"
    assert gpu_sweep.best_rows(rows) == [rows[2]]
    assert "WRONG" in gpu_sweep.markdown({"machine": "m", "date": "d", "budget_s": 1, "complete": True,
                                          "rows": rows, "best": gpu_sweep.best_rows(rows)})
    assert tuning.FORCE_ENV not in os.environ


def test_norm_steps_check_the_fused_batch_norm(interpreter):
    """The fused steps' expected results are cuDNN's on the normalized input: the plain kernels (no
    batch norm on load, no ReLU mask) are WRONG against them, the fused ones right, at both dtypes the
    sweep runs (float32 in the interpreter: the norm rows keep the mask exact in float32)."""
    shape = gpu_sweep.QUICK_LAYERS[1]
    cpu = torch.device("cpu")
    steps = gpu_sweep.norm_steps(shape, torch.float32, cpu)
    assert set(steps) == set(PASSES)
    assert set(gpu_sweep.norm_steps(gpu_sweep.QUICK_LAYERS[0], torch.float32, cpu)) == {"forward"}
    plain = gpu_sweep.layer_steps(shape, torch.float32, cpu, gpu_sweep.fused_passes("triton"))
    for family, (step, cudnn, expected) in steps.items():
        assert cudnn is None
        assert gpu_sweep.rel_diff(step(), expected) < 1e-5
        result = plain[family][0]()
        wrong = (result, *expected[1:]) if family == "forward" else result
        assert gpu_sweep.rel_diff(wrong, expected) > gpu_sweep.TOLERANCE["half"]


def test_norm_rows_make_the_relu_mask_exact():
    """On the bfloat16 grid, z = (x - mean) * scale + shift computed in float32 is z computed in float64
    where |x| >= 2**-15, and has its sign elsewhere: no rounding order can flip the ReLU's mask."""
    torch.manual_seed(0)
    rows = gpu_sweep.norm_rows(64, torch.device("cpu"))
    assert rows.shape == (3, 64) and rows.dtype == torch.float32
    x = torch.cat([torch.randn(10000, 64), torch.randn(100, 64) * 2**-20]).bfloat16().float()
    mean, scale, shift = rows
    single, double = (x - mean) * scale + shift, (x.double() - mean.double()) * scale.double() + shift.double()
    large = x.abs() >= 2**-15
    assert torch.equal(single.double()[large], double[large]) and not large.all()
    assert torch.equal(single.sign().double(), double.sign())
    assert (shift != mean * scale).all()


def test_norm_candidates_skip_configs_that_spill_fused():
    configs = CONFIGS["half"]["input_grad"]
    spilling = sorted(tuning.FUSED_SPILLS["input_grad"])[0]
    fast = [c.name for c in configs if c.name not in tuning.FUSED_SPILLS["input_grad"]][:3]
    rows = [{"config": spilling, "ms": 0.5, "ok": True}, {"config": fast[2], "ms": 0.6, "ok": False},
            {"config": fast[1], "ms": 0.7, "ok": True}, {"config": fast[0], "ms": 0.8, "ok": True}]
    names = [c.name for c in gpu_sweep.norm_candidates("input_grad", configs, rows, None)]
    assert names == [fast[1], fast[0]]  # the fastest correct, the spilling and the wrong one left out
    assert [c.name for c in gpu_sweep.norm_candidates("input_grad", configs, rows, fast[2])] == [fast[2], fast[1],
                                                                                                 fast[0]]
    assert [c.name for c in gpu_sweep.norm_candidates("input_grad", configs, rows, fast[1])] == [fast[1], fast[0]]
    assert [c.name for c in gpu_sweep.norm_candidates("input_grad", configs, rows, spilling)] == [fast[1], fast[0]]


def test_budget_stops_before_the_next_config():
    never = Config(1, 1, 1, 1, 1)
    assert gpu_sweep.sweep_pass(gpu_sweep.QUICK_LAYERS[0], torch.float32, "forward",
                                (None, lambda: None, None), [never], torch.device("cpu"), time.monotonic() - 1) == []


@pytest.mark.parametrize("argv,message", [(["--budget-s", "0"], "--budget-s must be positive"),
                                          (["--max-configs", "0"], "--max-configs must be at least 1"),
                                          (["--precompile", "-1"], "--precompile must be 0 or more workers")])
def test_bad_arguments(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        gpu_sweep.main(["--out", str(tmp_path)] + argv)
    assert message in capsys.readouterr().err


def test_variants_select_the_configs_swept(tmp_path, interpreter):
    """--variants sweeps only the configs of the named variants (float32 has "fields" for forward and
    input_grad and "channels" for weight_grad): every swept row is of one, and each is correct."""
    assert gpu_sweep.main(["--device", "cpu", "--quick", "--dtypes", "float32", "--variants", "fields", "channels",
                           "--max-configs", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    expected = {family: next(c.name for c in CONFIGS["float32"][family] if c.variant in ("fields", "channels"))
                for family in PASSES}
    assert rows and all(r["config"] == expected[r["pass"].split("+")[0]] and r["ok"] for r in rows)
    assert {r["pass"] for r in rows} == set(PASSES) | {f"{family}+bn" for family in PASSES}


def test_rounds_put_the_previous_best_and_one_config_per_variant_first():
    configs = [Config(64, 64, 32, 4, 3), Config(128, 64, 32, 8, 3), Config(128, 64, 64, 8, 3, "fields"),
               Config(64, 64, 64, 4, 4, "fields"), Config(128, 128, 64, 8, 3, "tma"), Config(128, 64, 64, 8, 3, "tma")]
    first, rest = gpu_sweep.rounds(configs, configs[5].name)
    assert first == [configs[5], configs[0], configs[2]] and rest == [configs[1], configs[3], configs[4]]
    for previous in (None, "m1n1k1w1s1", configs[0].name):  # none, unlisted, or already a variant's first
        assert gpu_sweep.rounds(configs, previous) == ([configs[0], configs[2], configs[4]],
                                                       [configs[1], configs[3], configs[5]])


def test_a_sweep_stopped_by_its_budget_has_covered_every_layer_and_pass(tmp_path, monkeypatch, interpreter):
    """The budget runs out after the first round: every layer and pass has its first-round configs
    timed (the table gets an entry for each), none of the second round, and the report says so."""
    clock = [0.0]
    monkeypatch.setattr(gpu_sweep, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    calls = []

    def sweep_pass(shape, dtype, family, steps, configs, device, deadline, cudnn_ms=None, with_norm=False):
        if clock[0] > deadline:
            return []
        calls.append((gpu_sweep.label(shape), family, [c.name for c in configs]))
        clock[0] += 1.0  # one second a pass
        return [{"layer": gpu_sweep.label(shape), "dtype": "float32", "pass": family, "config": c.name, "ms": 1.0 + i,
                 "cudnn_ms": cudnn_ms, "ok": True, "rel_diff": 0.0, "x_cudnn": 1.0, "tflops": 1.0,
                 "cudnn_tflops": 1.0} for i, c in enumerate(configs)]

    monkeypatch.setattr(gpu_sweep, "sweep_pass", sweep_pass)
    layers = gpu_sweep.QUICK_LAYERS
    budget = len(layers) * len(PASSES) - 0.5  # the first round's passes, not one more
    assert gpu_sweep.main(["--device", "cpu", "--quick", "--dtypes", "float32", "--out", str(tmp_path),
                           "--budget-s", str(budget)]) == 0
    first_rounds = {family: gpu_sweep.rounds(CONFIGS["float32"][family], None)[0] for family in PASSES}
    assert calls == [(gpu_sweep.label(shape), family, [c.name for c in first_rounds[family]])
                     for shape in layers for family in PASSES]
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert not report["complete"] and "STOPPED at the budget" in (tmp_path / "sweep.md").read_text()
    assert {(r["layer"], r["pass"]) for r in report["best"]} == {(gpu_sweep.label(s), f) for s in layers
                                                                 for f in PASSES}
    assert len(tuning.read_defaults("cpu", tmp_path)) == len(layers) * len(PASSES)


def test_shards_deal_every_config_once():
    configs = {family: CONFIGS["half"][family] for family in PASSES}
    dealt = gpu_sweep.shards(configs, 4)
    assert len(dealt) == 4
    for family in PASSES:
        names = [name for shard in dealt for name in shard.get(family, [])]
        assert sorted(names) == sorted(c.name for c in configs[family])
    assert max(sum(map(len, s.values())) for s in dealt) - min(sum(map(len, s.values())) for s in dealt) <= 1
    assert gpu_sweep.shards({"forward": configs["forward"][:2]}, 5) == [{"forward": [configs["forward"][0].name]},
                                                                        {"forward": [configs["forward"][1].name]}]


def test_precompiled_sweep_gives_the_same_rows(tmp_path, interpreter):
    """--precompile runs every config once per layer in worker processes before the sweep (on a GPU:
    compiling them into Triton's disk cache); the sweep's rows are those of a sweep without it."""
    assert gpu_sweep.main(["--device", "cpu", "--quick", "--dtypes", "float32", "--max-configs", "1",
                           "--precompile", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [(r["layer"], r["pass"], r["config"]) for r in rows if "+" not in r["pass"]] == [
        (gpu_sweep.label(shape), family, CONFIGS["float32"][family][0].name) for shape in gpu_sweep.QUICK_LAYERS
        for family in PASSES]
    assert all(r["ok"] for r in rows)
    assert gpu_sweep._compile_shard("float32", True, "cpu", {"forward": [CONFIGS["float32"]["forward"][0].name]},
                                    time.monotonic() + 60) == len(gpu_sweep.QUICK_LAYERS)
    assert gpu_sweep._compile_shard("float32", True, "cpu", {"forward": ["m1n1k1w1s1-none"]},
                                    time.monotonic() - 1) == 0  # past the deadline: nothing run


def test_a_failing_precompile_worker_leaves_its_configs_to_the_sweep(capsys, monkeypatch, interpreter):
    """A shard whose worker raises (here: an unknown dtype) counts nothing and is reported."""
    shard = {"forward": [CONFIGS["float32"]["forward"][0].name]}
    monkeypatch.setattr(gpu_sweep, "shards", lambda configs, count: [shard, shard])
    runs = gpu_sweep.precompile("no_such_dtype", True, torch.device("cpu"), {}, 2, time.monotonic() + 60)
    assert runs == 0 and capsys.readouterr().out.count("precompile: a worker failed") == 2

"""The training step benchmark on CPU at tiny shapes, so that it cannot rot before a GPU runs it."""

import dataclasses
import json
import pathlib
import re
import signal
import sys
import time
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_step  # noqa: E402

TINY = ["--device", "cpu", "--size", "16", "--batch", "1", "--widths", "4", "8", "8", "8", "--quick",
        "--compile", "none"]


def test_quick_run_measures_each_configuration_and_records_a_failure_as_a_row(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # so that triton cannot run CPU tensors
    report = bench_step.main([*TINY, "--out", str(tmp_path), "--precisions", "fp32", "--layouts", "nchw",
                              "--backends", "reference", "triton"])
    assert {p.name for p in tmp_path.iterdir()} == {"results.md", "results.json"}
    assert json.loads((tmp_path / "results.json").read_text()) == report
    rows = report["rows"]
    assert [(r["model"], r["backend"]) for r in rows] == [("R-UNet", "-"), ("GER-UNet", "reference"),
                                                          ("GER-UNet", "triton")]
    for row in rows[:2]:
        assert "error" not in row and row["steps"] == 1 and row["ms"] > 0 and row["peak_extra_bytes"] > 0
        assert sum(row["categories"].values()) == pytest.approx(1.0)
        shares = [k["share"] for k in row["top_kernels"]]
        assert 0 < len(shares) <= bench_step.TOP_KERNELS and shares == sorted(shares, reverse=True)
    # the reference backend gathers W~ on every step and scatters its gradient back; R-UNet has no W~
    assert rows[1]["categories"]["W~ expand/fold"] > 0 == rows[0]["categories"]["W~ expand/fold"]
    assert rows[1]["parameters"] > 0 and rows[2]["error"].startswith("setup: ValueError: backend 'triton' is not")
    assert "ms" not in rows[2]
    text = (tmp_path / "results.md").read_text()
    assert bench_step.TABLE_HEADER in text and "FAILED in setup: ValueError: backend 'triton'" in text
    assert "### GER-UNet reference, fp32, nchw, eager" in text and report["command"] in text


def test_rows_that_do_not_fit_the_budget_are_listed_as_skipped(tmp_path):
    report = bench_step.main([*TINY, "--out", str(tmp_path), "--budget-s", "0", "--layouts", "nchw",
                              "--backends", "reference", "--compile", "best"])
    assert report["rows"] == []
    budget = [reason for reason in report["skipped"] if "time budget" in reason]
    assert budget[:2] == [
        "R-UNet, fp32, nchw, eager: skipped, 0 s of the time budget left (a row starts with at least 5 s)",
        "GER-UNet reference, fp32, nchw, eager: skipped, 0 s of the time budget left (a row starts with at least 5 s)"]
    assert len(budget) == 2 * len(bench_step.PRECISIONS)
    assert report["skipped"][-2:] == ["GER-UNet, compiled: no eager configuration was measured",
                                      "R-UNet, compiled: no eager configuration was measured"]
    assert "Skipped:" in (tmp_path / "results.md").read_text()


def test_rows_run_most_important_first():
    cuda = SimpleNamespace(models=list(bench_step.MODELS), backends=["triton", "reference", "auto", "cpp"],
                           precisions=bench_step.DEFAULTS["cuda"]["precisions"],
                           layouts=bench_step.DEFAULTS["cuda"]["layouts"])
    configs = [(c.model, c.backend, c.precision, c.layout) for c in bench_step.eager_configs(cuda)]
    assert configs[:5] == [("GER-UNet", "auto", "bf16-autocast", "channels_last"),
                           ("R-UNet", "-", "bf16-autocast", "channels_last"),
                           ("GER-UNet", "triton", "bf16-autocast", "channels_last"),
                           ("GER-UNet", "reference", "bf16-autocast", "channels_last"),
                           ("GER-UNet", "cpp", "bf16-autocast", "channels_last")]
    assert [c[2:] for c in configs[5::5]] == [("bf16-autocast", "nchw"), ("bf16", "channels_last"), ("bf16", "nchw")]
    assert len(configs) == len(set(configs)) == 20
    cpu = bench_step.parse_args(["--device", "cpu", "--out", "unused"])
    assert cpu.backends == [b for b in ("auto", "triton", "cpp", "reference") if b in cpu.backends]
    assert cpu.backends[0] == "auto" and cpu.backends[-1] == "reference"
    assert [(c.model, c.backend, c.precision, c.layout) for c in bench_step.eager_configs(cpu)[:2]] == [
        ("GER-UNet", "auto", "fp32", "nchw"), ("R-UNet", "-", "fp32", "nchw")]


def test_a_short_budget_measures_the_most_important_rows_and_skips_the_rest(tmp_path, monkeypatch):
    """The schedule, on a clock that only the rows advance (each takes its whole budget): the
    timing of a row itself is the next test's."""
    clock = [0.0]
    monkeypatch.setattr(bench_step, "time", SimpleNamespace(perf_counter=lambda: clock[0], strftime=time.strftime,
                                                            gmtime=time.gmtime))

    def run_row(config, args, device, budget_s):
        clock[0] += budget_s
        return {**dataclasses.asdict(config), "budget_s": round(budget_s, 1), "ms": 10.0, "ms_min": 9.0,
                "ms_max": 11.0, "steps": 3, "warmup_s": 0.5, "notes": []}

    monkeypatch.setattr(bench_step, "run_row", run_row)
    monkeypatch.setitem(bench_step.MIN_ROW_S, "cpu", 1.0)
    # rows take their 1.5 s: two fit 3.5 s, the third would start with 0.5 s; the time kept for
    # compiled rows is not taken from the first precision and layout
    report = bench_step.main(["--device", "cpu", "--size", "16", "--batch", "1", "--widths", "4", "8", "8", "8",
                              "--compile", "best", "--compile-budget-s", "100", "--precisions", "fp32",
                              "--layouts", "nchw", "--backends", "reference", "auto", "--warmup", "1",
                              "--steps", "100000", "--row-budget-s", "1.5", "--budget-s", "3.5",
                              "--out", str(tmp_path)])
    rows = report["rows"]
    assert [(r["model"], r["backend"]) for r in rows] == [("GER-UNet", "auto"), ("R-UNet", "-")]
    assert all(row["budget_s"] == 1.5 for row in rows)
    budget = [reason for reason in report["skipped"] if "time budget" in reason]
    assert budget[0] == ("GER-UNet reference, fp32, nchw, eager: skipped, 0 s of the time budget left "
                         "(a row starts with at least 1 s)")
    # what is kept for compiled rows is at most the budget (3.5 s), so they would start with 0.5 s
    assert [reason.split(": ")[0] for reason in budget[1:]] == ["GER-UNet auto, fp32, nchw, compiled",
                                                                "R-UNet, fp32, nchw, compiled"]
    assert all(reason.endswith("(a row starts with at least 1 s)") for reason in budget[1:])
    assert all(reason in (tmp_path / "results.md").read_text() for reason in budget)


@pytest.mark.parametrize("slow_step", [1, 2])
def test_a_warm_up_that_runs_out_of_budget_still_times_a_step_once_one_warm_up_step_finished(monkeypatch, slow_step):
    calls, measure_timed_ms = [], bench_step.timed_ms

    def timed_ms(step, device):
        calls.append(step)
        if len(calls) == slow_step:
            time.sleep(30)  # stopped by the row's time limit
        return measure_timed_ms(step, device)

    monkeypatch.setattr(bench_step, "timed_ms", timed_ms)
    args = SimpleNamespace(widths=[4, 8, 8, 8], batch=1, size=16, warmup=3, steps=2)
    config = bench_step.Config("R-UNet", "-", "fp32", "nchw", False)
    start = time.perf_counter()
    row = bench_step.run_row(config, args, torch.device("cpu"), budget_s=1.0)
    assert time.perf_counter() - start < 10
    if slow_step == 1:  # nothing finished: the row fails
        assert row["error"] == "warm-up: BudgetExceeded: its time budget of 1 s ran out" and "ms" not in row
    else:
        assert "error" not in row and row["steps"] == 1 and row["ms"] > 0 and len(calls) == 3
        assert row["notes"] == ["1 warm-up steps (budget ran out in step 2)", "timed after its budget ran out",
                                "1 of 2 steps (budget)", "not profiled (budget)"]


def test_best_compiles_the_fastest_measured_eager_configuration_of_each_model():
    args = SimpleNamespace(compile="best", models=["R-UNet", "GER-UNet"])
    eager = dict(compiled=False, layout="nchw")
    rows = [dict(eager, model="GER-UNet", backend="reference", precision="bf16", ms=248.0),
            dict(eager, model="GER-UNet", backend="triton", precision="bf16", ms=90.0, error="profile: OOM"),
            dict(eager, model="GER-UNet", backend="cpp", precision="bf16-autocast", ms=5394.0),
            dict(eager, model="GER-UNet", backend="reference", precision="bf16-autocast", error="warm-up: TypeError"),
            dict(eager, model="R-UNet", backend="-", precision="bf16", ms=18.6, layout="channels_last")]
    configs, missing = bench_step.compiled_configs(args, rows)
    assert configs == [bench_step.Config("GER-UNet", "triton", "bf16", "nchw", True),  # timed, then failed
                       bench_step.Config("R-UNet", "-", "bf16", "channels_last", True)] and missing == []


def test_time_limit_stops_what_overruns_and_restores_the_handler():
    before = signal.getsignal(signal.SIGALRM)
    start = time.perf_counter()
    with pytest.raises(bench_step.BudgetExceeded, match="budget of 0 s ran out"):
        with bench_step.time_limit(0.05):
            time.sleep(5)
    assert time.perf_counter() - start < 2 and signal.getsignal(signal.SIGALRM) is before


CPU, CUDA = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA


def _op(name, parent=None, cpu_ms=0.0, id=0):
    return SimpleNamespace(name=name, cpu_parent=parent, device_type=CPU, self_cpu_time_total=cpu_ms * 1e3, id=id,
                           linked_correlation_id=0, self_device_time_total=0.0)


def _kernel(name, device_ms, launched_by=0):
    return SimpleNamespace(name=name, cpu_parent=None, device_type=CUDA, self_device_time_total=device_ms * 1e3,
                           id=launched_by, linked_correlation_id=launched_by)


def test_cuda_kernels_are_summarized_by_self_device_time_and_category():
    ops = [_op("aten::convolution", id=0),  # id 0 links no kernel
           _op("aten::cudnn_convolution", id=1), _op("ger_kernels::group_bn_input_grad", id=2),
           _op("ger_kernels_triton::group_conv2d_input_grad", id=3), _op("Optimizer.step#Adam.step", id=4)]
    ops.append(_op("aten::sum", ops[3], id=5))
    kernels = [_kernel("batch_norm_backward_kernel<float>", 30), _kernel("sm90_xmma_fprop_implicit_gemm", 19, 1),
               _kernel("nchwToNhwcKernel", 9, 1), _kernel("indexing_backward_kernel", 6),
               _kernel("input_grad_kernel", 5, 2), _kernel("input_grad_kernel", 4, 3), _kernel("reduce_kernel", 2, 5),
               _kernel("multi_tensor_apply_kernel", 1, 4), _kernel("max_pool_backward_nchw", 4),
               _kernel("batch_norm_collect_statistics_kernel", 15), _kernel("batch_norm_collect_statistics_kernel", 5)]
    summary = bench_step.kernel_summary(SimpleNamespace(events=lambda: ops + kernels), torch.device("cuda"))
    assert summary["profiled_ms"] == pytest.approx(100)
    assert summary["categories"] == pytest.approx({"batch norm": 0.55, "W~ expand/fold": 0.06, "optimizer": 0.01,
                                                   "layout/copy": 0.09, "convolution": 0.25, "other": 0.04})
    top = [(k["name"], k["category"], k["ms"]) for k in summary["top_kernels"]]
    assert top[:2] == [("batch_norm_backward_kernel<float>", "batch norm", 30),
                       ("batch_norm_collect_statistics_kernel", "batch norm", 20)]
    # one Triton function name, two ops: told apart by the op that launched each
    assert {t for t in top if t[0] == "input_grad_kernel"} == {("input_grad_kernel", "batch norm", 5),
                                                                ("input_grad_kernel", "convolution", 4)}


def test_cpu_ops_inside_the_optimizer_step_count_as_optimizer():
    adam = _op("Optimizer.step#Adam.step", cpu_ms=2)
    events = [adam, _op("aten::mul_", adam, cpu_ms=3), _op("aten::mul_", cpu_ms=1),
              _op("aten::copy_", _op("aten::to", adam), cpu_ms=4),
              _op("aten::empty", _op("aten::native_batch_norm"), 1)]
    summary = bench_step.kernel_summary(SimpleNamespace(events=lambda: events), torch.device("cpu"))
    assert summary["categories"] == pytest.approx({"batch norm": 1 / 11, "W~ expand/fold": 0, "optimizer": 9 / 11,
                                                   "layout/copy": 0, "convolution": 0, "other": 1 / 11})
    assert [(k["name"], k["category"], k["ms"]) for k in summary["top_kernels"]] == [
        ("aten::copy_", "optimizer", 4), ("aten::mul_", "optimizer", 3), ("Optimizer.step#Adam.step", "optimizer", 2),
        ("aten::mul_", "other", 1), ("aten::empty", "batch norm", 1)]


@pytest.mark.parametrize("arguments, message", [
    (["--size", "12"], "--size must be a positive multiple of 8 (three 2x2 poolings), got 12"),
    (["--row-budget-s", "0"], "--row-budget-s must be positive, got 0.0"),
    (["--budget-s", "-1"], "--budget-s must be at least 0, got -1.0"),
])
def test_bad_arguments_are_clear_errors(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit):
        bench_step.main(["--device", "cpu", "--out", str(tmp_path), *arguments])
    assert message in capsys.readouterr().err

"""Smoke test of the Triton benchmark in the interpreter, so it cannot rot before a GPU runs it."""

import json
import pathlib
import sys

import pytest

pytest.importorskip("triton")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_triton  # noqa: E402


def test_quick_run_in_the_interpreter_writes_every_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert bench_triton.main(["--device", "cpu", "--quick", "--dtypes", "float32", "--repeats", "1",
                              "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["layer"], r["pass"]) for r in rows] == [
        (bench_triton.label(shape), p) for shape in bench_triton.QUICK_LAYERS
        for p in ("forward", "input_grad", "weight_grad")]
    assert all(r["rel_diff"] < 1e-4 for r in rows)
    assert "| triton / cuDNN |" in (tmp_path / "results.md").read_text()

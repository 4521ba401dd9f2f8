"""Smoke test of the fused conv + batch norm benchmark in the interpreter, so it cannot rot before a GPU runs it."""

import json
import pathlib
import sys

import pytest

pytest.importorskip("triton")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_conv_norm  # noqa: E402


def test_quick_run_in_the_interpreter_times_and_checks_every_contender(tmp_path, monkeypatch, interpreter):
    monkeypatch.delenv("GER_KERNELS_TRITON_BN", raising=False)
    assert bench_conv_norm.main(["--device", "cpu", "--quick", "--dtype", "float32", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["map"] for r in rows] == [f"{b}x({c}*8)x{s}x{s}" for b, c, s in bench_conv_norm.QUICK_SHAPES]
    assert all(r["correct"] and max(r["rel_diff"].values()) <= 1e-5 for r in rows)
    assert all(r[f"{name}_ms"] > 0 and r[f"{name}_peak_mib"] > 0 for r in rows for name in bench_conv_norm.CONTENDERS)
    assert "| fused x cuDNN |" in (tmp_path / "results.md").read_text()

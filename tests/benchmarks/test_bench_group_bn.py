"""Smoke test of the group batch norm benchmark in the interpreter, so it cannot rot before a GPU runs it."""

import json
import pathlib
import sys

import pytest

pytest.importorskip("triton")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_group_bn  # noqa: E402


def test_quick_run_in_the_interpreter_writes_every_case(tmp_path, interpreter):
    assert bench_group_bn.main(["--device", "cpu", "--quick", "--dtype", "float32", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["map"], r["case"], r["pass"]) for r in rows] == [
        (f"{b}x({c}*8)x{s}x{s}", case, p) for b, c, s in bench_group_bn.QUICK_SHAPES
        for case in ("bn", "bn+add+relu") for p in bench_group_bn.PASSES]
    first = rows[0]  # 2x(3*8)x8x8 float32 forward: statistics reads x, normalize reads x and writes y
    assert first["bytes"] == 3 * 2 * 24 * 64 * 4
    assert all(r["fused_ms"] > 0 and r["BatchNorm3d_ms"] > 0 for r in rows)
    assert "| fused ms | BatchNorm3d ms |" in (tmp_path / "results.md").read_text()

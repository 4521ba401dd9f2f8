"""Smoke tests of the per-pass benchmark on the CPU (the Triton kernels in the interpreter, the cpp ops on
CPU tensors), so it cannot rot before a GPU runs it."""

import json
import pathlib
import sys

import pytest

from helpers import requires_extension

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_triton  # noqa: E402


def quick_run(tmp_path, backend: str) -> list[dict]:
    assert bench_triton.main(["--backend", backend, "--device", "cpu", "--quick", "--dtypes", "float32",
                              "--repeats", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["backend"], r["layer"], r["pass"]) for r in rows] == [
        (backend, bench_triton.label(shape), p) for shape in bench_triton.QUICK_LAYERS
        for p in ("forward", "input_grad", "weight_grad")]
    assert all(r["rel_diff"] < 1e-4 for r in rows)
    assert f"| {backend} / cuDNN |" in (tmp_path / "results.md").read_text()
    return rows


def test_quick_run_in_the_interpreter_writes_every_pass(tmp_path, interpreter):
    quick_run(tmp_path, "triton")


@requires_extension()
def test_quick_run_of_the_cpp_ops_writes_every_pass(tmp_path):
    quick_run(tmp_path, "cpp")

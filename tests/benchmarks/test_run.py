"""Smoke test of the comparison runner, so the benchmarks cannot rot."""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import run  # noqa: E402


def test_quick_run_writes_table_json_and_plot(tmp_path):
    report = run.main(["--shapes", "quick", "--repeats", "1", "--no-e2cnn", "--no-compile", "--out", str(tmp_path)])
    assert {p.name for p in tmp_path.iterdir()} == {"results.md", "results.json", "ratio.png"}
    measured = [r for r in report["layers"] if "unavailable" not in r]
    shapes = {r["shape"] for r in measured}
    assert len(shapes) == len(run.SHAPES["quick"])
    assert {r["contender"] for r in measured} >= {"reference", "pre-expanded"}
    assert all(r["ms"] > 0 and r["peak_bytes"] >= 0 and r["flops"] > 0 for r in measured)
    unavailable = {r["contender"] for r in report["layers"] if "unavailable" in r}
    assert {"compiled", "e2cnn"} <= unavailable
    assert [r["model"] for r in report["train_step"]][-1] == "R-UNet (plain conv)"
    text = (tmp_path / "results.md").read_text()
    assert "| p4m->p4m 2->2 @8 b1 | forward+backward | reference |" in text and "Training step" in text
    assert json.loads((tmp_path / "results.json").read_text())["machine"] == report["machine"]

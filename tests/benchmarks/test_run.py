"""Smoke test of the comparison runner, so the benchmarks cannot rot."""

import json
import pathlib
import sys
from types import SimpleNamespace

import torch

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


def test_a_model_whose_training_step_fails_is_a_row_with_its_error(monkeypatch):
    class Broken(torch.nn.Module):
        def __init__(self, widths):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            raise RuntimeError("broken on purpose\nsecond line")

    monkeypatch.setattr(run, "RUNet", Broken)
    rows = run.train_step_rows(SimpleNamespace(shapes="quick", repeats=1), torch.device("cpu"), torch.float32)
    assert rows[-1] == {"model": "R-UNet (plain conv)", "input": "1x3x16x16", "parameters": 1,
                        "error": "RuntimeError: broken on purpose"}
    assert rows[0]["model"] == "GER-UNet (auto)" and all(r["ms"] > 0 for r in rows[:-1])
    assert "| R-UNet (plain conv) | 1x3x16x16 | 1 | FAILED: RuntimeError: broken on purpose | - |" in run.markdown(
        {"peaks": {"matmul_tflops": 1.0, "copy_gbs": 1.0}, "device": "cpu", "dtype": "float32", "date": "",
         "machine": "", "command": "", "layers": [], "train_step": rows})

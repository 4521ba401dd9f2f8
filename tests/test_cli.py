import json
import os
import subprocess
import sys

import pytest

from ger_kernels.cli import main


def test_check_prints_every_element_and_backend(capsys):
    assert main(["check", "--size", "16", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("  ") and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(8))
    assert all(float(r[1]) < 1e-10 and float(r[2]) < 1e-10 for r in rows)
    for backend in ("reference", "cpp", "triton"):
        assert f"  {backend}" in out
    assert "(SPEC bound 1e-10): OK" in out


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "reference  cpu   available" in out


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "ger_kernels", "info"], capture_output=True, text=True)
    assert result.returncode == 0 and "backends:" in result.stdout


def test_bad_command():
    with pytest.raises(SystemExit):
        main(["train-everything"])


def test_workflow_train_evaluate_figure_predict(tmp_path, capsys):
    from ger_kernels.data import write_phantom_lits

    data = f"lits:{tmp_path / 'lits'}"
    write_phantom_lits(str(tmp_path / "lits"), 3, depth=4, size=32)
    runs = {}
    for model, widths in (("ger-unet", ["2", "3", "4", "5"]), ("r-unet", ["4", "5", "6", "7"])):
        runs[model] = tmp_path / model
        assert main(["train", "--model", model, "--data", data, "--out", str(runs[model]), "--size", "16",
                     "--widths", *widths, "--epochs", "2", "--batch-size", "4", "--quiet", "--device", "cpu"]) == 0
        assert (runs[model] / "best.pt").exists() and (runs[model] / "log.csv").exists()
    checkpoints = [str(runs[m] / "best.pt") for m in runs]
    assert main(["evaluate", *checkpoints, "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    assert "| ger-unet (ger-unet) |" in (tmp_path / "eval" / "metrics.md").read_text()
    assert main(["equivariance", *checkpoints, "--out", str(tmp_path / "fig1.png")]) == 0
    assert (tmp_path / "fig1.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "ger-unet (ger-unet): 0 pixels disagree after transforming back (g=1)" in out
    assert main(["predict", checkpoints[0], str(tmp_path / "lits" / "volume-0.nii.gz"), str(tmp_path / "pred.nii.gz"),
                 "--device", "cpu"]) == 0
    assert (tmp_path / "pred.nii.gz").exists()


def test_info_reports_paper_parameter_counts(capsys):
    main(["info"])
    out = capsys.readouterr().out
    assert "GER-UNet add     12.74M  widths (23, 45, 91, 181)" in out
    assert "R-UNet add       12.72M  widths (64, 128, 256, 512)" in out


def write_folder_split(root):
    """PNG slices under root/train (cases p0-p2) and root/test (p3, p4), 2 slices per case, 16 x 16."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for side, cases in (("train", ["p0", "p1", "p2"]), ("test", ["p3", "p4"])):
        for case in cases:
            for z in range(2):
                mask = np.zeros((16, 16), np.uint8)
                r, c = rng.integers(0, 10, 2)
                mask[r:r + 5, c:c + 5] = 255
                image = (rng.uniform(0, 80, (16, 16)) + (mask > 0) * 150).astype(np.uint8)
                for kind, array in (("images", image), ("masks", mask)):
                    (root / side / kind).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(array).save(root / side / kind / f"{case}_{z}.png")


def train_tiny(data, out, model="ger-unet"):
    widths = ["2", "3", "4", "5"] if model == "ger-unet" else ["4", "5", "6", "7"]
    assert main(["train", "--model", model, "--data", data, "--out", str(out), "--size", "16", "--widths", *widths,
                 "--epochs", "1", "--batch-size", "2", "--quiet", "--device", "cpu"]) == 0
    return str(out / "best.pt")


def test_evaluate_a_given_test_set_whole_with_unique_labels(tmp_path, capsys):
    write_folder_split(tmp_path / "data")
    data = f"folder:{tmp_path / 'data'}"
    first = train_tiny(data, tmp_path / "a" / "ger-unet")
    second = train_tiny(data, tmp_path / "b" / "ger-unet")
    assert main(["evaluate", first, second, "--out", str(tmp_path / "split"), "--device", "cpu"]) == 0
    assert main(["evaluate", first, second, "--data", f"folder:{tmp_path / 'data' / 'test'}", "--no-split",
                 "--out", str(tmp_path / "whole"), "--device", "cpu"]) == 0
    rows = {name: json.loads((tmp_path / name / "metrics.json").read_text())["ours"] for name in ("split", "whole")}
    assert list(rows["split"]) == ["ger-unet (a/ger-unet)", "ger-unet (b/ger-unet)"]
    for label in rows["split"]:
        assert rows["split"][label]["slices"] == rows["whole"][label]["slices"] == 4  # test/: 2 cases of 2 slices
        assert rows["split"][label]["dice"] == rows["whole"][label]["dice"]
    text = (tmp_path / "whole" / "metrics.md").read_text()
    assert f"- ger-unet (a/ger-unet): folder:{tmp_path / 'data' / 'test'} all volumes (slices with tumor): 4 slices, " \
           f"2 volumes, 16x16" in text
    assert "| method | slices | Dice | HD (px) |" in text and "| HD (mm) |" not in text  # PNGs have no spacing
    with pytest.raises(ValueError, match="--no-split scores every volume of --data, but folder:.* is what the "
                                         "checkpoint was trained on"):
        main(["evaluate", first, "--no-split", "--out", str(tmp_path / "leak"), "--device", "cpu"])
    with pytest.raises(ValueError, match="--no-split scores every volume of --data"):
        main(["evaluate", first, "--no-split", "--data", f"folder:{tmp_path}/a/../data/", "--out",
              str(tmp_path / "leak"), "--device", "cpu"])
    assert not (tmp_path / "leak").exists()


def test_equivariance_all_reports_totals_beside_the_figure(tmp_path, capsys):
    write_folder_split(tmp_path / "data")
    data = f"folder:{tmp_path / 'data'}"
    checkpoints = [train_tiny(data, tmp_path / model, model) for model in ("ger-unet", "r-unet")]
    out = tmp_path / "figure1.png"
    assert main(["equivariance", *checkpoints, "--all", "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["data", "figure1.json", "figure1.md", "figure1.png", "ger-unet", "r-unet"]
    report = json.loads((tmp_path / "figure1.json").read_text())["models"]
    assert report["ger-unet (ger-unet)"]["pixels"] == 0 and report["ger-unet (ger-unet)"]["slices"] == 4
    assert report["r-unet (r-unet)"]["slices"] == 4 and len(report["r-unet (r-unet)"]["pixels_per_g"]) == 7
    printed = capsys.readouterr().out
    assert "| ger-unet (ger-unet) | 4 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 |" in printed
    with pytest.raises(ValueError, match=r"--slice 4 is out of range: the test data has 4 slices, 0..3"):
        main(["equivariance", *checkpoints, "--slice", "4", "--out", str(tmp_path / "x.png"), "--device", "cpu"])

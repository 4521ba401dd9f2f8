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

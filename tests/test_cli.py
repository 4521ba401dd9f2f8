import subprocess
import sys

import pytest

from ger_kernels.cli import main


def test_demo_prints_every_element_and_backend(capsys):
    assert main(["demo", "--size", "16", "--batch", "1"]) == 0
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
    assert "torch" in out and "reference  available" in out


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "ger_kernels", "info"], capture_output=True, text=True)
    assert result.returncode == 0 and "backends:" in result.stdout


def test_bad_command():
    with pytest.raises(SystemExit):
        main(["train-everything"])

import subprocess
import sys

import torch

import ger_kernels.triton as gt


def test_status_follows_the_interpreter_switch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    available, reason = gt.status()
    if "not installed" in reason:
        assert not available
        return
    assert available and "interpreter (TRITON_INTERPRET=1)" in reason and "its bfloat16 dots are wrong" in reason
    monkeypatch.delenv("TRITON_INTERPRET")
    available, reason = gt.status()
    assert available == torch.cuda.is_available()
    if not available:
        assert "no CUDA device" in reason and "TRITON_INTERPRET=1" in reason


def test_status_per_device_type(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if "not installed" in gt.status()[1]:
        return
    assert gt.status("cpu")[0]
    assert gt.status("cuda")[0] == torch.cuda.is_available()
    monkeypatch.delenv("TRITON_INTERPRET")
    available, reason = gt.status("cpu")
    assert not available and "only in its interpreter (TRITON_INTERPRET=1" in reason


def test_import_without_triton():
    code = ("import sys; sys.modules['triton'] = None; import ger_kernels.triton as t; "
            "print(t.status()); print(sorted(t.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["(False, 'triton is not installed (pip install triton)')",
                                "['DTYPES', 'group_conv2d', 'interpreting', 'status']"]

import importlib.util

import pytest
import torch

import ger_kernels
from ger_kernels import ops, reference
from ger_kernels.backends import (CPU_CPP_MIN_EXPANDED_BYTES, auto_backend, check_backend_name, resolve_backend,
                                  resolved_backend)
from ger_kernels.groups import P4M


def test_every_backend_has_a_status_and_reason():
    statuses = ger_kernels.backends()
    assert list(statuses) == list(ger_kernels.BACKENDS) == ["reference", "cpp", "triton"]
    assert statuses["reference"].available
    for status in statuses.values():
        assert isinstance(status.available, bool) and status.reason


def test_cpp_status_follows_the_extension():
    status = ger_kernels.backends()["cpp"]
    assert status.available == ops.has_op("group_conv2d")
    if not ops.extension_loaded():
        assert "ger_kernels._C" in status.reason and "pip install --no-build-isolation -e ." in status.reason


def test_triton_status_follows_the_install():
    status = ger_kernels.backends()["triton"]
    if importlib.util.find_spec("triton") is None:
        assert status == (False, "triton is not installed")


def test_unavailable_backends_are_refused_with_their_reason():
    assert check_backend_name("auto") == "auto"
    for name, status in ger_kernels.backends().items():
        if status.available:
            assert check_backend_name(name) == name
        else:
            with pytest.raises(ValueError, match=f"backend '{name}' is not available: "):
                check_backend_name(name)


def test_auto_runs_the_measured_choice():
    big, small = CPU_CPP_MIN_EXPANDED_BYTES, CPU_CPP_MIN_EXPANDED_BYTES - 1
    assert auto_backend("cpu", big) == ("cpp" if ger_kernels.backends("cpu")["cpp"].available else "reference")
    assert auto_backend("cpu", small) == "reference"
    # no fused GPU kernel has been measured yet: cuDNN on the expanded filter
    assert auto_backend("cuda", big) == "reference"
    wide = torch.empty(64, 64, 8, 3, 3)  # W~ 9.4 MB
    x = torch.empty(1, 512, 4, 4)
    assert resolve_backend("auto", x, wide, P4M) is resolve_backend(auto_backend("cpu", big), x, wide, P4M)


def test_statuses_per_device(monkeypatch):
    cpu, cuda = ger_kernels.backends("cpu"), ger_kernels.backends("cuda")
    assert cpu["reference"].available
    assert cuda["reference"].available == torch.cuda.is_available()
    if ops.has_op("group_conv2d"):
        assert cpu["cpp"].available
        if not torch.cuda.is_available():
            assert not cuda["cpp"].available
    # triton runs CPU tensors only in its interpreter
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not ger_kernels.backends("cpu")["triton"].available
    if importlib.util.find_spec("triton") is not None:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert ger_kernels.backends("cpu")["triton"].available


def test_a_backend_that_cannot_run_on_the_device_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    status = ger_kernels.backends("cpu")["triton"]
    if ger_kernels.backends()["triton"].available:  # triton on a GPU machine, CPU tensors
        with pytest.raises(ValueError, match="backend 'triton' cannot run on cpu tensors: "):
            resolve_backend("triton", torch.empty(1, 8, 3, 3), torch.empty(1, 1, 8, 3, 3), P4M)
    else:
        assert not status.available


@pytest.mark.parametrize("name", ["reference", "cpp", "triton"])
def test_resolved_backends_compute_the_reference(name):
    status = ger_kernels.backends("cpu")[name]
    if not status.available:
        pytest.skip(status.reason)
    x = torch.randn(1, 8, 6, 5)
    w = torch.randn(2, 1, 8, 3, 3)
    out = resolve_backend(name, x, w, P4M)(x, w, None, 1, 1, 1, P4M)
    assert torch.allclose(out, reference.group_conv2d(x, w, None, 1, 1, 1, P4M), atol=1e-5)


def test_resolution_stays_out_of_compiled_graphs(monkeypatch):
    """torch.compile takes the resolved backend as a constant: the status checks, which may ask
    the dispatcher or import triton (graph breaks), are never traced."""
    backends_module = importlib.import_module("ger_kernels.backends")  # the package exports a function of that name

    def reference_status(device_type):
        torch._C._dispatch_has_kernel_for_dispatch_key("ger_kernels::group_conv2d", "CUDA")  # untraceable
        return backends_module.BackendStatus(True, "F.conv2d on the materialized expanded filter")

    monkeypatch.setattr(backends_module, "_reference_status", reference_status)
    backends_module._statuses.cache_clear()
    try:
        x, w = torch.randn(1, 8, 6, 5), torch.randn(2, 1, 8, 3, 3)
        compiled = torch.compile(lambda x: ger_kernels.group_conv2d(x, w, padding=1, backend="reference"),
                                 fullgraph=True, backend="eager")
        assert torch.equal(compiled(x), reference.group_conv2d(x, w, None, 1, 1, 1, P4M))
    finally:
        backends_module._statuses.cache_clear()


def test_resolved_backend_names_what_runs():
    assert resolved_backend("reference", "cpu", 1) == "reference"
    assert resolved_backend("auto", "cpu", CPU_CPP_MIN_EXPANDED_BYTES - 1) == "reference"
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        resolved_backend("fast", "cpu", 1)

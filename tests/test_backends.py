import importlib.util

import pytest

import ger_kernels
from ger_kernels import ops
from ger_kernels.backends import check_backend_name


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

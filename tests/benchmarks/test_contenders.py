import pathlib
import sys

import pytest
import torch
from torch.profiler import profile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import contenders  # noqa: E402

import ger_kernels  # noqa: E402
from ger_kernels.nn import P4MConvP4M  # noqa: E402


def ops_run_by(step) -> set[str]:
    with profile() as prof:
        step()
    return {event.name for event in prof.events()}


@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
def test_each_backend_contender_runs_its_own_backend(mode):
    """Steps are all prepared before any runs: preparing one must not switch another's backend."""
    if not ger_kernels.backends("cpu")["cpp"].available:
        pytest.skip(ger_kernels.backends("cpu")["cpp"].reason)
    layer = P4MConvP4M(2, 2, 3, padding=1)
    x = torch.randn(1, 16, 5, 5, requires_grad=True)
    reference_step = contenders.backend("reference")(layer, x, mode)
    cpp_step = contenders.backend("cpp")(layer, x, mode)
    assert "ger_kernels::group_conv2d" not in ops_run_by(reference_step)
    assert "ger_kernels::group_conv2d" in ops_run_by(cpp_step)

"""Helpers shared by the tests."""

import os

import pytest
import torch

from ger_kernels import ops


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (SPEC section 8), in float64."""
    if expected.numel() == 0:
        return 0.0
    actual, expected = actual.double(), expected.double()
    return (actual - expected).abs().max().item() / max(expected.abs().max().item(), 1e-300)


# CI and `make test` build the extension and set this, so its tests cannot skip silently there.
EXTENSION_REQUIRED = os.environ.get("GER_KERNELS_REQUIRE_EXTENSION") == "1"


def requires_extension():
    """Skip mark for tests of ger_kernels._C; an error instead where the extension is required."""
    if EXTENSION_REQUIRED and not ops.extension_loaded():
        raise RuntimeError(f"GER_KERNELS_REQUIRE_EXTENSION=1 but {ops.EXTENSION_ERROR}")
    return pytest.mark.skipif(not ops.extension_loaded(), reason=str(ops.EXTENSION_ERROR))

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


class TinySlices(torch.utils.data.Dataset):
    """A stand-in SliceDataset: bright squares are tumor, 4 volumes of 4 slices."""

    def __init__(self, n=16, size=16):
        g = torch.Generator().manual_seed(1)
        self.images = torch.rand(n, 3, size, size, generator=g) * 0.2
        self.masks = torch.zeros(n, size, size, dtype=torch.long)
        for i in range(n):
            r, c = torch.randint(0, size - 6, (2,), generator=g).tolist()
            self.images[i, :, r:r + 5, c:c + 5] += 0.8
            self.masks[i, r:r + 5, c:c + 5] = 1
        self.volume_ids = [f"v{i // 4}" for i in range(n)]
        self.spacing = [(1.0, 1.0)] * n

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.masks[i]


class RunsCode:
    """Unpickling it opens (creates) the file ``marker``: a pickle payload that runs code of its choosing."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")

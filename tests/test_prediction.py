import numpy as np
import torch

from ger_kernels.data import read_volume, write_phantom_lits
from ger_kernels.models import GERUNet
from ger_kernels.prediction import predict_volume


class Threshold(torch.nn.Module):
    """Tumor where the middle channel is above 0.5: a known answer to check resizing and layout."""

    def forward(self, x):
        tumor = (x[:, 1] > 0.5).float()
        return torch.stack([1 - tumor, tumor], 1)


def test_round_trip_keeps_grid_and_affine(tmp_path):
    (volume_path, _), = write_phantom_lits(str(tmp_path), 1, depth=3, size=32)
    out = tmp_path / "mask.nii.gz"
    mask = predict_volume(Threshold(), volume_path, str(out), size=32)
    volume, written = read_volume(volume_path), read_volume(str(out))
    assert written.array.shape == volume.array.shape == (3, 32, 32)
    np.testing.assert_allclose(written.affine, volume.affine)
    assert set(np.unique(written.array)) <= {0, 1}
    np.testing.assert_array_equal(written.array, mask.numpy())
    assert mask.sum() > 0  # the contrast vessels and tumors exceed the window's midpoint


def test_resizes_back_to_the_volume_grid(tmp_path):
    (volume_path, _), = write_phantom_lits(str(tmp_path), 1, depth=2, size=24)
    out = tmp_path / "mask.nii"
    mask = predict_volume(GERUNet(widths=(2, 3, 4, 5)), volume_path, str(out), size=16)
    assert mask.shape == (2, 24, 24) and mask.dtype == torch.uint8
    assert read_volume(str(out)).array.shape == (2, 24, 24)

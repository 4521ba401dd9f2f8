import os
import re

import nibabel as nib
import numpy as np
import pytest
import torch

from ger_kernels.data import read_volume, write_phantom_lits
from ger_kernels.models import GERUNet
from ger_kernels.prediction import check_prediction_paths, predict_volume


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


class Refuses(torch.nn.Module):
    def forward(self, x):
        raise AssertionError("the model ran")


def _links(tmp_path, volume_path):
    os.symlink(volume_path, tmp_path / "symlink.nii.gz")
    os.link(volume_path, tmp_path / "hardlink.nii.gz")
    return {"same path": volume_path,
            "spelled differently": os.path.join(str(tmp_path), ".", os.path.basename(volume_path)),
            "symbolic link": str(tmp_path / "symlink.nii.gz"), "hard link": str(tmp_path / "hardlink.nii.gz")}


def test_refuses_to_overwrite_its_input(tmp_path):
    (volume_path, _), = write_phantom_lits(str(tmp_path), 1, depth=2, size=16)
    scan = open(volume_path, "rb").read()
    for output in _links(tmp_path, volume_path).values():
        with pytest.raises(ValueError, match=f"output {re.escape(output)} is the input .* would overwrite the scan"):
            predict_volume(Refuses(), volume_path, output, size=16)
        with pytest.raises(ValueError, match="is the input"):  # also when the link is the input
            predict_volume(Refuses(), output, volume_path, size=16)
    assert open(volume_path, "rb").read() == scan


@pytest.mark.parametrize("output, error, message", [
    ("mask.png", ValueError, r"output \S*mask.png must end in .nii or .nii.gz"),
    ("mask.nii.gz.tmp", ValueError, "must end in .nii or .nii.gz"),
    ("folder.nii", IsADirectoryError, r"output \S*folder.nii is a folder; give a file name such as \S*mask.nii.gz"),
    ("missing/mask.nii.gz", FileNotFoundError, r"output \S*mask.nii.gz: the folder \S*missing does not exist"),
])
def test_checks_the_output_before_reading(tmp_path, output, error, message):
    (tmp_path / "folder.nii").mkdir()
    volume_path = tmp_path / "volume.nii.gz"
    volume_path.write_bytes(b"not read: the output is checked first")
    with pytest.raises(error, match=message):
        predict_volume(Refuses(), str(volume_path), str(tmp_path / output), size=16)
    assert sorted(os.listdir(tmp_path)) == ["folder.nii", "volume.nii.gz"]


def test_checks_the_input(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"input \S*missing.nii.gz does not exist"):
        check_prediction_paths(str(tmp_path / "missing.nii.gz"), str(tmp_path / "mask.nii.gz"))
    with pytest.raises(IsADirectoryError, match="is a folder, not a NIfTI volume"):
        check_prediction_paths(str(tmp_path), str(tmp_path / "mask.nii.gz"))


def test_non_finite_voxels_are_refused_naming_the_file(tmp_path):
    data = np.zeros((16, 16, 2), np.float32)
    data[3:5, 3:5, 1] = np.nan
    nib.Nifti1Image(data, np.eye(4)).to_filename(str(tmp_path / "ct.nii"))
    with pytest.raises(ValueError, match=r"ct.nii: 4 voxels are NaN or infinite"):
        predict_volume(Refuses(), str(tmp_path / "ct.nii"), str(tmp_path / "mask.nii.gz"), size=16)
    assert not (tmp_path / "mask.nii.gz").exists()


def test_the_mask_keeps_the_sform_qform_and_codes_of_its_volume(tmp_path):
    """Viewers choose between sform and qform by their own rules: the mask carries both, with the scan's codes,
    so it lies where they show the scan (here the two differ by an origin shift)."""
    (volume_path, _), = write_phantom_lits(str(tmp_path), 1, depth=2, size=16)
    image = nib.load(volume_path)
    qform = image.affine.copy()
    qform[:3, 3] += [1.5, -2.0, 0.5]
    image.header.set_sform(image.affine, code=1)
    image.header.set_qform(qform, code=4)
    nib.Nifti1Image(np.asanyarray(image.dataobj), None, image.header).to_filename(volume_path)
    out = str(tmp_path / "mask.nii.gz")
    predict_volume(Threshold(), volume_path, out, size=16)
    scan, mask = nib.load(volume_path).header, nib.load(out).header
    for form in ("sform", "qform"):
        matrix, code = getattr(mask, f"get_{form}")(coded=True)
        expected, expected_code = getattr(scan, f"get_{form}")(coded=True)
        np.testing.assert_allclose(matrix, expected, atol=1e-5)
        assert code == expected_code
    assert nib.load(out).get_data_dtype() == np.uint8


@pytest.mark.parametrize("argument, value", [("size", 0), ("batch_size", -1), ("batch_size", 0), ("size", 2.5)])
def test_bad_sizes_are_refused_before_reading(tmp_path, argument, value):
    (volume_path, _), = write_phantom_lits(str(tmp_path), 1, depth=2, size=16)
    arguments = {"size": 16, "batch_size": 2, argument: value}
    with pytest.raises(ValueError, match=re.escape(f"{argument} must be an int >= 1, got {value!r}")):
        predict_volume(Threshold(), volume_path, str(tmp_path / "mask.nii.gz"), **arguments)
    assert not (tmp_path / "mask.nii.gz").exists()

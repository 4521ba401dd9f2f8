import gzip
import os
import re

import nibabel as nib
import numpy as np
import pytest
from lits_files import write_nifti_file

from ger_kernels.data.nifti import read_labels, read_volume, write_mask


def oblique_affine():
    """A rotated, shifted affine whose entries are exact in float32 (NIfTI stores float32)."""
    c, s = np.float32(0.6), np.float32(0.8)
    return np.array([[0.75 * c, -0.75 * s, 0, -120.5], [0.75 * s, 0.75 * c, 0, 80.25], [0, 0, 2.5, -300], [0, 0, 0, 1]],
                    dtype=np.float64)


@pytest.mark.parametrize("extension", [".nii", ".nii.gz"])
def test_volume_axes_spacing_and_affine(tmp_path, extension):
    data = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)  # on disk (H, W, D)
    path = str(tmp_path / f"ct{extension}")
    nib.Nifti1Image(data, np.diag([0.8, 0.7, 2.5, 1.0])).to_filename(path)
    volume = read_volume(path)
    assert volume.array.shape == (4, 6, 5) and volume.array.dtype == np.float32
    for d, h, w in [(0, 0, 0), (3, 5, 4), (2, 1, 3)]:
        assert volume.array[d, h, w] == data[h, w, d]
    assert volume.spacing == pytest.approx((0.8, 0.7, 2.5))
    np.testing.assert_array_equal(volume.affine, np.diag([0.8, 0.7, 2.5, 1.0]).astype(np.float32))


def test_volume_values_are_hu_after_the_header_scaling(tmp_path):
    image = nib.Nifti1Image(np.array([[[0, 1024, 2000]]], np.int16), np.eye(4))
    image.header.set_slope_inter(1.0, -1024.0)
    image.to_filename(str(tmp_path / "scaled.nii.gz"))
    np.testing.assert_array_equal(read_volume(str(tmp_path / "scaled.nii.gz")).array.ravel(), [-1024, 0, 976])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_refused(tmp_path, bad):
    data = np.zeros((6, 5, 4), np.float32)
    data[2, 3, 1] = bad
    data[4, 0, 3] = np.nan
    nib.Nifti1Image(data, np.eye(4)).to_filename(str(tmp_path / "ct.nii.gz"))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'ct.nii.gz'}: 2 voxels are NaN or infinite, the "
                                                   f"first at (i, j, k) = (2, 3, 1)")):
        read_volume(str(tmp_path / "ct.nii.gz"))


def test_labels_keep_their_stored_dtype(tmp_path):
    labels = np.array([[[0, 1], [2, 1]]], np.uint8)
    labels_back = read_labels(write_nifti_file(tmp_path / "seg.nii.gz", labels)).array
    assert labels_back.dtype == np.uint8
    np.testing.assert_array_equal(labels_back, labels)


@pytest.mark.parametrize("extension", [".nii", ".nii.gz"])
def test_write_mask_round_trips_with_the_affine_and_leaves_no_temporary(tmp_path, extension):
    mask = (np.random.default_rng(0).uniform(size=(3, 7, 5)) > 0.6).astype(np.uint8)
    path = str(tmp_path / "out" / f"pred{extension}")
    write_mask(path, mask, oblique_affine())
    assert os.listdir(tmp_path / "out") == [f"pred{extension}"]
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, mask)
    np.testing.assert_array_equal(back.affine, oblique_affine())
    assert back.spacing == pytest.approx((0.75, 0.75, 2.5))
    assert nib.load(path).get_data_dtype() == np.uint8
    if extension == ".nii.gz":
        with open(path, "rb") as f:
            assert f.read(2) == b"\x1f\x8b"


def test_write_mask_of_a_read_volume_keeps_its_geometry(tmp_path):
    source = str(tmp_path / "ct.nii.gz")
    nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), oblique_affine()).to_filename(source)
    volume = read_volume(source)
    write_mask(str(tmp_path / "mask.nii.gz"), np.ones(volume.array.shape, bool), volume.affine)
    back = read_volume(str(tmp_path / "mask.nii.gz"))
    np.testing.assert_array_equal(back.affine, volume.affine)
    assert back.array.shape == volume.array.shape and back.array.min() == 1


def test_write_mask_replaces_an_existing_file(tmp_path):
    path = str(tmp_path / "pred.nii.gz")
    write_mask(path, np.zeros((2, 3, 3), np.uint8), np.eye(4))
    write_mask(path, np.full((2, 3, 3), 2, np.uint8), np.eye(4))
    assert read_volume(path).array.max() == 2 and os.listdir(tmp_path) == ["pred.nii.gz"]


@pytest.mark.parametrize("mask, affine, path, message", [
    (np.zeros((2, 3, 3), np.float32), np.eye(4), "m.nii.gz", "integer labels"),
    (np.full((2, 3, 3), 300), np.eye(4), "m.nii.gz", "0..255"),
    (np.zeros((3, 3), np.uint8), np.eye(4), "m.nii.gz", "3-D"),
    (np.zeros((2, 3, 3), np.uint8), np.eye(3), "m.nii.gz", "4x4"),
    (np.zeros((2, 3, 3), np.uint8), np.eye(4), "m.png", r"\.nii or \.nii\.gz"),
])
def test_write_mask_rejects_bad_input_naming_the_file(tmp_path, mask, affine, path, message):
    path = str(tmp_path / path)
    with pytest.raises(ValueError, match=message) as error:
        write_mask(path, mask, affine)
    assert path in str(error.value)
    assert os.listdir(tmp_path) == []


def test_a_trailing_axis_of_length_one_is_dropped(tmp_path):
    path = str(tmp_path / "ct.nii.gz")
    nib.Nifti1Image(np.zeros((4, 3, 2, 1), np.int16), np.eye(4)).to_filename(path)
    assert read_volume(path).array.shape == (2, 4, 3)


@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 2, 2)])
def test_non_3d_volumes_are_errors_naming_the_file(tmp_path, shape):
    path = str(tmp_path / "ct.nii.gz")
    nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)).to_filename(path)
    with pytest.raises(ValueError, match=re.escape(f"{path}: expected a 3-D volume (H, W, D), got shape {shape}")):
        read_volume(path)


def corrupt(tmp_path, kind):
    """A damaged copy of a valid volume: cut in half, or replaced by garbage."""
    good = write_nifti_file(tmp_path / f"good{kind[1]}", np.zeros((4, 16, 16), np.float32))
    data = open(good, "rb").read()
    path = tmp_path / f"bad{kind[1]}"
    path.write_bytes(data[:len(data) // 2] if kind[0] == "truncated" else b"not a nifti file" * 20)
    return str(path)


@pytest.mark.parametrize("kind", [("truncated", ".nii.gz"), ("truncated", ".nii"), ("garbage", ".nii.gz"),
                                  ("garbage", ".nii")])
def test_corrupt_files_are_errors_naming_the_file(tmp_path, kind):
    path = corrupt(tmp_path, kind)
    for read in (read_volume, read_labels):
        with pytest.raises(ValueError, match=re.escape(f"{path}: cannot read as NIfTI")):
            read(path)


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"nothing\.nii\.gz: cannot read as NIfTI"):
        read_volume(str(tmp_path / "nothing.nii.gz"))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_voxel_sizes_must_be_finite_naming_the_file(tmp_path, bad):
    image = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), np.diag([0.8, 0.7, 2.5, 1.0]))
    image.header["pixdim"][2] = bad
    path = str(tmp_path / "ct.nii.gz")
    image.to_filename(path)
    for read in (read_volume, read_labels):
        with pytest.raises(ValueError, match=re.escape(f"{path}: voxel sizes (0.800000011920929, {bad}, 2.5) must be "
                                                       f"finite and positive")):
            read(path)


@pytest.mark.parametrize("extension", [".nii", ".nii.gz"])
def test_a_header_claiming_more_voxels_than_the_file_holds_is_refused_unread(tmp_path, extension):
    data = bytearray(nib.Nifti1Image(np.zeros((16, 16, 4), np.int16), np.eye(4)).to_bytes())
    data[40:56] = np.array([3, 30000, 30000, 30000, 1, 1, 1, 1], "<i2").tobytes()  # dim[0..7]: 54 TB of int16
    path = tmp_path / f"lie{extension}"
    path.write_bytes(gzip.compress(data) if extension == ".nii.gz" else data)
    for read in (read_volume, read_labels):
        with pytest.raises(ValueError, match=re.escape(f"{path}: cannot read as NIfTI: the header claims (30000, "
                                                       f"30000, 30000) voxels of int16 (54000000000352 bytes), more")):
            read(str(path))


@pytest.mark.parametrize("data", [np.zeros((4, 3, 2), [("R", "u1"), ("G", "u1"), ("B", "u1")]),
                                  np.zeros((4, 3, 2), np.complex64)], ids=["rgb", "complex"])
def test_voxels_that_are_not_real_numbers_are_refused_naming_the_file(tmp_path, data):
    path = str(tmp_path / "odd.nii.gz")
    nib.Nifti1Image(data, np.eye(4)).to_filename(path)
    for read in (read_volume, read_labels):
        with pytest.raises(ValueError, match=re.escape(f"{path}: voxels of type {data.dtype} are not real numbers")):
            read(path)

import os
import re

import nibabel as nib
import numpy as np
import pytest
from lits_files import SPACING, tiny_case, write_lits_case, write_lits_set, write_nifti_file

from ger_kernels.data.lits import find_lits_pairs, lits_cases
from ger_kernels.data.preprocess import DEFAULT_LABEL_MAP, DEFAULT_WINDOW, Preprocessing

OPTIONS = Preprocessing(16, DEFAULT_WINDOW, DEFAULT_LABEL_MAP, True)


def test_pairs_are_found_recursively_across_folders_and_extensions(tmp_path, caplog):
    write_lits_case(tmp_path / "batch1", 3, *tiny_case(), extension=".nii")
    write_lits_case(tmp_path / "volumes", 12, *tiny_case(), extension=".nii.gz",
                    segmentation_folder=tmp_path / "segmentations")
    (tmp_path / "batch1" / "test-volume-5.nii").write_bytes(b"ignored")
    (tmp_path / "notes.txt").write_text("ignored")
    with caplog.at_level("WARNING", logger="ger_kernels.data.lits"):
        pairs = find_lits_pairs(str(tmp_path))
    assert (f"{tmp_path}: skipped 1 NIfTI files not named volume-N.nii[.gz] or segmentation-N.nii[.gz]: "
            f"{tmp_path / 'batch1' / 'test-volume-5.nii'}") in caplog.text and "notes.txt" not in caplog.text
    assert list(pairs) == [3, 12]
    assert pairs[3] == (str(tmp_path / "batch1" / "volume-3.nii"), str(tmp_path / "batch1" / "segmentation-3.nii"))
    assert pairs[12] == (str(tmp_path / "volumes" / "volume-12.nii.gz"),
                         str(tmp_path / "segmentations" / "segmentation-12.nii.gz"))


def test_cases_are_named_by_volume_and_prepare_their_slices(tmp_path):
    write_lits_set(tmp_path, 2)
    cases = lits_cases(str(tmp_path))
    assert [case.volume_id for case in cases] == ["volume-0", "volume-1"]
    assert cases[0].identity["volume"][0] == str(tmp_path / "volume-0.nii.gz")
    prepared = cases[0].prepare(OPTIONS)
    np.testing.assert_array_equal(prepared.slice_indices, [1, 2])
    assert prepared.images.shape == (2, 3, 16, 16)
    assert prepared.spacing == pytest.approx((0.8, 0.7))


def test_a_volume_without_segmentation_is_an_error_naming_it(tmp_path):
    write_lits_set(tmp_path, 2)
    os.remove(tmp_path / "segmentation-1.nii.gz")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'volume-1.nii.gz'}: no segmentation-1")):
        find_lits_pairs(str(tmp_path))


def test_a_segmentation_without_volume_is_an_error_naming_it(tmp_path):
    write_lits_set(tmp_path, 2)
    os.remove(tmp_path / "volume-0.nii.gz")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'segmentation-0.nii.gz'}: no volume-0")):
        find_lits_pairs(str(tmp_path))


def test_two_files_with_one_number_are_an_error_naming_both(tmp_path):
    write_lits_set(tmp_path, 1)
    os.makedirs(tmp_path / "copy")
    write_nifti_file(tmp_path / "copy" / "volume-0.nii", tiny_case()[0])
    with pytest.raises(ValueError, match="two LiTS volume files for N=0") as error:
        find_lits_pairs(str(tmp_path))
    assert str(tmp_path / "volume-0.nii.gz") in str(error.value)
    assert str(tmp_path / "copy" / "volume-0.nii") in str(error.value)


def test_a_folder_without_lits_files_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(ValueError, match=re.escape(f"no LiTS files (volume-N.nii[.gz] with segmentation-N.nii[.gz]) "
                                                   f"found under {tmp_path}")):
        find_lits_pairs(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        find_lits_pairs(str(tmp_path / "missing"))


def test_a_shape_mismatch_is_an_error_naming_the_segmentation(tmp_path):
    hu, labels = tiny_case()
    _, segmentation = write_lits_case(tmp_path, 0, hu, labels[:, :, :12])
    case, = lits_cases(str(tmp_path))
    with pytest.raises(ValueError, match=re.escape(f"{segmentation}: segmentation shape (5, 16, 12) (D, H, W) "
                                                   f"differs from the volume's (5, 16, 16)")):
        case.prepare(OPTIONS)


def test_unexpected_label_values_are_an_error_naming_the_file(tmp_path):
    hu, labels = tiny_case()
    labels[0, 0, :2] = [3, 7]
    _, segmentation = write_lits_case(tmp_path, 0, hu, labels)
    case, = lits_cases(str(tmp_path))
    with pytest.raises(ValueError, match=re.escape(f"{segmentation}: label values [3, 7] are not in the label map")):
        case.prepare(OPTIONS)


def test_a_non_3d_volume_is_an_error_naming_it(tmp_path):
    hu, labels = tiny_case()
    write_lits_case(tmp_path, 0, hu, labels)
    volume = write_nifti_file(tmp_path / "volume-0.nii.gz", hu[0])
    case, = lits_cases(str(tmp_path))
    with pytest.raises(ValueError, match=re.escape(f"{volume}: expected a 3-D volume")):
        case.prepare(OPTIONS)


def test_a_corrupt_volume_is_an_error_naming_it(tmp_path):
    volume, _ = write_lits_set(tmp_path, 1)[0]
    data = open(volume, "rb").read()
    open(volume, "wb").write(data[:len(data) // 3])
    case, = lits_cases(str(tmp_path))
    with pytest.raises(ValueError, match=re.escape(f"{volume}: cannot read as NIfTI")):
        case.prepare(OPTIONS)


def write_segmentation(folder, labels, affine) -> str:
    """``segmentation-0.nii.gz`` holding ``labels`` stored ``(H, W, D)`` with ``affine``."""
    path = str(folder / "segmentation-0.nii.gz")
    nib.Nifti1Image(np.moveaxis(labels, 0, -1), affine).to_filename(path)
    return path


def test_a_segmentation_stored_with_a_flipped_axis_is_an_error_naming_both_files(tmp_path):
    """Its affine says the rows are stored flipped: the labels are not guessed onto the volume's rows (the header
    may be what is wrong), the pair is refused."""
    hu, labels = tiny_case()
    volume, _ = write_lits_case(tmp_path, 0, hu, labels)
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = labels.shape[1] - 1  # stored row r is the volume's row H - 1 - r
    segmentation = write_segmentation(tmp_path, labels[:, ::-1], np.diag([*SPACING, 1.0]) @ flip)
    case, = lits_cases(str(tmp_path))
    with pytest.raises(ValueError, match=re.escape(segmentation) + ".*differ from those of the volume "
                       + re.escape(str(volume))):
        case.prepare(OPTIONS)


def turned(angle):
    """A diagonal affine of ``SPACING`` turned by ``angle`` radians in the (i, j) plane."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]) @ np.diag([*SPACING, 1.0])


@pytest.mark.parametrize("affine, fits", [
    (np.diag([SPACING[0] * 1.0001, *SPACING[1:], 1.0]), True),
    (np.diag([*SPACING, 1.0]) + np.eye(4, k=3) * 0.4 * SPACING[0], True),  # origin 0.4 voxel away along i
    (np.diag([SPACING[0] * 1.01, *SPACING[1:], 1.0]), False),
    (np.diag([*SPACING, 1.0]) + np.eye(4, k=3) * 0.6 * SPACING[0], False),
    (turned(0.1), False),
], ids=["size-1e-4", "origin-0.4", "size-1e-2", "origin-0.6", "turned"])
def test_a_segmentation_off_its_volume_grid_is_an_error_naming_both_files(tmp_path, affine, fits):
    hu, labels = tiny_case()
    volume, _ = write_lits_case(tmp_path, 0, hu, labels)
    segmentation = write_segmentation(tmp_path, labels, affine)
    case, = lits_cases(str(tmp_path))
    if fits:
        np.testing.assert_array_equal(case.prepare(OPTIONS).slice_indices, [1, 2])
        return
    with pytest.raises(ValueError, match=re.escape(f"{segmentation}: voxel sizes")) as error:
        case.prepare(OPTIONS)
    assert f"differ from those of the volume {volume}" in str(error.value)


def test_a_volume_whose_affine_is_singular_is_an_error_naming_it(tmp_path):
    hu, labels = tiny_case()
    volume, segmentation = write_lits_case(tmp_path, 0, hu, labels)
    singular = np.diag([*SPACING, 1.0])
    singular[1, 1] = 0
    for path in (volume, segmentation):  # an sform nibabel takes as it is (a qform could not hold it)
        image = nib.load(path)
        image = nib.Nifti1Image(np.asanyarray(image.dataobj), None, image.header)
        image.header.set_sform(singular, code=1)
        image.header.set_qform(None, code=0)
        image.to_filename(path)
    case, = lits_cases(str(tmp_path))
    with pytest.raises(ValueError, match=re.escape(f"{volume}: its affine") + ".*singular"):
        case.prepare(OPTIONS)

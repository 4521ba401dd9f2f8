import os
import time

import numpy as np
import pytest
import torch
from scipy import ndimage

from ger_kernels.data import open_dataset
from ger_kernels.data.nifti import read_labels, read_volume
from ger_kernels.data.phantom import DEFAULT_PHANTOM_VOLUMES, make_phantom_volume, write_phantom_lits


@pytest.fixture(scope="module")
def default_set():
    """The volumes of ``open_dataset("phantom")``, and how long they took to generate."""
    start = time.perf_counter()
    volumes = [make_phantom_volume(index) for index in range(DEFAULT_PHANTOM_VOLUMES)]
    return volumes, time.perf_counter() - start


def test_generating_the_default_set_is_fast(default_set):
    assert default_set[1] < 5.0


def test_volumes_are_deterministic_per_index_and_seed():
    hu, labels, spacing = make_phantom_volume(3, seed=5, depth=6, size=64)
    again = make_phantom_volume(3, seed=5, depth=6, size=64)
    np.testing.assert_array_equal(hu, again[0])
    np.testing.assert_array_equal(labels, again[1])
    assert spacing == again[2] == (360 / 64, 360 / 64, 5.0)
    assert not np.array_equal(labels, make_phantom_volume(3, seed=6, depth=6, size=64)[1])
    assert not np.array_equal(labels, make_phantom_volume(4, seed=5, depth=6, size=64)[1])


def test_shapes_and_types(default_set):
    hu, labels, _ = default_set[0][0]
    assert hu.shape == labels.shape == (16, 128, 128)
    assert hu.dtype == np.float32 and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2}


def test_labels_are_nested_tumor_in_liver_in_body(default_set):
    in_plane_cross = np.zeros((3, 3, 3), bool)
    in_plane_cross[1] = ndimage.generate_binary_structure(2, 1)
    for hu, labels, _ in default_set[0]:
        near_labels = ndimage.binary_dilation(labels > 0, iterations=2)
        assert (hu[near_labels] > -500).all()  # the liver lies inside the body, away from the air
        tumor = labels == 2
        rim = ndimage.binary_dilation(tumor, in_plane_cross) & ~tumor
        assert (labels[rim] == 1).mean() > 0.85  # tumors are surrounded by liver


def test_tumors_come_in_several_sizes(default_set):
    all_sizes = []
    for _, labels, _ in default_set[0]:
        components, count = ndimage.label(labels == 2)
        sizes = ndimage.sum(labels == 2, components, range(1, count + 1))
        assert count >= 2 and sizes.max() >= 3 * sizes.min()
        liver_section = (labels > 0).sum(axis=(1, 2)).max()
        largest_section = (labels == 2).sum(axis=(1, 2)).max()
        assert 0.04 * liver_section < largest_section < 0.3 * liver_section
        all_sizes.extend(sizes)
    assert min(all_sizes) <= 10 and max(all_sizes) >= 1000  # voxels: a few pixels in one slice to large blobs


def test_most_slices_hold_tumor(default_set):
    fractions = [(labels == 2).any(axis=(1, 2)).mean() for _, labels, _ in default_set[0]]
    assert min(fractions) >= 0.4 and np.mean(fractions) >= 0.7


def test_tumors_are_not_axis_aligned(default_set):
    angles = []
    for _, labels, _ in default_set[0]:
        for section in labels == 2:
            components, count = ndimage.label(section)
            for k in range(1, count + 1):
                rows, cols = np.nonzero(components == k)
                if len(rows) >= 30:
                    values, vectors = np.linalg.eigh(np.cov(np.stack([cols, rows])))
                    if values[1] > 1.3 * values[0]:
                        angles.append(np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1])) % 90)
    assert sum(15 < a < 75 for a in angles) > len(angles) / 3


def test_hu_values_are_ct_like(default_set):
    hypodense = hyperdense = 0
    for hu, labels, _ in default_set[0]:
        air = hu < -500
        assert abs(hu[air].mean() + 1000) < 5 and 8 < hu[air].std() < 22
        assert 50 < np.median(hu[labels == 1]) < 75
        assert hu.max() > 600  # the vertebra
        components, count = ndimage.label(labels == 2)
        means = ndimage.mean(hu, components, range(1, count + 1))
        sizes = ndimage.sum(labels == 2, components, range(1, count + 1))
        hypodense += int(((means < 45) & (sizes > 100)).sum())
        hyperdense += int(((means > 85) & (sizes > 100)).sum())
    assert hypodense >= 3 and hyperdense >= 3


def test_write_phantom_lits_gives_a_lits_folder_of_the_same_data(tmp_path):
    written = write_phantom_lits(str(tmp_path), 3, depth=6, size=32)
    assert sorted(os.listdir(tmp_path)) == sorted(f"{kind}-{n}.nii.gz" for n in range(3)
                                                  for kind in ("volume", "segmentation"))
    hu, labels, spacing = make_phantom_volume(1, depth=6, size=32)
    volume = read_volume(written[1][0])
    np.testing.assert_allclose(volume.array, hu, atol=0.5)
    np.testing.assert_array_equal(read_labels(written[1][1]).array, labels)
    assert volume.spacing == pytest.approx(spacing)


def test_the_lits_copy_of_the_phantom_opens_like_the_phantom(tmp_path):
    write_phantom_lits(str(tmp_path), 3)
    from_files = open_dataset(f"lits:{tmp_path}", 64)
    in_memory = open_dataset("phantom:3", 64)
    for files, memory in zip(from_files, in_memory):
        assert [v.replace("volume", "phantom") for v in files.volume_ids] == memory.volume_ids
        assert files.slice_indices == memory.slice_indices and files.spacing == memory.spacing
        images = torch.stack([image for image, _ in files])
        assert torch.allclose(images, torch.stack([image for image, _ in memory]), atol=2e-3)
        assert all(torch.equal(a[1], b[1]) for a, b in zip(files, memory))


@pytest.mark.parametrize("args, message", [((-1,), "index"), ((0, -2), "seed"), ((0, 0, 0), "depth"),
                                           ((0, 0, 4, 8), "size")])
def test_bad_arguments_are_rejected(args, message):
    with pytest.raises(ValueError, match=message):
        make_phantom_volume(*args)

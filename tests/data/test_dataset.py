import os

import numpy as np
import pytest
import torch
from lits_files import SPACING, tiny_case, write_lits_case, write_lits_set
from PIL import Image
from torch.utils.data import DataLoader

from ger_kernels.data import SliceDataset, open_dataset, open_source
from ger_kernels.data.cache import file_fingerprint


def windowed(hu):
    return np.clip((hu + 200) / 450, 0, 1)


def test_items_are_float_images_and_binary_int64_masks(tmp_path):
    write_lits_set(tmp_path, 3)
    for dataset in open_dataset(f"lits:{tmp_path}", 24):
        assert isinstance(dataset, SliceDataset) and len(dataset) > 0
        for image, mask in dataset:
            assert image.shape == (3, 24, 24) and image.dtype == torch.float32
            assert mask.shape == (24, 24) and mask.dtype == torch.int64
            assert set(mask.unique().tolist()) == {0, 1}
            assert 0 <= image.min() and image.max() <= 1


def test_tumor_only_keeps_the_tumor_slices_and_maps_labels(tmp_path):
    write_lits_set(tmp_path, 3, tumor_slices=(0, 3))
    train, test = open_dataset(f"lits:{tmp_path}", 16, test_fraction=0.34)
    assert len(train) == 4 and len(test) == 2
    assert train.slice_indices == [0, 3, 0, 3]
    _, labels = tiny_case(seed=int(train.volume_ids[0][-1]), tumor_slices=(0, 3))
    np.testing.assert_array_equal(train[0][1].numpy(), labels[0] == 2)  # liver (1) is background
    everything, _ = open_dataset(f"lits:{tmp_path}", 16, tumor_only=False, test_fraction=0.34)
    assert everything.slice_indices == [0, 1, 2, 3, 4] * 2


def test_a_custom_label_map_changes_the_classes(tmp_path):
    write_lits_set(tmp_path, 2)
    train, _ = open_dataset(f"lits:{tmp_path}", 16, tumor_only=False, label_map={0: 0, 1: 1, 2: 1})
    _, labels = tiny_case(seed=int(train.volume_ids[0][-1]))
    np.testing.assert_array_equal(train[0][1].numpy(), labels[0] > 0)


def test_edge_slices_repeat_themselves_in_the_25d_channels(tmp_path):
    hu, labels = tiny_case(seed=0, depth=4)
    write_lits_case(tmp_path, 0, hu, labels)
    write_lits_set(tmp_path, 2, order=[1])
    train, test = open_dataset(f"lits:{tmp_path}", 16, tumor_only=False, test_fraction=0.5, seed=0)
    dataset = train if "volume-0" in train.volume_ids else test
    first = dataset.volume_ids.index("volume-0")
    expected = windowed(hu)
    for z, channels in enumerate([(0, 0, 1), (0, 1, 2), (1, 2, 3), (2, 3, 3)]):
        image = dataset[first + z][0].numpy()
        np.testing.assert_allclose(image, expected[list(channels)], atol=2.5e-4)


def test_spacing_is_given_per_slice_after_resizing(tmp_path):
    write_lits_set(tmp_path, 2, height=24, width=20)
    train, test = open_dataset(f"lits:{tmp_path}", 48)
    for dataset in (train, test):
        assert len(dataset.spacing) == len(dataset)
        for row_mm, col_mm in dataset.spacing:
            assert row_mm == pytest.approx(SPACING[0] * 24 / 48) and col_mm == pytest.approx(SPACING[1] * 20 / 48)


def test_the_split_is_by_volume_and_deterministic(tmp_path):
    write_lits_set(tmp_path, 10)
    train, test = open_dataset(f"lits:{tmp_path}", 16)
    assert not set(train.volume_ids) & set(test.volume_ids)
    assert len(set(train.volume_ids)) == 8 and len(set(test.volume_ids)) == 2
    again = open_dataset(f"lits:{tmp_path}", 16)
    assert again[1].volume_ids == test.volume_ids
    other_seeds = {tuple(sorted(set(open_dataset(f"lits:{tmp_path}", 16, seed=s)[1].volume_ids))) for s in range(1, 4)}
    assert other_seeds - {tuple(sorted(set(test.volume_ids)))}


def test_the_split_does_not_depend_on_the_order_files_were_written(tmp_path):
    write_lits_set(tmp_path / "a", 6)
    write_lits_set(tmp_path / "b", 6, order=[4, 1, 5, 0, 3, 2])
    split_a = [d.volume_ids for d in open_dataset(f"lits:{tmp_path / 'a'}", 16, seed=5)]
    split_b = [d.volume_ids for d in open_dataset(f"lits:{tmp_path / 'b'}", 16, seed=5)]
    assert split_a == split_b


def test_describe_is_one_line_with_source_counts_size_and_what_was_left_out(tmp_path):
    write_lits_set(tmp_path, 5)  # 5 slices per volume, 2 with tumor
    train, test = open_dataset(f"lits:{tmp_path}", 16)
    assert train.describe() == (f"lits:{tmp_path} train (slices with tumor): 8 slices, 4 volumes, 16x16; "
                                f"left out: 12 slices without tumor of these volumes")
    assert test.describe() == (f"lits:{tmp_path} test (slices with tumor): 2 slices, 1 volumes, 16x16; "
                               f"left out: 3 slices without tumor of these volumes")
    everything, _ = open_dataset(f"lits:{tmp_path}", 16, tumor_only=False)
    assert everything.describe() == f"lits:{tmp_path} train (slices): 20 slices, 4 volumes, 16x16"


def test_volumes_without_tumor_are_counted_in_both_sides_and_logged(tmp_path, caplog):
    write_lits_set(tmp_path, 3)
    hu, labels = tiny_case(seed=9, tumor_slices=())
    write_lits_case(tmp_path, 3, hu, labels)
    with caplog.at_level("INFO", logger="ger_kernels.data.dataset"):
        train, test = open_dataset(f"lits:{tmp_path}", 16, test_fraction=0.34)
    assert "volume-3" not in train.volume_ids + test.volume_ids
    for dataset in (train, test):
        assert dataset.dropped_volumes == 1 and dataset.describe().endswith(", 1 volumes of the source without any")
    assert train.dropped_slices + test.dropped_slices == 3 * 3
    assert "1 of 4 volumes have no slices with tumor and are left out: volume-3" in caplog.text
    assert "volume-0 (1/4): 2 of 5 slices kept" in caplog.text


def test_a_slice_index_out_of_range_names_the_valid_range(tmp_path):
    write_lits_set(tmp_path, 3)
    _, test = open_dataset(f"lits:{tmp_path}", 16, test_fraction=0.34)
    assert torch.equal(test[-1][0], test[len(test) - 1][0])
    with pytest.raises(IndexError, match=r"slice index 2 is out of range for .* test \(slices with tumor\): it has "
                                         r"2 slices \(valid indices: 0..1\)"):
        test[2]


def test_open_source_keeps_every_volume_unsplit(tmp_path):
    write_lits_set(tmp_path, 3)
    hu, labels = tiny_case(seed=9, tumor_slices=())
    write_lits_case(tmp_path, 3, hu, labels)
    whole = open_source(f"lits:{tmp_path}", 16)
    assert sorted(set(whole.volume_ids)) == ["volume-0", "volume-1", "volume-2"] and len(whole) == 6
    assert whole.describe() == (f"lits:{tmp_path} all volumes (slices with tumor): 6 slices, 3 volumes, 16x16; "
                                f"left out: 9 slices without tumor of these volumes, 1 volumes of the source "
                                f"without any")
    assert len(open_source(f"lits:{tmp_path}", 16, tumor_only=False)) == 20
    write_lits_set(tmp_path / "one", 1)
    assert len(open_source(f"lits:{tmp_path / 'one'}", 16)) == 2  # a split would need 2 volumes
    write_lits_set(tmp_path / "none", 1, tumor_slices=())
    with pytest.raises(ValueError, match="none of its 1 volumes has slices with tumor"):
        open_source(f"lits:{tmp_path / 'none'}", 16)


def test_the_default_source_is_the_phantom():
    train, test = open_dataset("phantom", 32)
    assert len(set(train.volume_ids)) == 10 and len(set(test.volume_ids)) == 2
    assert all(v.startswith("phantom-") for v in train.volume_ids + test.volume_ids)
    assert train.spacing[0] == pytest.approx((360 / 32, 360 / 32))
    assert all(mask.any() for _, mask in test)


def test_batches_load_through_a_dataloader():
    train, _ = open_dataset("phantom:3", 32)
    images, masks = next(iter(DataLoader(train, batch_size=4, shuffle=True)))
    assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 32, 32) and masks.dtype == torch.int64


@pytest.mark.parametrize("source", ["phantom:", "phantom:x", "nifti:/data", "lits:", "/data/lits", ""])
def test_unknown_sources_list_the_accepted_forms(source):
    with pytest.raises(ValueError, match="expected one of: phantom, phantom:N, lits:PATH, folder:PATH"):
        open_dataset(source)


def test_no_tumor_anywhere_is_a_clear_error(tmp_path):
    write_lits_set(tmp_path, 3, tumor_slices=())
    with pytest.raises(ValueError, match=r"0 of 3 volumes have slices with tumor; a train/test split by volume "
                                         r"needs at least 2"):
        open_dataset(f"lits:{tmp_path}", 16)
    assert len(open_dataset(f"lits:{tmp_path}", 16, tumor_only=False)[0]) == 10


def test_one_volume_is_too_few_to_split(tmp_path):
    write_lits_set(tmp_path, 1)
    with pytest.raises(ValueError, match="1 of 1 volumes have slices with tumor"):
        open_dataset(f"lits:{tmp_path}", 16)


@pytest.mark.parametrize("arguments, message", [({"size": 0}, "size"), ({"window": (300, 100)}, "window"),
                                                ({"test_fraction": 1.0}, "test_fraction"),
                                                ({"label_map": {2: 3}}, "label_map")])
def test_bad_arguments_fail_before_reading_any_file(tmp_path, arguments, message):
    write_lits_set(tmp_path, 2)
    (tmp_path / "volume-0.nii.gz").write_bytes(b"corrupt")  # reading it would be a different error
    with pytest.raises(ValueError, match=message) as error:
        open_dataset(f"lits:{tmp_path}", **{"size": 16, **arguments})
    assert "cannot read" not in str(error.value)


def test_image_files_are_each_volumes_images_by_real_path_and_fingerprint(tmp_path):
    """What a checkpoint records of its training cases: the image files of LiTS and folder volumes (not their
    masks, which can be equal across cases), none of the phantom's."""
    volume, _ = write_lits_set(tmp_path / "lits", 1)[0]
    os.symlink(tmp_path / "lits", tmp_path / "link")
    assert open_source(f"lits:{tmp_path / 'link'}", 16).image_files() == \
        {"volume-0": [(os.path.realpath(volume), file_fingerprint(volume))]}
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255
    for kind in ("images", "masks"):
        (tmp_path / "folder" / kind).mkdir(parents=True)
        for name in ("a_0", "a_1"):
            Image.fromarray(mask).save(tmp_path / "folder" / kind / f"{name}.png")
    paths = [os.path.realpath(tmp_path / "folder" / "images" / f"{name}.png") for name in ("a_0", "a_1")]
    assert open_source(f"folder:{tmp_path / 'folder'}", 16).image_files() == {
        "a": [(p, file_fingerprint(p)) for p in paths]}
    assert open_source("phantom:2", 16).image_files() == {"phantom-0": [], "phantom-1": []}

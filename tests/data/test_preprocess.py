import numpy as np
import pytest
import torch

from ger_kernels.data.preprocess import (DEFAULT_LABEL_MAP, DEFAULT_WINDOW, Preprocessing, apply_label_map,
                                         check_label_map, check_window, prepare_image, prepare_volume,
                                         resize_images, resize_masks, resized_spacing, volume_to_slices, window_hu)


def windowed(hu):
    low, high = DEFAULT_WINDOW
    return np.clip((np.asarray(hu, dtype=np.float64) - low) / (high - low), 0, 1)


def test_default_window_is_the_abdominal_window():
    assert DEFAULT_WINDOW == (-200.0, 250.0)


def test_window_is_linear_inside_and_clipped_outside():
    hu = torch.tensor([-1000.0, -200.0, 25.0, 137.5, 250.0, 3000.0])
    assert torch.equal(window_hu(hu, (-200.0, 250.0)), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0]))
    assert torch.allclose(window_hu(torch.tensor([0.0, 50.0]), (0.0, 100.0)), torch.tensor([0.0, 0.5]))


@pytest.mark.parametrize("window", [(250, -200), (10, 10), (float("nan"), 1.0), (0.0,)])
def test_bad_windows_are_rejected(window):
    with pytest.raises(ValueError, match="window"):
        check_window(window)


def test_25d_stacks_neighbours_and_repeats_edge_slices():
    hu = np.random.default_rng(0).uniform(-400, 400, size=(4, 5, 5)).astype(np.float32)
    stacks = volume_to_slices(hu, 5)  # the native size: no resampling
    assert stacks.shape == (4, 3, 5, 5) and stacks.dtype == torch.float32
    expected = windowed(hu)
    for z, (before, after) in enumerate([(0, 1), (0, 2), (1, 3), (2, 3)]):
        np.testing.assert_allclose(stacks[z].numpy(), expected[[before, z, after]], atol=1e-6)


def test_volume_to_slices_resizes_whole_non_square_slices():
    # windowed values rise from 0 at the first column to 1 at the last: a crop would lose the ends
    hu = np.broadcast_to(np.linspace(-200, 250, 20, dtype=np.float32), (3, 24, 20))
    stacks = volume_to_slices(hu, 32)
    assert stacks.shape == (3, 3, 32, 32)
    row = stacks[0, 0, 0]
    assert row[0] < 0.05 and row[-1] > 0.95 and (row.diff() >= 0).all()
    assert torch.equal(stacks, stacks[:1, :1, :1].expand_as(stacks))


def test_25d_of_a_single_slice_repeats_it_three_times():
    hu = np.random.default_rng(1).uniform(-300, 300, size=(1, 4, 4)).astype(np.float32)
    stack = volume_to_slices(hu, 4)[0]
    assert torch.equal(stack[0], stack[1]) and torch.equal(stack[1], stack[2])


def test_selected_slices_match_the_full_stack():
    hu = np.random.default_rng(2).uniform(-300, 300, size=(6, 8, 8)).astype(np.float32)
    full = volume_to_slices(hu, 12)
    assert torch.equal(volume_to_slices(hu, 12, slices=[5, 0, 3]), full[[5, 0, 3]])
    assert volume_to_slices(hu, 12, slices=[]).shape == (0, 3, 12, 12)
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        volume_to_slices(hu, 12, slices=[6])


def test_volume_to_slices_rejects_non_3d_input():
    with pytest.raises(ValueError, match="3-D"):
        volume_to_slices(np.zeros((4, 4)), 4)


def test_resized_images_keep_range_and_masks_stay_binary():
    rng = np.random.default_rng(3)
    images = torch.from_numpy(rng.uniform(0, 1, size=(2, 3, 24, 20)).astype(np.float32))
    for size in (7, 48):
        out = resize_images(images, size)
        assert out.shape == (2, 3, size, size)
        assert out.min() >= 0 and out.max() <= 1
        masks = resize_masks((rng.uniform(size=(2, 24, 20)) > 0.7).astype(np.uint8), size)
        assert masks.shape == (2, size, size) and masks.dtype == np.uint8
        assert set(np.unique(masks)) == {0, 1}


def test_masks_are_resized_by_nearest_pixel_centre():
    mask = np.zeros((1, 4, 4), np.uint8)
    mask[0, 1, 2] = 1
    expected = np.zeros((8, 8), np.uint8)
    expected[2:4, 4:6] = 1
    np.testing.assert_array_equal(resize_masks(mask, 8)[0], expected)
    # halving samples the odd rows and columns, whose centres coincide with the output pixel centres
    np.testing.assert_array_equal(resize_masks(expected[None, :, :], 4)[0], mask[0])
    single = np.zeros((1, 8, 8), np.uint8)
    single[0, 3, 5] = 1
    assert resize_masks(single, 4)[0, 1, 2] == 1


def test_spacing_is_scaled_per_axis_by_the_resize():
    assert resized_spacing((0.8, 0.7), (24, 20), 48) == pytest.approx((0.4, 0.7 * 20 / 48))
    assert resized_spacing(None, (24, 20), 48) is None


def test_label_map_maps_raw_labels_to_classes():
    labels = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    np.testing.assert_array_equal(apply_label_map(labels, DEFAULT_LABEL_MAP, "seg.nii"), [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(apply_label_map(labels, {0: 0, 1: 1, 2: 1}, "seg.nii"), [[0, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(apply_label_map(labels.astype(np.float32), DEFAULT_LABEL_MAP, "f"),
                                  [[0, 0, 1], [1, 0, 0]])


def test_unexpected_labels_name_the_file_and_the_values():
    with pytest.raises(ValueError, match=r"seg-7\.nii: label values \[3, 5\]"):
        apply_label_map(np.array([0, 3, 2, 5]), DEFAULT_LABEL_MAP, "seg-7.nii")
    with pytest.raises(ValueError, match=r"\[1.5\]"):
        apply_label_map(np.array([0.0, 1.5]), DEFAULT_LABEL_MAP, "seg.nii")


@pytest.mark.parametrize("label_map", [{}, {0: 0, 2: 2}, {True: 1}, {"2": 1}, {0: 0, 2: True}])
def test_bad_label_maps_are_rejected(label_map):
    with pytest.raises(ValueError, match="label_map"):
        check_label_map(label_map)


def test_tumor_only_keeps_the_slices_with_tumor_and_their_neighbours_as_channels():
    hu = np.random.default_rng(4).uniform(-300, 300, size=(5, 8, 8)).astype(np.float32)
    labels = np.ones((5, 8, 8), np.uint8)
    labels[1, 2:4, 2:4] = 2
    labels[4, 5, 5] = 2
    prepared = prepare_volume(hu, labels, (0.8, 0.7), Preprocessing(8, DEFAULT_WINDOW, DEFAULT_LABEL_MAP, True),
                              "seg")
    np.testing.assert_array_equal(prepared.slice_indices, [1, 4])
    assert prepared.images.dtype == np.float16 and prepared.images.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(prepared.images[0], windowed(hu[[0, 1, 2]]), atol=2.5e-4)
    np.testing.assert_allclose(prepared.images[1], windowed(hu[[3, 4, 4]]), atol=2.5e-4)
    assert prepared.masks.sum() == 5 and prepared.spacing == (0.8, 0.7)
    everything = prepare_volume(hu, labels, None, Preprocessing(8, DEFAULT_WINDOW, DEFAULT_LABEL_MAP, False), "seg")
    np.testing.assert_array_equal(everything.slice_indices, np.arange(5))
    assert everything.spacing is None


def test_a_tumor_lost_by_downsizing_drops_its_slice():
    labels = np.zeros((2, 64, 64), np.uint8)
    labels[0, 20:30, 20:30] = 2
    labels[1, 1, 1] = 2  # a single pixel that nearest-exact sampling to 8x8 misses
    prepared = prepare_volume(np.zeros((2, 64, 64), np.float32), labels, None,
                              Preprocessing(8, DEFAULT_WINDOW, DEFAULT_LABEL_MAP, True), "seg")
    np.testing.assert_array_equal(prepared.slice_indices, [0])
    assert prepared.masks.any(axis=(1, 2)).all()


def test_prepare_image_keeps_a_tumor_image_and_drops_an_empty_one():
    image = np.random.default_rng(5).uniform(size=(3, 6, 10)).astype(np.float32)
    mask = np.zeros((6, 10), np.uint8)
    options = Preprocessing(12, DEFAULT_WINDOW, None, True)
    assert len(prepare_image(image, mask, options).slice_indices) == 0
    mask[2:4, 3:6] = 1
    prepared = prepare_image(image, mask, options)
    assert prepared.images.shape == (1, 3, 12, 12) and prepared.masks.shape == (1, 12, 12)
    assert prepared.spacing is None

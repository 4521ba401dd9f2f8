import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from ger_kernels.data import open_dataset, open_source
from ger_kernels.data.folder import case_id, find_folder_pairs, read_image, read_mask
from ger_kernels.training import _split_validation

H, W = 16, 24
TUMOR = np.zeros((H, W), bool)
TUMOR[0:8, 8:16] = True  # on JPEG's 8x8 block grid, so compression keeps it clean


def gray_image():
    return np.add.outer(np.arange(H) * 10, np.arange(W) * 3).astype(np.uint8)


def rgb_image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def save(path, image: Image.Image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.endswith(".jpg"):
        image.save(path, quality=95)
    else:
        image.save(path)
    return str(path)


def mask_images():
    """One mask of TUMOR per format and colour model."""
    gray = Image.fromarray(TUMOR.astype(np.uint8) * 255)
    red = np.zeros((H, W, 3), np.uint8)
    red[TUMOR] = (200, 0, 0)
    return {"gray.png": gray, "rgb.tif": Image.fromarray(red), "gray.jpg": gray,
            "red.gif": Image.fromarray(red), "ones.png": Image.fromarray(TUMOR.astype(np.uint8)),
            "rgba.png": Image.fromarray(np.dstack([red, np.full((H, W), 255, np.uint8)]))}


@pytest.mark.parametrize("name", list(mask_images()))
def test_masks_of_every_format_follow_the_mask_rule(tmp_path, name):
    path = save(str(tmp_path / name), mask_images()[name])
    mask = read_mask(path)
    assert mask.dtype == np.uint8 and mask.shape == (H, W)
    np.testing.assert_array_equal(mask, TUMOR)


def test_palette_masks_are_judged_by_colour_not_by_index(tmp_path):
    path = save(str(tmp_path / "red.gif"), mask_images()["red.gif"])
    with Image.open(path) as image:
        assert image.mode == "P" and np.asarray(image)[TUMOR].max() == 0  # red got palette index 0
    np.testing.assert_array_equal(read_mask(path), TUMOR)


def test_jpeg_masks_ignore_compression_noise_near_black(tmp_path):
    noisy = np.where(TUMOR, 250, 0).astype(np.uint8)
    noisy[12:, :4] = 20  # dark but not black: noise, not tumor
    path = save(str(tmp_path / "noisy.jpg"), Image.fromarray(noisy))
    np.testing.assert_array_equal(read_mask(path), TUMOR)
    png = save(str(tmp_path / "noisy.png"), Image.fromarray(noisy))
    assert read_mask(png)[12:, :4].all()  # lossless: any nonzero value is tumor


def test_a_label_map_maps_single_channel_mask_values(tmp_path):
    labels = TUMOR.astype(np.uint8) * 2
    labels[12:, :] = 1
    path = save(str(tmp_path / "labels.png"), Image.fromarray(labels))
    np.testing.assert_array_equal(read_mask(path, {0: 0, 1: 0, 2: 1}), TUMOR)
    with pytest.raises(ValueError, match=re.escape(f"{path}: label values [2] are not in the label map")):
        read_mask(path, {0: 0, 1: 1})
    rgb = save(str(tmp_path / "rgb.png"), mask_images()["rgb.tif"])
    with pytest.raises(ValueError, match=re.escape(f"{rgb}: a label map needs single-channel masks")):
        read_mask(rgb, {0: 0, 1: 1})


def test_grayscale_images_are_replicated_and_colour_images_kept(tmp_path):
    gray = read_image(save(str(tmp_path / "gray.png"), Image.fromarray(gray_image())))
    assert gray.shape == (3, H, W) and gray.dtype == np.float32
    for channel in gray:
        np.testing.assert_allclose(channel, gray_image() / 255, atol=1e-6)
    colour = read_image(save(str(tmp_path / "rgb.tif"), Image.fromarray(rgb_image())))
    np.testing.assert_allclose(colour, rgb_image().transpose(2, 0, 1) / 255, atol=1e-6)
    deep = read_image(save(str(tmp_path / "deep.png"), Image.fromarray(gray_image().astype(np.uint16) * 257)))
    np.testing.assert_allclose(deep[0], gray_image() / 255, atol=1e-6)


def make_folder(root, n=4):
    """n image/mask pairs in png, tif, jpg and gif; image k has a tumor except the last when n > 4."""
    formats = [("png", "png"), ("tif", "tif"), ("jpg", "jpg"), ("gif", "gif")]
    for k in range(n):
        image_ext, mask_ext = formats[k % 4]
        image = Image.fromarray(rgb_image() if k % 2 else gray_image())
        save(os.path.join(root, "images", f"case{k}.{image_ext}"), image)
        tumor = TUMOR if k < 4 else np.zeros_like(TUMOR)
        save(os.path.join(root, "masks", f"case{k}.{mask_ext}"), Image.fromarray(tumor.astype(np.uint8) * 255))


def test_folder_source_gives_one_volume_per_image(tmp_path):
    make_folder(str(tmp_path), 5)
    train, test = open_dataset(f"folder:{tmp_path}", 32, test_fraction=0.25, seed=1)
    ids = train.volume_ids + test.volume_ids
    assert sorted(ids) == ["case0", "case1", "case2", "case3"]  # case4 has no tumor
    assert len(test) == 1 and not set(train.volume_ids) & set(test.volume_ids)
    image, mask = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (32, 32) and mask.dtype == torch.int64
    assert mask[:16].any() and not mask[16:].any()  # the tumor fills the upper half of the rows
    assert train.spacing == [None] * len(train)
    everything, _ = open_dataset(f"folder:{tmp_path}", 32, tumor_only=False, test_fraction=0.2)
    assert len(everything) == 4


def test_folder_masks_are_resized_to_binary(tmp_path):
    make_folder(str(tmp_path), 4)
    train, test = open_dataset(f"folder:{tmp_path}", 20)
    for dataset in (train, test):
        for image, mask in dataset:
            assert set(mask.unique().tolist()) == {0, 1}
            assert 0 <= image.min() and image.max() <= 1


def test_an_empty_folder_is_an_error(tmp_path):
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "masks")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=re.escape(f"no images (.png, .tif, .tiff, .jpg, .jpeg, .gif) in "
                                                   f"{tmp_path / 'images'}")):
        find_folder_pairs(str(tmp_path))
    with pytest.raises(ValueError, match=re.escape(f"folder source {tmp_path / 'nothing'} does not exist")):
        find_folder_pairs(str(tmp_path / "nothing"))
    os.makedirs(tmp_path / "no_masks" / "images")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'no_masks' / 'masks'} is missing")):
        find_folder_pairs(str(tmp_path / "no_masks"))


@pytest.mark.parametrize("removed,kept,name,message", [
    ("masks", "images", "case1.tif", "images without mask"),
    ("images", "masks", "case2.jpg", "masks without image"),
])
def test_a_file_without_its_partner_is_an_error_naming_it(tmp_path, removed, kept, name, message):
    make_folder(str(tmp_path), 3)
    os.remove(tmp_path / removed / name)
    with pytest.raises(ValueError, match=re.escape(f"{message} in {tmp_path / removed}: {tmp_path / kept / name}")):
        find_folder_pairs(str(tmp_path))


def test_two_images_with_one_name_are_an_error(tmp_path):
    make_folder(str(tmp_path), 2)
    save(str(tmp_path / "images" / "case0.tif"), Image.fromarray(gray_image()))
    with pytest.raises(ValueError, match="two files named 'case0'"):
        find_folder_pairs(str(tmp_path))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_an_unreadable_file_is_an_error_naming_it(tmp_path, damage):
    make_folder(str(tmp_path), 2)
    path = tmp_path / "images" / "case0.png"
    data = path.read_bytes()
    path.write_bytes(b"garbage" * 10 if damage == "garbage" else data[:len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(f"{path}: cannot read as an image")):
        open_dataset(f"folder:{tmp_path}", 16)


def test_an_image_and_mask_of_different_sizes_are_an_error_naming_both_shapes(tmp_path):
    make_folder(str(tmp_path), 2)
    save(str(tmp_path / "masks" / "case1.tif"), Image.fromarray(np.zeros((H, W + 1), np.uint8)))
    image = tmp_path / "images" / "case1.tif"
    with pytest.raises(ValueError, match=re.escape(f"{image}: image size (16, 24) (H, W) differs from its mask's "
                                                   f"(16, 25) ({tmp_path / 'masks' / 'case1.tif'})")):
        open_dataset(f"folder:{tmp_path}", 16)


def write_slice(root, key, level, tumor=True):
    """``root/images/<key>.png``, a flat gray image of ``level``, with its mask (TUMOR, or empty)."""
    save(os.path.join(root, "images", f"{key}.png"), Image.fromarray(np.full((H, W), level, np.uint8)))
    save(os.path.join(root, "masks", f"{key}.png"), Image.fromarray((TUMOR if tumor else ~TUMOR * 0).astype(np.uint8)))


@pytest.mark.parametrize("key, case", [("liver7_012", "liver7"), ("ct_scan_a", "ct_scan"), ("case3", "case3"),
                                       ("_7", "_7"), ("a_", "a"), ("patient 1/slice_5", "patient 1"),
                                       ("p2/003", "p2")])
def test_the_case_is_the_folder_or_the_name_before_its_last_underscore(key, case):
    assert case_id(key) == case


def test_images_that_are_all_cases_of_their_own_get_a_warning(tmp_path, caplog):
    make_folder(str(tmp_path / "single"), 3)
    for case in ("a", "b"):
        for z in range(2):
            write_slice(str(tmp_path / "grouped"), f"{case}_{z}", 10)
    with caplog.at_level("WARNING", logger="ger_kernels.data.folder"):
        open_source(f"folder:{tmp_path / 'grouped'}", 16)
        assert not caplog.text
        open_source(f"folder:{tmp_path / 'single'}", 16)
    assert (f"{tmp_path / 'single'}: each of the 3 images is a case of its own; if some are slices of one patient, "
            f"name them <case>_<slice> or put them in images/<case>/") in caplog.text


def test_files_of_one_case_form_one_volume_with_slices_in_name_order(tmp_path):
    levels = {"a_10": 30, "a_2": 20, "a_1": 10, "b_1": 40, "c": 50, "p/x": 60, "p_3": 70}
    for key, level in levels.items():
        write_slice(str(tmp_path), key, level)
    whole = open_source(f"folder:{tmp_path}", 16, tumor_only=False)
    order = ["a_1", "a_2", "a_10", "b_1", "c", "p/x", "p_3"]  # case p: its folder and a prefix; "/" < "_"
    assert whole.volume_ids == ["a", "a", "a", "b", "c", "p", "p"]
    assert whole.slice_indices == [0, 1, 2, 0, 0, 0, 1]
    for i, key in enumerate(order):
        assert whole[i][0].mean().item() == pytest.approx(levels[key] / 255, abs=1e-3)


def test_a_case_never_lies_on_both_sides_of_the_test_or_validation_split(tmp_path):
    for case in range(10):
        for z in range(3):
            write_slice(str(tmp_path), f"patient{case}_{z}", 10 * case + z)
    train, test = open_dataset(f"folder:{tmp_path}", 16, seed=3)
    assert len(set(train.volume_ids)) == 8 and len(set(test.volume_ids)) == 2 and len(test) == 6
    assert not set(train.volume_ids) & set(test.volume_ids)
    fit, validation = _split_validation(train, 0.25, seed=0)
    fit_cases, validation_cases = ({train.volume_ids[i] for i in part} for part in (fit, validation))
    assert len(validation_cases) == 2 and len(validation) == 6 and not fit_cases & validation_cases


def test_tumor_only_drops_slices_within_a_case_and_counts_them(tmp_path):
    for z, tumor in enumerate([True, False, True]):
        write_slice(str(tmp_path), f"a_{z}", 10, tumor)
    write_slice(str(tmp_path), "b_0", 10, tumor=False)
    write_slice(str(tmp_path), "c_0", 10)
    whole = open_source(f"folder:{tmp_path}", 16)
    assert whole.volume_ids == ["a", "a", "c"] and whole.slice_indices == [0, 2, 0]
    assert whole.dropped_slices == 1 and whole.dropped_volumes == 1


def write_split(root, train_cases, test_cases):
    for side, cases in (("train", train_cases), ("test", test_cases)):
        for case in cases:
            for z in range(2):
                write_slice(os.path.join(root, side), f"{case}/{z}", 10)


def test_train_and_test_folders_give_the_split_as_is(tmp_path):
    write_split(str(tmp_path), ["p0", "p1", "p2"], ["p3", "p4"])
    for seed in (0, 1):
        train, test = open_dataset(f"folder:{tmp_path}", 16, test_fraction=0.2, seed=seed)
        assert train.volume_ids == ["p0", "p0", "p1", "p1", "p2", "p2"]
        assert test.volume_ids == ["p3", "p3", "p4", "p4"]
    whole_test = open_source(f"folder:{tmp_path / 'test'}", 16)
    assert whole_test.volume_ids == test.volume_ids


@pytest.mark.parametrize("layout, message", [
    ("train only", "a given split needs both {root}/train and {root}/test"),
    ("images too", "and no {root}/images; found images, train, test"),
    ("case on both sides", "cases in both train/ and test/ (slices of one case would be on both sides of the "
                           "split): p1"),
    ("test without tumor", "none of the 1 cases in test/ has slices with tumor"),
])
def test_a_wrong_given_split_is_an_error(tmp_path, layout, message):
    root = str(tmp_path)
    write_split(root, ["p0", "p1"], ["p1" if layout == "case on both sides" else "p2"])
    if layout == "train only":
        os.rename(tmp_path / "test", tmp_path / "elsewhere")
    if layout == "images too":
        write_slice(root, "q_0", 10)
    if layout == "test without tumor":
        for z in range(2):
            write_slice(str(tmp_path / "test"), f"p2/{z}", 10, tumor=False)
    with pytest.raises(ValueError, match=re.escape(message.format(root=root))):
        open_dataset(f"folder:{root}", 16)


def test_files_that_are_not_images_are_skipped_with_a_warning(tmp_path, caplog):
    make_folder(str(tmp_path), 2)
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "images" / ".DS_Store").write_text("hidden: skipped without a word")
    write_slice(str(tmp_path), "deep/er/x", 10)
    with caplog.at_level("WARNING", logger="ger_kernels.data.folder"):
        assert sorted(find_folder_pairs(str(tmp_path))) == ["case0", "case1"]
    images = tmp_path / "images"
    assert (f"{images}: skipped 2 entries that are not png/tif/tiff/jpg/jpeg/gif images (or lie deeper than one "
            f"case folder): {images / 'deep' / 'er'}, {images / 'notes.txt'}") in caplog.text
    assert ".DS_Store" not in caplog.text


@pytest.mark.parametrize("pixels", [np.arange(-1000, 920, 10, dtype=np.int16).reshape(8, 24),
                                    np.arange(0, 19_200_000, 100_000, dtype=np.int32).reshape(8, 24)],
                         ids=["signed-16-bit", "32-bit"])
def test_integer_images_beyond_16_bits_are_an_error_naming_the_file(tmp_path, pixels):
    path = save(str(tmp_path / "ct.tif"), Image.fromarray(pixels))
    assert Image.open(path).mode == "I"
    with pytest.raises(ValueError, match=re.escape(f"{path}: pixel values {pixels.min()}..{pixels.max()} lie outside "
                                                   f"0..65535; signed or 32-bit integer images need converting")):
        read_image(path)
    in_range = save(str(tmp_path / "ok.tif"), Image.fromarray(np.clip(pixels, 0, 65535).astype(np.int32)))
    np.testing.assert_allclose(read_image(in_range)[0], np.clip(pixels, 0, 65535) / 65535, atol=1e-6)

"""Users' own 2-D data: images with masks of the same name, grouped into cases (patients).

Layout, under ``PATH`` (``folder:PATH``):

- ``images/<name>.<ext>`` with ``masks/<name>.<ext>``, matched by the name without extension; ext is png,
  tif, tiff, jpg, jpeg or gif (any case). The case of ``<name>`` is everything before its last underscore
  (``liver7_012`` -> case ``liver7``; ``ct_scan_a`` -> ``ct_scan``); a name without underscore (or with
  only a leading one) is a case of its own.
- ``images/<case>/<name>.<ext>`` with ``masks/<case>/<name>.<ext>``: one folder per case; the folder's
  name is the case, whatever the file names. Both forms may be mixed; equal case ids are one case.
- ``train/`` and ``test/``, each holding ``images/`` and ``masks/`` as above: the split is taken as given
  (no random split), and a case id on both sides is an error.

A case is what the splits keep together (train/test and validation); when every image is a case of its own, a
warning says how to group them. A case's slices are ordered by name, with digit runs compared as numbers
(``a_2`` before ``a_10``), and numbered 0, 1, ... in that order. Spacing is unknown; multi-frame files give
their first frame. Hidden files (``.name``) are skipped; any other file that is not an image of these types,
and anything nested deeper than one case folder, is skipped with a warning.

Images: grayscale is replicated to 3 channels, colour is used as RGB (alpha dropped, palettes looked up);
values are scaled to [0, 1] by the bit depth (8-bit / 255, 16-bit / 65535, float images clipped); a signed or
32-bit integer image with values outside 0..65535 is an error (convert it first). The HU window does not apply.

Masks, without a label map: a pixel is tumor when its value is nonzero, for grayscale; when its colour is
not black, for RGB and palette images (through the palette, so palette index 0 need not be black). JPEG is
lossy, so JPEG masks count a pixel as tumor from value 128 on (any channel). With a label map, masks must
be single-channel (grayscale, or palette images whose indices are the labels) and each raw value is
mapped, an unknown one being an error.

Errors name the files: no images, an image without mask or a mask without image, two files with one name,
an unreadable file, and an image and mask of different sizes.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Mapping

import numpy as np
from PIL import Image

from ger_kernels.data.cache import file_identity
from ger_kernels.data.preprocess import Case, PreparedSlices, Preprocessing, apply_label_map, prepare_image

__all__ = ["IMAGE_EXTENSIONS", "read_image", "read_mask", "find_folder_pairs", "case_id", "folder_cases"]

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".gif")
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_SINGLE_CHANNEL_MODES = ("1", "L", "P", "F") + _SIXTEEN_BIT_MODES

_log = logging.getLogger(__name__)


def _open(path: str) -> Image.Image:
    """The first frame of ``path``, fully decoded (so truncated files fail here); ``.format`` is kept."""
    try:
        with Image.open(path) as image:
            image.load()
        return image
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: cannot read as an image ({type(error).__name__}: {error})") from error


def read_image(path: str) -> np.ndarray:
    """The image at ``path`` as float32 ``(3, H, W)`` in [0, 1]."""
    image = _open(path)
    if image.mode in _SIXTEEN_BIT_MODES:
        pixels = np.asarray(image)
        if pixels.min() < 0 or pixels.max() > 65535:  # mode "I" holds signed 32-bit values
            raise ValueError(f"{path}: pixel values {pixels.min()}..{pixels.max()} lie outside 0..65535; signed or "
                             f"32-bit integer images need converting to 8 or 16 bits (e.g. windowing) first")
        pixels = pixels.astype(np.float32) / 65535
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float32)
    elif image.mode in ("1", "L", "LA", "La"):
        pixels = np.asarray(image.convert("L"), dtype=np.float32) / 255
    else:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
    if pixels.ndim == 2:
        pixels = np.broadcast_to(pixels, (3, *pixels.shape))
    return np.ascontiguousarray(np.clip(pixels, 0.0, 1.0))


def read_mask(path: str, label_map: Mapping[int, int] | None = None) -> np.ndarray:
    """The mask at ``path`` as uint8 classes ``(H, W)`` (1 = tumor), by the module's mask rule."""
    image = _open(path)
    if label_map is not None:
        if image.mode not in _SINGLE_CHANNEL_MODES:
            raise ValueError(f"{path}: a label map needs single-channel masks (grayscale or palette indices), "
                             f"got image mode {image.mode}")
        return apply_label_map(np.asarray(image), label_map, path)
    single_channel = image.mode in _SINGLE_CHANNEL_MODES and image.mode != "P"
    pixels = np.asarray(image if single_channel else image.convert("RGB"))
    tumor = pixels >= 128 if image.format == "JPEG" else pixels > 0
    return (tumor if tumor.ndim == 2 else tumor.any(axis=-1)).astype(np.uint8)


def _is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(path)


def _image_files(folder: str) -> dict[str, str]:
    """``{key: path}`` of the image files in ``folder`` and its subfolders (one level); the key is the name
    without extension, ``<subfolder>/<name>`` for those in a subfolder. Warns about the files it skips."""
    files: dict[str, str] = {}
    skipped: list[str] = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if entry.startswith("."):
            continue
        candidates = [(f"{entry}/", os.path.join(path, inner)) for inner in sorted(os.listdir(path))
                      if not inner.startswith(".")] if os.path.isdir(path) else [("", path)]
        for prefix, candidate in candidates:
            if not _is_image(candidate):
                skipped.append(candidate)
                continue
            key = prefix + os.path.splitext(os.path.basename(candidate))[0]
            if key in files:
                raise ValueError(f"two files named {key!r}: {files[key]} and {candidate}")
            files[key] = candidate
    if skipped:
        _log.warning("%s: skipped %d entries that are not %s images (or lie deeper than one case folder): %s",
                     folder, len(skipped), "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS), short_listing(skipped))
    return files


def short_listing(paths: list[str], limit: int = 10) -> str:
    """The first ``limit`` of ``paths``, comma-separated, and how many more there are."""
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def find_folder_pairs(root: str) -> dict[str, tuple[str, str]]:
    """``{key: (image path, mask path)}`` from ``root/images`` and ``root/masks``; key ``<name>`` or
    ``<case>/<name>`` (see the module docstring)."""
    if not os.path.isdir(root):
        raise ValueError(f"folder source {root} does not exist or is not a folder")
    image_dir, mask_dir = os.path.join(root, "images"), os.path.join(root, "masks")
    for folder in (image_dir, mask_dir):
        if not os.path.isdir(folder):
            raise ValueError(f"folder source {root}: {folder} is missing (expected {root}/images/<name>.<ext> "
                             f"and {root}/masks/<name>.<ext>, or {root}/train/ and {root}/test/ holding both)")
    images, masks = _image_files(image_dir), _image_files(mask_dir)
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}")
    without_mask = [images[n] for n in sorted(images.keys() - masks.keys())]
    if without_mask:
        raise ValueError(f"images without mask in {mask_dir}: {short_listing(without_mask)}")
    without_image = [masks[n] for n in sorted(masks.keys() - images.keys())]
    if without_image:
        raise ValueError(f"masks without image in {image_dir}: {short_listing(without_image)}")
    return {key: (images[key], masks[key]) for key in sorted(images)}


def case_id(key: str) -> str:
    """The case of the image ``key`` of :func:`find_folder_pairs`: its folder for ``<case>/<name>``, else
    ``<name>`` up to its last underscore, else (no underscore, or only a leading one) ``<name>`` itself."""
    folder, _, name = key.rpartition("/")
    if folder:
        return folder
    case = name.rpartition("_")[0]
    return case or name


def _name_order(key: str) -> list:
    """Sort key: digit runs compare as numbers (``a_2`` < ``a_10``)."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"([0-9]+)", key))]


def _prepare_pair(image_path: str, mask_path: str, options: Preprocessing) -> PreparedSlices:
    image, mask = read_image(image_path), read_mask(mask_path, options.label_map)
    if image.shape[1:] != mask.shape:
        raise ValueError(f"{image_path}: image size {image.shape[1:]} (H, W) differs from its mask's "
                         f"{mask.shape} ({mask_path})")
    return prepare_image(image, mask, options)


def _prepare_case(pairs: list[tuple[str, str]], options: Preprocessing) -> PreparedSlices:
    """The slices of one case, ``pairs`` in slice order; slice index = position in ``pairs``."""
    parts = [_prepare_pair(image, mask, options) for image, mask in pairs]
    kept = [k for k, part in enumerate(parts) if len(part.slice_indices)]
    return PreparedSlices(np.concatenate([part.images for part in parts]),
                          np.concatenate([part.masks for part in parts]), np.asarray(kept, dtype=np.int64),
                          None, len(pairs))


def _cases_in(root: str, side: str | None) -> list[Case]:
    by_case: dict[str, list[str]] = {}
    pairs = find_folder_pairs(root)
    for key in pairs:
        by_case.setdefault(case_id(key), []).append(key)
    cases = []
    for case, keys in sorted(by_case.items()):
        keys.sort(key=_name_order)
        identity = {"slices": [[key, file_identity(pairs[key][0]), file_identity(pairs[key][1])] for key in keys]}
        cases.append(Case(case, identity, functools.partial(_prepare_case, [pairs[key] for key in keys]), side,
                          tuple(pairs[key][0] for key in keys)))
    if len(pairs) > 1 and len(cases) == len(pairs):
        _log.warning("%s: each of the %d images is a case of its own; if some are slices of one patient, name them "
                     "<case>_<slice> or put them in images/<case>/ (and masks/<case>/), or they can land on both "
                     "sides of the split", root, len(pairs))
    return cases


def folder_cases(root: str) -> list[Case]:
    """One :class:`Case` per case under ``root``; for ``root/train`` and ``root/test``, their cases with
    ``side`` set to ``"train"`` or ``"test"``."""
    sides = [side for side in ("train", "test") if os.path.isdir(os.path.join(root, side))]
    if not sides:
        return _cases_in(root, None)
    if len(sides) == 1 or os.path.exists(os.path.join(root, "images")):
        found = [entry for entry in ("images", "train", "test") if os.path.exists(os.path.join(root, entry))]
        raise ValueError(f"folder source {root}: a given split needs both {root}/train and {root}/test (each with "
                         f"images/ and masks/) and no {root}/images; found {', '.join(found)}")
    train, test = (_cases_in(os.path.join(root, side), side) for side in ("train", "test"))
    on_both_sides = sorted({case.volume_id for case in train} & {case.volume_id for case in test})
    if on_both_sides:
        raise ValueError(f"folder source {root}: cases in both train/ and test/ (slices of one case would be on "
                         f"both sides of the split): {short_listing(on_both_sides)}")
    return train + test

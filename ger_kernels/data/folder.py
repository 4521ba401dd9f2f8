"""Users' own 2-D data: ``PATH/images/<name>.<ext>`` with ``PATH/masks/<name>.<ext>``, matched by the
file name without extension; ext is png, tif, tiff, jpg, jpeg or gif (any case; other files are ignored).
Each image is its own "volume" (id ``<name>``), with one slice and unknown spacing; multi-frame files give
their first frame.

Images: grayscale is replicated to 3 channels, colour is used as RGB (alpha dropped, palettes looked up);
values are scaled to [0, 1] by the bit depth (8-bit / 255, 16-bit / 65535, float images clipped). The HU
window does not apply.

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
import os
from collections.abc import Mapping

import numpy as np
from PIL import Image

from ger_kernels.data.cache import file_identity
from ger_kernels.data.preprocess import Case, PreparedSlices, Preprocessing, apply_label_map, prepare_image

__all__ = ["IMAGE_EXTENSIONS", "read_image", "read_mask", "find_folder_pairs", "folder_cases"]

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".gif")
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_SINGLE_CHANNEL_MODES = ("1", "L", "P", "F") + _SIXTEEN_BIT_MODES


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
        pixels = np.asarray(image, dtype=np.float32) / 65535
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


def _by_name(folder: str) -> dict[str, str]:
    """``{name without extension: path}`` of the image files in ``folder``."""
    files: dict[str, str] = {}
    for entry in sorted(os.listdir(folder)):
        stem, extension = os.path.splitext(entry)
        path = os.path.join(folder, entry)
        if entry.startswith(".") or extension.lower() not in IMAGE_EXTENSIONS or not os.path.isfile(path):
            continue
        if stem in files:
            raise ValueError(f"two files named {stem!r}: {files[stem]} and {path}")
        files[stem] = path
    return files


def _listing(paths: list[str], limit: int = 10) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def find_folder_pairs(root: str) -> dict[str, tuple[str, str]]:
    """``{name: (image path, mask path)}`` from ``root/images`` and ``root/masks``."""
    image_dir, mask_dir = os.path.join(root, "images"), os.path.join(root, "masks")
    for folder in (image_dir, mask_dir):
        if not os.path.isdir(folder):
            raise ValueError(f"folder source {root}: {folder} is missing (expected {root}/images/<name>.<ext> "
                             f"and {root}/masks/<name>.<ext>)")
    images, masks = _by_name(image_dir), _by_name(mask_dir)
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}")
    without_mask = [images[n] for n in sorted(images.keys() - masks.keys())]
    if without_mask:
        raise ValueError(f"images without mask in {mask_dir}: {_listing(without_mask)}")
    without_image = [masks[n] for n in sorted(masks.keys() - images.keys())]
    if without_image:
        raise ValueError(f"masks without image in {image_dir}: {_listing(without_image)}")
    return {name: (images[name], masks[name]) for name in sorted(images)}


def _prepare_pair(image_path: str, mask_path: str, options: Preprocessing) -> PreparedSlices:
    image, mask = read_image(image_path), read_mask(mask_path, options.label_map)
    if image.shape[1:] != mask.shape:
        raise ValueError(f"{image_path}: image size {image.shape[1:]} (H, W) differs from its mask's "
                         f"{mask.shape} ({mask_path})")
    return prepare_image(image, mask, options)


def folder_cases(root: str) -> list[Case]:
    """One :class:`Case` per image/mask pair under ``root``."""
    return [Case(name, {"image": file_identity(image), "mask": file_identity(mask)},
                 functools.partial(_prepare_pair, image, mask))
            for name, (image, mask) in find_folder_pairs(root).items()]

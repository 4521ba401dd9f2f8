"""From CT values, labels and images to model-ready slices of ``size`` x ``size``.

Conventions:

- A volume is ``(D, H, W)``: D slices (the last NIfTI axis, see :mod:`ger_kernels.data.nifti`),
  H rows, W columns, in HU.
- Windowing: ``(HU - low) / (high - low)`` clipped to [0, 1]. ``DEFAULT_WINDOW = (-200, 250)`` HU, the
  abdominal window common for LiTS: liver (~60 HU), hypodense tumors (~10-40 HU) and contrast vessels
  (~150-200 HU) are resolved, fat (~-100 HU) stays visible, air and bone are clipped to 0 and 1.
- 2.5D: slice ``z`` becomes the channels ``(z-1, z, z+1)``; a missing neighbour at the first or last
  slice is replaced by the slice itself.
- Resizing: every slice is resized as a whole to ``size`` x ``size`` (no crop, no padding), so a
  non-square slice is stretched and the spacing says by how much: ``(row_mm * H / size, col_mm * W / size)``.
  Images are resized bilinearly with antialiasing after windowing (values stay in [0, 1]); masks with
  ``nearest-exact`` (pixel centres, aligned with the bilinear grid), so they stay binary. The inverse, for
  predictions, is a resize back to ``(H, W)``.
- Labels become classes through a label map (raw value -> 0 or 1, 1 = tumor); ``DEFAULT_LABEL_MAP``
  is LiTS's: background 0 and liver 1 -> 0, tumor 2 -> 1. A raw value missing from the map is an error.
- Stored slices: float16 images (error at most 2**-12 on [0, 1], 0.11 HU with the default window),
  uint8 masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_WINDOW", "DEFAULT_LABEL_MAP", "Preprocessing", "PreparedSlices", "Case", "check_window",
           "check_label_map", "window_hu", "apply_label_map", "resize_images", "resize_masks", "resized_spacing",
           "volume_to_slices", "prepare_volume", "prepare_image"]

DEFAULT_WINDOW: tuple[float, float] = (-200.0, 250.0)
DEFAULT_LABEL_MAP: dict[int, int] = {0: 0, 1: 0, 2: 1}


def check_window(window: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` as floats, finite and ``low < high``."""
    if len(window) != 2 or not all(math.isfinite(v) for v in window) or not window[0] < window[1]:
        raise ValueError(f"window must be (low_hu, high_hu) with low < high, got {tuple(window)}")
    return float(window[0]), float(window[1])


def check_label_map(label_map: Mapping[int, int]) -> dict[int, int]:
    """A copy of ``label_map`` after checking: int raw labels, classes 0 or 1."""
    if not label_map or any(not isinstance(k, int) or isinstance(k, bool) for k in label_map) \
            or any(v not in (0, 1) or isinstance(v, bool) for v in label_map.values()):
        raise ValueError(f"label_map must map int raw labels to the classes 0 or 1, got {label_map!r}")
    return dict(label_map)


def window_hu(hu: torch.Tensor, window: tuple[float, float] = DEFAULT_WINDOW) -> torch.Tensor:
    """HU -> [0, 1]: linear in the window, clipped outside. Same shape."""
    low, high = window
    return ((hu - low) / (high - low)).clamp_(0.0, 1.0)


def apply_label_map(labels: np.ndarray, label_map: Mapping[int, int], name: str) -> np.ndarray:
    """Raw labels (any shape) -> uint8 classes; ``name`` (the file) is named when a value is not in the map."""
    unexpected = [v for v in np.unique(labels).tolist() if v not in label_map]
    if unexpected:
        raise ValueError(f"{name}: label values {unexpected} are not in the label map {dict(label_map)}")
    classes = np.zeros(labels.shape, np.uint8)
    for raw, cls in label_map.items():
        if cls:
            classes[labels == raw] = cls
    return classes


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, C, H, W)`` float -> ``(N, C, size, size)``, bilinear with antialiasing."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """``(N, H, W)`` uint8 -> ``(N, size, size)`` uint8, nearest pixel centre."""
    if masks.shape[-2:] == (size, size):
        return masks
    resized = F.interpolate(torch.from_numpy(masks)[:, None], size=(size, size), mode="nearest-exact")
    return resized[:, 0].numpy()


def resized_spacing(spacing: tuple[float, float] | None, shape: tuple[int, int], size: int
                    ) -> tuple[float, float] | None:
    """``(row_mm, col_mm)`` of a ``shape = (H, W)`` slice after resizing to ``size`` x ``size``."""
    if spacing is None:
        return None
    return spacing[0] * shape[0] / size, spacing[1] * shape[1] / size


def volume_to_slices(array: np.ndarray, size: int, window: tuple[float, float] = DEFAULT_WINDOW, *,
                     slices: Sequence[int] | None = None) -> torch.Tensor:
    """HU volume ``(D, H, W)`` -> model input ``(N, 3, size, size)`` float32 in [0, 1]: the 2.5D stacks
    ``(z-1, z, z+1)`` (edges repeat themselves), windowed, then resized. ``slices``: the ``z`` to
    stack (default every slice, N = D)."""
    if np.ndim(array) != 3:
        raise ValueError(f"volume must be 3-D (D, H, W), got shape {np.shape(array)}")
    window = check_window(window)
    depth = array.shape[0]
    centres = np.arange(depth) if slices is None else np.asarray(slices, dtype=np.int64).reshape(-1)
    if centres.size and (centres.min() < 0 or centres.max() >= depth):
        raise ValueError(f"slice indices must lie in [0, {depth}), got {centres.min()}..{centres.max()}")
    neighbours = np.clip(centres[:, None] + np.array([-1, 0, 1]), 0, depth - 1)
    needed, position = np.unique(neighbours, return_inverse=True)
    planes = torch.from_numpy(np.asarray(array[needed], dtype=np.float32))
    planes = resize_images(window_hu(planes, window)[:, None], size)[:, 0]
    return planes[torch.from_numpy(position.reshape(-1, 3))]


@dataclass(frozen=True)
class Preprocessing:
    """How raw data becomes slices. ``label_map`` None: the folder source's own mask rule."""

    size: int
    window: tuple[float, float]
    label_map: dict[int, int] | None
    tumor_only: bool

    def key(self) -> dict:
        """JSON-able description, for cache keys."""
        label_map = None if self.label_map is None else sorted(self.label_map.items())
        return {"size": self.size, "window": list(self.window), "label_map": label_map,
                "tumor_only": self.tumor_only}


@dataclass(frozen=True)
class PreparedSlices:
    """The slices kept from one volume: ``images (N, 3, S, S)`` float16, ``masks (N, S, S)`` uint8 (0/1),
    ``slice_indices (N,)`` (z in the volume), the resized ``spacing`` (row_mm, col_mm) or None, and
    ``source_slices``, the number of slices the volume had before ``tumor_only`` dropped some."""

    images: np.ndarray
    masks: np.ndarray
    slice_indices: np.ndarray
    spacing: tuple[float, float] | None
    source_slices: int


@dataclass(frozen=True)
class Case:
    """One volume (case, patient) of a data source. ``identity``: JSON-able description of what it is made of
    (files with size and mtime, or generator parameters), for cache keys; ``prepare`` makes its slices;
    ``side``: ``"train"`` or ``"test"`` when the source fixes the split, None when it is drawn at random;
    ``images``: the paths of the files its images are read from (none for generated data), which tell two
    cases apart (masks do not: two cases can have equal empty masks)."""

    volume_id: str
    identity: dict
    prepare: Callable[[Preprocessing], PreparedSlices]
    side: str | None = None
    images: tuple[str, ...] = ()


def _kept(masks: np.ndarray, tumor_only: bool) -> np.ndarray:
    """Indices of the masks to keep: those with tumor, or all."""
    if not tumor_only:
        return np.arange(len(masks))
    return np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))


def prepare_volume(hu: np.ndarray, labels: np.ndarray, spacing: tuple[float, float] | None,
                   options: Preprocessing, name: str) -> PreparedSlices:
    """CT volume ``(D, H, W)`` in HU with raw ``labels (D, H, W)`` -> its 2.5D slices. Tumor is judged on
    the resized mask, so every kept mask has a tumor pixel. ``name`` (the label file) is used in errors."""
    masks = resize_masks(apply_label_map(labels, options.label_map, name), options.size)
    kept = _kept(masks, options.tumor_only)
    images = volume_to_slices(hu, options.size, options.window, slices=kept)
    return PreparedSlices(images.numpy().astype(np.float16), masks[kept], kept,
                          resized_spacing(spacing, hu.shape[1:], options.size), len(masks))


def prepare_image(image: np.ndarray, mask: np.ndarray, options: Preprocessing) -> PreparedSlices:
    """2-D image ``(3, H, W)`` in [0, 1] with its class mask ``(H, W)`` -> one slice (or none, when
    ``tumor_only`` and the resized mask has no tumor). Spacing unknown."""
    masks = resize_masks(mask[None], options.size)
    kept = _kept(masks, options.tumor_only)
    images = resize_images(torch.from_numpy(image[None]), options.size)[kept]
    return PreparedSlices(images.numpy().astype(np.float16), masks[kept], kept, None, 1)

"""A deterministic synthetic CT-like data set, so the whole workflow runs anywhere without a download.

A phantom volume is ``(D, H, W)`` (same axes as :mod:`ger_kernels.data.nifti`) in HU with labels 0
background, 1 liver, 2 tumor (LiTS's), on a 360 mm field of view (``360 / size`` mm pixels) with 5 mm
slices. Content, all defined in millimetres in 3-D so that it varies smoothly from slice to slice:

- air (-1000 HU) around an elliptical body (soft tissue 40 HU) with a subcutaneous fat layer (-100 HU)
  and a vertebra (700 HU, clipped by the default window);
- a lobulated liver (55-65 HU) on the left of the image (the patient's right), rotated by a random angle,
  with 3-6 thin contrast vessels (150-200 HU, soft-edged tubes in random 3-D directions);
- 3-6 tumors inside the liver (label 2 only where the liver is), apart from each other when there is room:
  ellipsoids or lobulated blobs at random orientations, equivalent radii from 3.5 mm (a few pixels) to
  24 mm (about 1/6 of the liver's section), one of them always large and one always small; 7 in 10
  hypodense (10-40 HU), the rest hyperdense (90-130 HU), with a soft rim;
- Gaussian noise of 10-20 HU.

Everything is drawn from ``numpy.random.default_rng([seed, index])``, so a volume depends only on
``(index, seed, depth, size)``. The default set (``open_dataset("phantom")``) is 12 volumes of 16 slices at
128 x 128 with ``seed=0``; most slices hold tumor.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from scipy import ndimage

from ger_kernels._validation import check_int
from ger_kernels.data.nifti import write_nifti
from ger_kernels.data.preprocess import Case, PreparedSlices, Preprocessing, prepare_volume

__all__ = ["make_phantom_volume", "write_phantom_lits", "phantom_cases", "DEFAULT_PHANTOM_VOLUMES", "PHANTOM_DEPTH",
           "PHANTOM_SIZE"]

DEFAULT_PHANTOM_VOLUMES = 12
PHANTOM_DEPTH, PHANTOM_SIZE = 16, 128
_FIELD_OF_VIEW_MM = 360.0
_SLICE_MM = 5.0
_AIR_HU, _FAT_HU, _TISSUE_HU, _BONE_HU = -1000.0, -100.0, 40.0, 700.0
_GENERATOR_VERSION = 1  # part of cache keys: bump when the generated data changes


def _rotated(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in a frame turned by ``angle`` (radians)."""
    c, s = np.cos(angle), np.sin(angle)
    return c * x + s * y, -s * x + c * y


def _lobes(rng: np.random.Generator, phi: np.ndarray, orders: range, amplitude: float) -> np.ndarray:
    """A radius factor ``1 + sum_k a_k cos(k phi + p_k)`` with random ``a_k`` in [0, amplitude]."""
    factor = np.ones_like(phi)
    for k in orders:
        factor += rng.uniform(0, amplitude) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return factor


def _liver(rng, x, y, z) -> np.ndarray:
    """Boolean liver ``(D, H, W)``: a rotated, lobulated ellipse shrinking away from its middle slice."""
    centre_x, centre_y = rng.uniform(-65, -45), rng.uniform(-15, 5)
    radius, half_length = rng.uniform(65, 80), rng.uniform(120, 160)
    u, v = _rotated(x - centre_x - 0.1 * z, y - centre_y, rng.uniform(0, 2 * np.pi))
    u, v = u / (radius * rng.uniform(1.0, 1.2)), v / (radius * rng.uniform(0.7, 0.9))
    scale = np.sqrt(np.clip(1 - (z / half_length) ** 2, 0, None))
    return np.hypot(u, v) <= scale * _lobes(rng, np.arctan2(v, u), range(2, 5), 0.12)


def _vessel_weight(rng, x, y, z, liver: np.ndarray) -> np.ndarray:
    """Soft profile ``exp(-(distance / radius)^2)`` of a straight tube through a random liver voxel."""
    voxels = np.argwhere(liver)
    d, h, w = voxels[rng.integers(len(voxels))]
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    dz, dy, dx = z - z[d, 0, 0], y - y[0, h, 0], x - x[0, 0, w]
    along = dz * direction[0] + dy * direction[1] + dx * direction[2]
    distance_sq = dz ** 2 + dy ** 2 + dx ** 2 - along ** 2
    return np.exp(-distance_sq / rng.uniform(1.5, 3.0) ** 2)


def _tumor(rng, x, y, z, labels: np.ndarray, radius: float, centre_slice: int) -> tuple[np.ndarray, np.ndarray]:
    """``(inside, weight)`` of a tumor of equivalent radius ``radius`` mm centred on ``centre_slice``, deep
    enough in the liver (``labels > 0``) to fit, and apart from the tumors already in ``labels`` when there
    is room; ``weight`` in [0, 1] blends its HU in over a soft rim."""
    pixel_mm = x[0, 0, 1] - x[0, 0, 0]
    elongation = rng.uniform(1.0, 2.0)
    long_axis, short_axis = radius * np.sqrt(elongation), radius / np.sqrt(elongation)
    height = radius * rng.uniform(0.8, 1.3)
    section = labels[centre_slice]
    depth_in_liver = ndimage.distance_transform_edt(section > 0) * pixel_mm
    candidates = depth_in_liver >= min(0.8 * long_axis, 0.8 * depth_in_liver.max())
    if (labels == 2).any():
        clearance = ndimage.distance_transform_edt(labels != 2, sampling=(_SLICE_MM, pixel_mm, pixel_mm))
        apart = candidates & (clearance[centre_slice] >= max(long_axis, height) + 2 * pixel_mm)
        candidates = apart if apart.any() else candidates
    h, w = np.argwhere(candidates)[rng.integers(candidates.sum())]
    u, v = _rotated(x - x[0, 0, w], y - y[0, h, 0], rng.uniform(0, np.pi))
    u, v, t = u / long_axis, v / short_axis, (z - z[centre_slice, 0, 0]) / height
    outline = _lobes(rng, np.arctan2(v, u), range(3, 6), 0.15) if rng.random() < 0.5 else 1.0
    margin = outline - np.sqrt(u ** 2 + v ** 2 + t ** 2)
    liver = labels > 0
    return (margin >= 0) & liver, np.clip(margin / 0.25 + 0.5, 0, 1) * liver


def make_phantom_volume(index: int, seed: int = 0, depth: int = PHANTOM_DEPTH, size: int = PHANTOM_SIZE
                        ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """``(hu, labels, spacing)``: HU float32 ``(depth, size, size)`` (size >= 16), labels uint8 (0/1/2) of
    the same shape, ``spacing = (row_mm, col_mm, slice_mm)``."""
    check_int(index, "index", 0)
    check_int(seed, "seed", 0)
    check_int(depth, "depth")
    check_int(size, "size", 16)
    rng = np.random.default_rng([seed, index])
    pixel_mm = _FIELD_OF_VIEW_MM / size
    z = ((np.arange(depth) - (depth - 1) / 2) * _SLICE_MM)[:, None, None]
    y = ((np.arange(size) - (size - 1) / 2) * pixel_mm)[None, :, None]
    x = ((np.arange(size) - (size - 1) / 2) * pixel_mm)[None, None, :]

    bx, by = _rotated(x, y, rng.uniform(-0.15, 0.15))
    body_scale = 1 + 0.04 * np.sin(2 * np.pi * z / 200 + rng.uniform(0, 2 * np.pi))
    half_x, half_y, fat = rng.uniform(140, 165) * body_scale, rng.uniform(95, 115) * body_scale, rng.uniform(8, 16)
    body = (bx / half_x) ** 2 + (by / half_y) ** 2 <= 1
    inner = (bx / (half_x - fat)) ** 2 + (by / (half_y - fat)) ** 2 <= 1
    vertebra = np.broadcast_to(np.hypot(x, y - 0.6 * half_y) <= rng.uniform(14, 20), body.shape)
    hu = np.where(body, _FAT_HU, _AIR_HU)
    hu = np.where(inner, _TISSUE_HU, hu)
    hu = np.where(vertebra, _BONE_HU, hu)

    liver = _liver(rng, x, y, z) & inner & ~vertebra
    hu = np.where(liver, rng.uniform(55, 65), hu)
    for _ in range(rng.integers(3, 7)):
        hu += (rng.uniform(150, 200) - hu) * _vessel_weight(rng, x, y, z, liver) * liver

    labels = liver.astype(np.uint8)
    radii = [rng.uniform(15, 24), rng.uniform(3.5, 6)]
    radii += list(np.exp(rng.uniform(np.log(3.5), np.log(24), size=rng.integers(1, 5))))
    liver_slices = np.flatnonzero(liver.any(axis=(1, 2)))
    for number, radius in enumerate(radii):
        centre = depth // 2 if number == 0 else int(rng.choice(liver_slices))
        inside, weight = _tumor(rng, x, y, z, labels, radius, centre)
        tumor_hu = rng.uniform(10, 40) if rng.random() < 0.7 else rng.uniform(90, 130)
        hu += (tumor_hu - hu) * weight
        labels[inside] = 2
    hu += rng.normal(0, rng.uniform(10, 20), size=hu.shape)
    return hu.astype(np.float32), labels, (pixel_mm, pixel_mm, _SLICE_MM)


def write_phantom_lits(folder: str, n_volumes: int, seed: int = 0, depth: int = PHANTOM_DEPTH,
                       size: int = PHANTOM_SIZE) -> list[tuple[str, str]]:
    """Writes phantom volumes 0..n_volumes-1 as LiTS files ``volume-N.nii.gz`` (int16 HU) and
    ``segmentation-N.nii.gz`` (uint8) in ``folder``; returns their paths."""
    check_int(n_volumes, "n_volumes")
    os.makedirs(folder, exist_ok=True)
    written = []
    for index in range(n_volumes):
        hu, labels, spacing = make_phantom_volume(index, seed, depth, size)
        affine = np.diag([*spacing, 1.0])
        paths = (os.path.join(folder, f"volume-{index}.nii.gz"), os.path.join(folder, f"segmentation-{index}.nii.gz"))
        write_nifti(paths[0], np.round(hu).astype(np.int16), affine)
        write_nifti(paths[1], labels, affine)
        written.append(paths)
    return written


def _prepare_phantom(index: int, options: Preprocessing) -> PreparedSlices:
    hu, labels, spacing = make_phantom_volume(index)
    return prepare_volume(hu, labels, spacing[:2], options, f"phantom volume {index}")


def phantom_cases(n_volumes: int = DEFAULT_PHANTOM_VOLUMES) -> list[Case]:
    """The phantom volumes ``0..n_volumes-1`` (seed 0, default depth and size) as :class:`Case` s."""
    check_int(n_volumes, "number of phantom volumes")
    identity = {"phantom": _GENERATOR_VERSION, "seed": 0, "depth": PHANTOM_DEPTH, "size": PHANTOM_SIZE}
    return [Case(f"phantom-{index}", {**identity, "index": index}, functools.partial(_prepare_phantom, index))
            for index in range(n_volumes)]

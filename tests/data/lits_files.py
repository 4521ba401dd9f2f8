"""Tiny LiTS-like NIfTI files for the data tests, written with nibabel directly (not with the code under test).

Arrays are ``(D, H, W)``; on disk they are ``(H, W, D)`` (the package's axis convention).
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

SPACING = (0.8, 0.7, 2.5)


def write_nifti_file(path, array: np.ndarray, spacing=SPACING) -> str:
    """``array (D, H, W)`` to ``path`` with a diagonal affine of ``spacing``."""
    nib.Nifti1Image(np.moveaxis(array, 0, -1), np.diag([*spacing, 1.0])).to_filename(str(path))
    return str(path)


def tiny_case(seed: int = 0, depth: int = 5, height: int = 16, width: int = 16, tumor_slices=(1, 2)):
    """``(hu float32, labels uint8)``: random HU in [-300, 300], a liver block (label 1) on every slice and
    a tumor block (label 2) on ``tumor_slices``."""
    rng = np.random.default_rng(seed)
    hu = rng.uniform(-300, 300, size=(depth, height, width)).astype(np.float32)
    labels = np.zeros((depth, height, width), np.uint8)
    labels[:, 2:height - 2, 2:width - 2] = 1
    for z in tumor_slices:
        labels[z, 4:height // 2 + 2, 4:width // 2 + 2] = 2
    return hu, labels


def write_lits_case(folder, number: int, hu: np.ndarray, labels: np.ndarray, extension: str = ".nii.gz",
                    segmentation_folder=None) -> tuple[str, str]:
    """``volume-N`` / ``segmentation-N`` files; returns their paths."""
    segmentation_folder = folder if segmentation_folder is None else segmentation_folder
    os.makedirs(folder, exist_ok=True)
    os.makedirs(segmentation_folder, exist_ok=True)
    return (write_nifti_file(os.path.join(folder, f"volume-{number}{extension}"), hu),
            write_nifti_file(os.path.join(segmentation_folder, f"segmentation-{number}{extension}"), labels))


def write_lits_set(folder, n_volumes: int, extension: str = ".nii.gz", order=None, **case_args) -> list:
    """``n_volumes`` tiny cases (case N drawn with seed N), written in ``order`` (default 0..n-1)."""
    order = range(n_volumes) if order is None else order
    return [write_lits_case(folder, n, *tiny_case(seed=n, **case_args), extension=extension) for n in order]

"""The LiTS data set: ``volume-N.nii[.gz]`` CT volumes with ``segmentation-N.nii[.gz]`` labels
(0 background, 1 liver, 2 tumor), found anywhere under a folder and paired by N (the official release keeps
each pair in one folder, some copies keep volumes and segmentations in separate folders). The volume id is
``volume-N``. Other NIfTI files under the folder are skipped with a warning naming them. Errors name the
file: a volume without segmentation or the reverse, two files with one N, a segmentation whose shape or voxel grid
(voxel sizes, axis directions, origin: its affine) differs from its volume's, plus :mod:`ger_kernels.data.nifti`'s
read errors. A segmentation stored flipped or transposed against its volume is an error, not reoriented: its
header, not its voxels, may be what is wrong, and labels guessed onto the wrong voxels would train and score
silently.
"""

from __future__ import annotations

import functools
import logging
import os
import re

import numpy as np

from ger_kernels.data.cache import file_identity
from ger_kernels.data.folder import short_listing
from ger_kernels.data.nifti import NIFTI_SUFFIXES, Volume, read_labels, read_volume
from ger_kernels.data.preprocess import Case, PreparedSlices, Preprocessing, prepare_volume

__all__ = ["find_lits_pairs", "lits_cases"]

_LITS_FILE = re.compile(r"^(volume|segmentation)-(\d+)\.nii(\.gz)?$")

_log = logging.getLogger(__name__)


def find_lits_pairs(root: str) -> dict[int, tuple[str, str]]:
    """``{N: (volume path, segmentation path)}`` for every pair under ``root`` (searched recursively)."""
    if not os.path.isdir(root):
        raise ValueError(f"LiTS folder {root} does not exist or is not a folder")
    found: dict[str, dict[int, str]] = {"volume": {}, "segmentation": {}}
    skipped = []
    for folder, _, names in os.walk(root):
        for name in sorted(names):
            match = _LITS_FILE.match(name)
            if match is None:
                if name.lower().endswith(NIFTI_SUFFIXES):
                    skipped.append(os.path.join(folder, name))
                continue
            kind, number, path = match.group(1), int(match.group(2)), os.path.join(folder, name)
            if number in found[kind]:
                raise ValueError(f"two LiTS {kind} files for N={number}: {found[kind][number]} and {path}")
            found[kind][number] = path
    if skipped:
        _log.warning("%s: skipped %d NIfTI files not named volume-N.nii[.gz] or segmentation-N.nii[.gz]: %s", root,
                     len(skipped), short_listing(skipped))
    volumes, segmentations = found["volume"], found["segmentation"]
    if not volumes and not segmentations:
        raise ValueError(f"no LiTS files (volume-N.nii[.gz] with segmentation-N.nii[.gz]) found under {root}")
    for number in sorted(volumes.keys() ^ segmentations.keys()):
        if number in volumes:
            raise ValueError(f"{volumes[number]}: no segmentation-{number}.nii[.gz] found under {root}")
        raise ValueError(f"{segmentations[number]}: no volume-{number}.nii[.gz] found under {root}")
    return {number: (volumes[number], segmentations[number]) for number in sorted(volumes)}


def _check_same_grid(volume: Volume, labels: Volume, volume_path: str, segmentation_path: str) -> None:
    """The segmentation lies on the volume's voxels: voxel sizes and the affine's axes agree to 1e-3 of a voxel
    size, origins to half a voxel."""
    size = np.asarray(volume.spacing)
    axes = np.abs(labels.affine[:3, :3] - volume.affine[:3, :3]) <= 1e-3 * size
    try:
        shift = np.linalg.solve(volume.affine[:3, :3], labels.affine[:3, 3] - volume.affine[:3, 3])  # in voxels
    except np.linalg.LinAlgError:
        raise ValueError(f"{volume_path}: its affine {np.round(volume.affine, 4).tolist()} maps no voxel grid (it is "
                         f"singular)") from None
    if not (np.allclose(labels.spacing, size, rtol=1e-3, atol=0) and axes.all() and (np.abs(shift) <= 0.5).all()):
        raise ValueError(f"{segmentation_path}: voxel sizes {np.round(labels.spacing, 4).tolist()} mm and affine "
                         f"{np.round(labels.affine, 4).tolist()} differ from those of the volume {volume_path}, "
                         f"{np.round(volume.spacing, 4).tolist()} mm and {np.round(volume.affine, 4).tolist()}; a "
                         f"segmentation must lie on its volume's voxels")


def _prepare_pair(volume_path: str, segmentation_path: str, options: Preprocessing) -> PreparedSlices:
    volume = read_volume(volume_path)
    labels = read_labels(segmentation_path)
    if labels.array.shape != volume.array.shape:
        raise ValueError(f"{segmentation_path}: segmentation shape {labels.array.shape} (D, H, W) differs from the "
                         f"volume's {volume.array.shape} ({volume_path})")
    _check_same_grid(volume, labels, volume_path, segmentation_path)
    return prepare_volume(volume.array, labels.array, volume.spacing[:2], options, segmentation_path)


def lits_cases(root: str) -> list[Case]:
    """One :class:`Case` per LiTS pair under ``root``."""
    return [Case(f"volume-{number}", {"volume": file_identity(volume), "segmentation": file_identity(labels)},
                 functools.partial(_prepare_pair, volume, labels), images=(volume,))
            for number, (volume, labels) in find_lits_pairs(root).items()]

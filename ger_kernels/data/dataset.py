"""Train/test slice data sets for 2-D tumor segmentation, from one of the data sources.

``open_dataset`` preprocesses every volume once (:mod:`ger_kernels.data.preprocess`), keeps the slices in
memory or in a cache folder (:mod:`ger_kernels.data.cache`), drops the volumes left without slices (with
``tumor_only``, those without tumor) and splits the rest by volume (:mod:`ger_kernels.data.split`). An
item is ``(image (3, S, S) float32 in [0, 1], mask (S, S) int64 in {0, 1})``, 1 = tumor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ger_kernels._validation import check_int
from ger_kernels.data.cache import DiskSlices, load_slices
from ger_kernels.data.folder import folder_cases
from ger_kernels.data.lits import lits_cases
from ger_kernels.data.phantom import DEFAULT_PHANTOM_VOLUMES, phantom_cases
from ger_kernels.data.preprocess import (DEFAULT_LABEL_MAP, DEFAULT_WINDOW, Case, PreparedSlices, Preprocessing,
                                         check_label_map, check_window)
from ger_kernels.data.split import check_test_fraction, split_volume_ids

__all__ = ["SliceDataset", "open_dataset", "SOURCE_FORMS"]

SOURCE_FORMS = ("phantom", "phantom:N", "lits:PATH", "folder:PATH")

_log = logging.getLogger(__name__)


class SliceDataset(Dataset):
    """2-D slices of some volumes: ``dataset[i] = (image, mask)``, image float32 ``(3, size, size)`` in
    [0, 1], mask int64 ``(size, size)`` in {0, 1}. Per slice: ``volume_ids[i]``, ``slice_indices[i]`` (its z
    in the volume) and ``spacing[i]`` = (row_mm, col_mm) after resizing, or None when unknown."""

    def __init__(self, volumes: Sequence[PreparedSlices | DiskSlices], volume_ids: Sequence[str], size: int,
                 source: str):
        self.size = size
        self.source = source
        self._volumes = list(volumes)
        self._items = [(v, k) for v, volume in enumerate(self._volumes) for k in range(len(volume.slice_indices))]
        self.volume_ids: list[str] = [volume_ids[v] for v, _ in self._items]
        self.slice_indices: list[int] = [int(self._volumes[v].slice_indices[k]) for v, k in self._items]
        self.spacing: list[tuple[float, float] | None] = [self._volumes[v].spacing for v, _ in self._items]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        v, k = self._items[index]
        volume = self._volumes[v]
        image = torch.from_numpy(np.asarray(volume.images[k], dtype=np.float32))
        mask = torch.from_numpy(np.asarray(volume.masks[k], dtype=np.int64))
        return image, mask

    def describe(self) -> str:
        """One line: source, number of slices and volumes, slice size."""
        return f"{self.source}: {len(self)} slices, {len(set(self.volume_ids))} volumes, {self.size}x{self.size}"


def _cases(source: str) -> tuple[list[Case], dict[int, int] | None]:
    """The volumes of ``source`` and the source's default label map."""
    kind, _, argument = source.partition(":")
    if source == "phantom":
        return phantom_cases(DEFAULT_PHANTOM_VOLUMES), DEFAULT_LABEL_MAP
    if kind == "phantom" and argument.isdigit():
        return phantom_cases(int(argument)), DEFAULT_LABEL_MAP
    if kind == "lits" and argument:
        return lits_cases(argument), DEFAULT_LABEL_MAP
    if kind == "folder" and argument:
        return folder_cases(argument), None
    raise ValueError(f"unknown data source {source!r}; expected one of: {', '.join(SOURCE_FORMS)}")


def open_dataset(source: str, size: int = 448, *, tumor_only: bool = True,
                 window: tuple[float, float] = DEFAULT_WINDOW, label_map: Mapping[int, int] | None = None,
                 test_fraction: float = 0.2, seed: int = 0, cache_dir: str | None = None
                 ) -> tuple[SliceDataset, SliceDataset]:
    """``(train, test)`` slice data sets of ``source`` at ``size`` x ``size``, split by volume with ``seed``.

    ``source``: ``"phantom"`` (12 synthetic volumes generated in memory), ``"phantom:N"``, ``"lits:PATH"``
    (LiTS files under PATH) or ``"folder:PATH"`` (PATH/images and PATH/masks). ``window``: HU window of the
    CT sources. ``label_map``: raw label -> class (0/1); default ``{0: 0, 1: 0, 2: 1}`` for LiTS and the
    phantom, the nonzero rule of :mod:`ger_kernels.data.folder` for folders. ``tumor_only``: keep only
    slices with tumor (the paper's 7190 LiTS slices). ``test_fraction`` of the volumes with slices go to
    the test side; ``seed`` picks them (the phantom's content does not depend on it). ``cache_dir``: keep
    the preprocessed slices there, memory-mapped; without it they are held in memory (float16: ~9 GB for
    the LiTS tumor slices at 448, so give a ``cache_dir`` there).
    """
    check_int(size, "size")
    window = check_window(window)
    check_test_fraction(test_fraction)
    cases, default_label_map = _cases(source)
    label_map = default_label_map if label_map is None else check_label_map(label_map)
    options = Preprocessing(size, window, label_map, bool(tumor_only))
    volumes = {}
    for number, case in enumerate(cases, 1):
        volumes[case.volume_id] = load_slices(case, options, cache_dir)
        _log.info("%s: %s (%d/%d): %d slices", source, case.volume_id, number, len(cases),
                  len(volumes[case.volume_id].slice_indices))
    with_slices = [volume_id for volume_id, volume in volumes.items() if len(volume.slice_indices)]
    what = "slices with tumor" if tumor_only else "slices"
    if len(with_slices) < 2:
        raise ValueError(f"{source}: {len(with_slices)} of {len(cases)} volumes have {what}; a train/test split "
                         f"by volume needs at least 2")
    train_ids, test_ids = split_volume_ids(with_slices, test_fraction, seed)
    return (SliceDataset([volumes[v] for v in train_ids], train_ids, size, f"{source} train ({what})"),
            SliceDataset([volumes[v] for v in test_ids], test_ids, size, f"{source} test ({what})"))

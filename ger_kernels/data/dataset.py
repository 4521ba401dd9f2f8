"""Train/test slice data sets for 2-D tumor segmentation, from one of the data sources.

``open_dataset`` preprocesses every volume once (:mod:`ger_kernels.data.preprocess`), keeps the slices in
memory or in a cache folder (:mod:`ger_kernels.data.cache`), drops the volumes left without slices (with
``tumor_only``, those without tumor) and splits the rest by volume (:mod:`ger_kernels.data.split`), or as the
source gives it (a folder's ``train/`` and ``test/``); ``open_source`` keeps every volume, unsplit. A volume
is a case (patient): a LiTS or phantom volume, or a folder case (:mod:`ger_kernels.data.folder`). What
``tumor_only`` leaves out is counted in each data set's ``describe()``. An item is
``(image (3, S, S) float32 in [0, 1], mask (S, S) int64 in {0, 1})``, 1 = tumor.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ger_kernels._validation import check_int
from ger_kernels.data.cache import DiskSlices, file_fingerprint, load_slices
from ger_kernels.data.folder import folder_cases, short_listing
from ger_kernels.data.lits import lits_cases
from ger_kernels.data.phantom import DEFAULT_PHANTOM_VOLUMES, phantom_cases
from ger_kernels.data.preprocess import (DEFAULT_LABEL_MAP, DEFAULT_WINDOW, Case, PreparedSlices, Preprocessing,
                                         check_label_map, check_window)
from ger_kernels.data.split import check_test_fraction, split_volume_ids

__all__ = ["SliceDataset", "open_dataset", "open_source", "SOURCE_FORMS"]

SOURCE_FORMS = ("phantom", "phantom:N", "lits:PATH", "folder:PATH")

_log = logging.getLogger(__name__)


class SliceDataset(Dataset):
    """2-D slices of some volumes: ``dataset[i] = (image, mask)``, image float32 ``(3, size, size)`` in
    [0, 1], mask int64 ``(size, size)`` in {0, 1}. Per slice: ``volume_ids[i]`` (the case), ``slice_indices[i]``
    (its z in the volume) and ``spacing[i]`` = (row_mm, col_mm) after resizing, or None when unknown.
    What ``tumor_only`` left out: ``dropped_slices`` (slices of these volumes without tumor) and
    ``dropped_volumes`` (volumes of the source without any, which are in no data set). ``images``: the
    ``Case.images`` of each of its volumes, by volume id (``cases``: the source's cases by volume id);
    ``image_files()``: those files' real paths and fingerprints."""

    def __init__(self, volumes: Sequence[PreparedSlices | DiskSlices], volume_ids: Sequence[str],
                 cases: Mapping[str, Case], size: int, source: str, dropped_volumes: int = 0):
        self.size = size
        self.source = source
        self.images: dict[str, tuple[str, ...]] = {volume_id: cases[volume_id].images for volume_id in volume_ids}
        self._volumes = list(volumes)
        self._items = [(v, k) for v, volume in enumerate(self._volumes) for k in range(len(volume.slice_indices))]
        self.volume_ids: list[str] = [volume_ids[v] for v, _ in self._items]
        self.slice_indices: list[int] = [int(self._volumes[v].slice_indices[k]) for v, k in self._items]
        self.spacing: list[tuple[float, float] | None] = [self._volumes[v].spacing for v, _ in self._items]
        self.dropped_slices = sum(int(volume.source_slices) - len(volume.slice_indices) for volume in self._volumes)
        self.dropped_volumes = dropped_volumes

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            valid = f"0..{len(self) - 1}" if len(self) else "none"
            raise IndexError(f"slice index {index} is out of range for {self.source}: it has {len(self)} slices "
                             f"(valid indices: {valid})")
        v, k = self._items[index]
        volume = self._volumes[v]
        image = torch.from_numpy(np.asarray(volume.images[k], dtype=np.float32))
        mask = torch.from_numpy(np.asarray(volume.masks[k], dtype=np.int64))
        return image, mask

    def image_files(self) -> dict[str, list[tuple[str, str]]]:
        """``(real path, file_fingerprint)`` of each image file of each volume, by volume id (none for generated
        volumes)."""
        return {volume_id: [(os.path.realpath(path), file_fingerprint(path)) for path in paths]
                for volume_id, paths in self.images.items()}

    def describe(self) -> str:
        """One line: source, number of slices and volumes, slice size, and what ``tumor_only`` left out."""
        line = f"{self.source}: {len(self)} slices, {len(set(self.volume_ids))} volumes, {self.size}x{self.size}"
        if self.dropped_slices or self.dropped_volumes:
            line += f"; left out: {self.dropped_slices} slices without tumor of these volumes"
            if self.dropped_volumes:
                line += f", {self.dropped_volumes} volumes of the source without any"
        return line


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


def _load(source: str, size: int, tumor_only: bool, window: tuple[float, float],
          label_map: Mapping[int, int] | None, cache_dir: str | None
          ) -> tuple[dict[str, Case], dict[str, PreparedSlices | DiskSlices], str]:
    """``({volume id: its case}, {volume id: its slices}, what was kept)``: every volume of ``source`` preprocessed."""
    check_int(size, "size")
    window = check_window(window)
    cases, default_label_map = _cases(source)
    label_map = default_label_map if label_map is None else check_label_map(label_map)
    options = Preprocessing(size, window, label_map, bool(tumor_only))
    volumes = {}
    for number, case in enumerate(cases, 1):
        volumes[case.volume_id] = slices = load_slices(case, options, cache_dir)
        _log.info("%s: %s (%d/%d): %d of %d slices kept", source, case.volume_id, number, len(cases),
                  len(slices.slice_indices), slices.source_slices)
    what = "slices with tumor" if tumor_only else "slices"
    empty = [volume_id for volume_id, slices in volumes.items() if not len(slices.slice_indices)]
    if empty:
        _log.info("%s: %d of %d volumes have no %s and are left out: %s", source, len(empty), len(cases), what,
                  short_listing(empty))
    return {case.volume_id: case for case in cases}, volumes, what


def open_dataset(source: str, size: int = 448, *, tumor_only: bool = True,
                 window: tuple[float, float] = DEFAULT_WINDOW, label_map: Mapping[int, int] | None = None,
                 test_fraction: float = 0.2, seed: int = 0, cache_dir: str | None = None
                 ) -> tuple[SliceDataset, SliceDataset]:
    """``(train, test)`` slice data sets of ``source`` at ``size`` x ``size``, split by volume with ``seed``.

    ``source``: ``"phantom"`` (12 synthetic volumes generated in memory), ``"phantom:N"``, ``"lits:PATH"``
    (LiTS files under PATH) or ``"folder:PATH"`` (cases of images and masks, :mod:`ger_kernels.data.folder`).
    ``window``: HU window of the CT sources. ``label_map``: raw label -> class (0/1); default
    ``{0: 0, 1: 0, 2: 1}`` for LiTS and the phantom, the nonzero rule of :mod:`ger_kernels.data.folder` for
    folders. ``tumor_only``: keep only slices with tumor (the paper's 7190 LiTS slices). ``test_fraction`` of
    the volumes with slices go to the test side; ``seed`` picks them (the phantom's content does not depend on
    it). A folder with ``train/`` and ``test/`` gives its split as is (``test_fraction`` and ``seed`` do not
    apply). ``cache_dir``: keep the preprocessed slices there, memory-mapped; without it they are held in
    memory (float16: ~9 GB for the LiTS tumor slices at 448, so give a ``cache_dir`` there).
    """
    check_test_fraction(test_fraction)
    cases, volumes, what = _load(source, size, tumor_only, window, label_map, cache_dir)
    with_slices = [volume_id for volume_id, volume in volumes.items() if len(volume.slice_indices)]
    sides = {volume_id: case.side for volume_id, case in cases.items()}
    if any(sides.values()):
        train_ids, test_ids = ([v for v in sorted(with_slices) if sides[v] == side] for side in ("train", "test"))
        for side, ids in (("train", train_ids), ("test", test_ids)):
            if not ids:
                raise ValueError(f"{source}: none of the {sum(s == side for s in sides.values())} cases in {side}/ "
                                 f"has {what}")
        _log.info("%s: the train/test split given by the source (test_fraction and seed do not apply)", source)
    elif len(with_slices) < 2:
        raise ValueError(f"{source}: {len(with_slices)} of {len(cases)} volumes have {what}; a train/test split "
                         f"by volume needs at least 2")
    else:
        train_ids, test_ids = split_volume_ids(with_slices, test_fraction, seed)
    dropped = len(cases) - len(with_slices)
    return (SliceDataset([volumes[v] for v in train_ids], train_ids, cases, size, f"{source} train ({what})", dropped),
            SliceDataset([volumes[v] for v in test_ids], test_ids, cases, size, f"{source} test ({what})", dropped))


def open_source(source: str, size: int = 448, *, tumor_only: bool = True,
                window: tuple[float, float] = DEFAULT_WINDOW, label_map: Mapping[int, int] | None = None,
                cache_dir: str | None = None) -> SliceDataset:
    """Every volume of ``source`` as one data set, without a split: a separate test set (``lits:TEST_PATH``,
    ``folder:PATH/test``) scored whole. Arguments as for :func:`open_dataset`."""
    cases, volumes, what = _load(source, size, tumor_only, window, label_map, cache_dir)
    ids = sorted(volume_id for volume_id, volume in volumes.items() if len(volume.slice_indices))
    if not ids:
        raise ValueError(f"{source}: none of its {len(cases)} volumes has {what}")
    return SliceDataset([volumes[v] for v in ids], ids, cases, size, f"{source} all volumes ({what})",
                        len(cases) - len(ids))

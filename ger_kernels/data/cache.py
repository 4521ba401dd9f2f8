"""Prepared slices kept in memory, or on disk with memory mapping when a cache folder is given.

Each volume is preprocessed once. Without a cache folder its slices stay in memory (fine for small sets;
the full LiTS at 448 x 448 needs ~9 GB as float16). With one, each volume and preprocessing gets an entry
``<volume_id>-<key>``: ``.images.npy`` (float16 ``(N, 3, S, S)``), ``.masks.npy`` (uint8 ``(N, S, S)``) and
``.json`` (slice indices, spacing, number of slices before ``tumor_only``), each written atomically, the
``.json`` last: an entry exists when all three files do. ``key`` hashes the cache format, the volume's
identity (for files: absolute path, size, mtime, inode and ctime, so a changed or replaced file gets a new entry)
and the preprocessing (size, window, label map, tumor_only). An entry whose ``.json`` or ``.npy`` headers are
damaged (a crash, a full disk) is written again, with a warning naming it.
Entries are read back memory-mapped, opened on first use. Stale entries are not deleted: remove the folder
to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re

import numpy as np

from ger_kernels._io import write_atomically, write_text_atomically
from ger_kernels.data.preprocess import Case, PreparedSlices, Preprocessing

__all__ = ["file_identity", "file_fingerprint", "cache_key", "load_slices", "DiskSlices"]

_FORMAT_VERSION = 2

_log = logging.getLogger(__name__)


def file_identity(path: str) -> list:
    """``[absolute path, size, mtime_ns, inode, ctime_ns]``: changes when the file is replaced or modified, also by
    a copy that keeps size and mtime (``cp -p``, ``rsync -a``: the ctime cannot be set back)."""
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]


_FINGERPRINT_CHUNKS, _FINGERPRINT_CHUNK_BYTES = 16, 4096


def file_fingerprint(path: str) -> str:
    """Hex digest of a file's size and of 16 blocks of 4 KiB spread evenly over it (the whole file when it is
    smaller): equal for copies of a file wherever they lie, different for two CT volumes or images of equal size
    (their middle blocks differ), read in 16 seeks whatever the file's size."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        last = max(size - _FINGERPRINT_CHUNK_BYTES, 0)
        for index in range(_FINGERPRINT_CHUNKS):
            f.seek(last * index // (_FINGERPRINT_CHUNKS - 1))
            digest.update(f.read(_FINGERPRINT_CHUNK_BYTES))
    return digest.hexdigest()


def cache_key(case: Case, options: Preprocessing) -> str:
    """Hex digest naming ``case`` preprocessed with ``options``."""
    description = {"format": _FORMAT_VERSION, "case": case.identity, "preprocessing": options.key()}
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:32]


class DiskSlices:
    """The :class:`PreparedSlices` of a cache entry; ``images`` and ``masks`` are memory-mapped on first use
    and pickled as their paths (so DataLoader workers do not copy them)."""

    def __init__(self, entry: str, slice_indices: np.ndarray, spacing: tuple[float, float] | None,
                 source_slices: int):
        self.entry = entry
        self.slice_indices = slice_indices
        self.spacing = spacing
        self.source_slices = source_slices
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = (np.load(self.entry + ".images.npy", mmap_mode="r"),
                            np.load(self.entry + ".masks.npy", mmap_mode="r"))
        return self._arrays

    @property
    def images(self) -> np.ndarray:
        return self._open()[0]

    @property
    def masks(self) -> np.ndarray:
        return self._open()[1]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}


def _save_array(path: str, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    write_atomically(path, write)


def _slices(entry: str, meta: dict) -> DiskSlices:
    spacing = None if meta["spacing"] is None else tuple(float(mm) for mm in meta["spacing"])
    return DiskSlices(entry, np.asarray(meta["slice_indices"], dtype=np.int64), spacing, int(meta["source_slices"]))


def _write_entry(entry: str, slices: PreparedSlices) -> DiskSlices:
    _save_array(entry + ".images.npy", slices.images)
    _save_array(entry + ".masks.npy", slices.masks)
    meta = {"slice_indices": [int(z) for z in slices.slice_indices],
            "spacing": None if slices.spacing is None else list(slices.spacing),
            "source_slices": int(slices.source_slices)}
    write_text_atomically(entry + ".json", json.dumps(meta))
    return _slices(entry, meta)


def _read_entry(entry: str, size: int) -> DiskSlices | None:
    """The slices of ``entry``; ``None`` when a file is missing, or (with a warning) when the entry is damaged:
    ``.json`` not the metadata, an ``.npy`` unreadable or not of ``(N, 3, size, size)`` images and ``(N, size,
    size)`` masks, N the number of slice indices."""
    try:
        with open(entry + ".json") as f:
            slices = _slices(entry, json.load(f))
        count = len(slices.slice_indices)
        shapes = tuple(np.load(entry + suffix, mmap_mode="r").shape for suffix in (".images.npy", ".masks.npy"))
        if shapes != ((count, 3, size, size), (count, size, size)):
            raise ValueError(f"arrays of shapes {shapes[0]} and {shapes[1]} for {count} slices of {size} x {size}")
    except FileNotFoundError:
        return None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as error:
        _log.warning("cache entry %s is damaged (%s: %s); rebuilding it", entry, type(error).__name__, error)
        return None
    return slices


def load_slices(case: Case, options: Preprocessing, cache_dir: str | None) -> PreparedSlices | DiskSlices:
    """The slices of ``case``: prepared now (no ``cache_dir``), or read from / written to ``cache_dir`` (an entry
    that is incomplete or damaged is written again)."""
    if cache_dir is None:
        return case.prepare(options)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", case.volume_id)
    entry = os.path.join(cache_dir, f"{name}-{cache_key(case, options)}")
    slices = _read_entry(entry, options.size)
    return slices if slices is not None else _write_entry(entry, case.prepare(options))

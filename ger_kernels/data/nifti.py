"""NIfTI volumes as ``(D, H, W)`` arrays, and masks written back in the same space.

Axis convention: ``array[d, h, w] = nifti_data[h, w, d]``. The last NIfTI axis (k) is the slice axis D,
the first (i) gives the rows H and the second (j) the columns W; a CT volume is not reoriented by its affine
(GER-UNet is equivariant to quarter turns and mirrors, so the in-plane orientation does not matter), and
the affine is kept to write results in the input's space.
``spacing = (row_mm, col_mm, slice_mm)`` are the header's voxel sizes along i, j, k. CT values are HU after
the header's ``scl_slope``/``scl_inter``. Files are ``.nii`` or ``.nii.gz``; a trailing axis of length 1
(``(H, W, D, 1)``) is dropped. Refused, before any voxel is read: voxels that are not real numbers (RGB,
complex), voxel sizes that are not finite and positive, a header claiming more voxel bytes than the file can
hold. A CT volume with NaN or infinite voxels is refused too. Every error names the file.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from ger_kernels._io import write_atomically

__all__ = ["NIFTI_SUFFIXES", "Space", "Volume", "read_volume", "read_labels", "write_nifti", "write_mask"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")

_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)

_MAX_EXPANSION = {".nii": 1, ".gz": 1032}  # the most bytes of voxels per byte of file; deflate packs 1032 at most


@dataclass(frozen=True)
class Space:
    """Where a NIfTI volume lies as its header says it: the sform and qform matrices (4, 4) and their codes (0:
    unset, 1: scanner, 2: aligned, ...), which viewers choose between by their own rules: a mask written with all
    four lies where they show its volume."""

    sform: np.ndarray
    sform_code: int
    qform: np.ndarray
    qform_code: int


@dataclass(frozen=True)
class Volume:
    """A NIfTI volume: ``array`` ``(D, H, W)`` (float32 HU from :func:`read_volume`, the stored label values from
    :func:`read_labels`), ``affine`` (4, 4) voxel (i, j, k) -> mm, ``spacing`` (row_mm, col_mm, slice_mm),
    ``space`` its header's :class:`Space` (None for a format without sform and qform)."""

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    space: Space | None = None


def _read_error(path: str, error: BaseException) -> ValueError:
    return ValueError(f"{path}: cannot read as NIfTI ({type(error).__name__}: {error})")


def _open(path: str) -> nib.spatialimages.SpatialImage:
    """The image at ``path``, voxels not read yet; ``ValueError`` unless its header describes a 3-D volume of real
    numbers with finite, positive voxel sizes that the file can hold."""
    try:
        image = nib.load(path, mmap=False)
    except _READ_ERRORS as error:
        raise _read_error(path, error) from error
    shape, dtype, zooms = image.shape, image.get_data_dtype(), image.header.get_zooms()[:3]
    if len(shape) != 3 and shape[3:] != (1,):
        raise ValueError(f"{path}: expected a 3-D volume (H, W, D), got shape {shape}")
    if dtype.kind not in "biuf":
        raise ValueError(f"{path}: voxels of type {dtype} are not real numbers (RGB or complex data); expected "
                         f"integer or floating point voxels")
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise ValueError(f"{path}: voxel sizes {tuple(float(z) for z in zooms)} must be finite and positive")
    claimed, size = image.dataobj.offset + math.prod(shape) * dtype.itemsize, os.path.getsize(path)
    expansion = next((e for suffix, e in _MAX_EXPANSION.items() if path.endswith(suffix)), None)
    if expansion is not None and claimed > expansion * size:
        raise ValueError(f"{path}: cannot read as NIfTI: the header claims {shape} voxels of {dtype} ({claimed} "
                         f"bytes), more than the {size}-byte file can hold (a truncated file or a damaged header)")
    return image


def _read(path: str, as_hu: bool) -> Volume:
    """The volume at ``path``: float32 HU when ``as_hu``, else the stored values (scaled if the header says so)."""
    image = _open(path)
    try:
        data = image.get_fdata(dtype=np.float32) if as_hu else np.asanyarray(image.dataobj)
    except MemoryError as error:
        raise ValueError(f"{path}: not enough memory to read its {image.shape} voxels") from error
    except _READ_ERRORS as error:
        raise _read_error(path, error) from error
    if data.ndim == 4:
        data = data[..., 0]
    header, space = image.header, None
    if hasattr(header, "get_sform") and hasattr(header, "get_qform"):
        space = Space(header.get_sform(), int(header["sform_code"]), header.get_qform(), int(header["qform_code"]))
    return Volume(np.moveaxis(data, -1, 0), np.asarray(image.affine, dtype=np.float64),
                  tuple(float(z) for z in header.get_zooms()[:3]), space)


def read_volume(path: str) -> Volume:
    """The CT volume at ``path``, ``array`` (D, H, W) float32 in HU; ``ValueError`` if a voxel is not finite."""
    volume = _read(path, as_hu=True)
    array = volume.array
    if array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):  # NaN propagates to both
        bad = np.argwhere(~np.isfinite(array))
        d, h, w = bad[0]
        raise ValueError(f"{path}: {len(bad)} voxels are NaN or infinite, the first at (i, j, k) = ({h}, {w}, {d}); "
                         f"a CT volume must hold finite values")
    return volume


def read_labels(path: str) -> Volume:
    """The label volume at ``path``, ``array`` (D, H, W) with the stored dtype (raw label values)."""
    return _read(path, as_hu=False)


def write_nifti(path: str, array: np.ndarray, affine: np.ndarray, space: Space | None = None) -> None:
    """Writes ``array (D, H, W)`` with its dtype and ``affine`` to ``.nii`` or ``.nii.gz``, atomically
    (a temporary file in the same folder, then ``os.replace``); with ``space`` (that of the volume it
    belongs to), its sform and qform and their codes instead of ``affine`` alone."""
    if not path.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"{path}: affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if np.ndim(array) != 3:
        raise ValueError(f"{path}: array must be 3-D (D, H, W), got shape {np.shape(array)}")
    image = nib.Nifti1Image(np.moveaxis(np.asarray(array), 0, -1), affine)
    image.header.set_xyzt_units("mm")
    if space is not None:
        image.header.set_sform(space.sform, code=space.sform_code)
        image.header.set_qform(space.qform, code=space.qform_code)
    payload = image.to_bytes()
    if path.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=1, mtime=0)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(payload)

    write_atomically(path, write)


def write_mask(path: str, mask: np.ndarray, affine: np.ndarray, space: Space | None = None) -> None:
    """Writes a label mask ``(D, H, W)`` (integers 0..255, e.g. 1 = tumor) as uint8 with ``affine`` (and the
    ``space`` of its volume, as :func:`write_nifti`), so that ``read_volume(path).array`` gives it back."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"{path}: mask must hold integer labels, got dtype {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"{path}: mask labels must lie in 0..255, got {mask.min()}..{mask.max()}")
    write_nifti(path, mask.astype(np.uint8), affine, space)

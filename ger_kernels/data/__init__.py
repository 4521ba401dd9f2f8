"""Data for 2-D liver-tumor segmentation: CT volumes and users' images turned into 2.5D slices.

- ``open_dataset(source, size=448, ...) -> (train, test)``: :class:`SliceDataset` s of one of the sources
  ``"phantom"`` (synthetic, generated in memory), ``"phantom:N"``, ``"lits:PATH"`` (LiTS
  ``volume-N``/``segmentation-N`` NIfTI files) or ``"folder:PATH"`` (PATH/images + PATH/masks, grouped into
  cases; or PATH/train + PATH/test), split 4:1 by volume (case). ``open_source``: every volume, unsplit.
  Items are ``(image (3, S, S) float32 in [0, 1], mask (S, S) int64)``, mask 1 = tumor.
- ``read_volume``, ``volume_to_slices``, ``write_mask``: a NIfTI volume in, model input, a NIfTI mask out.
- ``make_phantom_volume``, ``write_phantom_lits``: the synthetic CT-like data.

Conventions: volumes are ``(D, H, W)`` with D the last NIfTI axis (:mod:`.nifti`); HU window
``DEFAULT_WINDOW = (-200, 250)`` mapped to [0, 1]; 2.5D channels ``(z-1, z, z+1)``; whole slices resized to
``size`` x ``size`` (images bilinear, masks nearest) (:mod:`.preprocess`); LiTS labels 0 background,
1 liver, 2 tumor mapped by ``{0: 0, 1: 0, 2: 1}``; folder masks: nonzero / non-black = tumor (:mod:`.folder`).
"""

from __future__ import annotations

from ger_kernels.data.dataset import SOURCE_FORMS, SliceDataset, open_dataset, open_source
from ger_kernels.data.nifti import Volume, read_volume, write_mask
from ger_kernels.data.phantom import make_phantom_volume, write_phantom_lits
from ger_kernels.data.preprocess import DEFAULT_LABEL_MAP, DEFAULT_WINDOW, volume_to_slices
from ger_kernels.data.split import split_volume_ids

__all__ = ["open_dataset", "open_source", "SliceDataset", "SOURCE_FORMS", "DEFAULT_WINDOW", "DEFAULT_LABEL_MAP",
           "Volume", "read_volume", "volume_to_slices", "write_mask", "make_phantom_volume", "write_phantom_lits",
           "split_volume_ids"]

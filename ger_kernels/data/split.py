"""Random train/test split by volume (never by slice, so no patient is on both sides).

The ids are sorted first, so the split depends only on the set of ids and the seed, not on the order the
files were found in; ``round(test_fraction * n)`` volumes go to the test side, at least 1 on each side.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

__all__ = ["check_test_fraction", "split_volume_ids"]


def check_test_fraction(test_fraction: float) -> float:
    """``test_fraction`` if it is a number strictly between 0 and 1."""
    if not isinstance(test_fraction, (int, float)) or not math.isfinite(test_fraction) \
            or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    return float(test_fraction)


def split_volume_ids(volume_ids: Iterable[str], test_fraction: float = 0.2, seed: int = 0
                     ) -> tuple[list[str], list[str]]:
    """``(train_ids, test_ids)``, each sorted, from the distinct ``volume_ids`` (at least 2)."""
    test_fraction = check_test_fraction(test_fraction)
    ids = sorted(set(volume_ids))
    if len(ids) < 2:
        raise ValueError(f"a train/test split by volume needs at least 2 volumes, got {len(ids)}: {ids}")
    n_test = min(len(ids) - 1, max(1, round(test_fraction * len(ids))))
    order = np.random.default_rng(seed).permutation(len(ids))
    test = {ids[i] for i in order[:n_test]}
    return [v for v in ids if v not in test], [v for v in ids if v in test]

"""Segmentation metrics of the GER-UNet paper (SPEC section 7, paper Table 1).

Per 2-D slice, with ``P`` the predicted tumor mask and ``G`` the ground truth (nonzero = tumor) and
``TP = |P&G|``, ``FP = |P&~G|``, ``FN = |~P&G|``, ``TN = |~P&~G|``:

- Dice ``2 TP / (2 TP + FP + FN)`` (= ``2|P&G| / (|P| + |G|)``), Jaccard ``TP / (TP + FP + FN)``
  (= ``|P&G| / |P or G|``), Precision ``TP / (TP + FP)``, Recall ``TP / (TP + FN)``, Specificity
  ``TN / (TN + FP)``. They are fractions in [0, 1], not percent.
- Hausdorff distance (``hd``) and its 95th percentile (``hd95``) between the *boundaries* of ``P`` and
  ``G``, in pixels; with ``spacing=(row_mm, col_mm)`` also ``hd_mm``, ``hd95_mm`` in millimetres.

Empty-mask conventions. A ratio whose denominator is zero is undefined and reported as ``None``
(never NaN), with one exception: Dice and Jaccard are 1 when both masks are empty (a correct
"no tumor" answer). Hence:

- both empty: Dice = Jaccard = 1, Precision = Recall = None, HD = HD95 = None;
- ``P`` empty, ``G`` not: Dice = Jaccard = 0, Precision = None, Recall = 0, HD = HD95 = None;
- ``G`` empty, ``P`` not: Dice = Jaccard = 0, Precision = 0, Recall = None, HD = HD95 = None;
- Specificity is None when ``G`` covers the whole slice (no negatives), else computed as above
  (so 1 when ``P`` is empty).

``aggregate`` averages every metric over the slices where it is defined, so an undefined
precision, recall or Hausdorff distance is left out of its mean (not counted as 0 or 1), counts the
slices in each mean (a model's HD can rest on few slices: those where both masks are non-empty), and
``f1 = 2 mean(Precision) mean(Recall) / (mean(Precision) + mean(Recall))`` from those means, as the
paper does (this reproduces all F1 values of its Table 1); ``f1`` is 0 when both means are 0 and
``None`` when either mean is undefined.

Hausdorff definitions. The boundary of a mask is its foreground pixels with at least one
4-neighbour that is background or outside the image (``mask & ~binary_erosion(mask)`` with the
4-connected cross and a background border, as in medpy). Distances are Euclidean between pixel
centres; with a spacing the row and column offsets are scaled by ``row_mm`` and ``col_mm``. The
directed surface distances ``d(p, boundary G)`` for every boundary pixel ``p`` of ``P``, and
``d(g, boundary P)`` for every boundary pixel ``g`` of ``G``, come from
``scipy.ndimage.distance_transform_edt``. Then

- ``hd`` = the maximum of both sets (the symmetric Hausdorff distance between the two boundaries);
- ``hd95`` = the 95th percentile (numpy's default linear interpolation) of the two sets pooled into
  one, as medpy's ``hd95`` does (MONAI instead takes the larger of the two directed percentiles).

Both are undefined (``None``) when either mask is empty. These can differ from the Hausdorff
distance between the foreground pixel sets when a mask has holes: for ``G`` a filled square and
``P`` the same square with a hole, the foreground distance is the one from the hole's centre to its
rim, while ``hd`` is the one from the hole's rim to the square's edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

__all__ = ["slice_metrics", "aggregate", "PAPER_TABLE1", "format_table", "format_counts"]

METRIC_KEYS = ("dice", "jaccard", "precision", "recall", "specificity", "hd", "hd95")

# Paper Table 1, as printed: percent, HD in pixels.
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "U-Net": {"dice": 80.27, "hd": 40.13, "jaccard": 71.30, "precision": 74.95, "recall": 89.74,
              "specificity": 99.86, "f1": 81.68},
    "DANet": {"dice": 85.48, "hd": 27.50, "jaccard": 78.55, "precision": 84.05, "recall": 88.79,
              "specificity": 99.93, "f1": 86.35},
    "Regular R-UNet": {"dice": 82.60, "hd": 32.44, "jaccard": 74.77, "precision": 79.82, "recall": 88.52,
                       "specificity": 99.90, "f1": 83.95},
    "GER-UNet (add)": {"dice": 86.63, "hd": 24.79, "jaccard": 80.31, "precision": 87.23, "recall": 87.79,
                       "specificity": 99.95, "f1": 87.51},
    "GER-UNet (concat)": {"dice": 86.16, "hd": 26.83, "jaccard": 79.77, "precision": 86.27, "recall": 88.18,
                          "specificity": 99.94, "f1": 87.21},
}

# (column title, key, whether our value is a fraction printed in percent)
_TABLE_COLUMNS = (("Dice", "dice", True), ("HD (px)", "hd", False), ("Jaccard", "jaccard", True),
                  ("Precision", "precision", True), ("Recall", "recall", True),
                  ("Specificity", "specificity", True), ("F1", "f1", True))

_FOUR_NEIGHBOURS = ndimage.generate_binary_structure(2, 1)


def _as_mask(array, name: str) -> np.ndarray:
    """A 2-D numpy bool mask from a numpy array or torch tensor; floats must hold only 0 and 1."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask, got shape {tuple(array.shape)}")
    if array.dtype.kind == "f":
        if not np.isin(array, (0.0, 1.0)).all():
            raise ValueError(f"{name} is a float array with values other than 0 and 1; threshold it first")
    elif array.dtype.kind not in "biu":
        raise TypeError(f"{name} must have a bool, integer or 0/1 float dtype, got {array.dtype}")
    return array != 0


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_FOUR_NEIGHBOURS, border_value=0)


def _surface_distances(boundary_a: np.ndarray, boundary_b: np.ndarray,
                       sampling: tuple[float, float] | None) -> np.ndarray:
    """Distances from every boundary pixel of A to boundary B, then from every one of B to A."""
    to_b = ndimage.distance_transform_edt(~boundary_b, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~boundary_a, sampling=sampling)
    return np.concatenate([to_b[boundary_a], to_a[boundary_b]])


def _check_spacing(spacing) -> tuple[float, float]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 2 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be (row_mm, col_mm), two positive numbers, got {spacing}")
    return spacing


def slice_metrics(pred, target, spacing: Sequence[float] | None = None) -> dict[str, float | None]:
    """Metrics of one slice: ``pred`` and ``target`` are (H, W) masks, numpy or torch, nonzero = tumor.

    Returns ``dice, jaccard, precision, recall, specificity`` (fractions in [0, 1]), ``hd, hd95``
    (pixels) and, when ``spacing=(row_mm, col_mm)`` is given, ``hd_mm, hd95_mm`` (millimetres);
    undefined values are ``None`` (see the module docstring for the conventions).
    """
    p = _as_mask(pred, "pred")
    g = _as_mask(target, "target")
    if p.shape != g.shape:
        raise ValueError(f"pred and target shapes differ: pred {p.shape}, target {g.shape}")
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    tn = p.size - tp - fp - fn
    both_empty = tp + fp + fn == 0
    result: dict[str, float | None] = {
        "dice": 1.0 if both_empty else 2 * tp / (2 * tp + fp + fn),
        "jaccard": 1.0 if both_empty else tp / (tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }
    samplings = {"": None}
    if spacing is not None:
        samplings["_mm"] = _check_spacing(spacing)
    boundaries = (_boundary(p), _boundary(g)) if p.any() and g.any() else None
    for suffix, sampling in samplings.items():
        if boundaries is None:
            result["hd" + suffix] = result["hd95" + suffix] = None
        else:
            distances = _surface_distances(*boundaries, sampling)
            result["hd" + suffix] = float(distances.max())
            result["hd95" + suffix] = float(np.percentile(distances, 95))
    return result


def aggregate(per_slice: list[dict]) -> dict[str, float | int | None]:
    """Means over slices of the dicts of :func:`slice_metrics`, each over the slices where it is defined.

    Every key found (at least those of :func:`slice_metrics` without spacing) maps to its mean, ``None``
    when no slice defines it, and ``<key>_slices`` to the number of slices in that mean (so ``hd_slices``
    counts the slices where both masks are non-empty); plus ``f1`` = 2 mean(precision) mean(recall) /
    (mean(precision) + mean(recall)) and ``slices`` (number of slices).
    """
    keys = list(METRIC_KEYS)
    for metrics in per_slice:
        keys.extend(key for key in metrics if key not in keys)
    result: dict[str, float | int | None] = {}
    for key in keys:
        values = [metrics[key] for metrics in per_slice if metrics.get(key) is not None]
        result[key] = float(np.mean(values)) if values else None
        result[f"{key}_slices"] = len(values)
    precision, recall = result["precision"], result["recall"]
    if precision is None or recall is None:
        result["f1"] = None
    else:
        result["f1"] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    result["slices"] = len(per_slice)
    return result


def _cell(value: float | None, scale: float) -> str:
    return "-" if value is None else f"{scale * value:.2f}"


def _columns(rows: dict[str, dict]) -> list[tuple[str, str, bool]]:
    """The table's columns: Table 1's, with "HD (mm)" after "HD (px)" when a row has an ``hd_mm`` key (its
    slices had a spacing), even if no slice defines it."""
    columns = list(_TABLE_COLUMNS)
    if any("hd_mm" in row for row in rows.values()):
        columns.insert(2, ("HD (mm)", "hd_mm", False))
    return columns


def _header(first: str, titles: list[str]) -> list[str]:
    return [f"| {first} | " + " | ".join(titles) + " |", "|---" * (len(titles) + 1) + "|"]


def format_table(rows: dict[str, dict], include_paper: bool = True) -> str:
    """Markdown table of ``{method: aggregate(...)}`` rows, then the paper's Table 1 rows when ``include_paper``.

    Our ratio metrics (fractions) are printed in percent, HD in pixels ("HD (px)", as in Table 1) and, when
    a row has an ``hd_mm`` key, in millimetres in an "HD (mm)" column; all with 2 decimals, missing or ``None``
    values as "-"; paper rows (already in percent) are marked "[paper]".
    """
    columns = _columns(rows)
    lines = _header("method", [title for title, _, _ in columns])
    for method, metrics in rows.items():
        cells = [_cell(metrics.get(key), 100.0 if percent else 1.0) for _, key, percent in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if include_paper:
        for method, metrics in PAPER_TABLE1.items():
            cells = [_cell(metrics.get(key), 1.0) for _, key, _ in columns]
            lines.append(f"| {method} [paper] | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_counts(rows: dict[str, dict]) -> str:
    """Markdown table of how many slices entered each mean of :func:`format_table` (``<key>_slices`` of
    :func:`aggregate`), after the total number of slices; F1 has none (it is computed from two means)."""
    columns = [column for column in _columns(rows) if column[1] != "f1"]
    lines = _header("method", ["slices"] + [title for title, _, _ in columns])
    for method, metrics in rows.items():
        counts = [metrics.get("slices")] + [metrics.get(f"{key}_slices") for _, key, _ in columns]
        lines.append(f"| {method} | " + " | ".join("-" if n is None else str(n) for n in counts) + " |")
    return "\n".join(lines) + "\n"

"""Tests of ger_kernels.metrics against direct numpy counting, scipy's directed_hausdorff and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import directed_hausdorff

from ger_kernels.metrics import METRIC_KEYS, PAPER_TABLE1, aggregate, format_counts, format_table, slice_metrics

SHAPES = [(7, 11), (13, 5), (16, 16), (31, 23)]
DENSITIES = [0.05, 0.3, 0.8]


def random_mask_pair(rng: np.random.Generator, shape: tuple[int, int], density: float):
    """Two independent random masks, both with at least one foreground pixel."""
    masks = []
    for _ in range(2):
        mask = rng.random(shape) < density
        mask[tuple(rng.integers(0, n) for n in shape)] = True
        masks.append(mask)
    return masks


def blob_mask(shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    rows, cols = np.indices(shape)
    return ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1


def boundary_coordinates(mask: np.ndarray, spacing=(1.0, 1.0)) -> np.ndarray:
    """(N, 2) coordinates of foreground pixels with a background or out-of-image 4-neighbour."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return np.argwhere(mask & ~interior) * np.asarray(spacing, dtype=float)


def scipy_hausdorff(pred: np.ndarray, target: np.ndarray, spacing=(1.0, 1.0)) -> float:
    p, g = boundary_coordinates(pred, spacing), boundary_coordinates(target, spacing)
    return max(directed_hausdorff(p, g)[0], directed_hausdorff(g, p)[0])


def brute_force_hd95(pred: np.ndarray, target: np.ndarray, spacing=(1.0, 1.0)) -> float:
    p, g = boundary_coordinates(pred, spacing), boundary_coordinates(target, spacing)
    pairwise = np.sqrt(((p[:, None, :] - g[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.concatenate([pairwise.min(1), pairwise.min(0)]), 95))


# --- Hausdorff distances -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
def test_hd_matches_scipy_directed_hausdorff(shape, density):
    rng = np.random.default_rng([*shape, int(100 * density)])
    spacing = (0.7, 1.9)
    for _ in range(3):
        pred, target = random_mask_pair(rng, shape, density)
        metrics = slice_metrics(pred, target, spacing=spacing)
        assert metrics["hd"] == pytest.approx(scipy_hausdorff(pred, target), rel=1e-12)
        assert metrics["hd_mm"] == pytest.approx(scipy_hausdorff(pred, target, spacing), rel=1e-12)


def test_hd_on_large_blobs_matches_scipy():
    pred = blob_mask((448, 448), (200, 230), (60, 35)) | blob_mask((448, 448), (400, 60), (10, 20))
    target = blob_mask((448, 448), (215, 240), (50, 45))
    metrics = slice_metrics(pred, target, spacing=(0.8, 0.6))
    assert metrics["hd"] == pytest.approx(scipy_hausdorff(pred, target), rel=1e-12)
    assert metrics["hd_mm"] == pytest.approx(scipy_hausdorff(pred, target, (0.8, 0.6)), rel=1e-12)
    assert metrics["hd"] > 100  # the far blob dominates


@pytest.mark.parametrize("shape", SHAPES)
def test_hd95_matches_brute_force(shape):
    rng = np.random.default_rng(sum(shape))
    spacing = (1.3, 0.4)
    for density in DENSITIES:
        pred, target = random_mask_pair(rng, shape, density)
        metrics = slice_metrics(pred, target, spacing=spacing)
        assert metrics["hd95"] == pytest.approx(brute_force_hd95(pred, target), rel=1e-12, abs=1e-12)
        assert metrics["hd95_mm"] == pytest.approx(brute_force_hd95(pred, target, spacing), rel=1e-12, abs=1e-12)
        assert metrics["hd95"] <= metrics["hd"]


def test_hd95_pools_both_directions():
    pred = np.zeros((12, 20), dtype=bool)
    pred[0, :] = True  # 20 boundary pixels, all on the target
    target = pred.copy()
    target[5:11, 0] = True  # 26 boundary pixels: 20 at distance 0, 6 at distances 5..10
    metrics = slice_metrics(pred, target)
    # pooled: 40 zeros and 5..10 -> position 0.95 * 45 = 42.75 between 7 and 8
    assert metrics["hd95"] == pytest.approx(7.75)
    assert metrics["hd"] == 10.0
    # the larger directed percentile (target side: position 0.95 * 25 = 23.75 between 8 and 9) is not used
    assert metrics["hd95"] != pytest.approx(8.75)


def test_hd_is_between_boundaries_not_foregrounds():
    target = np.zeros((11, 11), dtype=bool)
    target[1:10, 1:10] = True
    pred = target.copy()
    pred[3:8, 3:8] = False  # a 5x5 hole: its centre is 3 pixels from the nearest pred pixel
    foreground_hd = max(directed_hausdorff(np.argwhere(pred), np.argwhere(target))[0],
                        directed_hausdorff(np.argwhere(target), np.argwhere(pred))[0])
    assert foreground_hd == 3.0
    assert slice_metrics(pred, target)["hd"] == 1.0  # hole rim (rows/cols 2 and 8) to the square's edge (1 and 9)


def test_single_pixels():
    pred = np.zeros((6, 9), dtype=np.uint8)
    target = np.zeros((6, 9), dtype=np.uint8)
    pred[0, 0] = 1
    target[3, 4] = 1
    metrics = slice_metrics(pred, target, spacing=(2.0, 0.5))
    assert metrics["hd"] == metrics["hd95"] == 5.0
    assert metrics["hd_mm"] == metrics["hd95_mm"] == pytest.approx(math.hypot(3 * 2.0, 4 * 0.5))
    assert metrics["dice"] == metrics["jaccard"] == metrics["precision"] == metrics["recall"] == 0.0
    same = slice_metrics(pred, pred)
    assert same["hd"] == same["hd95"] == 0.0
    assert same["dice"] == same["jaccard"] == same["precision"] == same["recall"] == 1.0


# --- overlap metrics -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_overlap_metrics_match_numpy_counting(shape):
    rng = np.random.default_rng(7 * shape[0] + shape[1])
    for density in DENSITIES:
        pred, target = random_mask_pair(rng, shape, density)
        metrics = slice_metrics(pred, target)
        both, union = np.sum(pred & target), np.sum(pred | target)
        assert metrics["dice"] == pytest.approx(2 * both / (pred.sum() + target.sum()), rel=1e-12)
        assert metrics["jaccard"] == pytest.approx(both / union, rel=1e-12)
        assert metrics["precision"] == pytest.approx(both / pred.sum(), rel=1e-12)
        assert metrics["recall"] == pytest.approx(both / target.sum(), rel=1e-12)
        assert metrics["specificity"] == pytest.approx(np.sum(~pred & ~target) / np.sum(~target), rel=1e-12)
        assert set(metrics) == set(METRIC_KEYS)


# --- empty and full masks ------------------------------------------------------------------------------

def test_both_empty():
    empty = np.zeros((5, 7), dtype=bool)
    metrics = slice_metrics(empty, empty, spacing=(1.0, 2.0))
    assert metrics == {"dice": 1.0, "jaccard": 1.0, "precision": None, "recall": None, "specificity": 1.0,
                       "hd": None, "hd95": None, "hd_mm": None, "hd95_mm": None}


def test_pred_empty():
    target = np.zeros((5, 7), dtype=bool)
    target[1:3, 2:5] = True
    metrics = slice_metrics(np.zeros_like(target), target)
    assert metrics == {"dice": 0.0, "jaccard": 0.0, "precision": None, "recall": 0.0, "specificity": 1.0,
                       "hd": None, "hd95": None}


def test_target_empty():
    pred = np.zeros((5, 7), dtype=bool)
    pred[0, :5] = True
    metrics = slice_metrics(pred, np.zeros_like(pred))
    assert metrics == {"dice": 0.0, "jaccard": 0.0, "precision": 0.0, "recall": None, "specificity": 30 / 35,
                       "hd": None, "hd95": None}


def test_full_masks():
    full = np.ones((4, 6), dtype=bool)
    metrics = slice_metrics(full, full)
    assert metrics == {"dice": 1.0, "jaccard": 1.0, "precision": 1.0, "recall": 1.0, "specificity": None,
                       "hd": 0.0, "hd95": 0.0}
    target = np.zeros_like(full)
    target[1:3, 1:5] = True  # 8 pixels, none on the image edge: boundary = all 8 pixels
    against_full = slice_metrics(full, target)
    assert against_full["specificity"] == 0.0
    assert against_full["precision"] == pytest.approx(8 / 24)
    # the full mask's boundary is the image frame: its corners are diagonal neighbours of the target's corners
    assert against_full["hd"] == pytest.approx(math.sqrt(2))


def test_no_nan_values():
    rng = np.random.default_rng(3)
    pred, target = random_mask_pair(rng, (9, 9), 0.4)
    empty, full = np.zeros((9, 9), bool), np.ones((9, 9), bool)
    for p, g in [(pred, target), (empty, empty), (empty, target), (pred, empty), (full, full), (full, empty)]:
        for value in slice_metrics(p, g, spacing=(1.0, 1.0)).values():
            assert value is None or (isinstance(value, float) and math.isfinite(value))


# --- input types and errors ----------------------------------------------------------------------------

def test_torch_numpy_bool_int_inputs_agree():
    rng = np.random.default_rng(11)
    pred, target = random_mask_pair(rng, (15, 12), 0.35)
    expected = slice_metrics(pred, target, spacing=(0.5, 0.5))
    int_pred = np.where(pred, 3, 0).astype(np.int32)
    int_target = np.where(target, -1, 0).astype(np.int64)  # nonzero, even negative, means tumor
    variants = [
        (int_pred, int_target),
        (torch.from_numpy(pred), torch.from_numpy(target)),
        (torch.from_numpy(pred.astype(np.uint8)), torch.from_numpy(int_target)),
        (torch.from_numpy(pred).float(), target.astype(np.float64)),
    ]
    for p, g in variants:
        assert slice_metrics(p, g, spacing=(0.5, 0.5)) == expected
    flipped = slice_metrics(target, pred)
    assert flipped["precision"] == expected["recall"]


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"pred \(4, 5\).*target \(5, 4\)"):
        slice_metrics(np.zeros((4, 5)), torch.zeros(5, 4))


@pytest.mark.parametrize("shape", [(2, 4, 5), (20,)])
def test_non_2d_input_raises(shape):
    with pytest.raises(ValueError, match="2-D"):
        slice_metrics(np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool))
    with pytest.raises(ValueError, match="target must be a 2-D"):
        slice_metrics(np.zeros((4, 5), dtype=bool), np.zeros(shape, dtype=bool))


def test_probability_maps_and_bad_spacing_raise():
    mask = np.zeros((4, 5), dtype=bool)
    with pytest.raises(ValueError, match="threshold"):
        slice_metrics(np.full((4, 5), 0.7), mask)
    with pytest.raises(TypeError, match="dtype"):
        slice_metrics(np.full((4, 5), "a"), mask)
    for spacing in [(1.0,), (1.0, 0.0), (1.0, -2.0), (1.0, float("nan"))]:
        with pytest.raises(ValueError, match="spacing"):
            slice_metrics(mask, mask, spacing=spacing)


# --- aggregate -----------------------------------------------------------------------------------------

def test_aggregate_excludes_none_from_means():
    per_slice = [
        {"dice": 1.0, "jaccard": 1.0, "precision": None, "recall": None, "specificity": 1.0,
         "hd": None, "hd95": None},
        {"dice": 0.5, "jaccard": 0.25, "precision": 0.4, "recall": None, "specificity": 0.9,
         "hd": 4.0, "hd95": 3.0},
        {"dice": 0.0, "jaccard": 0.5, "precision": 0.6, "recall": 0.8, "specificity": None,
         "hd": 8.0, "hd95": 5.0},
    ]
    result = aggregate(per_slice)
    assert result == pytest.approx({
        "dice": 0.5, "jaccard": 1.75 / 3, "precision": 0.5, "recall": 0.8, "specificity": 0.95,
        "hd": 6.0, "hd95": 4.0, "f1": 2 * 0.5 * 0.8 / 1.3, "slices": 3, "dice_slices": 3, "jaccard_slices": 3,
        "precision_slices": 2, "recall_slices": 1, "specificity_slices": 2, "hd_slices": 2, "hd95_slices": 2})


def test_aggregate_f1_from_mean_precision_and_recall():
    per_slice = [{"precision": 1.0, "recall": 0.5}, {"precision": 0.5, "recall": 1.0}]
    result = aggregate(per_slice)
    mean_of_slice_f1 = np.mean([2 * m["precision"] * m["recall"] / (m["precision"] + m["recall"])
                                for m in per_slice])
    assert result["f1"] == pytest.approx(0.75)
    assert abs(mean_of_slice_f1 - 0.75) > 0.05
    assert result["dice"] is None and result["hd"] is None
    assert result["slices"] == 2 and result["hd_slices"] == 0


def test_aggregate_f1_edge_cases():
    assert aggregate([{"precision": 0.0, "recall": 0.0}])["f1"] == 0.0
    assert aggregate([{"precision": None, "recall": 0.7}])["f1"] is None
    empty = aggregate([])
    assert empty["slices"] == 0 and empty["hd_slices"] == 0
    assert all(empty[key] is None for key in (*METRIC_KEYS, "f1"))


def test_aggregate_of_slice_metrics_keeps_mm_keys():
    rng = np.random.default_rng(5)
    slices = [slice_metrics(*random_mask_pair(rng, (10, 13), 0.3), spacing=(2.0, 2.0)) for _ in range(3)]
    slices.append(slice_metrics(np.zeros((10, 13)), np.zeros((10, 13)), spacing=(2.0, 2.0)))
    result = aggregate(slices)
    assert result["hd_slices"] == 3 and result["slices"] == 4 and result["hd_mm_slices"] == 3
    assert result["hd_mm"] == pytest.approx(2.0 * result["hd"])
    assert result["dice"] == pytest.approx(np.mean([s["dice"] for s in slices]))


@pytest.mark.parametrize("method", list(PAPER_TABLE1))
def test_paper_f1_is_harmonic_mean_of_mean_precision_and_recall(method):
    row = PAPER_TABLE1[method]
    assert 2 * row["precision"] * row["recall"] / (row["precision"] + row["recall"]) == pytest.approx(
        row["f1"], abs=0.01)
    ours = aggregate([{"precision": row["precision"] / 100, "recall": row["recall"] / 100}])
    assert 100 * ours["f1"] == pytest.approx(row["f1"], abs=0.01)


def test_paper_table_values():
    assert list(PAPER_TABLE1) == ["U-Net", "DANet", "Regular R-UNet", "GER-UNet (add)", "GER-UNet (concat)"]
    assert PAPER_TABLE1["GER-UNet (add)"] == {"dice": 86.63, "hd": 24.79, "jaccard": 80.31, "precision": 87.23,
                                              "recall": 87.79, "specificity": 99.95, "f1": 87.51}
    assert PAPER_TABLE1["U-Net"]["hd"] == 40.13


# --- format_table --------------------------------------------------------------------------------------

def test_format_table_rows_in_percent_and_paper_rows():
    ours = {"dice": 0.8663, "hd": 24.794, "jaccard": 0.80312, "precision": 0.5, "recall": None,
            "specificity": 0.99951, "f1": None}
    table = format_table({"mine": ours})
    lines = table.strip().splitlines()
    assert lines[0] == "| method | Dice | HD (px) | Jaccard | Precision | Recall | Specificity | F1 |"
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[2] == "| mine | 86.63 | 24.79 | 80.31 | 50.00 | - | 99.95 | - |"
    assert len(lines) == 3 + len(PAPER_TABLE1)
    assert lines[3] == "| U-Net [paper] | 80.27 | 40.13 | 71.30 | 74.95 | 89.74 | 99.86 | 81.68 |"
    for method in PAPER_TABLE1:
        assert f"| {method} [paper] |" in table
    without_paper = format_table({"mine": ours}, include_paper=False)
    assert "[paper]" not in without_paper
    assert without_paper.strip().splitlines() == lines[:3]


def test_format_table_adds_hd_in_mm_only_when_a_row_has_it():
    assert "HD (mm)" not in format_table({"px": aggregate([slice_metrics(np.eye(4), np.eye(4))])})
    no_hd = aggregate([slice_metrics(np.zeros((4, 4)), np.eye(4), spacing=(1.0, 1.0))])
    assert "| no HD | 0.00 | - | - |" in format_table({"no HD": no_hd}, include_paper=False)
    ours = {"dice": 0.5, "hd": 10.0, "hd_mm": 7.5, "jaccard": 0.4, "precision": 0.5, "recall": 0.5,
            "specificity": 0.9, "f1": 0.5}
    lines = format_table({"mm": ours, "px only": {**ours, "hd_mm": None}}).strip().splitlines()
    assert lines[0] == "| method | Dice | HD (px) | HD (mm) | Jaccard | Precision | Recall | Specificity | F1 |"
    assert lines[2] == "| mm | 50.00 | 10.00 | 7.50 | 40.00 | 50.00 | 50.00 | 90.00 | 50.00 |"
    assert lines[3] == "| px only | 50.00 | 10.00 | - | 40.00 | 50.00 | 50.00 | 90.00 | 50.00 |"
    assert lines[4] == "| U-Net [paper] | 80.27 | 40.13 | - | 71.30 | 74.95 | 89.74 | 99.86 | 81.68 |"


def test_format_counts_gives_the_slices_of_each_mean():
    both_empty = slice_metrics(np.zeros((6, 6)), np.zeros((6, 6)), spacing=(0.5, 0.5))
    missed = slice_metrics(np.zeros((6, 6)), np.eye(6), spacing=(0.5, 0.5))
    found = slice_metrics(np.eye(6), np.eye(6), spacing=(0.5, 0.5))
    table = format_counts({"a": aggregate([both_empty, missed, found, found]), "b": aggregate([found])})
    assert table.strip().splitlines() == [
        "| method | slices | Dice | HD (px) | HD (mm) | Jaccard | Precision | Recall | Specificity |",
        "|---|---|---|---|---|---|---|---|---|",
        "| a | 4 | 4 | 2 | 2 | 4 | 2 | 3 | 4 |",
        "| b | 1 | 1 | 1 | 1 | 1 | 1 | 1 | 1 |"]

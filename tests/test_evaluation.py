import json
import os

import pytest
import torch

from ger_kernels import metrics
from ger_kernels.data import open_dataset
from ger_kernels.evaluation import (AVERAGES, checkpoint_labels, evaluate_model, prediction_flips, write_flip_report,
                                    write_metrics)
from ger_kernels.groups import P4M
from helpers import TinySlices


class Oracle(torch.nn.Module):
    """Scores that reproduce a fixed set of masks, batch by batch, to check the bookkeeping."""

    def __init__(self, masks):
        super().__init__()
        self.masks = masks
        self.seen = 0
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        masks = self.masks[self.seen:self.seen + len(x)]
        self.seen += len(x)
        return torch.stack([1 - masks, masks], 1).float()


def test_matches_per_slice_metrics():
    data = TinySlices(10)
    predicted = data.masks.clone()
    predicted[3] = 0  # one slice missed entirely, one shifted
    predicted[5] = torch.roll(predicted[5], 2, dims=1)
    summary, per_slice = evaluate_model(Oracle(predicted), data, batch_size=4)
    expected = [metrics.slice_metrics(p, t, (1.0, 1.0)) for p, t in zip(predicted, data.masks)]
    assert per_slice == expected
    assert summary == metrics.aggregate(expected)
    assert summary["slices"] == 10 and summary["hd_slices"] == 9 and summary["dice"] < 1


def test_hd_is_in_mm_of_the_resized_grid_for_nifti_like_data():
    _, test = open_dataset("phantom:2", 16)  # phantom slices are 360 mm wide: 22.5 mm per pixel at 16 x 16
    assert test.spacing[0] == pytest.approx((22.5, 22.5))
    masks = torch.stack([mask for _, mask in test])
    summary, _ = evaluate_model(Oracle(torch.roll(masks, 1, dims=2)), test)
    assert summary["hd"] > 0 and summary["hd_mm"] == pytest.approx(22.5 * summary["hd"])
    assert summary["hd_mm_slices"] == summary["hd_slices"] == len(test)


def test_write_metrics_gives_the_slices_in_each_mean(tmp_path):
    rows = {"ours": metrics.aggregate([metrics.slice_metrics(torch.ones(4, 4), torch.ones(4, 4)),
                                       metrics.slice_metrics(torch.zeros(4, 4), torch.zeros(4, 4))])}
    md, js = write_metrics(str(tmp_path), rows, notes="phantom")
    text = open(md).read()
    assert "| ours | 100.00 |" in text and "GER-UNet (add) [paper] | 86.63" in text and text.endswith("phantom\n")
    assert "| method | slices | Dice | HD (px) | Jaccard | Precision | Recall | Specificity |\n" in text
    assert "| ours | 2 | 2 | 1 | 2 | 1 | 1 | 1 |\n" in text
    assert AVERAGES in text and "HD (the Hausdorff distance between the mask boundaries) only over slices where " \
                               "both the prediction and the ground truth have tumor" in AVERAGES
    payload = json.load(open(js))
    assert payload["ours"]["ours"]["dice"] == pytest.approx(1.0) and "U-Net" in payload["paper_table1"]
    assert payload["ours"]["ours"]["hd_slices"] == 1 and payload["ours"]["ours"]["precision_slices"] == 1
    assert sorted(os.listdir(tmp_path)) == ["metrics.json", "metrics.md"]


@pytest.mark.parametrize("paths, models, labels", [
    (["runs/ger-unet/best.pt", "runs/r-unet/best.pt"], ["ger-unet", "r-unet"],
     ["ger-unet (ger-unet)", "r-unet (r-unet)"]),
    (["a/ger-unet/best.pt", "b/ger-unet/best.pt", "b/r-unet/best.pt"], ["ger-unet", "ger-unet", "r-unet"],
     ["ger-unet (a/ger-unet)", "ger-unet (b/ger-unet)", "r-unet (b/r-unet)"]),
    (["x/a/run/best.pt", "y/a/run/best.pt"], ["ger-unet"] * 2, ["ger-unet (x/a/run)", "ger-unet (y/a/run)"]),
    (["run/best.pt", "run/last.pt"], ["ger-unet"] * 2, ["ger-unet (run/best.pt)", "ger-unet (run/last.pt)"]),
    (["run/best.pt", "./run/best.pt", "other/best.pt"], ["ger-unet"] * 3,
     ["ger-unet (run)", "ger-unet (run) #2", "ger-unet (other)"]),
])
def test_checkpoint_labels_are_unique(paths, models, labels):
    assert checkpoint_labels(paths, models) == labels


class Rotating(torch.nn.Module):
    """Tumor where the top-left quadrant is bright: its predictions change under quarter turns."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        tumor = torch.zeros_like(x[:, 0])
        half = x.shape[-1] // 2
        tumor[:, :half, :half] = (x[:, 0, :half, :half] > 0.5).float()
        return torch.stack([1 - tumor, tumor], 1)


def test_prediction_flips_count_pixels_per_slice_and_element():
    data = TinySlices(6, size=8)
    data.images[2] = 0.0  # dark: nothing predicted either way
    flips = prediction_flips(Rotating(), data, batch_size=4)
    assert flips.shape == (6, 8) and flips.dtype == torch.int64
    assert (flips[:, 0] == 0).all() and (flips[2] == 0).all() and flips[:, 1].sum() > 0
    for i in (0, 1, 3):
        pred = Rotating()(data.images[i:i + 1]).argmax(1)[0]
        for g in range(1, 8):
            rotated = Rotating()(P4M.transform_planar(data.images[i:i + 1], g)).argmax(1)[0]
            assert flips[i, g] == (P4M.transform_planar(rotated, P4M.inv(g)) != pred).sum()


def test_write_flip_report_gives_totals_per_element(tmp_path):
    data = TinySlices(3, size=8)
    data.slice_indices, data.describe = [0, 1, 2], lambda: "tiny test set"
    flips = {"m (a)": torch.tensor([[0, 2, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 0], [0, 3, 0, 0, 4, 0, 0, 0]]),
             "m (b)": torch.zeros(3, 8, dtype=torch.int64)}
    md, js = write_flip_report(str(tmp_path / "figure1"), flips, data)
    assert (md, js) == (str(tmp_path / "figure1.md"), str(tmp_path / "figure1.json"))
    text = open(md).read()
    assert text.startswith("Equivariance of the predictions on tiny test set: ")
    assert "| m (a) | 3 | 5 | 0 | 0 | 4 | 0 | 0 | 1 | 10 |" in text  # pixels flipped
    assert "| m (a) | 3 | 2 | 0 | 0 | 1 | 0 | 0 | 1 | 2 |" in text  # slices affected
    assert "| m (b) | 3 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 |" in text
    payload = json.load(open(js))["models"]["m (a)"]
    assert payload["pixels"] == 10 and payload["slices_affected"] == 2
    assert payload["affected"][0] == {"volume_id": "v0", "slice_index": 0, "g": 1, "pixels": 2}
    assert len(payload["affected"]) == 4
    assert sorted(os.listdir(tmp_path)) == ["figure1.json", "figure1.md"]

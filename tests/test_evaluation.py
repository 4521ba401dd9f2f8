import json

import pytest
import torch

from ger_kernels import metrics
from ger_kernels.evaluation import evaluate_model, write_metrics
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


def test_write_metrics(tmp_path):
    row = metrics.aggregate([metrics.slice_metrics(torch.ones(4, 4), torch.ones(4, 4))])
    md, js = write_metrics(str(tmp_path), {"ours": row}, notes="phantom")
    text = open(md).read()
    assert "| ours | 100.00 |" in text and "GER-UNet (add) [paper] | 86.63" in text and "phantom" in text
    payload = json.load(open(js))
    assert payload["ours"]["ours"]["dice"] == pytest.approx(1.0) and "U-Net" in payload["paper_table1"]

"""Evaluation of a trained model on a test split: the paper's seven metrics per slice,
averaged (``ger_kernels.metrics``), written as markdown and JSON beside Table 1."""

from __future__ import annotations

import json
import os

import torch
from torch import nn
from torch.utils.data import DataLoader

from ger_kernels import metrics
from ger_kernels._io import write_text_atomically
from ger_kernels.training import predict_batches

__all__ = ["evaluate_model", "write_metrics"]


def evaluate_model(model: nn.Module, dataset, device: torch.device | str = "cpu", batch_size: int = 4,
                   amp: bool = True) -> tuple[dict, list[dict]]:
    """``(aggregate, per_slice)`` over every slice of ``dataset`` (a ``SliceDataset``)."""
    per_slice = []
    loader = DataLoader(dataset, batch_size)
    for preds, masks in predict_batches(model, loader, torch.device(device), amp):
        for pred, mask in zip(preds, masks):
            per_slice.append(metrics.slice_metrics(pred.numpy(), mask.numpy(), dataset.spacing[len(per_slice)]))
    return metrics.aggregate(per_slice), per_slice


def write_metrics(out_dir: str, rows: dict[str, dict], notes: str = "") -> tuple[str, str]:
    """``metrics.md`` (our rows, then the paper's Table 1 rows) and ``metrics.json`` in ``out_dir``."""
    markdown = metrics.format_table(rows, include_paper=True) + ("\n\n" + notes if notes else "") + "\n"
    md_path, json_path = os.path.join(out_dir, "metrics.md"), os.path.join(out_dir, "metrics.json")
    write_text_atomically(md_path, markdown)
    write_text_atomically(json_path, json.dumps({"ours": rows, "paper_table1": metrics.PAPER_TABLE1}, indent=1))
    return md_path, json_path

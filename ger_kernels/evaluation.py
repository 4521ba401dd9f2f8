"""Evaluation of trained models on a test set: the paper's seven metrics per slice, averaged
(``ger_kernels.metrics``) and written as markdown and JSON beside Table 1, with the number of slices in
each mean; and the equivariance of the predictions over a whole test set (pixels that change when a slice
is transformed by a p4m element g and the prediction transformed back)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from ger_kernels import metrics
from ger_kernels._io import write_text_atomically
from ger_kernels.groups import P4M
from ger_kernels.training import predict_batches

__all__ = ["evaluate_model", "write_metrics", "checkpoint_labels", "prediction_flips", "write_flip_report",
           "AVERAGES"]

AVERAGES = (
    "Each value is a mean over test slices, taken over the slices where the metric is defined (counted in the "
    "second table): Dice and Jaccard over every slice (1 when both masks are empty); Precision over slices with "
    "predicted tumor; Recall over slices with tumor; Specificity over slices not entirely tumor; HD (the "
    "Hausdorff distance between the mask boundaries) only over slices where both the prediction and the ground "
    "truth have tumor, so it can rest on few slices. F1 = 2 P R / (P + R) from the mean Precision P and mean "
    "Recall R, as in the paper. HD (px) is in pixels of the model's input grid (each slice resized whole to "
    "size x size); HD (mm) uses the spacing of that resized grid, known for NIfTI data (LiTS, phantom), not for "
    "image folders. Ours in percent; the [paper] rows are its Table 1 (LiTS, 448 x 448), for reference.")


def evaluate_model(model: nn.Module, dataset, device: torch.device | str = "cpu", batch_size: int = 4,
                   amp: bool = False) -> tuple[dict, list[dict]]:
    """``(aggregate, per_slice)`` over every slice of ``dataset`` (a ``SliceDataset``); the Hausdorff
    distances also in mm for the slices whose ``dataset.spacing`` is known. In float32 unless ``amp``
    (bfloat16 autocast on CUDA: faster, but a pixel whose two scores are close can flip)."""
    per_slice = []
    loader = DataLoader(dataset, batch_size)
    for preds, masks in predict_batches(model, loader, torch.device(device), amp):
        for pred, mask in zip(preds, masks):
            per_slice.append(metrics.slice_metrics(pred.numpy(), mask.numpy(), dataset.spacing[len(per_slice)]))
    return metrics.aggregate(per_slice), per_slice


def write_metrics(out_dir: str, rows: dict[str, dict], notes: str = "") -> tuple[str, str]:
    """``metrics.md`` (our rows, then the paper's Table 1 rows; the slices in each mean; what is averaged;
    ``notes``) and ``metrics.json`` (the same rows, with ``<metric>_slices`` counts) in ``out_dir``."""
    markdown = "\n".join([metrics.format_table(rows, include_paper=True), "Slices in each mean:", "",
                          metrics.format_counts(rows), AVERAGES] + ([""] + [notes] if notes else [])) + "\n"
    md_path, json_path = os.path.join(out_dir, "metrics.md"), os.path.join(out_dir, "metrics.json")
    write_text_atomically(md_path, markdown)
    write_text_atomically(json_path, json.dumps({"ours": rows, "paper_table1": metrics.PAPER_TABLE1,
                                                 "averages": AVERAGES}, indent=1))
    return md_path, json_path


def checkpoint_labels(paths: Sequence[str], models: Sequence[str]) -> list[str]:
    """Row labels ``"<model> (<where>)"``, one per checkpoint, all different. ``<where>`` is the checkpoint's
    folder name, with as many parent folders as it takes to tell the checkpoints apart, and the file name
    too when the file names differ (``runs/a/best.pt`` vs ``runs/a/last.pt``); a file given twice gets
    ``" #2"``, ``" #3"``, ... on its later copies."""
    full = [os.path.abspath(path) for path in paths]
    folders = [os.path.dirname(path).strip(os.sep).split(os.sep) for path in full]
    names_differ = len({os.path.basename(path) for path in full}) > 1
    files = [[os.path.basename(path)] if names_differ else [] for path in full]
    for depth in range(1, max(len(f) for f in folders) + 1):
        labels = [f"{model} ({'/'.join(folder[-depth:] + file)})"
                  for model, folder, file in zip(models, folders, files)]
        if len(set(zip(labels, full))) == len(set(labels)):  # only the same file given twice still shares one
            break
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return unique


@torch.no_grad()
def prediction_flips(model: nn.Module, dataset, device: torch.device | str = "cpu", batch_size: int = 4
                     ) -> torch.Tensor:
    """int64 ``(N, 8)``: for slice ``x_i`` of ``dataset`` and p4m element ``g``, the pixels where
    ``A_g^-1 argmax model(A_g x_i)`` differs from ``argmax model(x_i)`` (float32, no autocast, as the
    figure); column g = 0 is 0 by definition. Zero everywhere for an exactly equivariant model."""
    model.eval()
    device = torch.device(device)
    counts = []
    for images, _ in DataLoader(dataset, batch_size):
        images = images.to(device)
        pred = model(images).argmax(1)
        per_element = [torch.zeros(len(images), dtype=torch.int64, device=device)]
        for g in range(1, P4M.order):
            back = P4M.transform_planar(model(P4M.transform_planar(images, g)).argmax(1), P4M.inv(g))
            per_element.append((back != pred).sum((1, 2)))
        counts.append(torch.stack(per_element, 1).cpu())
    return torch.cat(counts) if counts else torch.zeros(0, P4M.order, dtype=torch.int64)


def _flip_summary(flips: torch.Tensor, dataset) -> dict:
    changed = flips[:, 1:] > 0
    return {"slices": len(flips), "pixels_per_g": flips[:, 1:].sum(0).tolist(),
            "slices_affected_per_g": changed.sum(0).tolist(), "pixels": int(flips.sum()),
            "slices_affected": int(changed.any(1).sum()),
            "affected": [{"volume_id": dataset.volume_ids[i], "slice_index": dataset.slice_indices[i], "g": g,
                          "pixels": int(flips[i, g])} for i, g in torch.nonzero(flips).tolist()]}


def write_flip_report(stem: str, flips: dict[str, torch.Tensor], dataset) -> tuple[str, str]:
    """``<stem>.md`` (pixels flipped and slices affected, per model and element g = 1..7 and in all) and
    ``<stem>.json`` (the same, plus every affected slice) from ``{label: prediction_flips(...)}`` on
    ``dataset``; written atomically. Returns both paths."""
    summaries = {label: _flip_summary(counts, dataset) for label, counts in flips.items()}
    header = ["| model | slices | " + " | ".join(f"g={g}" for g in range(1, P4M.order)) + " | all g |",
              "|---" * (P4M.order + 2) + "|"]
    lines = [f"Equivariance of the predictions on {dataset.describe()}: for every slice x and p4m element g "
             f"(1-3 quarter turns, 4-7 mirrors), the pixels where A_g^-1(prediction of A_g x) differs from the "
             f"prediction of x (float32).", "", "Pixels flipped:", "", *header]
    for label, s in summaries.items():
        lines.append(f"| {label} | {s['slices']} | " + " | ".join(map(str, s["pixels_per_g"])) + f" | {s['pixels']} |")
    lines += ["", "Slices with at least one flipped pixel:", "", *header]
    for label, s in summaries.items():
        lines.append(f"| {label} | {s['slices']} | " + " | ".join(map(str, s["slices_affected_per_g"]))
                     + f" | {s['slices_affected']} |")
    md_path, json_path = stem + ".md", stem + ".json"
    write_text_atomically(md_path, "\n".join(lines) + "\n")
    write_text_atomically(json_path, json.dumps({"data": dataset.describe(), "models": summaries}, indent=1))
    return md_path, json_path

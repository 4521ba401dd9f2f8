"""Prediction of a whole CT volume: a NIfTI file in, a NIfTI tumor mask out, same affine."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ger_kernels.data import read_volume, volume_to_slices, write_mask

__all__ = ["predict_volume"]


@torch.no_grad()
def predict_volume(model: nn.Module, input_path: str, output_path: str, size: int, batch_size: int = 4,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Segments every slice of ``input_path`` at ``size`` x ``size`` (2.5D input, default HU window),
    resizes the class scores back to the volume's grid (bilinear), takes the arg max, and writes the
    labels with the input's affine.
    Returns the uint8 mask ``(D, H, W)`` (1 = tumor)."""
    volume = read_volume(input_path)
    slices = volume_to_slices(volume.array, size)
    model.eval()
    labels = []
    for start in range(0, len(slices), batch_size):
        scores = model(slices[start:start + batch_size].to(device)).float().cpu()
        labels.append(F.interpolate(scores, size=volume.array.shape[1:], mode="bilinear").argmax(1))
    mask = torch.cat(labels).to(torch.uint8) if labels else torch.zeros(volume.array.shape, dtype=torch.uint8)
    write_mask(output_path, mask.numpy(), volume.affine)
    return mask

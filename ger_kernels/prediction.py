"""Prediction of a whole CT volume: a NIfTI file in, a NIfTI tumor mask out, same affine."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ger_kernels._validation import check_int
from ger_kernels.data import read_volume, volume_to_slices, write_mask
from ger_kernels.data.nifti import NIFTI_SUFFIXES

__all__ = ["predict_volume", "check_prediction_paths"]


def check_prediction_paths(input_path: str, output_path: str) -> None:
    """Refuses, before any work: an input that is not an existing file, an output that is a folder,
    does not end in .nii/.nii.gz or lies in a folder that does not exist, and an output that is the
    input (also through symbolic or hard links), which writing the mask would destroy."""
    if os.path.isdir(input_path):
        raise IsADirectoryError(f"input {input_path} is a folder, not a NIfTI volume")
    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"input {input_path} does not exist")
    if os.path.isdir(output_path):
        raise IsADirectoryError(f"output {output_path} is a folder; give a file name such as "
                                f"{os.path.join(output_path, 'mask.nii.gz')}")
    if not output_path.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"output {output_path} must end in .nii or .nii.gz")
    folder = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"output {output_path}: the folder {folder} does not exist")
    same_inode = os.path.exists(output_path) and os.path.samefile(input_path, output_path)  # hard links too
    if os.path.realpath(input_path) == os.path.realpath(output_path) or same_inode:
        raise ValueError(f"output {output_path} is the input {input_path} (the same file): writing the mask "
                         f"would overwrite the scan; choose another output")


@torch.no_grad()
def predict_volume(model: nn.Module, input_path: str, output_path: str, size: int, batch_size: int = 4,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Segments every slice of ``input_path`` at ``size`` x ``size`` (2.5D input, default HU window),
    resizes the class scores back to the volume's grid (bilinear), takes the arg max, and writes the
    labels with the input's affine (its sform and qform, with their codes); the paths, ``size`` and
    ``batch_size`` are checked first (:func:`check_prediction_paths`).
    Returns the uint8 mask ``(D, H, W)`` (1 = tumor); the file stores it as ``(H, W, D)``."""
    check_int(size, "size")
    check_int(batch_size, "batch_size")
    check_prediction_paths(input_path, output_path)
    volume = read_volume(input_path)
    slices = volume_to_slices(volume.array, size)
    model.eval()
    labels = []
    for start in range(0, len(slices), batch_size):
        scores = model(slices[start:start + batch_size].to(device)).float().cpu()
        labels.append(F.interpolate(scores, size=volume.array.shape[1:], mode="bilinear").argmax(1))
    mask = torch.cat(labels).to(torch.uint8) if labels else torch.zeros(volume.array.shape, dtype=torch.uint8)  # D = 0
    write_mask(output_path, mask.numpy(), volume.affine, volume.space)
    return mask

"""Figures: the paper's Figure 1 (predictions of a slice and of its rotation) and training curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from ger_kernels._io import write_atomically  # noqa: E402
from ger_kernels.groups import P4M  # noqa: E402

__all__ = ["prediction_disagreement", "equivariance_figure", "training_curves"]


@torch.no_grad()
def prediction_disagreement(model: nn.Module, image: torch.Tensor, element: int) -> tuple[torch.Tensor, ...]:
    """``(pred, pred_of_rotated, rotated_back)`` label maps ``(H, W)`` for image ``(C, H, W)``:
    ``rotated_back = A_g^-1(model(A_g image))``, equal to ``pred`` for an equivariant model."""
    model.eval()
    pred = model(image[None]).argmax(1)[0]
    pred_of_rotated = model(P4M.transform_planar(image, element)[None]).argmax(1)[0]
    return pred, pred_of_rotated, P4M.transform_planar(pred_of_rotated, P4M.inv(element))


def _save(fig, path: str) -> None:
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def equivariance_figure(models: dict[str, nn.Module], image: torch.Tensor, mask: torch.Tensor, path: str,
                        element: int = 1) -> dict[str, int]:
    """One row per model: the slice, its transform ``A_g``, the prediction, the prediction of the
    transformed slice, that prediction transformed back, and where it disagrees with the prediction.
    Returns the number of disagreeing pixels per model; writes a PNG to ``path``."""
    counts = {}
    fig, axes = plt.subplots(len(models), 6, figsize=(15, 2.8 * len(models)), squeeze=False)
    rotated = P4M.transform_planar(image, element)
    for row, (name, model) in zip(axes, models.items()):
        device = next(model.parameters()).device
        pred, pred_rot, back = (t.cpu() for t in prediction_disagreement(model, image.to(device), element))
        disagree = pred != back
        counts[name] = int(disagree.sum())
        panels = [(image[image.shape[0] // 2], "slice (ground truth contour)"),
                  (rotated[rotated.shape[0] // 2], f"slice transformed by g={element}"),
                  (pred, "prediction"), (pred_rot, "prediction of transformed slice"),
                  (back, "... transformed back"), (disagree, f"disagreement: {counts[name]} px")]
        for ax, (panel, title) in zip(row, panels):
            ax.imshow(panel.float().numpy(), cmap="gray" if panel.is_floating_point() else "viridis",
                      interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].contour(mask.numpy(), levels=[0.5], colors="r", linewidths=0.6)
        row[0].set_ylabel(name)
    _save(fig, path)
    return counts


def training_curves(histories: dict[str, list[dict]], path: str) -> None:
    """Training loss and validation Dice per epoch for each run; writes a PNG to ``path``."""
    fig, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, history in histories.items():
        epochs = [row["epoch"] for row in history]
        loss_ax.plot(epochs, [row["train_loss"] for row in history], marker=".", label=f"{name} train")
        loss_ax.plot(epochs, [row["val_loss"] for row in history], linestyle="--", label=f"{name} validation")
        dice_ax.plot(epochs, [row["val_dice"] for row in history], marker=".", label=name)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    dice_ax.set(xlabel="epoch", ylabel="Dice", title="validation Dice (per-slice mean)")
    loss_ax.legend(fontsize=7)
    dice_ax.legend(fontsize=7)
    _save(fig, path)

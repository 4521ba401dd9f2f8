"""Training GER-UNet / R-UNet for 2-D tumor segmentation (SPEC section 6).

Adam (lr 2e-4, exponential decay per epoch), cross-entropy plus an optional soft-Dice
term, early stopping on the validation Dice, rotation/flip augmentation by random p4m
elements (on by default for R-UNet, as in the paper), bfloat16 autocast on CUDA,
deterministic seeds. An output folder holds ``config.json``, ``log.csv``/``log.json``
(one row per epoch), ``last.pt`` (resumable) and ``best.pt``, all written atomically.
Validation volumes are taken out of the training split, never out of the test split.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ger_kernels import metrics
from ger_kernels._io import write_atomically, write_text_atomically
from ger_kernels.data import split_volume_ids
from ger_kernels.groups import P4M
from ger_kernels.models import PAPER_WIDTHS, GERUNet, RUNet, group_widths

__all__ = ["TrainConfig", "build_model", "train", "save_checkpoint", "load_checkpoint", "model_from_checkpoint",
           "predict_batches", "resolve_device"]

MODELS = ("ger-unet", "r-unet")
# Fields a resumed run may change: they set how long and where it runs, not what it learns.
RESUMABLE_CHANGES = {"epochs", "patience", "device", "backend", "deterministic"}


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; stored in every checkpoint. ``widths=None``: the paper's."""
    model: str = "ger-unet"
    data: str = "phantom"
    out: str = "runs/ger-unet"
    size: int = 448
    widths: tuple[int, ...] | None = None
    skip: str = "add"
    group: str = "p4m"
    backend: str = "auto"
    epochs: int = 300
    batch_size: int = 4
    lr: float = 2e-4
    lr_decay: float = 0.98
    dice_weight: float = 0.0
    patience: int = 20
    augment: bool | None = None
    val_fraction: float = 0.1
    tumor_only: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    deterministic: bool = True
    max_batches: int | None = None

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.widths is not None:
            self.widths = tuple(self.widths)
        if self.augment is None:
            self.augment = self.model == "r-unet"


def build_model(config: TrainConfig) -> nn.Module:
    if config.model == "ger-unet":
        widths = config.widths or group_widths(PAPER_WIDTHS, config.group)
        return GERUNet(3, 2, config.skip, widths, config.group, config.backend)
    return RUNet(3, 2, config.skip, config.widths or PAPER_WIDTHS)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def save_checkpoint(path: str, payload: dict) -> None:
    write_atomically(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by ``train``; a clear error for a missing, corrupt or foreign file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise ValueError(f"checkpoint {path} is corrupt or not a torch file ({error})") from None
    if not isinstance(payload, dict) or not {"config", "model", "epoch"} <= payload.keys():
        raise ValueError(f"checkpoint {path} was not written by ger_kernels training (no config/model/epoch)")
    return payload


def model_from_checkpoint(path: str, device: torch.device | str = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The trained model (eval mode) and its config."""
    payload = load_checkpoint(path)
    config = TrainConfig(**payload["config"])
    model = build_model(config)
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), config


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _split_validation(dataset, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Slice indices of training and validation volumes (at least one volume each)."""
    if len(set(dataset.volume_ids)) < 2:
        raise ValueError(f"the training split has {len(set(dataset.volume_ids))} volume(s); validation needs "
                         f"at least 2")
    _, val_volumes = split_volume_ids(dataset.volume_ids, fraction, seed)
    val = set(val_volumes)
    return ([i for i, v in enumerate(dataset.volume_ids) if v not in val],
            [i for i, v in enumerate(dataset.volume_ids) if v in val])


def _augment(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator):
    """A random p4m element per sample, applied to image and mask alike (square inputs)."""
    elements = torch.randint(P4M.order, (images.shape[0],), generator=generator).tolist()
    images = torch.stack([P4M.transform_planar(x, g) for x, g in zip(images, elements)])
    masks = torch.stack([P4M.transform_planar(m, g) for m, g in zip(masks, elements)])
    return images, masks


def _loss(scores: torch.Tensor, masks: torch.Tensor, dice_weight: float) -> torch.Tensor:
    loss = F.cross_entropy(scores.float(), masks)
    if dice_weight:
        tumor = scores.float().softmax(1)[:, 1]
        target = (masks == 1).float()
        soft_dice = (2 * (tumor * target).sum((1, 2)) + 1) / (tumor.sum((1, 2)) + target.sum((1, 2)) + 1)
        loss = loss + dice_weight * (1 - soft_dice.mean())
    return loss


def _autocast(device: torch.device, amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


@torch.no_grad()
def predict_batches(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True):
    """Yields ``(predicted masks, true masks)`` per batch, both int64 ``(B, H, W)`` on the CPU."""
    model.eval()
    for images, masks in loader:
        with _autocast(device, amp):
            scores = model(images.to(device))
        yield scores.argmax(1).cpu(), masks


def _validate(model, loader, device, amp, dice_weight) -> tuple[float, float]:
    """Mean loss and per-slice mean Dice (``ger_kernels.metrics`` conventions)."""
    model.eval()
    losses, dices = [], []
    with torch.no_grad():
        for images, masks in loader:
            with _autocast(device, amp):
                scores = model(images.to(device))
            losses.append(_loss(scores, masks.to(device), dice_weight).item() * len(images))
            for pred, target in zip(scores.argmax(1).cpu(), masks):
                dices.append(metrics.slice_metrics(pred.numpy(), target.numpy())["dice"])
    return sum(losses) / max(len(dices), 1), float(np.mean(dices)) if dices else 0.0


def _write_logs(out: str, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_text_atomically(os.path.join(out, "log.csv"), buffer.getvalue())
    write_text_atomically(os.path.join(out, "log.json"), json.dumps(history, indent=1))


def train(config: TrainConfig, train_set, *, resume: bool = True, progress: bool = True) -> dict:
    """Trains on ``train_set`` (a ``SliceDataset``), resuming from ``out/last.pt`` when it exists.
    With ``config.deterministic``, torch's deterministic algorithms are on while it runs (ops
    without one warn), so a run repeats bit for bit on the same machine.

    Returns ``{"best_epoch", "best_val_dice", "epochs_run", "seconds", "history"}``.
    """
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(config.deterministic, warn_only=True)
    try:
        return _train(config, train_set, resume, progress)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _train(config: TrainConfig, train_set, resume: bool, progress: bool) -> dict:
    device = resolve_device(config.device)
    _seed_everything(config.seed)
    os.makedirs(config.out, exist_ok=True)
    model = build_model(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
    train_idx, val_idx = _split_validation(train_set, config.val_fraction, config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(Subset(train_set, train_idx), config.batch_size, shuffle=True, generator=generator,
                              drop_last=len(train_idx) > config.batch_size)
    val_loader = DataLoader(Subset(train_set, val_idx), config.batch_size)
    state = {"epoch": 0, "best_val_dice": -1.0, "best_epoch": 0, "history": [], "stale": 0, "seconds": 0.0}
    last = os.path.join(config.out, "last.pt")
    if resume and os.path.exists(last):
        payload = load_checkpoint(last)
        changed = {k for k, v in dataclasses.asdict(config).items() if payload["config"].get(k) != v}
        if changed - RESUMABLE_CHANGES:
            raise ValueError(f"{last} was written with another configuration ({', '.join(sorted(changed))} differ; "
                             f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change): use another --out or "
                             f"--no-resume")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        generator.set_state(payload["generator"])
        torch.set_rng_state(payload["torch_rng"])
        state = payload["state"]
    write_text_atomically(os.path.join(config.out, "config.json"), json.dumps(dataclasses.asdict(config), indent=1))
    while state["epoch"] < config.epochs and state["stale"] < config.patience:
        start = time.perf_counter()
        model.train()
        total, seen = 0.0, 0
        batches = tqdm(train_loader, desc=f"{config.model} epoch {state['epoch'] + 1}/{config.epochs}",
                       disable=not (progress and sys.stderr.isatty()), leave=False)
        for step, (images, masks) in enumerate(batches):
            if config.max_batches is not None and step >= config.max_batches:
                break
            if config.augment:
                images, masks = _augment(images, masks, generator)
            images, masks = images.to(device), masks.to(device)
            with _autocast(device, config.amp):
                loss = _loss(model(images), masks, config.dice_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(images)
            seen += len(images)
            batches.set_postfix(loss=f"{loss.item():.4f}")
        scheduler.step()
        val_loss, val_dice = _validate(model, val_loader, device, config.amp, config.dice_weight)
        state["epoch"] += 1
        state["seconds"] += time.perf_counter() - start
        state["history"].append({"epoch": state["epoch"], "train_loss": total / max(seen, 1), "val_loss": val_loss,
                                 "val_dice": val_dice, "lr": optimizer.param_groups[0]["lr"],
                                 "seconds": round(state["seconds"], 2)})
        improved = val_dice > state["best_val_dice"]
        state["stale"] = 0 if improved else state["stale"] + 1
        if improved:
            state["best_val_dice"], state["best_epoch"] = val_dice, state["epoch"]
        payload = {"config": dataclasses.asdict(config), "model": model.state_dict(), "epoch": state["epoch"],
                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "state": state}
        if improved:
            save_checkpoint(os.path.join(config.out, "best.pt"), payload)
        save_checkpoint(last, payload)
        _write_logs(config.out, state["history"])
        if progress:
            print(f"{config.model} epoch {state['epoch']}: train loss {state['history'][-1]['train_loss']:.4f}, "
                  f"val loss {val_loss:.4f}, val Dice {val_dice:.4f}{' (best)' if improved else ''}", flush=True)
    return {"best_epoch": state["best_epoch"], "best_val_dice": state["best_val_dice"],
            "epochs_run": state["epoch"], "seconds": state["seconds"], "history": state["history"]}

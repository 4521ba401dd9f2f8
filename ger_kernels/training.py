"""Training GER-UNet / R-UNet for 2-D tumor segmentation (SPEC section 6).

Adam (lr 2e-4, exponential decay per epoch), cross-entropy plus an optional soft-Dice
term, early stopping on the validation Dice, rotation/flip augmentation by random p4m
elements (on by default for R-UNet, as in the paper), bfloat16 autocast on CUDA,
deterministic seeds. An output folder holds ``config.json``, ``log.csv``/``log.json``
(one row per epoch; its ``lr`` the rate the epoch trained with), ``last.pt`` (resumable) and
``best.pt``, all written atomically. Validation volumes are taken out of the training split,
never out of the test split.

``best.pt`` is the epoch with the highest validation Dice; between equal Dice (e.g. 0 while
the model predicts no tumor yet) the lower validation loss wins. A non-finite loss stops
training with an error before anything is saved, so the checkpoints keep the last good epoch.
Checkpoints hold only tensors and plain data (str, int, float, bool, None, lists, dicts) and
are loaded with ``torch.load(weights_only=True)``: a file holding other Python objects is
refused unread, since unpickling them could run code. They record the files of the training
cases (``training_cases``), so that scoring on data the model was trained on is refused
(``check_not_trained_on``).

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs ``train``: one model trained by
DistributedDataParallel (``ger_kernels.distributed``) with synchronized group batch norm, a
global batch of ``batch_size`` x processes, shards of whole cases, validation over the whole
validation set; rank 0 alone prints and writes the folder, the others wait for it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import logging
import math
import os
import pickle
import random
import re
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ger_kernels import distributed, metrics
from ger_kernels._io import write_atomically, write_text_atomically
from ger_kernels._validation import check_int
from ger_kernels.backends import BACKENDS, backends
from ger_kernels.data import SliceDataset, split_volume_ids
from ger_kernels.data.folder import short_listing
from ger_kernels.groups import P4M
from ger_kernels.models import PAPER_WIDTHS, GERUNet, RUNet, group_widths
from ger_kernels.models.res_unet import DOWNSAMPLINGS

__all__ = ["TrainConfig", "build_model", "train", "save_checkpoint", "load_checkpoint", "check_checkpoint_path",
           "model_from_checkpoint", "predict_batches", "resolve_device", "check_size", "check_runs_here",
           "check_resumable", "check_not_trained_on", "memory_format"]

MODELS = ("ger-unet", "r-unet")
GROUPS = ("p4m", "p4")
SKIPS = ("add", "concat")
# Fields a resumed run may change: they set how long, where and how fast it runs, not what it learns.
RESUMABLE_CHANGES = {"out", "epochs", "patience", "device", "backend", "deterministic", "threads", "channels_last"}

_log = logging.getLogger(__name__)


def check_size(size) -> int:
    """``size`` if the models can take ``size`` x ``size`` slices: a positive multiple of 8 (3 poolings)."""
    factor = 2 ** DOWNSAMPLINGS
    if not isinstance(size, int) or isinstance(size, bool) or size < factor or size % factor:
        raise ValueError(f"size must be a positive multiple of {factor} (GER-UNet and R-UNet halve it "
                         f"{DOWNSAMPLINGS} times), got {size!r}: use a --size divisible by {factor}")
    return size


def _check_number(value, name: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{']' if math.isfinite(high) else ')'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; stored in every checkpoint. ``widths=None``: the paper's.
    ``threads``: torch CPU threads while training (None: leave torch's setting, by default one per
    core). ``channels_last``: the model and its batches in the channels_last memory format (None: on
    CUDA, whose bf16 convolutions (cuDNN, the Triton TMA and CuTe kernels) read NHWC maps; NCHW maps
    cost layout conversions there, 9% of a GER-UNet step measured on an H200). Invalid values raise
    ``ValueError`` naming the field."""
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
    channels_last: bool | None = None
    deterministic: bool = True
    max_batches: int | None = None
    threads: int | None = None

    def __post_init__(self):
        for name, allowed in (("model", MODELS), ("group", GROUPS), ("skip", SKIPS), ("backend", ("auto",) + BACKENDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        check_size(self.size)
        if self.widths is not None:
            self.widths = tuple(self.widths)
            if len(self.widths) != DOWNSAMPLINGS + 1:
                raise ValueError(f"widths must be {DOWNSAMPLINGS + 1} positive ints, got {self.widths!r}")
            for width in self.widths:
                check_int(width, "each of widths")
        for name in ("epochs", "batch_size", "patience"):
            check_int(getattr(self, name), name)
        for name in ("max_batches", "threads"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name)
        _check_number(self.lr, "lr", 0.0)
        _check_number(self.lr_decay, "lr_decay", 0.0, 1.0, low_open=True)
        _check_number(self.dice_weight, "dice_weight", 0.0)
        _check_number(self.val_fraction, "val_fraction", 0.0, 1.0, low_open=True)
        if self.device != "auto":
            _parse_device(self.device)
        if self.channels_last not in (None, True, False):
            raise ValueError(f"channels_last must be True, False or None (on CUDA only), got {self.channels_last!r}")
        if self.augment is None:
            self.augment = self.model == "r-unet"

    def to_dict(self) -> dict:
        """The fields as plain data (str, int, float, bool, None, lists), as stored in checkpoints."""
        plain = dataclasses.asdict(self)
        if plain["widths"] is not None:
            plain["widths"] = list(plain["widths"])
        return plain


def build_model(config: TrainConfig) -> nn.Module:
    if config.model == "ger-unet":
        widths = config.widths or group_widths(PAPER_WIDTHS, config.group)
        return GERUNet(3, 2, config.skip, widths, config.group, config.backend)
    return RUNet(3, 2, config.skip, config.widths or PAPER_WIDTHS)


def _parse_device(device: str) -> torch.device:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return parsed


def resolve_device(device: str) -> torch.device:
    """``"auto"``: CUDA when there is a CUDA device, else the CPU. A device this machine lacks raises
    ``ValueError`` saying why."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parsed = _parse_device(device)
    if parsed.type == "cuda":
        if torch.version.cuda is None:
            raise ValueError(f"device {device!r}: this torch {torch.__version__} is built without CUDA; "
                             f"use --device cpu (or auto)")
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is visible; use --device cpu (or auto)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA devices "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return parsed


def check_runs_here(config: TrainConfig) -> torch.device:
    """The device ``config`` trains on (under ``torchrun`` CUDA means this process's GPU), after checking
    that it and the backend exist on this machine (``ValueError`` otherwise). R-UNet has no group
    convolutions, so its backend is not used."""
    device = distributed.local_device(resolve_device(config.device))
    if config.model == "ger-unet" and config.backend != "auto":
        status = backends(device)[config.backend]
        if not status.available:
            raise ValueError(f"backend {config.backend!r} cannot run on {device.type}: {status.reason}")
    return device


def save_checkpoint(path: str, payload: dict) -> None:
    write_atomically(path, lambda tmp: torch.save(payload, tmp))


def check_checkpoint_path(path: str) -> None:
    """``path`` is an existing file; else ``FileNotFoundError`` / ``IsADirectoryError`` saying which."""
    if os.path.isdir(path):
        best = os.path.join(path, "best.pt")
        hint = f"; did you mean {best}?" if os.path.isfile(best) else ""
        raise IsADirectoryError(f"checkpoint {path} is a directory, not a checkpoint file{hint}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")


def _load_error(path: str, error: Exception) -> str:
    """What went wrong, in one sentence, from the error of ``torch.load(path, weights_only=True)``."""
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if unsafe:
        return (f"checkpoint {path} refers to the Python object {unsafe.group(1)}, which a checkpoint of ours never "
                f"holds; it is refused unread, since loading it could run code")
    detail = (str(error).partition("WeightsUnpickler error:")[2].strip() or str(error)).splitlines()
    return f"checkpoint {path} is corrupt or not a torch file ({': '.join([type(error).__name__] + detail[:1])})"


def _is_state_dict(weights) -> bool:
    """``weights`` is a ``{name: tensor}`` dict, as ``Module.state_dict()`` gives."""
    return isinstance(weights, dict) and all(isinstance(name, str) and isinstance(tensor, torch.Tensor)
                                             for name, tensor in weights.items())


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by ``train``, loaded with ``weights_only=True`` (tensors and plain data
    only); ``ValueError`` for a corrupt, foreign or unsafe file, which is never executed."""
    check_checkpoint_path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as error:
        raise ValueError(_load_error(path, error)) from None
    if not isinstance(payload, dict) or not {"config", "model", "epoch"} <= payload.keys():
        problem = "no config/model/epoch"
    elif not _is_state_dict(payload["model"]):
        problem = "its model is not a dict of named tensors"
    else:
        return payload
    raise ValueError(f"checkpoint {path} was not written by ger_kernels training ({problem})")


def _config_of(payload: dict, path: str) -> TrainConfig:
    """The ``TrainConfig`` stored in a checkpoint (fields added since it was written take their defaults)."""
    stored = payload["config"]
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(stored, dict) or stored.keys() - known:
        unknown = sorted(stored.keys() - known) if isinstance(stored, dict) else type(stored).__name__
        raise ValueError(f"checkpoint {path}: unknown configuration ({unknown}); was it written by a newer "
                         f"ger_kernels?")
    try:
        return TrainConfig(**stored)
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint {path}: invalid configuration ({error})") from None


def model_from_checkpoint(path: str, device: torch.device | str = "cpu",
                          payload: dict | None = None) -> tuple[nn.Module, TrainConfig]:
    """The trained model (eval mode) on ``device`` and its config; ``payload``: the checkpoint at ``path``
    if already loaded (``load_checkpoint``). A GER-UNet trained with a backend that cannot run on
    ``device`` runs the ``auto`` backend (every backend computes the same function)."""
    payload = load_checkpoint(path) if payload is None else payload
    config = _config_of(payload, path)
    device = torch.device(device)
    runnable = config.backend == "auto" or backends(device)[config.backend].available
    model = build_model(config if runnable else dataclasses.replace(config, backend="auto"))
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise ValueError(f"checkpoint {path}: its weights do not fit the {config.model} of its configuration "
                         f"({str(error).splitlines()[0]})") from None
    return model.to(device).eval(), config


def _training_cases(train_set) -> list[dict] | None:
    """A checkpoint's record of its training data: per case of ``train_set``, its volume id and the
    ``[real path, fingerprint]`` of each of its image files (``SliceDataset.image_files``; none for generated
    data); None for a data set that is not a ``SliceDataset`` (no cases)."""
    if not isinstance(train_set, SliceDataset):
        return None
    return [{"volume_id": volume_id, "images": [list(file) for file in files]}
            for volume_id, files in train_set.image_files().items()]


def check_not_trained_on(dataset: SliceDataset, payload: dict, path: str) -> None:
    """``ValueError`` naming the cases of ``dataset`` with an image file among the training cases' recorded in
    the checkpoint ``payload`` (loaded from ``path``): the same file (real path) or a copy of one (the same
    ``file_fingerprint``). Nothing for a checkpoint without the record (written before it was kept, or trained
    on a data set that is not a ``SliceDataset``)."""
    if payload.get("training_cases") is None:
        return
    trained = {}  # (training case, file) by real path and by fingerprint
    for case in payload["training_cases"]:
        for file, fingerprint in case["images"]:
            trained[file] = trained[fingerprint] = case["volume_id"], file
    cases, overlaps = dataset.image_files(), []
    for volume_id, files in cases.items():
        shared = []
        for file, fingerprint in files:
            match = trained.get(file) or trained.get(fingerprint)
            if match:
                case, original = match
                shared.append(f"{file}, training case {case}'s" if original == file else
                              f"{file}, a copy of training case {case}'s {original}")
        if shared:
            overlaps.append(f"{volume_id} ({'; '.join(shared)})")
    if overlaps:
        raise ValueError(f"{path} was trained on {len(overlaps)} of the {len(cases)} cases of {dataset.source} "
                         f"(the same image files, or copies of them): {short_listing(overlaps)}; score it on "
                         f"data it was not trained on")


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


def memory_format(config: TrainConfig, device: torch.device) -> torch.memory_format:
    """The memory format of the model and its batches (``TrainConfig.channels_last``)."""
    channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
    return torch.channels_last if channels_last else torch.contiguous_format


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


def _validate(model, loader, device, amp, dice_weight, processes=distributed.SINGLE,
              layout=torch.contiguous_format) -> tuple[float, float]:
    """Mean loss and per-slice mean Dice (``ger_kernels.metrics`` conventions) over the validation
    slices of every process (``loader`` holds this process's share), batches in memory format ``layout``."""
    model.eval()
    loss_sum, dice_sum, count = 0.0, 0.0, 0
    with torch.no_grad():
        for images, masks in loader:
            with _autocast(device, amp):
                scores = model(images.to(device, memory_format=layout))
            loss_sum += _loss(scores, masks.to(device), dice_weight).item() * len(images)
            for pred, target in zip(scores.argmax(1).cpu(), masks):
                dice_sum += metrics.slice_metrics(pred.numpy(), target.numpy())["dice"]
                count += 1
    totals = distributed.all_reduce_sum(torch.tensor([loss_sum, dice_sum, count], dtype=torch.float64,
                                                     device=device), processes).tolist()
    return totals[0] / max(totals[2], 1), totals[1] / totals[2] if totals[2] else 0.0


def _write_logs(out: str, history: list[dict]) -> None:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(key for row in history for key in row))  # rows of older versions lack some
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_text_atomically(os.path.join(out, "log.csv"), buffer.getvalue())
    write_text_atomically(os.path.join(out, "log.json"), json.dumps(history, indent=1))


def train(config: TrainConfig, train_set, *, resume: bool = True, progress: bool = True) -> dict:
    """Trains on ``train_set`` (a ``SliceDataset``), resuming from ``out/last.pt`` when it exists.
    The device, backend and validation split are checked before the run folder is created.
    With ``config.deterministic``, torch's deterministic algorithms are on while it runs (ops
    without one warn), so a run repeats bit for bit on the same machine; ``config.threads`` sets
    torch's CPU threads while it runs. Both global settings are restored afterwards.

    Under ``torchrun``, each process calls it (see the module docstring) and gets the same summary.

    Returns ``{"best_epoch", "best_val_dice", "best_val_loss", "epochs_run", "seconds", "history"}``.
    Raises ``FloatingPointError`` on a non-finite loss, before the epoch is saved.
    """
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.get_num_threads())
    torch.use_deterministic_algorithms(config.deterministic, warn_only=True)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, train_set, resume, progress)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.set_num_threads(previous[2])


def check_resumable(config: TrainConfig) -> None:
    """That ``config`` may resume ``config.out/last.pt`` if it exists: else ``ValueError`` listing the
    fields that differ and may not change (``RESUMABLE_CHANGES`` may)."""
    last = os.path.join(config.out, "last.pt")
    if os.path.exists(last):
        _check_resumable(config, load_checkpoint(last), last)


def _check_resumable(config: TrainConfig, payload: dict, path: str) -> None:
    stored, now = _config_of(payload, path).to_dict(), config.to_dict()
    changed = sorted(k for k in now if stored[k] != now[k] and k not in RESUMABLE_CHANGES)
    if changed:
        differences = "; ".join(f"{k} {stored[k]!r} there, {now[k]!r} now" for k in changed)
        raise ValueError(f"{path} was written with another configuration ({differences}; only "
                         f"{', '.join(sorted(RESUMABLE_CHANGES))} may change): use the same values, another "
                         f"--out, or --no-resume")


def _non_finite_loss(config: TrainConfig, state: dict, what: str, value: float, bad_inputs: int | None) -> str:
    """The message of a non-finite loss; ``bad_inputs``: the NaN/Inf values in the batch's images."""
    if bad_inputs:
        cause = f"the batch's images hold {bad_inputs} NaN/Inf values: check the training data"
    else:
        cause = "the inputs are finite, so training diverged: try a lower --lr or --no-amp (with --no-resume)"
    kept = (f"{os.path.join(config.out, 'last.pt')} keeps epoch {state['epoch']} and best.pt epoch "
            f"{state['best_epoch']}" if state["epoch"] else "no checkpoint was written")
    return f"training stopped: the {what} is {value} ({cause}); {kept}"


def _seed_process(seed: int, epoch: int, rank: int, generator: torch.Generator) -> None:
    """Under several processes: this process's augmentation ``generator`` and torch's RNG, seeded
    from (seed, epoch, rank) at the start of each epoch, so that ranks draw differently and a
    resumed run (with as many processes) draws as an uninterrupted one."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    generator.manual_seed(int(state[0]))
    torch.manual_seed(int(state[1]))


def _loaders(config: TrainConfig, train_set, train_idx: list[int], val_idx: list[int], generator: torch.Generator,
             processes: distributed.Processes) -> tuple[DataLoader, DataLoader]:
    """This process's training loader (one process: all slices shuffled by ``generator``; several:
    its ``CaseShardSampler`` shard) and its validation loader (a contiguous 1/world_size of them)."""
    val_share = val_idx[processes.rank * len(val_idx) // processes.world_size:
                        (processes.rank + 1) * len(val_idx) // processes.world_size]
    val_loader = DataLoader(Subset(train_set, val_share), config.batch_size)
    if not processes.distributed:
        return DataLoader(Subset(train_set, train_idx), config.batch_size, shuffle=True, generator=generator,
                          drop_last=len(train_idx) > config.batch_size), val_loader
    sampler = distributed.CaseShardSampler([train_set.volume_ids[i] for i in train_idx], processes.world_size,
                                           processes.rank, config.batch_size, config.seed)
    return DataLoader(Subset(train_set, train_idx), config.batch_size, sampler=sampler, drop_last=True), val_loader


def _train(config: TrainConfig, train_set, resume: bool, progress: bool) -> dict:
    device = check_runs_here(config)
    with distributed.process_group(device) as processes:
        return _train_processes(config, train_set, resume, progress and processes.main, device, processes)


def _train_processes(config: TrainConfig, train_set, resume: bool, progress: bool, device: torch.device,
                     processes: distributed.Processes) -> dict:
    """The training of one process of ``processes``; rank 0 writes the files while the others wait."""
    train_idx, val_idx = _split_validation(train_set, config.val_fraction, config.seed)
    _seed_everything(config.seed)
    layout = memory_format(config, device)
    model = build_model(config).to(device, memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader, val_loader = _loaders(config, train_set, train_idx, val_idx, generator, processes)
    steps = len(train_loader) if config.max_batches is None else min(len(train_loader), config.max_batches)
    state = {"epoch": 0, "best_val_dice": -1.0, "best_val_loss": math.inf, "best_epoch": 0, "history": [],
             "stale": 0, "seconds": 0.0}
    last = os.path.join(config.out, "last.pt")
    if resume and os.path.exists(last):
        payload = load_checkpoint(last)
        _check_resumable(config, payload, last)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        generator.set_state(payload["generator"])
        torch.set_rng_state(payload["torch_rng"])
        state = payload["state"]
        if "best_val_loss" not in state:  # written before the loss broke ties
            state["best_val_loss"] = state["history"][state["best_epoch"] - 1]["val_loss"] if state["best_epoch"] \
                else math.inf
    trained = distributed.data_parallel(model, device, processes)
    training_cases = _training_cases(train_set)
    if processes.main:
        os.makedirs(config.out, exist_ok=True)
        write_text_atomically(os.path.join(config.out, "config.json"), json.dumps(config.to_dict(), indent=1))
    threads = torch.get_num_threads()
    if progress:
        begin = f"resuming after epoch {state['epoch']}" if state["epoch"] else "from scratch"
        batch = (f"global batch {config.batch_size * processes.world_size} = {config.batch_size} per process x "
                 f"{processes.world_size} processes" if processes.distributed else f"batch {config.batch_size}")
        print(f"{config.model}: {device}, {threads} CPU threads, {len(train_idx)} training and "
              f"{len(val_idx)} validation slices, {steps} steps per epoch, {batch}; {begin} in {config.out}",
              flush=True)
    while state["epoch"] < config.epochs and state["stale"] < config.patience:
        start = time.perf_counter()
        epoch = state["epoch"] + 1
        if processes.distributed:
            train_loader.sampler.set_epoch(epoch)
            _seed_process(config.seed, epoch, processes.rank, generator)
        trained.train()
        total, seen = 0.0, 0
        batches = tqdm(itertools.islice(train_loader, steps), total=steps,
                       desc=f"{config.model} epoch {epoch}/{config.epochs}",
                       disable=not (progress and sys.stderr.isatty()), leave=False)
        for step, (images, masks) in enumerate(batches, 1):
            if config.augment:
                images, masks = _augment(images, masks, generator)
            images, masks = images.to(device, memory_format=layout), masks.to(device)
            with _autocast(device, config.amp):
                loss = _loss(trained(images), masks, config.dice_weight)
            # every process's loss and count of non-finite inputs, so that all stop together
            checks = torch.zeros(2, processes.world_size, dtype=torch.float64, device=device)
            checks[0, processes.rank] = loss.detach()
            checks[1, processes.rank] = (~torch.isfinite(images)).sum()
            losses, bad_inputs = distributed.all_reduce_sum(checks, processes).tolist()
            diverged = [r for r, value in enumerate(losses) if not math.isfinite(value)]
            if diverged:
                # a rank with non-finite inputs if any (synchronized batch norm spreads them to the others)
                rank = next((r for r, count in enumerate(bad_inputs) if count), diverged[0])
                value = losses[rank]
                where = f" on rank {rank} of {processes.world_size}" if processes.distributed else ""
                raise FloatingPointError(_non_finite_loss(config, state, f"training loss at epoch {epoch}, step "
                                                          f"{step} of {steps}{where}", value, int(bad_inputs[rank])))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += sum(losses) * len(images)
            seen += len(images) * processes.world_size
            batches.set_postfix(loss=f"{losses[processes.rank]:.4f}")
        lr = optimizer.param_groups[0]["lr"]  # the epoch's, before the scheduler sets the next one's
        scheduler.step()
        distributed.broadcast_buffers(model, processes)  # every process validates the model rank 0 saves
        val_loss, val_dice = _validate(model, val_loader, device, config.amp, config.dice_weight, processes,
                                       layout)
        if not math.isfinite(val_loss):
            raise FloatingPointError(_non_finite_loss(config, state, f"validation loss after epoch {epoch}",
                                                      val_loss, None))
        state["epoch"] = epoch
        state["seconds"] += time.perf_counter() - start
        state["history"].append({"epoch": epoch, "train_loss": total / max(seen, 1), "val_loss": val_loss,
                                 "val_dice": val_dice, "lr": lr,
                                 "seconds": round(state["seconds"], 2), "threads": threads})
        improved = (val_dice, -val_loss) > (state["best_val_dice"], -state["best_val_loss"])
        state["stale"] = 0 if improved else state["stale"] + 1
        if improved:
            state["best_val_dice"], state["best_val_loss"], state["best_epoch"] = val_dice, val_loss, epoch
        if processes.main:
            payload = {"config": config.to_dict(), "model": model.state_dict(), "epoch": epoch,
                       "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "state": state,
                       "training_cases": training_cases}
            if improved:
                save_checkpoint(os.path.join(config.out, "best.pt"), payload)
            save_checkpoint(last, payload)
            _write_logs(config.out, state["history"])
        distributed.barrier(processes, device)
        if progress:
            print(f"{config.model} epoch {epoch}: train loss {state['history'][-1]['train_loss']:.4f}, "
                  f"val loss {val_loss:.4f}, val Dice {val_dice:.4f}{' (best)' if improved else ''}", flush=True)
    if state["best_val_dice"] == 0 and processes.main:
        _log.warning("%s: the validation Dice stayed 0 in every epoch (no tumor found in the validation slices); "
                     "best.pt holds the epoch with the lowest validation loss (%d)", config.out, state["best_epoch"])
    return {"best_epoch": state["best_epoch"], "best_val_dice": state["best_val_dice"],
            "best_val_loss": state["best_val_loss"], "epochs_run": state["epoch"], "seconds": state["seconds"],
            "history": state["history"]}

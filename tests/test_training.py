import dataclasses
import json
import os

import pytest
import torch

from ger_kernels.training import (TrainConfig, build_model, load_checkpoint, model_from_checkpoint, save_checkpoint,
                                  train)
from helpers import TinySlices


def config(tmp_path, **kwargs):
    defaults = dict(model="ger-unet", out=str(tmp_path / "run"), size=16, widths=(2, 3, 4, 5), epochs=2, batch_size=4,
                    val_fraction=0.25, device="cpu")
    return TrainConfig(**{**defaults, **kwargs})


def test_defaults_follow_the_paper():
    c = TrainConfig()
    assert (c.lr, c.batch_size, c.size, c.epochs, c.skip) == (2e-4, 4, 448, 300, "add")
    assert c.augment is False and TrainConfig(model="r-unet").augment is True
    with pytest.raises(ValueError, match=r"model must be one of \('ger-unet', 'r-unet'\)"):
        TrainConfig(model="u-net")


@pytest.mark.parametrize("model", ["ger-unet", "r-unet"])
def test_trains_logs_and_checkpoints(tmp_path, model):
    c = config(tmp_path, model=model, widths=(2, 3, 4, 5) if model == "ger-unet" else (4, 5, 6, 7), dice_weight=0.5)
    summary = train(c, TinySlices(), progress=False)
    assert summary["epochs_run"] == 2 and len(summary["history"]) == 2
    assert sorted(os.listdir(c.out)) == ["best.pt", "config.json", "last.pt", "log.csv", "log.json"]
    log = json.load(open(os.path.join(c.out, "log.json")))
    assert [row["epoch"] for row in log] == [1, 2] and all(0 <= row["val_dice"] <= 1 for row in log)
    assert open(os.path.join(c.out, "log.csv")).readline().startswith("epoch,train_loss,val_loss,val_dice")
    restored, restored_config = model_from_checkpoint(os.path.join(c.out, "best.pt"))
    assert restored_config == c and not restored.training


def test_learns_the_toy_task(tmp_path):
    c = config(tmp_path, model="r-unet", widths=(8, 8, 8, 8), epochs=12, lr=1e-2, lr_decay=1.0, patience=12)
    summary = train(c, TinySlices(32), progress=False)
    assert summary["best_val_dice"] > 0.5


def test_resume_continues_where_it_stopped(tmp_path):
    full = train(config(tmp_path / "a", epochs=3), TinySlices(), progress=False)
    train(config(tmp_path / "b", epochs=2), TinySlices(), progress=False)
    resumed = train(config(tmp_path / "b", epochs=3), TinySlices(), progress=False)
    assert resumed["epochs_run"] == 3
    # identical to an uninterrupted run, since the data order and RNG states are restored
    assert [r["train_loss"] for r in resumed["history"]] == pytest.approx([r["train_loss"] for r in full["history"]])
    with pytest.raises(ValueError, match=r"was written with another configuration \(epochs, lr differ"):
        train(config(tmp_path / "b", epochs=4, lr=1e-3), TinySlices(), progress=False)
    assert json.load(open(tmp_path / "b" / "run" / "config.json"))["lr"] == config(tmp_path).lr


def test_repeats_bit_for_bit_and_restores_the_global_flag(tmp_path):
    torch.use_deterministic_algorithms(False)
    first = train(config(tmp_path / "a"), TinySlices(), progress=False)
    second = train(config(tmp_path / "b"), TinySlices(), progress=False)
    assert [r["train_loss"] for r in first["history"]] == [r["train_loss"] for r in second["history"]]
    assert not torch.are_deterministic_algorithms_enabled()


def test_early_stopping(tmp_path):
    c = config(tmp_path, epochs=20, patience=1, lr=0.0, lr_decay=1.0)
    summary = train(c, TinySlices(), progress=False)
    assert summary["epochs_run"] == 2  # no improvement after the first epoch


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pt is corrupt or not a torch file"):
        load_checkpoint(str(corrupt))
    foreign = tmp_path / "foreign.pt"
    save_checkpoint(str(foreign), {"weights": 1})
    with pytest.raises(ValueError, match="was not written by ger_kernels training"):
        load_checkpoint(str(foreign))


def test_validation_needs_two_volumes(tmp_path):
    data = TinySlices(4)
    with pytest.raises(ValueError, match="the training split has 1 volume"):
        train(config(tmp_path), data, progress=False)


def test_build_model_paper_widths():
    assert build_model(TrainConfig()).widths == (23, 45, 91, 181)
    assert build_model(TrainConfig(model="r-unet")).widths == (64, 128, 256, 512)
    assert dataclasses.asdict(TrainConfig(widths=[1, 2, 3, 4]))["widths"] == (1, 2, 3, 4)

import csv
import dataclasses
import json
import os
import shutil

import pytest
import torch

from ger_kernels import training
from ger_kernels.training import (TrainConfig, build_model, load_checkpoint, model_from_checkpoint, save_checkpoint,
                                  train)
from helpers import RunsCode, TinySlices


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
    assert [row["lr"] for row in log] == pytest.approx([c.lr, c.lr * c.lr_decay])  # the rate each epoch trained with
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
    with pytest.raises(ValueError, match=r"another configuration \(lr 0.0002 there, 0.001 now; only backend, "
                                         r"channels_last, deterministic, device, epochs, out, patience, threads "
                                         r"may change\)"):
        train(config(tmp_path / "b", epochs=4, lr=1e-3), TinySlices(), progress=False)
    assert json.load(open(tmp_path / "b" / "run" / "config.json"))["lr"] == config(tmp_path).lr


def test_each_process_draws_its_own_numbers_per_epoch():
    """Under torchrun, augmentation and torch's RNG are seeded from (seed, epoch, rank)."""
    def draws(seed, epoch, rank):
        generator = torch.Generator()
        with torch.random.fork_rng():
            training._seed_process(seed, epoch, rank, generator)
            return torch.randint(8, (16,), generator=generator).tolist(), torch.rand(4).tolist()

    runs = [draws(0, 1, 0), draws(0, 1, 1), draws(0, 2, 0), draws(1, 1, 0)]
    assert all(a[0] != b[0] and a[1] != b[1] for i, a in enumerate(runs) for b in runs[:i])
    assert draws(0, 1, 1) == runs[1]


def test_resume_does_not_depend_on_how_the_folder_is_spelled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(config(tmp_path, out="run", epochs=1), TinySlices(), progress=False)
    absolute = train(config(tmp_path, out=str(tmp_path / "run"), epochs=2), TinySlices(), progress=False)
    assert absolute["epochs_run"] == 2 and len(absolute["history"]) == 2
    shutil.copytree(tmp_path / "run", tmp_path / "copied")
    copied = train(config(tmp_path, out="./copied/", epochs=3, patience=5, threads=1), TinySlices(), progress=False)
    assert copied["epochs_run"] == 3 and [r["epoch"] for r in copied["history"]] == [1, 2, 3]
    assert json.load(open(tmp_path / "copied" / "config.json"))["out"] == "./copied/"


def test_resumes_checkpoints_of_the_previous_version(tmp_path):
    c = config(tmp_path, epochs=1)
    train(c, TinySlices(), progress=False)
    last = os.path.join(c.out, "last.pt")
    payload = torch.load(last, weights_only=True)
    # as the previous version wrote it: widths a tuple, no threads, no best_val_loss, no threads column
    payload["config"] = {k: v for k, v in dataclasses.asdict(c).items() if k != "threads"}
    assert isinstance(payload["config"]["widths"], tuple)
    del payload["state"]["best_val_loss"]
    for row in payload["state"]["history"]:
        del row["threads"]
    save_checkpoint(last, payload)
    first_loss = payload["state"]["history"][0]["val_loss"]
    summary = train(config(tmp_path, epochs=2), TinySlices(), progress=False)
    assert summary["epochs_run"] == 2
    assert summary["best_val_loss"] == min(first_loss, summary["history"][1]["val_loss"])
    rows = list(csv.DictReader(open(os.path.join(c.out, "log.csv"))))
    assert [row["threads"] for row in rows] == ["", str(torch.get_num_threads())]


def test_checkpoints_hold_only_plain_data(tmp_path):
    c = config(tmp_path, epochs=1)
    train(c, TinySlices(), progress=False)
    payload = torch.load(os.path.join(c.out, "last.pt"), weights_only=True)

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (str, int, float, bool))

    assert plain(payload["config"]) and plain(payload["state"])
    assert payload["config"]["widths"] == [2, 3, 4, 5]
    assert TrainConfig(**payload["config"]) == c


def _crafted_checkpoint(path, marker):
    payload = {"config": config(path.parent).to_dict(), "model": {}, "epoch": 1, "payload": RunsCode(marker)}
    torch.save(payload, str(path))


def test_a_checkpoint_holding_code_is_refused_unread(tmp_path):
    _crafted_checkpoint(tmp_path / "live.pt", tmp_path / "live-marker")
    torch.load(tmp_path / "live.pt", weights_only=False)  # the payload is live: an unsafe load runs it
    assert (tmp_path / "live-marker").exists()
    _crafted_checkpoint(tmp_path / "evil.pt", tmp_path / "marker")
    for load in (load_checkpoint, model_from_checkpoint):
        with pytest.raises(ValueError, match=r"evil.pt refers to the Python object \S*open, .* refused unread, "
                                             r"since loading it could run code"):
            load(str(tmp_path / "evil.pt"))
    assert not (tmp_path / "marker").exists()


def test_non_finite_loss_stops_without_touching_the_checkpoints(tmp_path, monkeypatch):
    c = config(tmp_path, epochs=1)
    train(c, TinySlices(), progress=False)
    before = {name: open(os.path.join(c.out, name), "rb").read() for name in ("best.pt", "last.pt", "log.json")}
    monkeypatch.setattr(training, "_loss", lambda scores, masks, weight: scores.sum() * float("nan"))
    with pytest.raises(FloatingPointError, match=r"the training loss at epoch 2, step 1 of 3 is nan \(the inputs "
                                                 r"are finite.*last.pt keeps epoch 1 and best.pt epoch 1"):
        train(config(tmp_path, epochs=2), TinySlices(), progress=False)
    assert {name: open(os.path.join(c.out, name), "rb").read() for name in before} == before


def test_non_finite_data_stops_training(tmp_path):
    data = TinySlices()
    data.images[3, 1, 2, 2] = float("inf")
    data.images[5, 0, 4, 4] = float("nan")
    with pytest.raises(FloatingPointError, match=r"epoch 1, step \d of 3 is nan \(the batch's images hold 1 "
                                                 r"NaN/Inf values: check the training data\); no checkpoint"):
        train(config(tmp_path), data, progress=False)
    assert not os.path.exists(os.path.join(config(tmp_path).out, "last.pt"))


@pytest.mark.parametrize("scores, best", [
    ([(0.5, 0.0), (0.4, 0.0), (0.6, 0.0)], 2),   # Dice stays 0: the lowest loss
    ([(0.5, 0.2), (0.4, 0.1), (0.3, 0.2)], 3),   # Dice first, then the lower loss
    ([(0.5, 0.2), (0.4, 0.3), (0.3, 0.1)], 2),
])
def test_best_epoch_by_dice_then_loss(tmp_path, monkeypatch, caplog, scores, best):
    scripted = iter(scores)
    monkeypatch.setattr(training, "_validate", lambda *args: next(scripted))
    c = config(tmp_path, epochs=3)
    summary = train(c, TinySlices(), progress=False)
    assert summary["best_epoch"] == best and load_checkpoint(os.path.join(c.out, "best.pt"))["epoch"] == best
    assert (summary["best_val_loss"], summary["best_val_dice"]) == scores[best - 1]
    warned = "the validation Dice stayed 0 in every epoch" in caplog.text
    assert warned == (summary["best_val_dice"] == 0)


def test_threads_are_set_logged_and_restored(tmp_path, capsys):
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        summary = train(config(tmp_path, epochs=1, threads=1), TinySlices())
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert [row["threads"] for row in summary["history"]] == [1]
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("ger-unet: cpu, 1 CPU threads, 12 training and 4 validation slices, "
                            "3 steps per epoch, batch 4; from scratch in ")


def test_progress_bar_counts_max_batches(tmp_path, monkeypatch):
    bars = []

    class Bar:
        def __init__(self, iterable, total, **kwargs):
            self.items, self.total = list(iterable), total
            bars.append(self)

        def __iter__(self):
            return iter(self.items)

        def set_postfix(self, **kwargs):
            pass

    monkeypatch.setattr(training, "tqdm", Bar)
    train(config(tmp_path, epochs=2, max_batches=2), TinySlices(), progress=False)
    assert [(bar.total, len(bar.items)) for bar in bars] == [(2, 2), (2, 2)]


@pytest.mark.parametrize("field, value, message", [
    ("size", 30, r"size must be a positive multiple of 8 .* got 30: use a --size divisible by 8"),
    ("size", 0, "use a --size divisible by 8"),
    ("widths", (1, 2, 3), r"widths must be 4 positive ints, got \(1, 2, 3\)"),
    ("widths", (1, 2, 0, 4), "each of widths must be an int >= 1, got 0"),
    ("epochs", 0, "epochs must be an int >= 1, got 0"),
    ("batch_size", 2.5, "batch_size must be an int >= 1, got 2.5"),
    ("max_batches", 0, "max_batches must be an int >= 1, got 0"),
    ("threads", -1, "threads must be an int >= 1, got -1"),
    ("lr", -1e-3, r"lr must be a number in \[0, inf\), got -0.001"),
    ("lr_decay", 0.0, r"lr_decay must be a number in \(0, 1\], got 0.0"),
    ("val_fraction", 1.5, r"val_fraction must be a number in \(0, 1\], got 1.5"),
    ("dice_weight", float("nan"), "dice_weight must be a number"),
    ("backend", "foo", r"backend must be one of \('auto', 'reference', 'cpp', 'triton'\), got 'foo'"),
    ("group", "p8", "group must be one of"),
    ("skip", "sum", "skip must be one of"),
    ("device", "gpu", "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
])
def test_config_checks_every_field(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **{field: value})


@pytest.mark.parametrize("kwargs, message", [
    (dict(backend="triton"), r"backend 'triton' cannot run on cpu: triton .* interpreter"),
    pytest.param(dict(device="cuda"), r"device 'cuda': (this torch .* is built without CUDA|no CUDA device)",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")),
])
def test_device_and_backend_are_checked_before_the_run_folder(tmp_path, monkeypatch, kwargs, message):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    c = config(tmp_path, **kwargs)
    with pytest.raises(ValueError, match=message):
        train(c, TinySlices(), progress=False)
    assert not os.path.exists(c.out)


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
    with pytest.raises(IsADirectoryError, match=r"checkpoint \S+ is a directory, not a checkpoint file$"):
        load_checkpoint(str(tmp_path))
    (tmp_path / "best.pt").write_bytes(b"")
    with pytest.raises(IsADirectoryError, match=r"is a directory, not a checkpoint file; did you mean \S+/best.pt\?"):
        load_checkpoint(str(tmp_path))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(ValueError, match=r"corrupt.pt is corrupt or not a torch file \(UnpicklingError: .+\)$"):
        load_checkpoint(str(corrupt))
    corrupt.write_bytes(b"")
    with pytest.raises(ValueError, match=r"corrupt.pt is corrupt or not a torch file \(EOFError\)$"):
        load_checkpoint(str(corrupt))
    foreign = tmp_path / "foreign.pt"
    save_checkpoint(str(foreign), {"weights": 1})
    with pytest.raises(ValueError, match="was not written by ger_kernels training"):
        load_checkpoint(str(foreign))


@pytest.mark.parametrize("weights", [torch.zeros(3), [1, 2], {"conv.weight": 1.0}, {0: torch.zeros(3)}],
                         ids=["tensor", "list", "dict-of-float", "int-keys"])
def test_a_checkpoint_whose_model_is_not_named_tensors_is_an_error_naming_it(tmp_path, weights):
    path = str(tmp_path / "odd.pt")
    save_checkpoint(path, {"config": config(tmp_path).to_dict(), "model": weights, "epoch": 1})
    for load in (load_checkpoint, model_from_checkpoint):
        with pytest.raises(ValueError, match=f"checkpoint {path} was not written by ger_kernels training \\(its "
                                             f"model is not a dict of named tensors\\)"):
            load(path)


def test_validation_needs_two_volumes(tmp_path):
    data = TinySlices(4)
    with pytest.raises(ValueError, match="the training split has 1 volume"):
        train(config(tmp_path), data, progress=False)
    assert not os.path.exists(config(tmp_path).out)


def test_a_checkpoint_of_a_backend_missing_here_runs_auto(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    c = config(tmp_path, backend="triton")
    weights = build_model(config(tmp_path)).state_dict()
    save_checkpoint(str(tmp_path / "gpu.pt"), {"config": c.to_dict(), "model": weights, "epoch": 1})
    model, restored = model_from_checkpoint(str(tmp_path / "gpu.pt"))
    assert restored == c and model(torch.rand(1, 3, 16, 16)).shape == (1, 2, 16, 16)


def test_a_checkpoint_whose_weights_do_not_fit(tmp_path):
    save_checkpoint(str(tmp_path / "odd.pt"), {"config": config(tmp_path, widths=(2, 3, 4, 6)).to_dict(),
                                               "model": build_model(config(tmp_path)).state_dict(), "epoch": 1})
    with pytest.raises(ValueError, match="odd.pt: its weights do not fit the ger-unet of its configuration"):
        model_from_checkpoint(str(tmp_path / "odd.pt"))


def test_build_model_paper_widths():
    assert build_model(TrainConfig()).widths == (23, 45, 91, 181)
    assert build_model(TrainConfig(model="r-unet")).widths == (64, 128, 256, 512)
    assert dataclasses.asdict(TrainConfig(widths=[1, 2, 3, 4]))["widths"] == (1, 2, 3, 4)


@pytest.mark.parametrize("model,widths", [("r-unet", (4, 5, 6, 7)), ("ger-unet", (2, 3, 4, 5))])
def test_channels_last_training(tmp_path, model, widths):
    """``channels_last=True`` trains the model and its batches in the channels_last memory format
    (the default on CUDA): the same losses as NCHW, R-UNet's 4-D weights stored channels_last; the
    setting may change when a run resumes."""
    nchw = train(config(tmp_path / "a", model=model, widths=widths, epochs=1), TinySlices(), progress=False)
    nhwc_config = config(tmp_path / "b", model=model, widths=widths, epochs=1, channels_last=True)
    nhwc = train(nhwc_config, TinySlices(), progress=False)
    for key in ("train_loss", "val_loss"):
        assert nhwc["history"][0][key] == pytest.approx(nchw["history"][0][key], rel=1e-4)
    weights = [t for t in load_checkpoint(os.path.join(nhwc_config.out, "last.pt"))["model"].values() if t.dim() == 4]
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in weights)  # GER-UNet's are 5-D
    assert any(not t.is_contiguous() for t in weights) == (model == "r-unet")
    resumed = train(dataclasses.replace(nhwc_config, epochs=2, channels_last=False), TinySlices(), progress=False)
    assert resumed["epochs_run"] == 2
    assert training.memory_format(TrainConfig(), torch.device("cuda")) == torch.channels_last
    assert training.memory_format(TrainConfig(), torch.device("cpu")) == torch.contiguous_format
    with pytest.raises(ValueError, match="channels_last must be True, False or None"):
        TrainConfig(channels_last="yes")


def test_predictions_run_in_eval_mode_without_an_autograd_graph():
    """Scoring keeps no activations for a backward (at 448 x 448 that graph is GBs): no grad, eval mode."""
    seen = []

    class Recorder(torch.nn.Conv2d):
        def forward(self, x):
            seen.append((torch.is_grad_enabled(), self.training))
            return super().forward(x)

    model = Recorder(3, 2, 1)
    loader = torch.utils.data.DataLoader(list(zip(torch.randn(3, 3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.long))),
                                         batch_size=2)
    batches = list(training.predict_batches(model, loader, torch.device("cpu")))
    assert seen == [(False, False)] * 2 and [p.shape for p, _ in batches] == [(2, 4, 4), (1, 4, 4)]

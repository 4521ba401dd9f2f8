"""Distributed training on the CPU: two gloo processes started with torch.multiprocessing (spawn),
each setting the environment torchrun would. Starting them costs seconds, so each test spawns once
and its workers do several things, saving what the parent checks under tmp_path."""

import contextlib
import copy
import datetime
import itertools
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ger_kernels import cli, distributed, training
from ger_kernels._io import write_text_atomically
from ger_kernels import group_batch_norm as gbn
from ger_kernels import triton as triton_backend
from ger_kernels.distributed import CaseShardSampler, SyncGroupBatchNorm2d, convert_sync_group_batchnorm
from ger_kernels.models import GERUNet, RUNet
from ger_kernels.nn import GroupBatchNorm2d
from helpers import TinySlices

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, task, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    task(rank, folder)


def spawn(task, folder, timeout_s=600):
    """Runs ``task(rank, folder)`` in WORLD processes; fails the test on an error or a hang."""
    context = mp.start_processes(_worker, args=(task, str(folder)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD} processes did not finish within {timeout_s} s")


# --------------------------------------------------------------------------- the sampler

def test_shards_hold_whole_cases_and_are_equal():
    cases = [f"c{i}" for i in range(7) for _ in range(i + 1)]  # 28 slices, cases of 1..7 slices
    samplers = [CaseShardSampler(cases, 3, rank, batch_size=2, seed=5) for rank in range(3)]
    for epoch in (1, 2):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        shards = [list(sampler) for sampler in samplers]
        assert shards == samplers[0].shards(epoch)
        assert len({len(shard) for shard in shards}) == 1 and len(shards[0]) == len(samplers[0])
        assert len(shards[0]) == 8  # largest first: 7+2+1, 6+3, 5+4 slices, cut to 4 batches of 2
        owners = [{cases[i] for i in shard} for shard in shards]
        assert not any(owners[a] & owners[b] for a in range(3) for b in range(a))  # a case goes to one process
        assert all(len(set(shard)) == len(shard) for shard in shards)
    assert samplers[0].shards(1) != samplers[0].shards(2)  # reshuffled per epoch
    assert CaseShardSampler(cases, 3, 0, 2, seed=5).shards(1) == samplers[0].shards(1)  # deterministic


def test_sampler_refuses_what_cannot_be_shared():
    with pytest.raises(ValueError, match="2 training cases cannot give each of 3 processes a case"):
        CaseShardSampler(["a", "a", "b"], 3, 0, 1)
    with pytest.raises(ValueError, match="fewer than --batch-size 4 slices: use fewer processes"):
        CaseShardSampler(["a", "a", "b", "b", "b"], 2, 0, 4)
    with pytest.raises(ValueError, match=r"rank must be an int in 0..1, got 2"):
        CaseShardSampler(["a", "b"], 2, 2, 1)


# --------------------------------------------------------------------------- the environment

def test_environment_of_torchrun(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.environment(torch.device("cpu")) == distributed.SINGLE
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.local_device(torch.device("cuda", 1)) == torch.device("cuda", 1)  # one process: as given
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert distributed.environment(torch.device("cpu")) == distributed.Processes(3, 4, "gloo")
    assert distributed.environment(torch.device("cuda", 0)).backend == "nccl"
    with pytest.raises(ValueError, match=r"device 'cuda:1': under torchrun each process takes cuda:LOCAL_RANK"):
        distributed.local_device(torch.device("cuda", 1))
    monkeypatch.setenv("LOCAL_RANK", str(torch.cuda.device_count()))
    with pytest.raises(ValueError, match=rf"LOCAL_RANK {torch.cuda.device_count()}: this machine has"):
        distributed.local_device(torch.device("cuda"))
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="environment variable WORLD_SIZE must be a non-negative integer"):
        distributed.environment(torch.device("cpu"))


# --------------------------------------------------------------------------- synchronized group batch norm

def test_conversion_keeps_the_state_dict_and_single_process_behaviour():
    torch.manual_seed(0)
    model = GERUNet(widths=(2, 3, 4, 5))
    model(torch.rand(2, 3, 16, 16))  # running statistics away from their initial values
    before = copy.deepcopy(model.state_dict())
    reference = copy.deepcopy(model)
    converted = convert_sync_group_batchnorm(model)
    norms = [m for m in converted.modules() if isinstance(m, GroupBatchNorm2d)]
    assert norms and all(isinstance(m, SyncGroupBatchNorm2d) for m in norms)
    assert before.keys() == converted.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in converted.state_dict().items())
    x = torch.rand(2, 3, 16, 16)
    # no process group: the layers compute what GroupBatchNorm2d computes, in both modes
    torch.testing.assert_close(converted(x), reference(x), rtol=0, atol=0)
    torch.testing.assert_close(converted.state_dict(), reference.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("device_type", ["cuda", "cpu"])
def test_batch_norms_are_synchronized_for_the_device(device_type):
    """Every group batch norm becomes a SyncGroupBatchNorm2d with its ReLU flag and state, on CUDA too,
    where the other batch norms (R-UNet's BatchNorm2d) become nn.SyncBatchNorm; on the CPU those stay."""
    torch.manual_seed(0)
    ger, r_unet = GERUNet(widths=(2, 3, 4, 5)), RUNet(widths=(4, 5, 6, 7))
    x = torch.rand(2, 3, 16, 16)
    for model in (ger, r_unet):
        model(x)  # running statistics away from their initial values
    relus = [m.relu for m in ger.modules() if isinstance(m, GroupBatchNorm2d)]
    states = [copy.deepcopy(model.state_dict()) for model in (ger, r_unet)]
    expected = copy.deepcopy(ger).eval()(x)
    ger, r_unet = (distributed.synchronize_batch_norms(model, device_type) for model in (ger, r_unet))
    norms = [m for m in ger.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(type(m) is SyncGroupBatchNorm2d for m in norms) and len(norms) == len(relus)
    assert [m.relu for m in norms] == relus and any(relus) and not all(relus)
    plain = [m for m in r_unet.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert plain and all(type(m) is (nn.SyncBatchNorm if device_type == "cuda" else nn.BatchNorm2d) for m in plain)
    for model, state in zip((ger, r_unet), states):
        torch.testing.assert_close(model.state_dict(), state, rtol=0, atol=0)
    torch.testing.assert_close(ger.eval()(x), expected, rtol=0, atol=0)


def _sync_batch_norm_task(rank, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=WORLD)
    torch.manual_seed(0)  # the same global batch on both processes
    cases = [(torch.float64, 0.1), (torch.float64, None)]  # plain torch
    os.environ["TRITON_INTERPRET"] = "1"  # then float32 runs the stages' Triton kernels, interpreted
    if triton_backend.status("cpu")[0]:
        cases.append((torch.float32, 0.1))
    for (dtype, momentum), relu in itertools.product(cases, (True, False)):
        os.environ["TRITON_INTERPRET"] = "1" if dtype == torch.float32 else "0"
        x = (torch.randn(6, 3 * 8, 5, 5, dtype=torch.float64) * 3 + 1).to(dtype)
        assert gbn._on_triton(x) == (dtype == torch.float32)
        residual, grad = torch.randn_like(x), torch.randn_like(x)
        reference = GroupBatchNorm2d(3, relu=relu, momentum=momentum).to(dtype)
        with torch.no_grad():
            reference.weight.uniform_(0.5, 1.5)
            reference.bias.uniform_(-0.5, 0.5)
        synced = convert_sync_group_batchnorm(copy.deepcopy(reference))
        xs, rs = x.clone().requires_grad_(), residual.clone().requires_grad_()
        expected = reference(xs, rs)
        (expected * grad).sum().backward()
        half = slice(rank * 3, rank * 3 + 3)  # this process's half of the batch
        x_local, r_local = x[half].clone().requires_grad_(), residual[half].clone().requires_grad_()
        y_local = synced(x_local, r_local)
        (y_local * grad[half]).sum().backward()
        torch.testing.assert_close(y_local, expected[half])
        torch.testing.assert_close(x_local.grad, xs.grad[half])
        torch.testing.assert_close(r_local.grad, rs.grad[half])
        for name in ("weight", "bias"):  # local sums: DistributedDataParallel adds (averages) them
            total = getattr(synced, name).grad.clone()
            dist.all_reduce(total)
            torch.testing.assert_close(total, getattr(reference, name).grad)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(synced, name), getattr(reference, name))
    dist.destroy_process_group()


def test_synchronized_group_batch_norm_equals_the_whole_batch(tmp_path):
    spawn(_sync_batch_norm_task, tmp_path)


# --------------------------------------------------------------------------- training

def config(folder, **kwargs):
    defaults = dict(model="ger-unet", out=os.path.join(folder, "run"), size=16, widths=(2, 3, 4, 5), epochs=1,
                    batch_size=2, val_fraction=0.25, device="cpu", lr=1e-2, max_batches=3, threads=1)
    return training.TrainConfig(**{**defaults, **kwargs})


def _new_group(folder, rank, groups):
    """Sets MASTER_PORT for the next process group: a port that rank 0 finds free just before (each
    torchrun run has its own; ports picked long before could be taken by then)."""
    path = os.path.join(folder, f"port{next(groups)}")
    if rank == 0:
        write_text_atomically(path, str(_free_port()))
    while not os.path.exists(path):
        time.sleep(0.01)
    os.environ["MASTER_PORT"] = open(path).read()


def _training_task(rank, folder):
    groups = itertools.count()
    # 1. two processes from scratch; each keeps the weights it ends with
    trained = {}
    data_parallel = distributed.data_parallel

    def keep(model, device, processes):
        trained["model"] = model
        return data_parallel(model, device, processes)

    distributed.data_parallel = keep
    _new_group(folder, rank, groups)
    training.train(config(folder), TinySlices(), progress=False)
    torch.save(trained["model"].state_dict(), os.path.join(folder, f"rank{rank}.pt"))
    # 2. interrupted after epoch 1 and resumed, under two processes, as a run of 2 epochs (with random
    # augmentation: each process's generator is reseeded per epoch)
    for folder_name, epochs in (("split", 1), ("split", 2), ("whole", 2)):
        _new_group(folder, rank, groups)
        training.train(config(folder, out=os.path.join(folder, folder_name), epochs=epochs, augment=True),
                       TinySlices(), progress=False)
    # 3. R-UNet, whose BatchNorm2d are per process on the CPU
    _new_group(folder, rank, groups)
    training.train(config(folder, model="r-unet", out=os.path.join(folder, "r-unet")), TinySlices(), progress=False)
    # 4. resuming under two processes a run of one (written by the parent)
    _new_group(folder, rank, groups)
    training.train(config(folder, out=os.path.join(folder, "one"), epochs=2), TinySlices(), progress=False)
    # 5. a NaN in an image of rank 1's first batch stops both processes, without a hang
    data = TinySlices()
    train_idx, _ = training._split_validation(data, 0.25, 0)
    sampler = CaseShardSampler([data.volume_ids[i] for i in train_idx], WORLD, 1, 2)
    data.images[train_idx[sampler.shards(1)[1][0]], 0, 0, 0] = float("nan")
    _new_group(folder, rank, groups)
    with pytest.raises(FloatingPointError, match=r"training loss at epoch 1, step 1 of 2 on rank 1 of 2 is nan "
                                                 r"\(the batch's images hold 1 NaN/Inf values"):
        training.train(config(folder, out=os.path.join(folder, "nan")), data, progress=False)
    # 6. the command line: rank 0 alone prints, first the backend and world size
    _new_group(folder, rank, groups)
    with open(os.path.join(folder, f"cli{rank}.txt"), "w") as out, contextlib.redirect_stdout(out):
        assert cli.main(["train", "--data", "phantom:4", "--size", "16", "--widths", "2", "3", "4", "5",
                         "--epochs", "1", "--batch-size", "1", "--max-batches", "1", "--device", "cpu",
                         "--out", os.path.join(folder, "cli"), "--quiet"]) == 0
    # 7. a process failing mid-epoch makes the other fail too, within the timeout, instead of hanging (last:
    # the other process waits out the timeout)
    distributed.TIMEOUT = datetime.timedelta(seconds=20)
    _new_group(folder, rank, groups)
    with pytest.raises(RuntimeError, match="rank 1 fails" if rank == 1 else "Timed out|Connection closed"):
        training.train(config(folder, out=os.path.join(folder, "fail")), FailingSlices(fail=rank == 1),
                       progress=False)


class FailingSlices(TinySlices):
    """Slices that raise on their third read (in the second training step) when ``fail``."""

    def __init__(self, fail):
        super().__init__()
        self.fail, self.reads = fail, 0

    def __getitem__(self, i):
        self.reads += 1
        if self.fail and self.reads == 3:
            raise RuntimeError("rank 1 fails")
        return super().__getitem__(i)


def _single_process_steps(c, data, steps, per_process_norm=False):
    """The reference: one process stepping on the union of the two processes' batches of epoch 1;
    with ``per_process_norm``, batch norm takes each process's batch alone (no synchronization)."""
    train_idx, _ = training._split_validation(data, c.val_fraction, c.seed)
    shards = CaseShardSampler([data.volume_ids[i] for i in train_idx], WORLD, 0, c.batch_size, c.seed).shards(1)
    training._seed_everything(c.seed)
    model = training.build_model(c).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=c.lr)
    assert len(shards[0]) == steps * c.batch_size
    for step in range(steps):
        batches = [[train_idx[i] for i in shard[step * c.batch_size:(step + 1) * c.batch_size]] for shard in shards]
        if not per_process_norm:
            batches = [sum(batches, [])]
        optimizer.zero_grad()
        sum(training._loss(model(data.images[b]), data.masks[b], c.dice_weight) for b in batches).backward()
        for p in model.parameters():
            p.grad /= len(batches)
        optimizer.step()
    return model.state_dict()


def test_two_processes_train_as_one_with_the_global_batch(tmp_path):
    folder = str(tmp_path)
    one = config(folder, out=os.path.join(folder, "one"))
    training.train(one, TinySlices(), progress=False)  # for the workers to resume under two processes
    spawn(_training_task, tmp_path)

    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]
    for name, tensor in ranks[0].items():
        assert torch.equal(tensor, ranks[1][name]), f"{name} differs between the ranks"
    saved = training.load_checkpoint(os.path.join(folder, "run", "last.pt"))
    torch.testing.assert_close(saved["model"], ranks[0], rtol=0, atol=0)  # the unwrapped model's state dict
    # parameters and running statistics after the 2 steps (shards of 4 slices: 2 whole cases of 4 slices
    # on one process, 1 on the other, cut to 4) equal one process's on the 2 x 2 slices of each step
    expected = _single_process_steps(config(folder), TinySlices(), 2)
    initial = training.build_model(config(folder)).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in expected.items() if k.endswith("weight"))
    # Adam divides by the gradient's size: a small gradient's float32 rounding reaches the weights
    # as up to ~lr * its relative error (lr 1e-2 here); without synchronized batch norm they differ by far more
    torch.testing.assert_close(ranks[0], expected, rtol=1e-4, atol=1e-5)
    unsynchronized = _single_process_steps(config(folder), TinySlices(), 2, per_process_norm=True)
    parameters = [k for k in expected if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert max((unsynchronized[k] - expected[k]).abs().max() for k in parameters) > 1e-3

    # validation over the whole validation set: what one process computes with the saved model (R-UNet: with
    # rank 0's running statistics, which its per-process BatchNorm2d end the epoch without sharing)
    data = TinySlices()
    _, val_idx = training._split_validation(data, 0.25, 0)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, val_idx), 3)
    for c in (config(folder), config(folder, model="r-unet", out=os.path.join(folder, "r-unet"))):
        model, _ = training.model_from_checkpoint(os.path.join(c.out, "last.pt"))
        row = training.load_checkpoint(os.path.join(c.out, "last.pt"))["state"]["history"][0]
        expected = training._validate(model, loader, torch.device("cpu"), True, 0.0)
        assert (row["val_loss"], row["val_dice"]) == pytest.approx(expected, rel=1e-6, abs=1e-9), c.model

    # resumed under two processes as it would have run on: the same data order and seeds per epoch
    split, whole = (training.load_checkpoint(os.path.join(folder, name, "last.pt")) for name in ("split", "whole"))
    torch.testing.assert_close(split["model"], whole["model"], rtol=0, atol=0)
    assert [row["train_loss"] for row in split["state"]["history"]] == \
        [row["train_loss"] for row in whole["state"]["history"]]

    # a checkpoint of two processes resumes under one
    resumed = training.train(config(folder, epochs=2), TinySlices(), progress=False)
    assert [row["epoch"] for row in resumed["history"]] == [1, 2] and resumed["epochs_run"] == 2
    # and one of one process under two
    log = training.load_checkpoint(os.path.join(folder, "one", "last.pt"))["state"]["history"]
    assert [row["epoch"] for row in log] == [1, 2]

    first, *_ = open(tmp_path / "cli0.txt").read().splitlines()
    assert first == "distributed: gloo, world size 2"
    assert open(tmp_path / "cli1.txt").read() == ""
    assert sorted(os.listdir(tmp_path / "cli")) == ["best.pt", "config.json", "last.pt", "log.csv", "log.json"]

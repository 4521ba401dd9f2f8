"""Training on several processes: ``torchrun`` + ``DistributedDataParallel`` (one process per GPU,
or several CPU processes).

- ``process_group``: joins the process group that ``torchrun``'s environment (``WORLD_SIZE``,
  ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) describes: NCCL on CUDA, gloo on
  the CPU, with a timeout (``TIMEOUT``) after which a collective that some rank never joins
  fails instead of waiting forever. Without ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing
  is set up and training runs in one process as before.
- ``data_parallel``: the model in ``DistributedDataParallel``, its batch norms synchronized
  (``synchronize_batch_norms``).
- ``CaseShardSampler``: each process's share of the training slices, whole cases only,
  reshuffled per epoch from (seed, epoch), the same number of batches on every process.
- ``SyncGroupBatchNorm2d`` / ``convert_sync_group_batchnorm``: group batch norm with batch
  statistics over the batches of all processes, built on the staged ops of
  ``ger_kernels.group_batch_norm`` (statistics -> all_gather + merge -> normalize; grad sums ->
  all_reduce -> input grad), the statistics still shared by a field's orientations, so the
  model stays exactly equivariant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import os
import traceback
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ger_kernels import group_batch_norm as gbn
from ger_kernels._validation import check_int
from ger_kernels.nn.norm import GroupBatchNorm2d

__all__ = ["Processes", "SINGLE", "TIMEOUT", "world_size_of_environment", "environment", "local_device",
           "process_group", "synchronize_batch_norms", "data_parallel", "all_reduce_sum", "broadcast_buffers",
           "barrier", "CaseShardSampler", "SyncGroupBatchNorm2d", "convert_sync_group_batchnorm"]

# How long a collective waits for every rank. Training never keeps a rank waiting for long (validation
# is sharded, rank 0 saves in seconds), so a longer wait means a rank is stuck or gone; torchrun also
# stops every worker as soon as one exits with an error.
TIMEOUT = datetime.timedelta(minutes=15)


@dataclasses.dataclass(frozen=True)
class Processes:
    """The processes training one model: this one's ``rank`` of ``world_size``; ``backend`` None
    for a single process without a process group."""
    rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints, logs and reports (rank 0)."""
        return self.rank == 0


SINGLE = Processes()


def _environment_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise ValueError(f"environment variable {name} must be a non-negative integer (as torchrun sets it), "
                         f"got {text!r}")
    return int(text)


def world_size_of_environment() -> int:
    """``WORLD_SIZE`` as ``torchrun`` sets it; 1 without it."""
    return max(_environment_int("WORLD_SIZE", 1), 1)


def environment(device: torch.device) -> Processes:
    """The processes ``torchrun``'s environment describes, before any process group is set up:
    ``SINGLE`` without it or for ``WORLD_SIZE`` 1; the backend is the one for ``device``."""
    world_size = world_size_of_environment()
    if world_size == 1:
        return SINGLE
    return Processes(_environment_int("RANK", 0), world_size, "nccl" if device.type == "cuda" else "gloo")


def local_device(device: torch.device) -> torch.device:
    """The device of this process: ``device``, except that under ``torchrun`` with several
    processes CUDA means ``cuda:LOCAL_RANK`` (one GPU per process); an explicit ``cuda:N`` there
    raises ``ValueError``."""
    if device.type != "cuda" or world_size_of_environment() == 1:
        return device
    if device.index is not None:
        raise ValueError(f"device {str(device)!r}: under torchrun each process takes cuda:LOCAL_RANK; give "
                         f"--device cuda (or auto), and choose GPUs with CUDA_VISIBLE_DEVICES")
    local_rank = _environment_int("LOCAL_RANK", 0)
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank}: this machine has {torch.cuda.device_count()} CUDA devices; "
                         f"start at most that many processes per node (--nproc_per_node)")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Processes]:
    """The processes of this run: a process group already initialized (kept open), the one of
    ``torchrun``'s environment when ``WORLD_SIZE`` > 1 (NCCL for a CUDA ``device``, else gloo,
    destroyed on exit), or ``SINGLE``."""
    if dist.is_available() and dist.is_initialized():
        yield Processes(dist.get_rank(), dist.get_world_size(), dist.get_backend())
        return
    processes = environment(device)
    if not processes.distributed:
        yield SINGLE
        return
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE is {processes.world_size}, but this torch {torch.__version__} is built "
                         f"without torch.distributed")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(processes.backend, timeout=TIMEOUT)
    try:
        yield Processes(dist.get_rank(), dist.get_world_size(), processes.backend)
    except BaseException as error:
        # the frames of a failed run still hold its DistributedDataParallel model, whose reducer holds the
        # group: a reducer freed after the group is destroyed can hang in gloo's teardown, so free it first
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        gc.collect()  # a model in a reference cycle, too
        dist.destroy_process_group()


def synchronize_batch_norms(module: nn.Module, device_type: str) -> nn.Module:
    """``module`` with its batch norms synchronized over the processes for ``device_type``: every
    ``GroupBatchNorm2d`` a ``SyncGroupBatchNorm2d`` (``convert_sync_group_batchnorm``); on CUDA every
    other ``BatchNorm`` an ``nn.SyncBatchNorm``, which has no CPU kernels, so R-UNet's ``BatchNorm2d``
    stays per process on the CPU. The state dict is unchanged."""
    if isinstance(module, GroupBatchNorm2d):  # a BatchNorm3d, which nn.SyncBatchNorm would replace by a plain one
        return convert_sync_group_batchnorm(module)
    if device_type == "cuda" and isinstance(module, nn.modules.batchnorm._BatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        module.add_module(name, synchronize_batch_norms(child, device_type))
    return module


def data_parallel(model: nn.Module, device: torch.device, processes: Processes) -> nn.Module:
    """``model`` itself for a single process; else ``model`` with synchronized batch norms
    (``synchronize_batch_norms``; on the CPU R-UNet's ``BatchNorm2d`` stay per process, with rank
    0's running statistics broadcast at every step) wrapped in ``DistributedDataParallel``.
    ``model`` keeps its state dict."""
    if not processes.distributed:
        return model
    model = synchronize_batch_norms(model, device.type)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(values: torch.Tensor, processes: Processes) -> torch.Tensor:
    """The sum of ``values`` over the processes (``values`` itself for a single one), in place."""
    if processes.distributed:
        dist.all_reduce(values)
    return values


def broadcast_buffers(module: nn.Module, processes: Processes) -> None:
    """Rank 0's buffers of ``module`` (its batch norms' running statistics) on every process, in
    place (nothing for a single one): per-process ``BatchNorm2d`` (R-UNet on the CPU) leave each
    process's own after its last step."""
    if processes.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def barrier(processes: Processes, device: torch.device) -> None:
    """Waits until every process gets here (nothing for a single one)."""
    if processes.distributed:
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


class CaseShardSampler(torch.utils.data.Sampler[int]):
    """Indices of this process's shard of a data set whose item ``i`` belongs to case
    ``case_ids[i]``: every case goes whole to one process.

    Per epoch (``set_epoch``; deterministic in ``seed`` and the epoch, the same on every
    process): the cases, largest first (equal sizes in a random order), are dealt one by one to
    the process with the fewest slices so far, which balances the shards to within about one
    case; each shard is shuffled and cut to the length of the smallest, rounded down to a
    multiple of ``batch_size`` (drop, not pad: no slice counts twice), so that every process runs
    the same number of steps (DistributedDataParallel hangs otherwise). The shards' sizes are
    the same in every epoch; which cases of equal size go where, and which slices are cut, change.
    """

    def __init__(self, case_ids: Sequence[str], world_size: int, rank: int, batch_size: int, seed: int = 0):
        self.world_size = check_int(world_size, "world_size")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in 0..{world_size - 1}, got {rank!r}")
        self.rank = rank
        self.batch_size = check_int(batch_size, "batch_size")
        self.seed = seed
        self.epoch = 0
        cases = list(dict.fromkeys(case_ids))
        if len(cases) < world_size:
            raise ValueError(f"{len(cases)} training cases cannot give each of {world_size} processes a case of its "
                             f"own: use at most {len(cases)} processes")
        self._slices = [[i for i, case in enumerate(case_ids) if case == c] for c in cases]
        self._length = min(len(shard) for shard in self._deal(0)) // batch_size * batch_size
        if self._length == 0:
            raise ValueError(f"the smallest of {world_size} shards of the {len(case_ids)} training slices "
                             f"({len(cases)} cases) has fewer than --batch-size {batch_size} slices: use fewer "
                             f"processes or a smaller --batch-size")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _deal(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        sizes = np.array([len(s) for s in self._slices])
        order = np.lexsort((rng.permutation(len(sizes)), -sizes))  # by size, then at random
        shards: list[list[int]] = [[] for _ in range(self.world_size)]
        for case in order:
            min(shards, key=len).extend(self._slices[case])
        return [[shard[i] for i in rng.permutation(len(shard))] for shard in shards]

    def shards(self, epoch: int) -> list[list[int]]:
        """Every process's indices in epoch ``epoch``, ``len(self)`` each."""
        return [shard[:self._length] for shard in self._deal(epoch)]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shards(self.epoch)[self.rank])

    def __len__(self) -> int:
        return self._length


class _SyncGroupBatchNorm(torch.autograd.Function):
    """Group batch norm over the batches of every process of ``group`` (training mode)."""

    @staticmethod
    def forward(ctx, input, weight, bias, residual, running_mean, running_var, factor, eps, order, relu, group):
        stats = gbn.statistics(input, order)
        gathered = [torch.empty_like(stats) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, stats, group=group)
        count, mean, m2 = gbn.merge_statistics(torch.stack(gathered))
        count = count[0]  # values per field over every process, kept on the device: no host sync per layer
        local = input.numel() // (input.shape[1] // order)
        if local <= 1 and count.item() <= 1:  # only a process with at most 1 value per field can see this
            raise ValueError(f"Expected more than 1 value per field over all processes when training, "
                             f"got {int(count.item())}")
        var = m2 / count
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None:
            new_mean, new_var = gbn.running_statistics(running_mean, running_var, mean, var, count, factor)
            running_mean.copy_(new_mean)
            running_var.copy_(new_var)
        scale, shift = gbn.scale_shift(invstd, weight, bias)
        output = gbn.normalize(input, mean, scale, shift, residual, order, relu)
        ctx.save_for_backward(input, output if relu else None, weight, mean, invstd)
        ctx.order, ctx.count, ctx.group = order, count, group
        ctx.dtypes = (weight.dtype if weight is not None else None, bias.dtype if bias is not None else None)
        return output

    @staticmethod
    def backward(ctx, grad):
        input, output, weight, mean, invstd = ctx.saved_tensors
        needs_input, needs_weight, needs_bias, needs_residual = ctx.needs_input_grad[:4]
        local = gbn.grad_sums(grad, input, output, mean, ctx.order)
        # every process needs the input gradient over the global batch (sums over all of it), but
        # DistributedDataParallel averages the weight and bias gradients itself: those take the local sums
        total = local.clone()
        dist.all_reduce(total, group=ctx.group)
        weight_acc = weight.to(invstd.dtype) if weight is not None else None  # in the statistics' dtype
        a, b, c = gbn.input_grad_coefficients(invstd, weight_acc, total, ctx.count)
        dx, *rest = gbn.input_grad(grad, input, output, mean, a, b, c, ctx.order, needs_residual)
        dweight = (local[1] * invstd).to(ctx.dtypes[0]) if needs_weight else None
        dbias = local[0].to(ctx.dtypes[1]) if needs_bias else None
        return (dx if needs_input else None, dweight, dbias, rest[0] if needs_residual else None,
                None, None, None, None, None, None, None)


class SyncGroupBatchNorm2d(GroupBatchNorm2d):
    """``GroupBatchNorm2d`` whose training-mode batch statistics are those of the batches of all
    processes of ``process_group`` (default: every process), as ``nn.SyncBatchNorm`` to
    ``BatchNorm``: per-field count, mean and M2 gathered and merged, the input gradient from
    per-field gradient sums added over the processes, running statistics updated identically on
    every process (unbiased variance over the global count). Eval mode, and training without
    a process group of several processes, are ``GroupBatchNorm2d``'s. Same parameters, buffers and
    state dict."""

    process_group = None

    def _reduces(self) -> bool:
        """Whether this forward reduces its statistics over processes."""
        return (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group) > 1)

    def normalizes_on_load(self) -> bool:
        return not self._reduces()

    def _batch_norm(self, input: torch.Tensor, residual: torch.Tensor | None, relu: bool,
                    statistics: torch.Tensor | None = None) -> torch.Tensor:
        """``statistics`` (this process's) are ignored when reducing over processes."""
        if not self._reduces():
            return super()._batch_norm(input, residual, relu, statistics)
        if residual is not None and residual.shape != input.shape:
            raise ValueError(f"residual must have the input's shape {tuple(input.shape)}, got {tuple(residual.shape)}")
        running = self.track_running_stats and self.running_mean is not None
        factor = self.momentum
        if running and factor is None:
            factor = 1.0 / self.num_batches_tracked  # a 0-d tensor: no host sync
        return _SyncGroupBatchNorm.apply(input, self.weight, self.bias, residual,
                                         self.running_mean if running else None,
                                         self.running_var if running else None, factor, self.eps, self.group.order,
                                         relu, self.process_group)


def convert_sync_group_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """``module`` with every ``GroupBatchNorm2d`` in it replaced by a ``SyncGroupBatchNorm2d`` over
    ``process_group`` holding the same parameters and buffers (the state dict is unchanged), as
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` does for ``BatchNorm``."""
    if isinstance(module, GroupBatchNorm2d) and not isinstance(module, SyncGroupBatchNorm2d):
        converted = SyncGroupBatchNorm2d(module.num_features, module.group, module.eps, module.momentum,
                                         module.affine, module.track_running_stats, module.relu)
        converted.process_group = process_group
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(converted, name, getattr(module, name))
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_sync_group_batchnorm(child, process_group))
    return module

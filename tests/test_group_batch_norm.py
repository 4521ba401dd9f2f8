"""The group batch norm ops on their plain-torch path (CPU, float64): parity with BatchNorm3d on
the 5-D view, the SyncBN-ready stages, the variance's numerics, the fake kernels and autograd
(torch.library.opcheck), and the byte counts."""

import types

import pytest
import torch
from torch import nn

from ger_kernels import group_batch_norm as gbn
from helpers import max_rel_err

ORDER = 8


def reference(fields, relu=False, **bn_kwargs):
    """BatchNorm3d on the 5-D view (float64), then + residual, then ReLU."""
    bn = nn.BatchNorm3d(fields, **bn_kwargs).double()
    return bn, lambda x, r=None: _finish(bn(x.unflatten(1, (fields, ORDER))).flatten(1, 2), r, relu)


def _finish(y, residual, relu):
    y = y + residual if residual is not None else y
    return y.relu() if relu else y


def step(x, residual, grad, fused, ref):
    """Outputs and input/residual gradients of both."""
    results = []
    for fn in (fused, ref):
        leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, residual)]
        out = fn(*leaves)
        out.backward(grad)
        results.append((out, leaves[0].grad, leaves[1].grad if residual is not None else None))
    return results


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("residual,relu", [(False, False), (False, True), (True, False), (True, True)])
def test_training_steps_match_batchnorm3d(momentum, affine, residual, relu):
    fields = 3
    bn, ref = reference(fields, relu=relu, momentum=momentum, affine=affine)
    weight = bias = None
    if affine:
        with torch.no_grad():
            bn.weight.normal_()
            bn.bias.normal_()
        weight, bias = [p.detach().clone().requires_grad_() for p in (bn.weight, bn.bias)]
    running_mean, running_var = torch.zeros(fields, dtype=torch.float64), torch.ones(fields, dtype=torch.float64)
    tracked = torch.tensor(0)
    for _ in range(3):
        x = torch.randn(2, fields * ORDER, 5, 7, dtype=torch.float64) * 3 + 5
        r = torch.randn_like(x) if residual else None
        grad = torch.randn_like(x)
        tracked += 1

        def fused(x, r):
            return gbn.group_batch_norm(x, ORDER, running_mean, running_var, weight, bias, True, momentum, 1e-5,
                                        r, relu, tracked)

        (out, dx, dr), (out_ref, dx_ref, dr_ref) = step(x, r, grad, fused, ref)
        assert max_rel_err(out, out_ref) < 1e-13 and max_rel_err(dx, dx_ref) < 1e-12
        if residual:
            assert max_rel_err(dr, dr_ref) < 1e-15
        assert max_rel_err(running_mean, bn.running_mean) < 1e-14
        assert max_rel_err(running_var, bn.running_var) < 1e-14
    if affine:
        assert max_rel_err(weight.grad, bn.weight.grad) < 1e-12 and max_rel_err(bias.grad, bn.bias.grad) < 1e-13


@pytest.mark.parametrize("weight_grad", [True, False])
def test_eval_and_untracked_match_batchnorm3d(weight_grad):
    fields = 2
    x = torch.randn(3, fields * ORDER, 4, 5, dtype=torch.float64)
    grad = torch.randn_like(x)
    bn, ref = reference(fields, relu=True)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
    bn.weight.requires_grad_(weight_grad)
    bn.eval()
    weight, bias = bn.weight.detach().clone().requires_grad_(weight_grad), bn.bias.detach().clone().requires_grad_()
    (out, dx, _), (out_ref, dx_ref, _) = step(
        x, None, grad, lambda x, r: gbn.group_batch_norm(x, ORDER, bn.running_mean, bn.running_var, weight, bias,
                                                         False, relu=True), ref)
    assert max_rel_err(out, out_ref) < 1e-14 and max_rel_err(dx, dx_ref) < 1e-14
    assert max_rel_err(bias.grad, bn.bias.grad) < 1e-14
    if weight_grad:
        assert max_rel_err(weight.grad, bn.weight.grad) < 1e-13
    # no running statistics: batch statistics in eval mode too, as BatchNorm3d(track_running_stats=False)
    untracked, ref = reference(fields, track_running_stats=False, affine=False)
    untracked.eval()
    assert max_rel_err(gbn.group_batch_norm(x, ORDER), ref(x)) < 1e-13


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_double_backward(training, relu):
    """gradgradcheck in both modes: in eval mode the fixed statistics do not depend on the input."""
    fields = 2
    running_mean, running_var = torch.randn(fields, dtype=torch.float64), torch.rand(fields, dtype=torch.float64) + .5
    x = torch.randn(2, fields * ORDER, 3, 3, dtype=torch.float64, requires_grad=True)
    weight, bias = (torch.randn(fields, dtype=torch.float64, requires_grad=True) for _ in range(2))
    residual = torch.randn_like(x, requires_grad=True)

    def fn(x, weight, bias, residual):  # batch statistics in training: the running ones stay untouched
        stats = (None, None) if training else (running_mean, running_var)
        return gbn.group_batch_norm(x, ORDER, *stats, weight, bias, training, residual=residual, relu=relu)

    assert torch.autograd.gradgradcheck(fn, (x, weight, bias, residual))


def test_stages_merge_over_processes_as_synchronized_batch_norm():
    """Statistics of two halves of a batch merged, and their gradient sums added, are those of
    the whole batch: what an all_gather / all_reduce between the stages computes."""
    x = torch.randn(4, 3 * ORDER, 5, 6, dtype=torch.float64) * 2 + 7
    y = torch.randn_like(x)
    grad = torch.randn_like(x)
    whole = gbn.statistics(x, ORDER)
    halves = torch.stack([gbn.statistics(half, ORDER) for half in x.chunk(2)])
    assert max_rel_err(gbn.merge_statistics(halves), whole) < 1e-14
    five = x.unflatten(1, (3, ORDER))
    assert max_rel_err(whole[1], five.mean((0, 2, 3, 4))) < 1e-14
    assert max_rel_err(whole[2] / whole[0], five.var((0, 2, 3, 4), unbiased=False)) < 1e-14
    mean = whole[1]
    sums = gbn.grad_sums(grad, x, y, mean, ORDER)
    halves = sum(gbn.grad_sums(g, h, o, mean, ORDER) for g, h, o in zip(grad.chunk(2), x.chunk(2), y.chunk(2)))
    assert max_rel_err(halves, sums) < 1e-13
    g = grad.masked_fill(y <= 0, 0).unflatten(1, (3, ORDER))
    assert max_rel_err(sums[1], (g * (five - mean.view(1, 3, 1, 1, 1))).sum((0, 2, 3, 4))) < 1e-13


@pytest.mark.parametrize("channels_last", [False, True])
def test_stages_compose_to_batchnorm3d_over_two_shards(channels_last):
    """The synchronized recipe, with two shards of a batch standing for two processes:
    statistics per shard, merged (the all_gather); normalize; gradient sums per shard, added
    (the all_reduce); input gradient per shard. Equal to BatchNorm3d on the whole batch, then
    + residual, ReLU."""
    fields, eps = 3, 1e-5
    x = torch.randn(4, fields * ORDER, 5, 6, dtype=torch.float64) * 2 + 7
    residual = torch.randn_like(x)
    grad = torch.randn_like(x)
    if channels_last:
        x, residual = x.to(memory_format=torch.channels_last), residual.to(memory_format=torch.channels_last)
    weight, bias = torch.randn(fields, dtype=torch.float64), torch.randn(fields, dtype=torch.float64)
    shards = list(zip(x.chunk(2), residual.chunk(2), grad.chunk(2)))
    count, mean, m2 = gbn.merge_statistics(torch.stack([gbn.statistics(xs, ORDER) for xs, _, _ in shards]))
    invstd = torch.rsqrt(m2 / count + eps)
    outputs = [gbn.normalize(xs, mean, invstd * weight, bias, rs, ORDER, True) for xs, rs, _ in shards]
    sums = sum(gbn.grad_sums(gs, xs, ys, mean, ORDER) for (xs, _, gs), ys in zip(shards, outputs))
    a, b, c = gbn.input_grad_coefficients(invstd, weight, sums, int(count[0]))
    grads = [gbn.input_grad(gs, xs, ys, mean, a, b, c, ORDER, True) for (xs, _, gs), ys in zip(shards, outputs)]

    bn, ref = reference(fields, relu=True, eps=eps)
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    leaves = [t.detach().clone().requires_grad_() for t in (x, residual)]
    out = ref(*leaves)
    out.backward(grad)
    dx, dr = leaves[0].grad, leaves[1].grad
    assert max_rel_err(torch.cat(outputs), out) < 1e-14
    assert outputs[0].is_contiguous(memory_format=torch.channels_last) == channels_last
    assert max_rel_err(torch.cat([g[0] for g in grads]), dx) < 1e-13
    assert max_rel_err(torch.cat([g[1] for g in grads]), dr) < 1e-15
    assert max_rel_err(sums[1] * invstd, bn.weight.grad) < 1e-13 and max_rel_err(sums[0], bn.bias.grad) < 1e-13


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_staged_backward_of_a_residual_without_relu(dtype):
    """Without the ReLU the residual's gradient is the output's, in a tensor of its own (a custom op's
    outputs may not alias its inputs), also where grad is already in the accumulation dtype."""
    fields = 3
    x = torch.randn(4, fields * ORDER, 5, 6, dtype=torch.float64) * 2 + 7
    grad = torch.randn_like(x)
    weight = torch.randn(fields, dtype=torch.float64)
    bn, ref = reference(fields)
    with torch.no_grad():
        bn.weight.copy_(weight)
    leaves = [t.detach().clone().requires_grad_() for t in (x, torch.randn_like(x))]
    ref(*leaves).backward(grad)
    count, mean, m2 = gbn.statistics(x.to(dtype), ORDER)
    grad = grad.to(dtype)
    dx, dweight, dbias, dresidual = gbn.staged_backward(grad, x.to(dtype), None, mean,
                                                        torch.rsqrt(m2 / count + bn.eps), weight.to(dtype), ORDER,
                                                        True, True, True, True, True)
    bound = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.equal(dresidual, grad) and dresidual.data_ptr() != grad.data_ptr()
    assert max_rel_err(dx, leaves[0].grad) < bound
    assert max_rel_err(dweight, bn.weight.grad) < bound and max_rel_err(dbias, bn.bias.grad) < bound


def test_variance_of_a_large_mean_small_spread_map_in_float32():
    """A float32 sum of squares minus the squared sum would lose every digit here."""
    x = (1000 + 0.01 * torch.randn(2, 2 * ORDER, 16, 16, dtype=torch.float64)).float()
    _, mean, m2 = gbn.statistics(x, ORDER)
    var = x.double().unflatten(1, (2, ORDER)).var((0, 2, 3, 4), unbiased=False)
    assert max_rel_err(m2 / (x.numel() / 2), var) < 1e-3 and max_rel_err(mean, var.new_full((2,), 1000)) < 1e-4


def test_empty_batch_and_one_value_per_field():
    running_mean, running_var = torch.zeros(2), torch.ones(2)
    x = torch.randn(0, 2 * ORDER, 3, 3, requires_grad=True)
    weight = torch.ones(2, requires_grad=True)
    out = gbn.group_batch_norm(x, ORDER, running_mean, running_var, weight, None, True)
    assert out.shape == x.shape and torch.equal(running_mean, torch.zeros(2))
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(weight.grad, torch.zeros(2))
    with pytest.raises(ValueError, match="Expected more than 1 value per field when training"):
        gbn.group_batch_norm(torch.randn(1, 2, 1, 1), 1, training=True)
    with pytest.raises(ValueError, match=r"residual must have the input's shape \(1, 16, 2, 2\), got \(1, 16, 2, 1\)"):
        gbn.group_batch_norm(torch.randn(1, 16, 2, 2), ORDER, residual=torch.randn(1, 16, 2, 1))


def test_ops_pass_opcheck():
    """Schemas, fake kernels (shapes, dtypes, memory formats) and autograd registrations."""
    x = torch.randn(2, 2 * ORDER, 3, 4).to(memory_format=torch.channels_last)
    vec = torch.rand(2) + 0.5
    y = torch.randn_like(x)
    examples = [
        (gbn.statistics, (x, ORDER)),
        (gbn.normalize, (x, vec, vec, vec, y, ORDER, True)),
        (gbn.grad_sums, (y, x, x, vec, ORDER)),
        (gbn.input_grad, (y, x, x, vec, vec, vec, vec, ORDER, True)),
        (gbn.input_grad, (y, x, None, vec, vec, vec, vec, ORDER, True)),  # the residual's gradient is grad's copy
        # batch statistics, residual and ReLU, all differentiable
        (gbn._group_batch_norm, (x.clone().requires_grad_(), vec.clone().requires_grad_(),
                                 vec.clone().requires_grad_(), y.clone().requires_grad_(), None, None, None, True,
                                 0.1, 1e-5, ORDER, True)),
        # training with running statistics, cumulative average; eval
        (gbn._group_batch_norm, (x.clone().requires_grad_(), vec, vec, None, vec, vec + 1, torch.tensor(3), True,
                                 None, 1e-5, ORDER, False)),
        (gbn._group_batch_norm, (x.clone().requires_grad_(), vec.clone().requires_grad_(), vec, None, vec, vec + 1,
                                 None, False, 0.1, 1e-5, ORDER, True)),
    ]
    for op, args in examples:
        torch.library.opcheck(op, args)


def test_min_bytes():
    assert gbn.min_bytes(100, 2, "statistics") == 200
    assert gbn.min_bytes(100, 2, "normalize", relu=True, residual=True) == 600
    assert gbn.min_bytes(100, 4, "grad_sums", relu=True) == 1200
    assert gbn.min_bytes(100, 2, "input_grad", relu=True, residual=True) == 1000
    with pytest.raises(ValueError, match="kernel must be one of"):
        gbn.min_bytes(100, 2, "backward")


def test_triton_kernels_are_opt_in_on_cuda(monkeypatch):
    """On CUDA the Triton kernels run only with GER_KERNELS_TRITON_BN=1 (not yet run on a GPU)."""
    monkeypatch.setattr(gbn, "_triton_available", lambda device_type, interpreting: True)
    cuda_map = types.SimpleNamespace(dtype=torch.bfloat16, numel=lambda: 8, device=torch.device("cuda"))
    monkeypatch.delenv(gbn.TRITON_BN_ENV, raising=False)
    assert not gbn._on_triton(cuda_map)
    monkeypatch.setenv(gbn.TRITON_BN_ENV, "1")
    assert gbn._on_triton(cuda_map)

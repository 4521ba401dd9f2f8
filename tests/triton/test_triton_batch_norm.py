"""The group batch norm Triton kernels (in the interpreter on CPU, and on CUDA where present)
against BatchNorm3d on the 5-D view in float64, on the same rounded inputs."""

import pytest
import torch
from torch import nn

pytest.importorskip("triton")

from ger_kernels import group_batch_norm as gbn  # noqa: E402
from ger_kernels.nn import GroupBatchNorm2d  # noqa: E402
from ger_kernels.triton import batch_norm  # noqa: E402
from helpers import max_rel_err  # noqa: E402

ORDER = 8
TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 8e-3}


@pytest.fixture(params=["default", "small"])
def tiling(request, monkeypatch):
    """The launchers' tiles, or tiles so small that tiny maps take many tiles per program and
    many programs (the Chan merge across tiles, masked tiles, partials of many programs)."""
    if request.param == "small":
        monkeypatch.setattr(batch_norm, "TILE", 64)
        monkeypatch.setattr(batch_norm, "CHANNEL_TILE", 16)
        monkeypatch.setattr(batch_norm, "MIN_PROGRAMS", 1)
    return request.param


def layout(x, channels_last):
    return x.to(memory_format=torch.channels_last) if channels_last else x.contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("fused", [False, True])  # relu(bn(x) + residual)
def test_training_step_matches_batchnorm3d(device, tiling, dtype, channels_last, fused):
    fields, shape = 3, (3, 3 * ORDER, 5, 7)
    x = layout((torch.randn(shape, dtype=torch.float64) * 2 + 3).to(device=device, dtype=dtype), channels_last)
    r = layout(torch.randn(shape, device=device, dtype=dtype), channels_last) if fused else None
    grad = torch.randn(shape, device=device, dtype=torch.float64)
    layer = GroupBatchNorm2d(fields).to(device)
    reference = nn.BatchNorm3d(fields).double().to(device)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
        reference.load_state_dict(layer.state_dict())
    assert gbn._on_triton(x)
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, r)]
    out = layer(leaves[0], leaves[1], relu=fused)
    out.backward(layout(grad.to(dtype), channels_last))
    ref_leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, r)]
    expected = reference(ref_leaves[0].unflatten(1, (fields, ORDER))).flatten(1, 2)
    if fused:
        expected = (expected + ref_leaves[1]).relu()
    expected.backward(grad.to(dtype).double())
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert leaves[0].grad.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert max_rel_err(out, expected) < tol
    assert max_rel_err(leaves[0].grad, ref_leaves[0].grad) < 2 * tol
    if fused:
        assert max_rel_err(leaves[1].grad, ref_leaves[1].grad) < tol
    assert max_rel_err(layer.weight.grad, reference.weight.grad) < 2 * tol
    assert max_rel_err(layer.bias.grad, reference.bias.grad) < tol
    assert max_rel_err(layer.running_mean, reference.running_mean) < 1e-5
    assert max_rel_err(layer.running_var, reference.running_var) < 1e-5
    # eval: the running statistics, one normalize kernel
    layer.eval()
    reference.eval()
    expected = reference(x.double().unflatten(1, (fields, ORDER))).flatten(1, 2)
    assert max_rel_err(layer(x), expected) < tol


@pytest.mark.parametrize("training", [False, True])
def test_double_backward_matches_batchnorm3d(device, training):
    """With create_graph the backward is ATen's batch norm backward (the staged ops have none)."""
    fields = 2
    layer = GroupBatchNorm2d(fields).to(device).train(training)
    reference = nn.BatchNorm3d(fields).double().to(device).train(training)
    with torch.no_grad():
        layer.weight.normal_()
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2)
        reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, fields * ORDER, 3, 3, device=device)
    grad = torch.randn_like(x)
    assert gbn._on_triton(x)
    results = []
    for module, dtype in ((layer, torch.float32), (reference, torch.float64)):
        leaf = x.to(dtype).requires_grad_()
        view = leaf if module is layer else leaf.unflatten(1, (fields, ORDER))
        out = module(view).reshape(x.shape)
        dx, dweight = torch.autograd.grad((out * grad.to(dtype)).sum(), (leaf, module.weight), create_graph=True)
        results.append(torch.autograd.grad((dx * dx).sum() + dweight.sum(), (leaf, module.weight)))
    for actual, expected in zip(*results):
        assert max_rel_err(actual, expected) < 1e-4


@pytest.mark.parametrize("channels_last", [False, True])
def test_statistics_of_odd_sizes_batch_one_and_a_large_mean(device, tiling, channels_last):
    """float32 sums of squares would lose every digit of this variance (mean 1000, spread 0.01)."""
    x = (1000 + 0.01 * torch.randn(1, 5 * ORDER, 7, 3, dtype=torch.float64)).float().to(device)
    x = layout(x, channels_last)
    count, mean, m2 = gbn.statistics(x, ORDER).cpu().double()
    five = x.double().cpu().unflatten(1, (5, ORDER))
    assert torch.equal(count, torch.full((5,), 8.0 * 21, dtype=torch.float64))
    assert max_rel_err(mean, five.mean((0, 2, 3, 4))) < 1e-6
    assert max_rel_err(m2 / count, five.var((0, 2, 3, 4), unbiased=False)) < 1e-3


def test_non_contiguous_input(device):
    fields = 2
    base = torch.randn(2, fields * ORDER, 6, 10, device=device)
    x = base[:, :, :, ::2]  # a strided view: made dense first
    layer = GroupBatchNorm2d(fields).to(device)
    reference = nn.BatchNorm3d(fields).double().to(device)
    expected = reference(x.double().unflatten(1, (fields, ORDER))).flatten(1, 2)
    assert max_rel_err(layer(x), expected) < 1e-5


@pytest.mark.parametrize("channels_last", [False, True])
def test_p4_batch_one_training_step(device, tiling, channels_last):
    """Four orientations per field, one image: the same kernels with S = 4."""
    layer = GroupBatchNorm2d(3, "p4").to(device)
    reference = nn.BatchNorm3d(3).double().to(device)
    with torch.no_grad():
        layer.weight.normal_()
        reference.weight.copy_(layer.weight)
    x = layout(torch.randn(1, 12, 6, 5, device=device), channels_last).requires_grad_()
    grad = torch.randn(1, 12, 6, 5, device=device)
    out = layer(x)
    out.backward(layout(grad, channels_last))
    x64 = x.detach().double().requires_grad_()
    expected = reference(x64.unflatten(1, (3, 4))).flatten(1, 2)
    expected.backward(grad.double())
    assert max_rel_err(out, expected) < 2e-5 and max_rel_err(x.grad, x64.grad) < 4e-5
    assert max_rel_err(layer.weight.grad, reference.weight.grad) < 4e-5
    assert max_rel_err(layer.running_var, reference.running_var) < 1e-5

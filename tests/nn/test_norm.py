import pytest
import torch
from torch import nn

from ger_kernels.nn import GroupBatchNorm2d
from ger_kernels.testing import check_equivariance
from helpers import max_rel_err


def randomize_affine(bn):
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
    return bn


@pytest.mark.parametrize("group,order", [("p4m", 8), ("p4", 4)])
def test_statistics_shared_over_orientations(group, order):
    bn = randomize_affine(GroupBatchNorm2d(3, group).double())
    x = torch.randn(4, 3 * order, 5, 6, dtype=torch.float64) * 3 + 1
    out = bn(x)
    fields = x.view(4, 3, order, 5, 6)
    mean = fields.mean(dim=(0, 2, 3, 4))
    var = fields.var(dim=(0, 2, 3, 4), unbiased=False)
    expected = (fields - mean[:, None, None, None]) / torch.sqrt(var[:, None, None, None] + bn.eps)
    expected = expected * bn.weight[:, None, None, None] + bn.bias[:, None, None, None]
    assert max_rel_err(out, expected.view_as(x)) < 1e-13
    n = x.numel() / 3
    assert max_rel_err(bn.running_mean, 0.1 * mean) < 1e-13
    assert max_rel_err(bn.running_var, 0.9 + 0.1 * var * n / (n - 1)) < 1e-13


@pytest.mark.parametrize("train", [True, False])
def test_exactly_equivariant(train):
    bn = randomize_affine(GroupBatchNorm2d(3).double())
    bn(torch.randn(2, 24, 4, 4, dtype=torch.float64) + 2)  # non-trivial running statistics
    bn.train(train)
    assert check_equivariance(bn, torch.randn(2, 24, 5, 7, dtype=torch.float64), "p4m", "group", "group") < 1e-13


@pytest.mark.parametrize("train", [True, False])
def test_per_orientation_batchnorm_is_not_equivariant(train):
    bn = randomize_affine(nn.BatchNorm2d(24).double())  # per-orientation scale, shift and statistics
    x = torch.randn(2, 24, 5, 5, dtype=torch.float64) * torch.arange(1, 25, dtype=torch.float64)[:, None, None]
    bn(x)
    bn.train(train)
    assert check_equivariance(bn, x, "p4m", "group", "group") > 1e-2


def test_layouts_empty_batch_and_state_dict():
    bn = randomize_affine(GroupBatchNorm2d(2).double()).eval()
    x = torch.randn(3, 16, 5, 5, dtype=torch.float64)
    for train in (False, True):  # channels_last in, channels_last out
        bn.train(train)
        channels_last = bn(x.to(memory_format=torch.channels_last))
        assert channels_last.is_contiguous(memory_format=torch.channels_last)
        assert max_rel_err(channels_last, bn(x)) < 1e-15
    bn.train()
    running = bn.running_mean.clone(), bn.running_var.clone()
    assert bn(x[:0]).shape == (0, 16, 5, 5)
    assert torch.equal(bn.running_mean, running[0]) and torch.equal(bn.running_var, running[1])
    assert set(bn.state_dict()) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    assert repr(bn).startswith("GroupBatchNorm2d(p4m, 2, eps=1e-05")


def test_bad_input():
    bn = GroupBatchNorm2d(2)
    with pytest.raises(ValueError, match=r"input must have num_fields\*8 = 16 channels, got 24"):
        bn(torch.randn(2, 24, 3, 3))
    with pytest.raises(ValueError, match=r"channels a multiple of 8, got 12"):
        bn(torch.randn(2, 12, 3, 3))
    with pytest.raises(ValueError, match=r"input must be 4-D"):
        bn(torch.randn(2, 2, 8, 3, 3))
    with pytest.raises(ValueError, match="num_fields must be an int >= 1"):
        GroupBatchNorm2d(0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_residual_and_relu(channels_last):
    bn = randomize_affine(GroupBatchNorm2d(2, relu=True).double())
    plain = randomize_affine(GroupBatchNorm2d(2).double())
    plain.load_state_dict(bn.state_dict())
    x = torch.randn(2, 16, 5, 3, dtype=torch.float64)
    r = torch.randn_like(x)
    if channels_last:
        x, r = x.to(memory_format=torch.channels_last), r.to(memory_format=torch.channels_last)
    out = bn(x, r)
    assert max_rel_err(out, torch.relu(plain(x) + r)) < 1e-15
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert max_rel_err(bn(x, relu=False), plain(x)) < 1e-15  # the call's relu overrides the layer's
    assert repr(bn).endswith("relu=True)")


def test_state_dict_loads_into_batchnorm3d():
    bn = randomize_affine(GroupBatchNorm2d(3).double())
    bn(torch.randn(2, 24, 3, 3, dtype=torch.float64))
    reference = nn.BatchNorm3d(3).double()
    reference.load_state_dict(bn.state_dict())
    x = torch.randn(2, 24, 3, 3, dtype=torch.float64)
    bn.eval()
    reference.eval()
    assert max_rel_err(bn(x), reference(x.unflatten(1, (3, 8))).flatten(1, 2)) < 1e-15


@pytest.mark.parametrize("momentum", [0.1, None])
def test_compiles_in_one_graph_without_recompiles(momentum):
    """fullgraph=True: the fused op, its backward and the running-statistics update trace; three
    training steps compile once and match eager mode."""
    from torch._dynamo.testing import CompileCounterWithBackend

    eager = randomize_affine(GroupBatchNorm2d(2, momentum=momentum, relu=True))
    compiled_bn = GroupBatchNorm2d(2, momentum=momentum, relu=True)
    compiled_bn.load_state_dict(eager.state_dict())
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda x, r: compiled_bn(x, r), backend=counter, fullgraph=True)
    for _ in range(3):
        x, r = torch.randn(2, 16, 4, 4) * 2 + 1, torch.randn(2, 16, 4, 4)
        for fn in (compiled, eager):
            fn(x, r).square().sum().backward()
    assert counter.frame_count == 1
    for name, value in eager.state_dict().items():
        assert max_rel_err(compiled_bn.state_dict()[name], value) < 1e-6, name
    assert max_rel_err(compiled_bn.weight.grad, eager.weight.grad) < 1e-5


def test_bfloat16_activations_with_float32_parameters():
    """What autocast hands batch norm: low-precision maps, float32 weights and statistics."""
    bn = randomize_affine(GroupBatchNorm2d(2, relu=True))
    reference = randomize_affine(GroupBatchNorm2d(2, relu=True).double())
    reference.load_state_dict(bn.state_dict())
    x = (torch.randn(2, 16, 4, 5) * 2 + 1).bfloat16().requires_grad_()
    out = bn(x)
    out.float().square().sum().backward()
    x64 = x.detach().double().requires_grad_()
    expected = reference(x64)
    expected.square().sum().backward()
    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16 and bn.weight.grad.dtype == torch.float32
    assert max_rel_err(out, expected) < 8e-3 and max_rel_err(x.grad, x64.grad) < 2e-2
    assert max_rel_err(bn.weight.grad, reference.weight.grad) < 4e-3
    assert bn.running_mean.dtype == torch.float32 and max_rel_err(bn.running_var, reference.running_var) < 1e-6


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_its_output_can_be_modified_in_place(train, channels_last):
    """As after nn.BatchNorm2d, an in-place op may follow (a converted e2cnn model's ReLU(inplace=True)): the
    output is no view, and the gradients are those of the out-of-place op."""
    x = torch.randn(2, 16, 5, 5)
    x = x.to(memory_format=torch.channels_last) if channels_last else x
    grads = []
    for relu in (nn.ReLU(inplace=True), nn.ReLU()):
        torch.manual_seed(0)
        layer = nn.Sequential(GroupBatchNorm2d(2), relu).train(train)
        y = x.clone().requires_grad_(True)
        out = layer(y)
        out.backward(torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape).cos())
        grads.append(y.grad)
    assert torch.equal(*grads)

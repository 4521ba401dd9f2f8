"""A small network built from the layers: exactly equivariant end to end."""

import pytest
import torch
from torch import nn

from ger_kernels.nn import (GroupBatchNorm2d, GroupConv2d, GroupMaxPool2d, GroupOrientationPool, GroupUpsample,
                            P4ConvP4, P4ConvZ2, P4MConvP4M, P4MConvZ2, group_cat)
from ger_kernels.testing import check_equivariance, equivariance_errors
from helpers import max_rel_err

FAMILIES = {"p4m": (P4MConvZ2, P4MConvP4M), "p4": (P4ConvZ2, P4ConvP4)}


class SmallNet(nn.Module):
    """Z2 -> G -> BN -> ReLU -> pool -> G (stride 2) -> upsample x4 -> concat skip -> G -> orientation pool."""

    def __init__(self, group="p4m", mode="bilinear"):
        super().__init__()
        lift, conv = FAMILIES[group]
        self.group = group
        self.lift = lift(3, 4, 3, padding=1)
        self.bn = GroupBatchNorm2d(4, group)
        self.pool = GroupMaxPool2d()
        self.down = conv(4, 5, 2, stride=2)
        self.up = GroupUpsample(4, mode)
        self.head = conv(9, 2, 3, padding=1)
        self.out = GroupOrientationPool(group)

    def forward(self, x):
        skip = torch.relu(self.bn(self.lift(x)))
        y = self.up(self.down(self.pool(skip)))
        return self.out(self.head(group_cat(skip, y, self.group)))


def randomized(net):
    for m in net.modules():
        if isinstance(m, (GroupConv2d, GroupBatchNorm2d)):
            with torch.no_grad():
                m.bias.normal_()
    return net


@pytest.mark.parametrize("group", ["p4m", "p4"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_float64_every_element(group, train, mode):
    net = randomized(SmallNet(group, mode)).double()
    x = torch.randn(2, 3, 12, 8, dtype=torch.float64)
    net(x)  # running statistics away from their initial values
    net.train(train)
    errors = equivariance_errors(net, x, group, "planar", "planar")
    assert len(errors) == (8 if group == "p4m" else 4)
    assert max(errors) < 1e-10


def test_float32():
    net = randomized(SmallNet()).eval()
    assert check_equivariance(net, torch.randn(2, 3, 16, 16), "p4m", "planar", "planar") < 1e-5


def test_layouts_and_empty_batch():
    net = randomized(SmallNet()).double().eval()
    x = torch.randn(3, 3, 8, 12, dtype=torch.float64)
    out = net(x)
    assert out.shape == (3, 2, 8, 12)
    assert max_rel_err(net(x.to(memory_format=torch.channels_last)), out) < 1e-13
    strided = torch.randn(3, 3, 8, 24, dtype=torch.float64)[..., ::2]
    strided.copy_(x)
    assert max_rel_err(net(strided), out) < 1e-13
    assert net(x[:0]).shape == (0, 2, 8, 12)
    net.train()
    assert net(x[:0]).shape == (0, 2, 8, 12)


def test_sizes_that_break_exactness_are_rejected():
    with pytest.raises(ValueError, match="GroupMaxPool2d: input H=9 breaks exact equivariance"):
        SmallNet()(torch.randn(1, 3, 9, 8))
    with pytest.raises(ValueError, match="P4MConvP4M: input H=5 breaks exact equivariance"):
        SmallNet()(torch.randn(1, 3, 10, 8))


def test_torch_compile_fullgraph():
    net = randomized(SmallNet()).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    assert max_rel_err(out, net(x)) < 1e-13
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (expected,) = torch.autograd.grad(net(x).square().sum(), x)
    assert max_rel_err(grad, expected) < 1e-12

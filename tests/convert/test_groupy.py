"""GrouPy import, checked against an independent implementation of GrouPy's PyTorch port
(same attribute names, state dict and 5-D interface) written here from the group's matrix
action (tests/group_convention.py), not from ger_kernels."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ger_kernels
from ger_kernels.convert import GroupyLayout, export, from_groupy, set_backend
from ger_kernels.nn import P4ConvP4, P4MConvP4M, P4MConvZ2
from group_convention import inv_mul_table, matrices, transform_filter


class SplitGConv2D(nn.Module):
    """GrouPy's port: weight (C_out, C_in, S_in, k, k), bias (C_out,), 5-D output (B, C_out, S, H, W)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 input_stabilizer_size=1, output_stabilizer_size=8):
        super().__init__()
        self.in_channels, self.out_channels, self.ksize = in_channels, out_channels, kernel_size
        self.kernel_size, self.stride, self.padding = (kernel_size,) * 2, (stride,) * 2, (padding,) * 2
        self.input_stabilizer_size, self.output_stabilizer_size = input_stabilizer_size, output_stabilizer_size
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, input_stabilizer_size, kernel_size,
                                               kernel_size, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(out_channels, dtype=torch.float64)) if bias else None

    def forward(self, x):
        order, s_in = self.output_stabilizer_size, self.input_stabilizer_size
        ms, table = matrices(order), inv_mul_table(order)
        filters = torch.stack([torch.stack([
            torch.stack([transform_filter(self.weight[o, i, 0 if s_in == 1 else table[t, s]], ms[t])
                         for i in range(self.in_channels) for s in range(s_in)])
            for t in range(order)]) for o in range(self.out_channels)])
        w = filters.view(self.out_channels * order, self.in_channels * s_in, self.ksize, self.ksize)
        y = F.conv2d(x.reshape(x.shape[0], -1, *x.shape[-2:]), w, None, self.stride, self.padding)
        y = y.view(y.shape[0], self.out_channels, order, *y.shape[-2:])
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1, 1)


class P4MConvZ2Port(SplitGConv2D):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, input_stabilizer_size=1, output_stabilizer_size=8, **kwargs)


class P4MConvP4MPort(SplitGConv2D):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, input_stabilizer_size=8, output_stabilizer_size=8, **kwargs)


class P4ConvP4Port(SplitGConv2D):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, input_stabilizer_size=4, output_stabilizer_size=4, **kwargs)


@pytest.mark.parametrize("port,ours,s_in,order", [(P4MConvZ2Port, P4MConvZ2, 1, 8), (P4MConvP4MPort, P4MConvP4M, 8, 8),
                                                  (P4ConvP4Port, P4ConvP4, 4, 4)])
def test_state_dict_loads_directly(port, ours, s_in, order):
    groupy = port(2, 3, 3, stride=2, padding=1)
    layer = ours(2, 3, 3, stride=2, padding=1).double()
    layer.load_state_dict(groupy.state_dict())
    x = torch.randn(2, 2 * s_in, 9, 9, dtype=torch.float64)
    expected = groupy(x)
    assert expected.shape == (2, 3, order, 5, 5)
    assert torch.allclose(layer(x).view_as(expected), expected, rtol=1e-12, atol=1e-12)


class GroupyNet(nn.Module):
    """A GrouPy-style model: 5-D maps between layers, a plain op in between."""

    def __init__(self):
        super().__init__()
        self.lift = P4MConvZ2Port(1, 2, 3, padding=1)
        self.body = nn.Sequential(P4MConvP4MPort(2, 2, 3, padding=1, bias=False))

    def forward(self, x):
        y = torch.relu(self.lift(x))
        return self.body(y).mean(2)


def test_from_groupy_replaces_modules_in_a_tree_and_keeps_the_interface():
    net = GroupyNet()
    x = torch.randn(2, 1, 7, 7, dtype=torch.float64)
    expected = net(x)
    converted = from_groupy(net)
    assert converted is net
    assert isinstance(net.lift, GroupyLayout) and isinstance(net.lift, P4MConvZ2)
    assert isinstance(net.body[0], P4MConvP4M) and net.body[0].bias is None
    assert torch.allclose(net(x), expected, rtol=1e-12, atol=1e-12)
    lone = P4MConvP4MPort(2, 1, 3)
    y = torch.randn(1, 2, 8, 5, 5, dtype=torch.float64)
    assert torch.allclose(from_groupy(lone)(y), lone(y), rtol=1e-12, atol=1e-12)
    assert torch.allclose(from_groupy(lone)(y.flatten(1, 2)), lone(y), rtol=1e-12, atol=1e-12)


def test_the_original_state_dict_loads_into_the_converted_model():
    net, trained = GroupyNet(), GroupyNet()  # two sets of random weights
    state = trained.state_dict()
    converted = from_groupy(net)
    assert list(converted.state_dict()) == list(state) == ["lift.weight", "lift.bias", "body.0.weight"]
    converted.load_state_dict(state, strict=True)
    x = torch.randn(2, 1, 7, 7, dtype=torch.float64)
    assert torch.allclose(converted(x), trained(x), rtol=1e-12, atol=1e-12)


def test_converted_models_switch_backends_and_export_to_plain_torch():
    net = GroupyNet()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    expected = net(x)
    from_groupy(net)
    for name, status in ger_kernels.backends("cpu").items():
        if status.available:
            set_backend(net, name)
            assert net.lift.backend == net.body[0].backend == name
            assert torch.allclose(net(x), expected, rtol=1e-10, atol=1e-12)
    plain = export(net)
    assert [type(m).__name__ for m in plain.modules() if type(m).__module__.startswith("ger_kernels")] == []
    assert torch.allclose(plain(x), expected, rtol=1e-12, atol=1e-12)
    lone = from_groupy(P4ConvP4Port(2, 3, 3, padding=1))
    y = torch.randn(1, 2, 4, 5, 5, dtype=torch.float64)
    for input in (y, y.flatten(1, 2)):
        assert torch.allclose(export(lone)(input), lone(input), rtol=1e-12, atol=1e-12)

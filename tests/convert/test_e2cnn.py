"""e2cnn import. e2cnn needs numpy<2, so this runs in its own environment (`make test-e2cnn`,
part of `make test`); elsewhere it is skipped unless GER_KERNELS_REQUIRE_E2CNN=1."""

import os

import pytest
import torch

if os.environ.get("GER_KERNELS_REQUIRE_E2CNN") == "1":
    import e2cnn  # noqa: F401  (an import error fails the run)
e2cnn = pytest.importorskip("e2cnn")
from e2cnn import gspaces  # noqa: E402
from e2cnn import nn as enn  # noqa: E402

import math  # noqa: E402
from collections import OrderedDict  # noqa: E402

from torch import nn  # noqa: E402

from ger_kernels.convert import E2CNN_P4M_PERMUTATION, e2cnn_to_ours, export, from_e2cnn  # noqa: E402
from ger_kernels.groups import P4, P4M  # noqa: E402
from ger_kernels.nn import (GroupBatchNorm2d, GroupMaxPool2d, GroupOrientationPool, P4ConvP4, P4ConvZ2,  # noqa: E402
                            P4MConvP4M, P4MConvZ2)
from ger_kernels.testing import check_equivariance  # noqa: E402
from helpers import max_rel_err  # noqa: E402

GSPACES = {"p4m": lambda: gspaces.FlipRot2dOnR2(N=4), "p4": lambda: gspaces.Rot2dOnR2(N=4)}
EXPECTED = {("p4m", True): P4MConvZ2, ("p4m", False): P4MConvP4M, ("p4", True): P4ConvZ2, ("p4", False): P4ConvP4}


def randomized(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


def r2conv(group, lifting, c_in=2, c_out=3, k=3, gs=None, **kwargs):
    gs = gs or GSPACES[group]()
    in_type = enn.FieldType(gs, c_in * [gs.trivial_repr if lifting else gs.regular_repr])
    return randomized(enn.R2Conv(in_type, enn.FieldType(gs, c_out * [gs.regular_repr]), k, **kwargs)).eval()


@pytest.mark.parametrize("group", ["p4m", "p4"])
@pytest.mark.parametrize("lifting", [True, False])
@pytest.mark.parametrize("k,settings", [(3, {"padding": 1}), (5, {"padding": 2, "stride": 2}),
                                        (3, {"padding": 2, "dilation": 2, "bias": False})])
def test_outputs_match_e2cnn(group, lifting, k, settings):
    conv = r2conv(group, lifting, k=k, **settings)
    layer = from_e2cnn(conv)
    assert type(layer) is EXPECTED[(group, lifting)] and layer.kernel_size == k
    assert (layer.bias is None) == (settings.get("bias", True) is False)
    s = 1 if lifting else (8 if group == "p4m" else 4)
    x = torch.randn(2, 2 * s, 11, 11)
    expected = conv(enn.GeometricTensor(x if lifting else e2cnn_to_ours(x, group), conv.in_type)).tensor
    assert max_rel_err(layer(x), e2cnn_to_ours(expected, group)) < 1e-5


def test_permutation_is_the_spec_one_and_self_inverse():
    assert E2CNN_P4M_PERMUTATION == (0, 1, 2, 3, 6, 5, 4, 7)
    x = torch.randn(1, 16, 2, 2)
    assert torch.equal(e2cnn_to_ours(e2cnn_to_ours(x)), x)
    assert torch.equal(e2cnn_to_ours(x), x[:, [0, 1, 2, 3, 6, 5, 4, 7, 8, 9, 10, 11, 14, 13, 12, 15]])


def test_e2cnn_to_ours_takes_every_group_argument_of_get_group_and_refuses_the_rest():
    x = torch.randn(2, 16, 3, 3)
    for group in ("p4m", 8, P4M, P4MConvP4M(1, 1, 1).group):
        assert torch.equal(e2cnn_to_ours(x, group), e2cnn_to_ours(x))
    for group in ("p4", 4, P4, P4ConvP4(1, 1, 1).group):
        assert torch.equal(e2cnn_to_ours(x, group), x)
    for group in ("P4M", "p4mm", 5, None):
        with pytest.raises(ValueError, match="group must be one of"):
            e2cnn_to_ours(x, group)
    with pytest.raises(ValueError, match=r"tensor must be a p4m feature map .* multiple of 8, got 12"):
        e2cnn_to_ours(torch.randn(1, 12, 2, 2))
    with pytest.raises(ValueError, match="tensor must be 4-D"):
        e2cnn_to_ours(torch.randn(12, 2, 2), "p4")


def test_unsupported_fields_and_groups_are_refused():
    gs = gspaces.FlipRot2dOnR2(N=4)
    irreps = enn.FieldType(gs, [gs.irrep(1, 1)])
    regular = enn.FieldType(gs, [gs.regular_repr])
    with pytest.raises(ValueError, match=r"unsupported in_type .* supported: e2cnn R2Conv"):
        from_e2cnn(enn.R2Conv(irreps, regular, 3))
    with pytest.raises(ValueError, match=r"unsupported out_type"):
        from_e2cnn(enn.R2Conv(regular, irreps, 3))
    gs8 = gspaces.Rot2dOnR2(N=8)
    with pytest.raises(ValueError, match=r"unsupported gspace Rot2dOnR2 with fiber group CyclicGroup of order 8"):
        from_e2cnn(enn.R2Conv(enn.FieldType(gs8, [gs8.regular_repr]), enn.FieldType(gs8, [gs8.regular_repr]), 3))
    trivial = enn.FieldType(gs, 2 * [gs.trivial_repr])
    with pytest.raises(ValueError, match=r"unsupported in_type with representations \['irrep_0,0'\]"):
        from_e2cnn(enn.InnerBatchNorm(trivial))
    with pytest.raises(ValueError, match=r"unsupported in_type"):
        from_e2cnn(enn.GroupPooling(trivial))


@pytest.mark.parametrize("c_in,c_out", [(2, 2), (2, 3)])
def test_transposed_convolutions_and_other_modules_are_refused_by_name(c_in, c_out):
    gs = gspaces.FlipRot2dOnR2(N=4)
    transposed = enn.R2ConvTransposed(enn.FieldType(gs, c_in * [gs.regular_repr]),
                                      enn.FieldType(gs, c_out * [gs.regular_repr]), 3)
    regular = enn.FieldType(gs, 2 * [gs.regular_repr])
    for module in (transposed, nn.Conv2d(16, 16, 3), enn.PointwiseMaxPoolAntialiased(regular, 2)):
        name = f"{type(module).__module__}.{type(module).__qualname__}"
        with pytest.raises(ValueError, match=rf"module must be an e2cnn module that converts, got {name}; "
                                             r"supported: e2cnn R2Conv .*SequentialModule"):
            from_e2cnn(module)
    with pytest.raises(ValueError, match=r"SequentialModule child 'pool': module must be .*Antialiased"):
        from_e2cnn(enn.SequentialModule(OrderedDict(relu=enn.ReLU(regular),
                                                    pool=enn.PointwiseMaxPoolAntialiased(regular, 2))))
    with pytest.raises(ValueError, match=r"unsupported PointwiseMaxPool with ceil_mode=True"):
        from_e2cnn(enn.PointwiseMaxPool(regular, 2, ceil_mode=True))
    with pytest.raises(ValueError, match=r"unsupported R2Upsampling with size=\(8, 8\)"):
        from_e2cnn(enn.R2Upsampling(regular, size=8))


def test_only_the_default_reflection_axis_is_accepted():
    # e2cnn caches kernel bases by representation, not by axis: recompute=True keeps these
    # bases out of that cache, so the other tests get bases of the default axis.
    for axis in (0.0, math.pi / 4, math.pi):
        gs = gspaces.FlipRot2dOnR2(N=4, axis=axis)
        for lifting in (True, False):
            with pytest.raises(ValueError, match=rf"unsupported reflection axis {axis!r} of FlipRot2dOnR2"):
                from_e2cnn(r2conv("p4m", lifting, gs=gs, recompute=True))
        with pytest.raises(ValueError, match="unsupported reflection axis"):
            from_e2cnn(enn.InnerBatchNorm(enn.FieldType(gs, [gs.regular_repr])))
    gs = gspaces.FlipRot2dOnR2(N=4, axis=3 * math.pi / 2)  # the same axis as pi/2
    for lifting in (True, False):
        conv = r2conv("p4m", lifting, gs=gs, padding=1, recompute=True)
        x = torch.randn(2, 2 * (1 if lifting else 8), 7, 7)
        expected = conv(enn.GeometricTensor(x if lifting else e2cnn_to_ours(x), conv.in_type)).tensor
        assert max_rel_err(from_e2cnn(conv)(x), e2cnn_to_ours(expected)) < 1e-5


@pytest.mark.parametrize("settings", [{}, {"affine": False}, {"momentum": None}, {"track_running_stats": False}])
def test_inner_batch_norm_matches_in_train_and_eval_mode(settings):
    gs = gspaces.FlipRot2dOnR2(N=4)
    bn = randomized(enn.InnerBatchNorm(enn.FieldType(gs, 3 * [gs.regular_repr]), **settings))
    ours = from_e2cnn(bn)
    assert isinstance(ours, GroupBatchNorm2d) and ours.training
    for mode in (True, False):
        x = torch.randn(4, 24, 5, 5) * 3 + 1
        expected = bn.train(mode)(enn.GeometricTensor(e2cnn_to_ours(x), bn.in_type)).tensor
        assert max_rel_err(ours.train(mode)(x), e2cnn_to_ours(expected)) < 1e-5


def network(group):
    """An e2cnn network of every layer kind that converts; 12x12 input, 6x6 output."""
    gs = GSPACES[group]()
    planar, a, b = (enn.FieldType(gs, n * [r]) for n, r in ((3, gs.trivial_repr), (2, gs.regular_repr),
                                                           (3, gs.regular_repr)))
    return randomized(enn.SequentialModule(
        enn.R2Conv(planar, a, 3, padding=1), enn.InnerBatchNorm(a), enn.ReLU(a), enn.PointwiseMaxPool(a, 2),
        enn.R2Conv(a, b, 3, padding=1), enn.InnerBatchNorm(b, momentum=None), enn.ELU(b), enn.PointwiseAvgPool(b, 2),
        enn.R2Upsampling(b, 2), enn.R2Conv(b, a, 3, padding=1, bias=False), enn.PointwiseDropout(a, 0.25),
        enn.IdentityModule(a), enn.GroupPooling(a)))


@pytest.mark.parametrize("group", ["p4m", "p4"])
def test_a_whole_network_converts_and_matches_e2cnn(group):
    net = network(group)
    ours = from_e2cnn(net)
    assert isinstance(ours, nn.Sequential) and ours.training and len(ours) == 13
    assert isinstance(ours[3], GroupMaxPool2d) and isinstance(ours[-1], GroupOrientationPool)
    x = torch.randn(4, 3, 12, 12)
    net(enn.GeometricTensor(x, net.in_type)), ours(x)  # one training step of the batch norms
    layers = list(net.children())
    for e2cnn_bn, our_bn in ((layers[1], ours[1]), (layers[5], ours[5])):
        inner = getattr(e2cnn_bn, f"batch_norm_[{our_bn.group.order}]")
        assert torch.allclose(our_bn.running_var, inner.running_var, rtol=1e-5, atol=1e-6)
    net.eval(), ours.eval()
    x = torch.randn(2, 3, 12, 12)
    planar = net(enn.GeometricTensor(x, net.in_type)).tensor
    assert planar.shape == (2, 2, 6, 6) and max_rel_err(ours(x), planar) < 1e-5
    assert max_rel_err(export(ours)(x), planar) < 1e-5  # and on to plain torch.nn
    fields = enn.GeometricTensor(x, net.in_type)
    for module in layers[:-1]:
        fields = module(fields)
    assert max_rel_err(ours[:-1](x), e2cnn_to_ours(fields.tensor, group)) < 1e-5
    assert check_equivariance(ours.double(), x.double(), group, "planar", "planar") < 1e-12

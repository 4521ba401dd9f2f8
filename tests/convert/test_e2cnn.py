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

from ger_kernels.convert import E2CNN_P4M_PERMUTATION, e2cnn_to_ours, from_e2cnn  # noqa: E402
from ger_kernels.nn import P4ConvP4, P4ConvZ2, P4MConvP4M, P4MConvZ2  # noqa: E402
from helpers import max_rel_err  # noqa: E402

GSPACES = {"p4m": lambda: gspaces.FlipRot2dOnR2(N=4), "p4": lambda: gspaces.Rot2dOnR2(N=4)}
EXPECTED = {("p4m", True): P4MConvZ2, ("p4m", False): P4MConvP4M, ("p4", True): P4ConvZ2, ("p4", False): P4ConvP4}


def r2conv(group, lifting, c_in=2, c_out=3, k=3, **kwargs):
    gs = GSPACES[group]()
    in_type = enn.FieldType(gs, c_in * [gs.trivial_repr if lifting else gs.regular_repr])
    conv = enn.R2Conv(in_type, enn.FieldType(gs, c_out * [gs.regular_repr]), k, **kwargs)
    with torch.no_grad():
        for p in conv.parameters():
            p.normal_()
    return conv.eval()


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


def test_unsupported_fields_and_groups_are_refused():
    gs = gspaces.FlipRot2dOnR2(N=4)
    irreps = enn.FieldType(gs, [gs.irrep(1, 1)])
    regular = enn.FieldType(gs, [gs.regular_repr])
    with pytest.raises(ValueError, match=r"unsupported in_type .* supported: R2Conv between regular fields"):
        from_e2cnn(enn.R2Conv(irreps, regular, 3))
    with pytest.raises(ValueError, match=r"unsupported out_type"):
        from_e2cnn(enn.R2Conv(regular, irreps, 3))
    gs8 = gspaces.Rot2dOnR2(N=8)
    with pytest.raises(ValueError, match=r"unsupported gspace Rot2dOnR2 with fiber group CyclicGroup of order 8"):
        from_e2cnn(enn.R2Conv(enn.FieldType(gs8, [gs8.regular_repr]), enn.FieldType(gs8, [gs8.regular_repr]), 3))

import pytest
import torch
from torch import nn

from ger_kernels.nn import GroupOrientationPool, P4MConvZ2
from ger_kernels.testing import check_equivariance, equivariance_errors


def test_plain_convolution_is_not_equivariant():
    conv = nn.Conv2d(1, 1, 3, padding=1).double()
    x = torch.randn(1, 1, 7, 7, dtype=torch.float64)
    errors = equivariance_errors(conv, x, "p4m", "planar", "planar")
    assert errors[0] < 1e-15  # the identity
    assert min(errors[1:]) > 1e-2
    assert check_equivariance(conv, x, "p4m", "planar", "planar") == max(errors)


def test_wrong_output_kind_is_detected():
    lift = nn.Sequential(P4MConvZ2(1, 2, 3, padding=1), GroupOrientationPool()).double()
    x = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    assert check_equivariance(lift, x, "p4m", "planar", "planar") < 1e-13
    with pytest.raises(ValueError, match="feature map"):
        check_equivariance(lift, x, "p4m", "planar", "group")


def test_bad_kinds():
    with pytest.raises(ValueError, match="input must be 'planar' or 'group', got 'image'"):
        check_equivariance(nn.Identity(), torch.zeros(1, 1, 2, 2), "p4m", "image")
    with pytest.raises(ValueError, match="output must be 'planar' or 'group', got 'z2'"):
        check_equivariance(nn.Identity(), torch.zeros(1, 1, 2, 2), "p4m", "planar", "z2")

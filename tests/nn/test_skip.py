import pytest
import torch

from ger_kernels.groups import P4M
from ger_kernels.nn import group_cat


def test_fields_of_a_then_b_orientation_fastest():
    a = torch.randn(2, 2 * 8, 4, 5)
    b = torch.randn(2, 3 * 8, 4, 5)
    out = group_cat(a, b)
    fields = out.view(2, 5, 8, 4, 5)
    assert torch.equal(fields[:, :2], a.view(2, 2, 8, 4, 5))
    assert torch.equal(fields[:, 2:], b.view(2, 3, 8, 4, 5))
    for g in P4M.elements():  # commutes with the action
        assert torch.equal(group_cat(P4M.transform(a, g), P4M.transform(b, g)), P4M.transform(out, g))


def test_channels_last_in_and_out():
    a, b = torch.randn(2, 16, 4, 5), torch.randn(2, 24, 4, 5)
    out = group_cat(a.to(memory_format=torch.channels_last), b.to(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, group_cat(a, b))


def test_bad_input():
    a = torch.randn(2, 16, 4, 4)
    with pytest.raises(ValueError, match=r"b must be a p4m feature map .* got 12"):
        group_cat(a, torch.randn(2, 12, 4, 4))
    with pytest.raises(ValueError, match="must agree in batch and spatial size"):
        group_cat(a, torch.randn(2, 8, 4, 5))
    with pytest.raises(TypeError, match="must share dtype and device"):
        group_cat(a, torch.randn(2, 8, 4, 4, dtype=torch.float64))
    assert group_cat(torch.randn(1, 8, 3, 3), torch.randn(1, 4, 3, 3), "p4").shape == (1, 12, 3, 3)

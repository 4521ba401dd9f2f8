import pytest
import torch

from ger_kernels.nn import GroupAvgPool2d, GroupMaxPool2d, GroupOrientationPool
from ger_kernels.testing import check_equivariance
from helpers import max_rel_err


@pytest.mark.parametrize("cls", [GroupMaxPool2d, GroupAvgPool2d])
@pytest.mark.parametrize("kernel_size,stride,padding,size", [(2, None, 0, 8), (3, 2, 1, 9), (3, 2, 0, 7),
                                                             (3, 1, 1, 6)])
def test_spatial_pool_exactly_equivariant(cls, kernel_size, stride, padding, size):
    pool = cls(kernel_size, stride, padding)
    x = torch.randn(2, 16, size, size, dtype=torch.float64)
    assert check_equivariance(pool, x, "p4m", "group", "group") < 1e-15
    assert check_equivariance(pool, torch.randn(1, 8, size, size, dtype=torch.float64), "p4", "group", "group") < 1e-15


@pytest.mark.parametrize("cls", [GroupMaxPool2d, GroupAvgPool2d])
def test_spatial_pool_values_and_layouts(cls):
    x = torch.randn(3, 16, 6, 8)
    out = cls()(x)
    expected = (torch.nn.functional.max_pool2d if cls is GroupMaxPool2d else torch.nn.functional.avg_pool2d)(x, 2)
    assert torch.equal(out, expected)
    channels_last = cls()(x.to(memory_format=torch.channels_last))
    assert torch.equal(channels_last, expected) and channels_last.is_contiguous(memory_format=torch.channels_last)
    assert cls()(x[:0]).shape == (0, 16, 3, 4)


def test_inexact_pooling_rejected_unless_allowed():
    x = torch.randn(1, 8, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"GroupMaxPool2d: input H=8 breaks exact equivariance with kernel_size=3"):
        GroupMaxPool2d(3, 2)(x)
    with pytest.raises(ValueError, match=r"GroupAvgPool2d: input W=7 breaks"):
        GroupAvgPool2d()(torch.randn(1, 8, 8, 7))
    lax = GroupAvgPool2d(3, 2, strict_equivariance=False)
    assert check_equivariance(lax, x, "p4m", "group", "group") > 1e-3


@pytest.mark.parametrize("reduce", ["mean", "max"])
@pytest.mark.parametrize("group,order", [("p4m", 8), ("p4", 4)])
def test_orientation_pool(reduce, group, order):
    pool = GroupOrientationPool(group, reduce)
    y = torch.randn(2, 3 * order, 5, 6, dtype=torch.float64)
    out = pool(y)
    fields = y.view(2, 3, order, 5, 6)
    assert torch.equal(out, fields.mean(2) if reduce == "mean" else fields.amax(2))
    assert check_equivariance(pool, y, group, "group", "planar") < 1e-15
    assert repr(pool) == f"GroupOrientationPool({group}, reduce={reduce!r})"


def test_bad_arguments():
    with pytest.raises(ValueError, match="reduce must be 'mean' or 'max', got 'sum'"):
        GroupOrientationPool("p4m", "sum")
    with pytest.raises(ValueError, match=r"channels a multiple of 8, got 12"):
        GroupOrientationPool()(torch.randn(1, 12, 3, 3))
    with pytest.raises(ValueError, match=r"input must be 4-D"):
        GroupMaxPool2d()(torch.randn(8, 4, 4))
    with pytest.raises(ValueError, match="kernel_size must be an int >= 1"):
        GroupMaxPool2d(0)
    with pytest.raises(ValueError, match=r"padding must be at most kernel_size // 2 = 1, got 2"):
        GroupAvgPool2d(3, 2, padding=2)
    with pytest.raises(ValueError, match=r"GroupMaxPool2d: input H=1 with padding=0 is smaller than the window, 3 "):
        GroupMaxPool2d(3, 1)(torch.randn(1, 8, 1, 5))


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_orientation_pool_keeps_the_layout(reduce):
    pool = GroupOrientationPool("p4m", reduce)
    x = torch.randn(2, 24, 5, 4, dtype=torch.float64, requires_grad=True)
    out = pool(x)
    assert out.is_contiguous()
    y = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    channels_last = pool(y)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    assert max_rel_err(channels_last, out) < 1e-15  # the same sums, maybe in another order
    grad = torch.randn_like(out)
    out.backward(grad)
    channels_last.backward(grad)
    assert max_rel_err(y.grad, x.grad) < 1e-15 and y.grad.is_contiguous(memory_format=torch.channels_last)

import pytest
import torch

from ger_kernels.nn import GroupUpsample
from ger_kernels.testing import check_equivariance


@pytest.mark.parametrize("mode,align_corners", [("nearest", False), ("bilinear", False), ("bilinear", True)])
@pytest.mark.parametrize("scale_factor", [2, 3])
def test_exactly_equivariant(mode, align_corners, scale_factor):
    up = GroupUpsample(scale_factor, mode, align_corners)
    y = torch.randn(2, 16, 5, 4, dtype=torch.float64)
    out = up(y)
    assert out.shape == (2, 16, 5 * scale_factor, 4 * scale_factor)
    expected = torch.nn.functional.interpolate(y, scale_factor=scale_factor, mode=mode,
                                               align_corners=align_corners if mode == "bilinear" else None)
    assert torch.equal(out, expected)
    assert check_equivariance(up, y, "p4m", "group", "group") < 1e-15


def test_layouts_and_empty_batch():
    up = GroupUpsample(mode="bilinear")
    y = torch.randn(2, 8, 3, 3)
    channels_last = up(y.to(memory_format=torch.channels_last))
    assert torch.allclose(channels_last, up(y), rtol=0, atol=1e-6)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    assert up(y[:0]).shape == (0, 8, 6, 6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode must be 'nearest' or 'bilinear', got 'bicubic'"):
        GroupUpsample(2, "bicubic")
    with pytest.raises(ValueError, match="scale_factor must be an int >= 1, got 1.5"):
        GroupUpsample(1.5)
    with pytest.raises(ValueError, match="align_corners=True needs mode='bilinear'"):
        GroupUpsample(2, "nearest", True)
    with pytest.raises(ValueError, match="input must be 4-D"):
        GroupUpsample()(torch.randn(8, 3, 3))

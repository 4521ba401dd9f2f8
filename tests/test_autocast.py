import pytest
import torch

from ger_kernels._autocast import casts, register_autocast

CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3, torch.int64: 4}


@torch.library.custom_op("ger_kernels_test::seen", mutates_args=())
def seen(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, scale: float) -> torch.Tensor:
    """What the op's body sees: the codes of its three dtypes, and whether autocast is on."""
    return torch.tensor([CODES[a.dtype], CODES[b.dtype], CODES[c.dtype], torch.is_autocast_enabled("cpu")])


register_autocast("ger_kernels_test::seen")

ARGS = (torch.ones(2), torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.long), 2.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_op_follows_the_region_dtype_as_conv2d(dtype):
    with torch.autocast("cpu", dtype=dtype):
        codes = seen(*ARGS).tolist()
    # float32 cast to the region's dtype; float64 and integers untouched; autocast off inside
    assert codes == [CODES[dtype], CODES[torch.float64], CODES[torch.int64], 0]


def test_op_untouched_outside_autocast():
    assert seen(*ARGS).tolist() == [CODES[torch.float32], CODES[torch.float64], CODES[torch.int64], 0]


def test_casts_is_conv2ds_rule():
    x, double, integer = ARGS[:3]
    assert not casts(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert casts(x) and casts(x.half()) and not casts(double) and not casts(integer)
    with torch.autocast("cpu", enabled=False):
        assert not casts(x)

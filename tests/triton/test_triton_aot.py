"""Every launch config of every kernel compiles for Hopper (sm_90) without a GPU, in every dtype,
with tensor-core instructions for 16-bit inputs and no register spills (pytest -s prints the table)."""

import pytest
import torch

pytest.importorskip("triton")

from ger_kernels.triton import aot  # noqa: E402
from ger_kernels.triton.tuning import CONFIGS, dtype_class  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    return aot.report(90)


def test_every_config_compiles_for_sm90(rows):
    print("\n" + aot.format_table(rows))
    expected = {(family, config.name, aot.DTYPES[dtype]) for dtype in aot.DTYPES
                for family, configs in CONFIGS[dtype_class(dtype)].items() for config in configs}
    assert {(r.family, r.config, r.dtype) for r in rows} == expected
    for r in rows:
        assert r.spill_bytes == 0, r
        assert 0 < r.registers <= 255 and 0 < r.shared_bytes <= 227 * 1024, r
        if r.dtype in ("fp16", "bf16"):
            assert r.tensor_cores in ("wgmma", "mma"), r


def test_float32_tensor_cores_only_with_tf32_opt_in(monkeypatch):
    config = CONFIGS["float32"]["forward"][0]
    monkeypatch.delenv("GER_KERNELS_TRITON_TF32", raising=False)
    assert aot.compile_config("forward", config, torch.float32).tensor_cores == "none"
    monkeypatch.setenv("GER_KERNELS_TRITON_TF32", "1")
    tf32 = aot.compile_config("forward", config, torch.float32)
    assert tf32.tensor_cores in ("wgmma", "mma") and tf32.spill_bytes == 0

"""Every launch config of every kernel compiles for Hopper (sm_90) without a GPU, in every dtype,
with no register spills (but the fused batch norm's at the configs tuning.FUSED_SPILLS names) and tensor-core
instructions for 16-bit convolutions, which the vector-loading variants feed through an
asynchronous pipeline (pytest -s prints the table); the group batch norm kernels in both layouts."""

import re

import pytest
import torch

pytest.importorskip("triton")

from ger_kernels.triton import aot  # noqa: E402
from ger_kernels.triton import tuning  # noqa: E402
from ger_kernels.triton.tuning import CONFIGS, dtype_class  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    return aot.report(90)


def test_every_config_compiles_for_sm90(rows):
    print("\n" + aot.format_table(rows))
    expected = {(family, config.name, aot.DTYPES[dtype]) for dtype in aot.DTYPES
                for family, configs in CONFIGS[dtype_class(dtype)].items() for config in configs}
    expected |= {(family, layout, name) for family in aot.BN_KERNELS for layout in aot.BN_LAYOUTS
                 for name in aot.DTYPES.values()}
    expected |= {(family + "+bn", config.name, aot.DTYPES[aot.FUSED_DTYPE]) for family in aot.FUSED_FAMILIES
                 for config in CONFIGS[dtype_class(aot.FUSED_DTYPE)][family]}
    assert {(r.family, r.config, r.dtype) for r in rows} == expected
    for r in rows:
        # a kernel spills only with a batch norm fused into it, at exactly the configs that FUSED_SPILLS
        # names (so a fused kernel never runs them)
        fused = r.family.endswith("+bn")
        assert (r.spill_bytes > 0) == (fused and r.config in tuning.FUSED_SPILLS[r.family[:-3]]), r
        if r.family in aot.BN_KERNELS:  # memory-bound: no tensor cores; reductions may use shared memory
            assert 0 < r.registers <= 128 and r.shared_bytes <= 4 * 1024 and r.tensor_cores == "none", r
            continue
        assert 0 < r.registers <= 255 and 0 < r.shared_bytes <= 227 * 1024, r
        if r.dtype in ("fp16", "bf16"):
            assert r.tensor_cores in ("wgmma", "mma"), r
        variant = r.config.partition("-")[2]
        narrow = int(re.search(r"n(\d+)", r.config).group(1)) < 64  # fewer columns than a wgmma's rows
        if r.dtype in ("fp16", "bf16") and variant not in ("", "taps") and not (r.family == "weight_grad+bn"
                                                                              and narrow):
            # the vector-loading variants feed the wgmma from asynchronously filled shared memory
            # (cp.async or TMA), or from registers where a batch norm is applied on load, and keep one
            # in flight: no synchronous store of a tile from registers to shared memory in the loop (the
            # plain and "taps" kernels gather element by element; a fused weight gradient of fewer than
            # 64 input channels keeps its normalized x tile as the B operand, stored to shared memory)
            assert r.register_staged == 0 and r.wgmma_in_flight, r


def test_float32_tensor_cores_only_with_tf32_opt_in(monkeypatch):
    config = CONFIGS["float32"]["forward"][0]
    monkeypatch.delenv("GER_KERNELS_TRITON_TF32", raising=False)
    assert aot.compile_config("forward", config, torch.float32).tensor_cores == "none"
    monkeypatch.setenv("GER_KERNELS_TRITON_TF32", "1")
    tf32 = aot.compile_config("forward", config, torch.float32)
    assert tf32.tensor_cores in ("wgmma", "mma") and tf32.spill_bytes == 0


def test_every_variant_compiles_for_sm80():
    """The kernels must still run on Ampere: the first 16-bit config of each variant of each pass,
    plain and with the batch norm fused, compiles for sm_80 (tensor descriptors lowered to loads)
    with mma.sync; the plain kernels without spills (fused, the "tma-row" forward spills 8 bytes
    there: triton-aot-sm90.md)."""
    jobs = {(family, config.variant): config for family in ("forward", "input_grad", "weight_grad")
            for config in reversed(CONFIGS["half"][family])}
    for (family, _), config in sorted(jobs.items()):
        for fused in (False, True):
            r = aot.compile_config(family, config, torch.bfloat16, arch=80, fused=fused)
            print(r)
            assert r.tensor_cores == "mma" and r.shared_bytes <= 163 * 1024, r
            assert r.spill_bytes == 0 or fused, r


def test_strided_input_gradient_keeps_its_pipeline():
    """At strides above 1 the input gradient steps through its phase's taps from the loop counter
    (``group_conv.phase_taps``), as at stride 1: the "fields" kernel gives both tiles a buffer in
    every pipeline stage (with the tap list loaded in the loop: 50 KiB for three stages of 24 KiB,
    triton 3.9) and keeps a wgmma in flight."""
    config = next(c for c in CONFIGS["half"]["input_grad"] if c.variant == "fields")
    r = aot.compile_config("input_grad", config, torch.bfloat16, strided=True)
    print(r)
    stages = config.num_stages * (config.block_m + config.block_n) * config.block_k * 2  # bytes, bf16
    assert r.spill_bytes == 0 and r.tensor_cores == "wgmma" and r.register_staged == 0 and r.wgmma_in_flight, r
    assert r.shared_bytes >= stages, r
    with pytest.raises(ValueError, match="the input gradient's configs without TMA only"):
        aot.compile_config("input_grad", next(c for c in CONFIGS["half"]["input_grad"] if c.variant == "tma"),
                           torch.bfloat16, strided=True)

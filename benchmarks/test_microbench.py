"""Microbenchmarks (pytest-benchmark): each layer kind (lifting, group; p4m, p4), forward,
backward and forward+backward, per available backend and dtype.

    pytest benchmarks/test_microbench.py --benchmark-json benchmarks/results/micro-cpu.json
    GER_KERNELS_BENCH_SHAPES=ger-unet GER_KERNELS_BENCH_DEVICE=cuda pytest benchmarks/test_microbench.py ...
    GER_KERNELS_BENCH_SHAPES=quick pytest benchmarks/test_microbench.py --benchmark-disable   # smoke test
"""

import os
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import contenders  # noqa: E402
from run import SHAPES, label  # noqa: E402

import ger_kernels  # noqa: E402
from ger_kernels.nn import conv_class  # noqa: E402

DEVICE = torch.device(os.environ.get("GER_KERNELS_BENCH_DEVICE", "cpu"))
SHAPE_SET = os.environ.get("GER_KERNELS_BENCH_SHAPES", "small")
DTYPES = [torch.float32, torch.bfloat16] + ([torch.float16] if DEVICE.type == "cuda" else [])
BACKENDS = list(ger_kernels.backends())


@pytest.mark.parametrize("shape", SHAPES[SHAPE_SET], ids=label)
@pytest.mark.parametrize("mode", ["forward", "backward", "forward+backward"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layer(benchmark, shape, mode, backend, dtype):
    status = ger_kernels.backends(DEVICE)[backend]
    if not status.available:
        pytest.skip(status.reason)
    torch.manual_seed(0)
    layer = conv_class(shape.in_orientations, shape.group_order)(
        shape.in_fields, shape.out_fields, shape.kernel_size, shape.stride, shape.padding).to(DEVICE, dtype)
    x = torch.randn(shape.batch, shape.in_fields * shape.in_orientations, shape.height, shape.width,
                    device=DEVICE, dtype=dtype, requires_grad=True)
    step = contenders.backend(backend)(layer, x, mode)

    def timed():
        step()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(shape=label(shape), mode=mode, backend=backend, dtype=str(dtype))
    benchmark(timed)

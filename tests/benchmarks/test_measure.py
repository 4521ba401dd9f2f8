import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import measure  # noqa: E402

CPU = torch.device("cpu")


def test_peak_memory_counts_what_is_alive_at_once():
    def step():
        a = torch.empty(1_000_000)        # 4 MB
        b = torch.empty(2_000_000)        # 8 MB, 12 MB alive
        del a
        c = torch.empty(500_000)          # 2 MB, 10 MB alive
        return b, c

    assert measure.peak_memory_bytes(step, CPU) == 12_000_000


def test_peak_memory_counts_allocations_inside_ops_once():
    def step():
        return torch.randn(1_000_000).sum()  # 4 MB allocated by aten::empty inside aten::randn

    assert 4_000_000 <= measure.peak_memory_bytes(step, CPU) < 4_100_000


def test_peak_memory_of_autograd_saved_tensors():
    x = torch.randn(64, 256, requires_grad=True)

    def step():
        y = (x * 2).exp()                 # x*2 freed, exp output saved for backward
        y.sum().backward()

    assert measure.peak_memory_bytes(step, CPU) >= 2 * 64 * 256 * 4


def test_interleaved_medians_and_peaks():
    times = measure.interleaved_medians({"a": lambda: torch.ones(10).sum(), "b": lambda: None}, CPU, repeats=3)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    peaks = measure.machine_peaks(CPU, torch.float32)
    assert peaks["matmul_tflops"] > 0 and peaks["copy_gbs"] > 0

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ger_kernels import reference
from ger_kernels.roofline import ConvShape, conv_flops, conv_min_bytes, throughput


@pytest.mark.parametrize("shape", [ConvShape(2, 3, 1, 4, 8, 9, 7), ConvShape(1, 2, 8, 3, 8, 10, 10, 3, 2, 1),
                                   ConvShape(3, 2, 4, 2, 4, 8, 8, 5, 1, 4, 2)])
def test_flops_match_torch_flop_counter(shape):
    x = torch.randn(shape.batch, shape.in_fields * shape.in_orientations, shape.height, shape.width,
                    requires_grad=True)
    w = torch.randn(shape.out_fields, shape.in_fields, shape.in_orientations, shape.kernel_size, shape.kernel_size)
    expanded = reference.expand_filter(w, shape.group_order).requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        out = torch.nn.functional.conv2d(x, expanded, None, shape.stride, shape.padding, shape.dilation)
    assert out.shape[-2:] == shape.out_size
    assert counter.get_total_flops() == conv_flops(shape, "forward")
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == conv_flops(shape, "backward")
    assert conv_flops(shape, "forward+backward") == 3 * conv_flops(shape, "forward")


def test_min_bytes():
    shape = ConvShape(1, 1, 1, 1, 8, 4, 4, kernel_size=1, padding=0)
    assert conv_min_bytes(shape) == 4 * (16 + 1 + 8 * 16)
    assert conv_min_bytes(shape, "forward+backward", 2) == 2 * (16 + 1 + 128 + 2 * 128 + 2 * 16 + 2)


@pytest.mark.parametrize("shape", [ConvShape(2, 3, 1, 4, 8, 9, 7), ConvShape(1, 2, 4, 3, 4, 10, 10, 2, 2, 0)])
def test_per_pass_flops_match_torch_flop_counter(shape):
    x = torch.randn(shape.batch, shape.in_fields * shape.in_orientations, shape.height, shape.width,
                    requires_grad=True)
    w = torch.randn(shape.out_fields, shape.in_fields, shape.in_orientations, shape.kernel_size, shape.kernel_size)
    expanded = reference.expand_filter(w, shape.group_order).requires_grad_(True)
    out = torch.nn.functional.conv2d(x, expanded, None, shape.stride, shape.padding, shape.dilation)
    for passes, wrt in (("input_grad", x), ("weight_grad", expanded)):
        with FlopCounterMode(display=False) as counter:
            torch.autograd.grad(out, wrt, torch.ones_like(out), retain_graph=True)
        assert counter.get_total_flops() == conv_flops(shape, passes)
    assert conv_flops(shape, "input_grad") + conv_flops(shape, "weight_grad") == conv_flops(shape, "backward")


def test_per_pass_bytes_and_throughput():
    shape = ConvShape(1, 1, 1, 1, 8, 4, 4, kernel_size=1, padding=0)
    assert conv_min_bytes(shape, "input_grad") == 4 * (128 + 1 + 16)
    assert conv_min_bytes(shape, "weight_grad", 2) == 2 * (128 + 16 + 1)
    assert conv_min_bytes(shape, "input_grad") + conv_min_bytes(shape, "weight_grad") == conv_min_bytes(
        shape, "backward")
    tflops, fraction = throughput(shape, "weight_grad", 1e-6, 512.0)
    assert tflops == pytest.approx(conv_flops(shape) / 1e3) and fraction == pytest.approx(tflops / 512.0)

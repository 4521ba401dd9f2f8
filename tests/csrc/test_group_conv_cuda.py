"""The CUDA kernels of the fused group convolution (csrc/cuda/group_conv_kernels.cu, group_conv_cute.cu) against
the float64 CPU reference (SPEC section 8): output, input gradient and weight gradient of the three ops called directly.

float64/float32: max relative error <= 1e-12 / 1e-5 (TF32 off). float16/bfloat16 (tensor cores): <= 1e-2 and
<= 2x the error of PyTorch's own conv on the expanded filter in the same dtype and on the same inputs (the
reference run on CUDA in that dtype); an error below the dtype's epsilon always passes (one rounding of the
result). Inputs are drawn in the tested dtype, so the float64 reference sees the same rounded values.
Skipped without a CUDA device.
"""

import itertools

import pytest
import torch

from ger_kernels import reference
from ger_kernels._validation import conv_output_size
from ger_kernels.groups import P4, P4M
from helpers import max_rel_err, requires_extension

pytestmark = [requires_extension(), pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

LOW_PRECISION = [torch.float16, torch.bfloat16]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}

# k, stride, padding, dilation, H, W: odd sizes, k = 2 stride 2, strided 3x3 and 5x5, dilation 2
CONVS = [
    (1, 1, 0, 1, 7, 9),
    (3, 1, 1, 1, 9, 7),
    (5, 1, 2, 1, 11, 13),
    (2, 2, 0, 1, 8, 10),
    (3, 1, 2, 2, 9, 11),
    (3, 2, 1, 1, 9, 9),
    (5, 2, 2, 2, 17, 15),
]


@pytest.fixture(autouse=True, params=["wmma", "cute"])
def kernels(request, monkeypatch):
    """Every case with the CuTe kernels off and on (GER_KERNELS_CUTE, read per call by the glue): they
    are opt-in until they have passed here on a GPU. Without CuTe headers in the build, both run WMMA."""
    monkeypatch.setenv("GER_KERNELS_CUTE", "1" if request.param == "cute" else "0")
    return request.param


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def make_case(group, lifting, k, batch, height, width, c_in, c_out, dtype):
    """x, w, b (CPU, already rounded to dtype) and an output gradient for the given conv."""
    s_in = 1 if lifting else group.order
    x = torch.randn(batch, c_in * s_in, height, width).to(dtype)
    w = (torch.randn(c_out, c_in, s_in, k, k) / (c_in * s_in * k * k) ** 0.5).to(dtype)
    b = torch.randn(c_out).to(dtype)
    return x, w, b


def fused(x, w, b, dy, stride, padding, dilation, group):
    """Output, input gradient and weight gradient of the three ops."""
    ops = torch.ops.ger_kernels
    out = ops.group_conv2d(x, w, b, stride, padding, dilation, group.order)
    dx = ops.group_conv2d_input_grad(dy, w, list(x.shape), stride, padding, dilation, group.order)
    dw = ops.group_conv2d_weight_grad(dy, x, w.shape[-1], w.shape[2], stride, padding, dilation, group.order)
    return out, dx, dw


def unfused(x, w, b, dy, stride, padding, dilation, group):
    """The same three results from the reference (expanded filter and F.conv2d) through autograd."""
    x, w = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    out = reference.group_conv2d(x, w, b, stride, padding, dilation, group)
    dx, dw = torch.autograd.grad(out, (x, w), dy)
    return out.detach(), dx, dw


def output_grad(group, x, w, stride, padding, dilation, dtype):
    out_size = [conv_output_size(n, w.shape[-1], stride, padding, dilation) for n in x.shape[2:]]
    return torch.randn(x.shape[0], w.shape[0] * group.order, *out_size).to(dtype)


def assert_parity(x, w, b, dy, stride, padding, dilation, group):
    """Runs the CUDA ops on the given (CUDA) tensors and compares with the float64 CPU reference."""
    dtype = x.dtype
    as64 = [t.cpu().double() if t is not None else None for t in (x, w, b, dy)]
    expected = unfused(*as64, stride, padding, dilation, group)
    actual = fused(x, w, b, dy, stride, padding, dilation, group)
    if dtype in LOW_PRECISION:
        baseline = unfused(x, w, b, dy, stride, padding, dilation, group)
    for i, name in enumerate(["output", "grad input", "grad weight"]):
        a, e = actual[i], expected[i]
        assert a.is_cuda and a.dtype == dtype and a.shape == e.shape, name
        err = max_rel_err(a.cpu(), e)
        if dtype in LOW_PRECISION:
            torch_err = max_rel_err(baseline[i].cpu(), e)
            assert err <= 1e-2 and err <= max(2 * torch_err, torch.finfo(dtype).eps), (name, err, torch_err)
        else:
            assert err <= TOLERANCE[dtype], (name, err)
    return actual


def test_cuda_kernels_are_registered():
    for op in ["group_conv2d", "group_conv2d_input_grad", "group_conv2d_weight_grad"]:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ger_kernels::{op}", "CUDA"), op


@pytest.mark.parametrize("group,lifting,conv", list(itertools.product([P4M, P4], [True, False], CONVS)), ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, *LOW_PRECISION], ids=str)
def test_parity(group, lifting, conv, dtype):
    k, stride, padding, dilation, height, width = conv
    x, w, b = make_case(group, lifting, k, 2, height, width, 3, 5, dtype)
    dy = output_grad(group, x, w, stride, padding, dilation, dtype)
    assert_parity(x.cuda(), w.cuda(), b.cuda(), dy.cuda(), stride, padding, dilation, group)


@pytest.mark.parametrize("group,lifting", list(itertools.product([P4M, P4], [True, False])), ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION], ids=str)
def test_parity_over_many_tiles(group, lifting, dtype):
    """Several block tiles along every GEMM axis, several reduction steps, and a split weight gradient
    reduction (3 * 20 * 22 pixels * S orientations), without bias."""
    x, w, _ = make_case(group, lifting, 3, 3, 20, 22, 6, 9, dtype)
    dy = output_grad(group, x, w, 1, 1, 1, dtype)
    assert_parity(x.cuda(), w.cuda(), None, dy.cuda(), 1, 1, 1, group)


@pytest.mark.parametrize("group,lifting", list(itertools.product([P4M, P4], [True, False])), ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_memory_layouts(group, lifting, dtype, layout):
    """channels_last tensors give channels_last results; strided views (a slice, storage offset) are read
    in place."""
    x, w, b = make_case(group, lifting, 3, 2, 9, 11, 3, 4, dtype)
    dy = output_grad(group, x, w, 2, 1, 1, dtype)
    if layout == "channels_last":
        x, dy = (t.cuda().contiguous(memory_format=torch.channels_last) for t in (x, dy))
    else:
        x, dy = (torch.cat([t, t], dim=3).cuda()[:, :, :, 1:t.shape[3] + 1] for t in (x, dy))
        assert not x.is_contiguous() and not dy.is_contiguous()
    out, dx, _ = assert_parity(x, w.cuda(), b.cuda(), dy, 2, 1, 1, group)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert dx.is_contiguous(memory_format=torch.channels_last)


def channels_last_case(group, lifting, k, batch, height, width, c_out, dtype, stride, padding, dilation):
    """x, w, b, dy on the GPU, x and dy channels_last, with input and output channel counts multiples of 8:
    where the CuTe kernels run forward and input gradient (float16/bfloat16 on sm_80+)."""
    x, w, b = make_case(group, lifting, k, batch, height, width, 8 if lifting else 2, c_out, dtype)
    assert x.shape[1] % 8 == 0 and c_out * group.order % 8 == 0
    dy = output_grad(group, x, w, stride, padding, dilation, dtype)
    x, dy = (t.cuda().contiguous(memory_format=torch.channels_last) for t in (x, dy))
    return x, w.cuda(), b.cuda(), dy


@pytest.mark.parametrize("group,lifting,conv", list(itertools.product([P4M, P4], [True, False], CONVS)), ids=str)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_parity_tensor_core_tiles(group, lifting, conv, dtype):
    """The CuTe kernels on one partial tile (fewer pixels, channels and reduction steps than a tile) at every
    kernel size, stride and dilation of CONVS."""
    k, stride, padding, dilation, height, width = conv
    x, w, b, dy = channels_last_case(group, lifting, k, 2, height, width, 6, dtype, stride, padding, dilation)
    out, dx, _ = assert_parity(x, w, b, dy, stride, padding, dilation, group)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert dx.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("group,lifting", list(itertools.product([P4M, P4], [True, False])), ids=str)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_parity_over_many_tensor_core_tiles(group, lifting, dtype):
    """The CuTe kernels over several 128-pixel tiles (1320 pixels), two output-channel tiles for p4m (144
    channels), more reduction steps than pipeline stages, and a weight gradient split over pixels (split-K)."""
    x, w, b, dy = channels_last_case(group, lifting, 3, 3, 20, 22, 18, dtype, 1, 1, 1)
    assert_parity(x, w, b, dy, 1, 1, 1, group)


# (group, lifting, input fields, output fields): the CuTe forward and input gradient tile their columns by group
# element and a block of fields (128 / S forward, 128 / S_in input gradient) read from a weight copy whose rows
# are zero-padded to a multiple of 8 fields: two or more column tiles, the last one partial, field counts not
# multiples of 8. channels_last with channel counts multiples of 8 where these kernels run: the first four both
# ops; RGB lifting (3 channels) only the input gradient and p4 with 23 output fields (92 channels) only the
# forward, each writing a result whose channels are not a multiple of 8 (element-wise stores).
FIELD_TILES = [(P4M, False, 17, 23), (P4, False, 34, 46), (P4M, True, 136, 23), (P4, True, 136, 46),
               (P4M, True, 3, 23), (P4, False, 34, 23)]


@pytest.mark.parametrize("group,lifting,c_in,c_out", FIELD_TILES, ids=str)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_parity_over_field_tiles(group, lifting, c_in, c_out, dtype):
    x, w, b = make_case(group, lifting, 3, 2, 7, 9, c_in, c_out, dtype)
    dy = output_grad(group, x, w, 1, 1, 1, dtype)
    x, dy = (t.cuda().contiguous(memory_format=torch.channels_last) for t in (x, dy))
    out, dx, _ = assert_parity(x, w.cuda(), b.cuda(), dy, 1, 1, 1, group)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert dx.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("group", [P4M, P4], ids=str)
def test_parity_weight_grad_segments(group):
    """The CuTe weight gradient of channels-last tensors sums each split of the pixels in segments of 4096
    pixels, one tap at a time, and folds each segment's sum: 520 x 520 pixels make 64 splits (the most
    weight_grad_splits gives, from 32 SMs on) of 4256 pixels (the last 2272), a whole segment and a partial
    one each."""
    x, w, b = make_case(group, True, 3, 1, 520, 520, 8, 8 // group.order * 2, torch.bfloat16)
    dy = output_grad(group, x, w, 1, 1, 1, torch.bfloat16)
    x, dy = (t.cuda().contiguous(memory_format=torch.channels_last) for t in (x, dy))
    assert_parity(x, w.cuda(), b.cuda(), dy, 1, 1, 1, group)


@pytest.mark.parametrize("group,lifting", list(itertools.product([P4M, P4], [True, False])), ids=str)
def test_empty_batch_tensor_core(group, lifting):
    x, w, b, dy = channels_last_case(group, lifting, 3, 0, 9, 7, 2, torch.bfloat16, 1, 1, 1)
    out, dx, dw = fused(x, w, b, dy, 1, 1, 1, group)
    assert out.shape == (0, 2 * group.order, 9, 7) and dx.shape == x.shape
    assert dw.shape == w.shape and dw.is_cuda and not dw.any()


@pytest.mark.parametrize("group,lifting", list(itertools.product([P4M, P4], [True, False])), ids=str)
def test_empty_batch(group, lifting):
    x, w, b = (t.cuda() for t in make_case(group, lifting, 3, 0, 9, 7, 2, 3, torch.float32))
    dy = output_grad(group, x, w, 1, 1, 1, torch.float32).cuda()
    out, dx, dw = fused(x, w, b, dy, 1, 1, 1, group)
    assert out.shape == (0, 3 * group.order, 9, 7) and dx.shape == x.shape
    assert dw.shape == w.shape and dw.is_cuda and not dw.any()

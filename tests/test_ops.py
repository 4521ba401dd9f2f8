"""The compiled ops of ger_kernels._C against the pure-PyTorch reference."""

import itertools

import pytest
import torch

from ger_kernels import ops, reference
from ger_kernels.groups import P4, P4M
from helpers import max_rel_err, requires_extension

pytestmark = requires_extension()

SHAPES = [  # (C_out, C_in, k)
    (3, 2, 1), (2, 3, 2), (1, 2, 3), (2, 1, 5), (0, 2, 3),
]


def weight(group, lifting, c_out, c_in, k, dtype=torch.float64):
    return torch.randn(c_out, c_in, 1 if lifting else group.order, k, k, dtype=dtype)


@pytest.mark.parametrize("group,lifting,shape", list(itertools.product([P4M, P4], [True, False], SHAPES)),
                         ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_expand_filter_bitwise_equal_to_python_tables(group, lifting, shape, dtype):
    w = weight(group, lifting, *shape, dtype=dtype)
    assert torch.equal(torch.ops.ger_kernels.expand_filter(w, group.order), reference.expand_filter(w, group))


def test_expand_filter_noncontiguous_weight():
    w = weight(P4M, False, 4, 3, 3).transpose(0, 1).contiguous().transpose(0, 1)[::2]
    assert not w.is_contiguous()
    assert torch.equal(torch.ops.ger_kernels.expand_filter(w, 8), reference.expand_filter(w, P4M))


@pytest.mark.parametrize("group,lifting", list(itertools.product([P4M, P4], [True, False])), ids=str)
@pytest.mark.parametrize("k", [1, 3, 4])
def test_backward_is_sum_over_transformed_copies(group, lifting, k):
    w = weight(group, lifting, 2, 3, k).requires_grad_(True)
    grad = torch.randn(2 * group.order, 3 * w.shape[2], k, k, dtype=torch.float64)
    (expected,) = torch.autograd.grad(reference.expand_filter(w, group), w, grad)
    dw = torch.ops.ger_kernels.expand_filter_backward(grad, group.order, w.shape[2])
    assert max_rel_err(dw, expected) < 1e-15
    # adjoint: <expand(w), g> == <w, expand_backward(g)>
    lhs = (torch.ops.ger_kernels.expand_filter(w.detach(), group.order) * grad).sum()
    assert torch.allclose(lhs, (w.detach() * dw).sum(), rtol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_low_precision(dtype):
    grad = torch.randn(16, 24, 3, 3, dtype=torch.float64)
    expected = torch.ops.ger_kernels.expand_filter_backward(grad, 8, 8)
    dw = torch.ops.ger_kernels.expand_filter_backward(grad.to(dtype), 8, 8)
    assert dw.dtype == dtype
    assert max_rel_err(dw, expected) < (1e-6 if dtype == torch.float32 else 1e-2)


def test_autograd_and_double_backward():
    w = weight(P4M, False, 2, 1, 3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: torch.ops.ger_kernels.expand_filter(w, 8), (w,))
    assert torch.autograd.gradgradcheck(lambda w: torch.ops.ger_kernels.expand_filter(w, 8), (w,))
    lifting = weight(P4, True, 2, 2, 3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: torch.ops.ger_kernels.expand_filter(w, 4), (lifting,))


@pytest.mark.parametrize("lifting", [True, False])
def test_opcheck(lifting):
    w = weight(P4M, lifting, 2, 3, 3).requires_grad_(True)
    torch.library.opcheck(torch.ops.ger_kernels.expand_filter, (w, 8))
    grad = torch.randn(16, 3 * w.shape[2], 3, 3, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.ger_kernels.expand_filter_backward, (grad, 8, w.shape[2]))


def test_compiles_fullgraph():
    w = weight(P4M, False, 2, 3, 3)

    def f(w):
        return torch.ops.ger_kernels.expand_filter(w, 8).sin()

    assert torch.equal(torch.compile(f, fullgraph=True, backend="eager")(w), f(w))


@pytest.mark.parametrize("args,message", [
    ((torch.zeros(2, 2, 8, 3, 3), 6), "group_order must be 8 \\(p4m\\) or 4 \\(p4\\), got 6"),
    ((torch.zeros(2, 2, 3, 3), 8), "weight must be 5-D \\(C_out, C_in, S_in, k, k\\)"),
    ((torch.zeros(2, 2, 4, 3, 3), 8), "S_in\\) must be 1 \\(lifting\\) or 8, got 4"),
    ((torch.zeros(2, 2, 8, 3, 2), 8), "square k x k taps, got 3 x 2"),
    ((torch.zeros(2, 2, 8, 3, 3, dtype=torch.long), 8), "weight must be a floating point tensor"),
])
def test_expand_filter_errors(args, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.ger_kernels.expand_filter(*args)


def test_expand_filter_backward_errors():
    with pytest.raises(RuntimeError, match="in_orientations must be 1 or 8, got 2"):
        torch.ops.ger_kernels.expand_filter_backward(torch.zeros(16, 4, 3, 3), 8, 2)
    with pytest.raises(RuntimeError, match=r"grad must have shape \(C_out\*8, C_in\*8, k, k\)"):
        torch.ops.ger_kernels.expand_filter_backward(torch.zeros(12, 8, 3, 3), 8, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("group,lifting", list(itertools.product([P4M, P4], [True, False])), ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_kernels_match_cpu(group, lifting, dtype):
    w = weight(group, lifting, 5, 3, 3, dtype=dtype)
    out = torch.ops.ger_kernels.expand_filter(w.cuda(), group.order)
    assert torch.equal(out.cpu(), torch.ops.ger_kernels.expand_filter(w, group.order))
    grad = torch.randn_like(out, dtype=torch.float64).to(dtype)
    dw = torch.ops.ger_kernels.expand_filter_backward(grad, group.order, w.shape[2])
    expected = torch.ops.ger_kernels.expand_filter_backward(grad.cpu().double(), group.order, w.shape[2])
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-6}.get(dtype, 1e-2)
    assert max_rel_err(dw.cpu(), expected) < tolerance


def test_has_kernel_per_device_type():
    assert ops.has_kernel("expand_filter", "cpu") and ops.has_kernel("group_conv2d", "cpu")
    assert not ops.has_kernel("expand_filter", "mps") and not ops.has_kernel("no_such_op", "cpu")
    assert ops.has_kernel("group_conv2d", "cuda") == torch._C._dispatch_has_kernel_for_dispatch_key(
        "ger_kernels::group_conv2d", "CUDA")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_conv_ops_compute_in_the_autocast_dtype(dtype):
    """As F.conv2d: float32 arguments cast to the region's dtype, gradients back in float32."""
    x = torch.randn(2, 16, 5, 4, requires_grad=True)
    w = torch.randn(3, 2, 8, 3, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    conv = (1, 1, 1, 8)
    with torch.autocast("cpu", dtype=dtype):
        out = torch.ops.ger_kernels.group_conv2d(x, w, b, *conv)
        grad = torch.randn(out.shape)  # float32, as a loss computed in float32 gives
        dx = torch.ops.ger_kernels.group_conv2d_input_grad(grad, w, x.shape, *conv)
        dw = torch.ops.ger_kernels.group_conv2d_weight_grad(grad, x, 3, 8, *conv)
    low = [t.detach().to(dtype) for t in (x, w, b, grad)]
    assert out.dtype == dx.dtype == dw.dtype == dtype
    assert torch.equal(out, torch.ops.ger_kernels.group_conv2d(*low[:3], *conv))
    assert torch.equal(dx, torch.ops.ger_kernels.group_conv2d_input_grad(low[3], low[1], x.shape, *conv))
    assert torch.equal(dw, torch.ops.ger_kernels.group_conv2d_weight_grad(low[3], low[0], 3, 8, *conv))
    out.backward(low[3])
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == torch.float32
    assert torch.equal(w.grad, torch.ops.ger_kernels.group_conv2d_weight_grad(low[3], low[0], 3, 8, *conv).float())

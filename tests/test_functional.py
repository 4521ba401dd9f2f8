import re

import pytest
import torch

import ger_kernels
from ger_kernels import reference


@pytest.mark.parametrize("backend", ["auto"] + [n for n, s in ger_kernels.backends("cpu").items() if s.available])
def test_every_available_backend_matches_the_reference(backend):
    x = torch.randn(2, 16, 9, 7, dtype=torch.float64)
    w = torch.randn(3, 2, 8, 3, 3, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    out = ger_kernels.group_conv2d(x, w, b, stride=2, padding=1, backend=backend)
    assert torch.allclose(out, reference.group_conv2d(x, w, b, 2, 1), rtol=1e-12, atol=1e-12)


def test_checks_arguments_before_dispatch():
    with pytest.raises(ValueError, match="input must have 16 channels"):
        ger_kernels.group_conv2d(torch.randn(1, 8, 5, 5), torch.randn(1, 2, 8, 3, 3))
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        ger_kernels.group_conv2d(torch.randn(1, 16, 5, 5), torch.randn(1, 2, 8, 3, 3), backend="fast")


def test_triton_backend_through_the_switch_in_the_interpreter(interpreter):
    """The layers' path to the Triton kernels (CPU tensors run in the interpreter here)."""
    x = torch.randn(1, 16, 7, 6, requires_grad=True)
    w = torch.randn(3, 2, 8, 3, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    out = ger_kernels.group_conv2d(x, w, b, padding=1, backend="triton")
    expected = reference.group_conv2d(x.double(), w.double(), b.double(), 1, 1)
    assert (out.double() - expected).abs().max() <= 1e-5 * expected.abs().max()
    grads = torch.autograd.grad(out.sum(), (x, w, b))
    ref_grads = torch.autograd.grad(expected.sum(), (x, w, b))
    for g, r in zip(grads, ref_grads):
        assert (g.double() - r).abs().max() <= 1e-5 * r.abs().max()


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_degenerate_shapes_agree_across_backends(backend, request):
    """An empty batch gives an empty output and zero parameter gradients; C_in = 0, C_out = 0 or an
    empty H or W (even where padding would give an output) the same error on every backend."""
    if backend == "triton":
        request.getfixturevalue("interpreter")
    status = ger_kernels.backends("cpu")[backend]
    if not status.available:
        pytest.skip(status.reason)
    x, w, b = (torch.randn(shape, requires_grad=True) for shape in ((0, 8, 4, 4), (2, 1, 8, 3, 3), (2,)))
    out = ger_kernels.group_conv2d(x, w, b, padding=1, backend=backend)
    assert out.shape == (0, 16, 4, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape and not w.grad.any() and not b.grad.any()
    for x_shape, w_shape in [((1, 8, 0, 3), (2, 1, 8, 3, 3)), ((1, 8, 3, 0), (2, 1, 8, 3, 3)),
                             ((1, 0, 4, 4), (2, 0, 8, 3, 3)), ((1, 8, 4, 4), (0, 1, 8, 3, 3))]:
        message = (f"a group convolution needs C_in, C_out >= 1 fields and an input H, W >= 1 (the batch may be "
                   f"empty), got input shape {x_shape} and weight shape {w_shape}")
        with pytest.raises(ValueError, match=re.escape(message)):
            ger_kernels.group_conv2d(torch.randn(x_shape), torch.randn(w_shape), torch.randn(w_shape[0]), padding=2,
                                     backend=backend)
    with pytest.raises(ValueError, match=re.escape("input (H, W) = (3, 6) is smaller than the dilated kernel 7 x 7 "
                                                   "with padding 1")):
        ger_kernels.group_conv2d(torch.randn(1, 8, 3, 6), torch.randn(2, 1, 8, 4, 4), padding=1, dilation=2,
                                 backend=backend)

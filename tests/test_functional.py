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

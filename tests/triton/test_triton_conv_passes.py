"""The Triton path's passes in a mixed-path convolution (``ger_kernels.conv_passes``), in the
interpreter on tiny float32 problems (and on CUDA where a GPU is present)."""

import pytest
import torch

pytest.importorskip("triton")

from ger_kernels import conv_passes, reference  # noqa: E402
from ger_kernels.backends import backends  # noqa: E402
from ger_kernels.conv_passes import PassPaths  # noqa: E402
from ger_kernels.groups import P4M  # noqa: E402


@pytest.mark.parametrize("paths", [PassPaths("triton", "reference", "triton"), PassPaths("reference", "triton", "cpp"),
                                   PassPaths("cpp", "cpp", "triton")])
def test_triton_passes_in_a_mixed_convolution_are_the_references(paths, device):
    if "cpp" in paths and not backends(device)["cpp"].available:
        pytest.skip(backends(device)["cpp"].reason)
    x = torch.randn(1, 16, 5, 4, device=device).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(3, 2, 8, 3, 3, device=device, requires_grad=True)
    b = torch.randn(3, device=device, requires_grad=True)
    out = conv_passes.group_conv2d(x, w, b, 2, 1, 1, P4M, paths)
    exact = [t.detach().double().requires_grad_() for t in (x, w, b)]  # float64: no TF32 in cuDNN
    expected = reference.group_conv2d(*exact, 2, 1, 1, P4M)
    dy = torch.randn_like(out)
    torch.testing.assert_close(out, expected.float(), rtol=1e-4, atol=1e-4)
    got = torch.autograd.grad(out, (x, w, b), dy)
    for g, e in zip(got, torch.autograd.grad(expected, exact, dy.double())):
        torch.testing.assert_close(g, e.float(), rtol=1e-4, atol=1e-4)
    assert got[0].is_contiguous(memory_format=torch.channels_last)

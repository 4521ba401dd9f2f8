"""Each pass of each path computes the reference's pass, and a convolution whose passes run on
different paths has the reference's forward and backward (float64, CPU: reference and cpp)."""

import pytest
import torch

from ger_kernels import conv_passes, reference
from ger_kernels.backends import backends
from ger_kernels.conv_passes import PassPaths
from ger_kernels.groups import P4, P4M

# (group, C_in, S_in, C_out, k, stride, padding, dilation, H, W)
CASES = [(P4M, 3, 1, 2, 3, 1, 1, 1, 6, 5), (P4M, 2, 8, 3, 3, 2, 1, 1, 7, 6), (P4, 2, 4, 2, 3, 1, 2, 2, 6, 7)]
MIXED = [PassPaths("cpp", "reference", "cpp"), PassPaths("reference", "cpp", "reference"),
         PassPaths("reference", "reference", "cpp")]


def cpu_paths():
    return [path for path in ("reference", "cpp") if backends("cpu")[path].available]


@pytest.fixture
def cpp_available():
    if not backends("cpu")["cpp"].available:
        pytest.skip(backends("cpu")["cpp"].reason)


def problem(case, channels_last=False):
    group, c_in, s_in, c_out, k, stride, padding, dilation, h, w = case
    x = torch.randn(2, c_in * s_in, h, w, dtype=torch.float64)
    x = x.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format).requires_grad_()
    weight = torch.randn(c_out, c_in, s_in, k, k, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c_out, dtype=torch.float64, requires_grad=True)
    return x, weight, bias, (stride, padding, dilation), group


@pytest.mark.parametrize("path", ["reference", "cpp"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_each_pass_of_a_path_is_the_reference_pass(path, case, channels_last):
    if path not in cpu_paths():
        pytest.skip(backends("cpu")[path].reason)
    x, w, b, conv, group = problem(case, channels_last)
    expected = reference.group_conv2d(x, w, b, *conv, group)
    dy = torch.randn_like(expected)
    dx, dw = torch.autograd.grad(expected, (x, w), dy)
    with torch.no_grad():
        out = conv_passes.forward(path, x, w, b, *conv, group.order)
        got_dx = conv_passes.input_grad(path, dy, w, x.shape, channels_last, *conv, group.order)
        got_dw = conv_passes.weight_grad(path, dy, x, w.shape[-1], w.shape[2], *conv, group.order)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_dx, dx, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_dw, dw, rtol=0, atol=1e-12)
    assert got_dx.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("paths", MIXED)
@pytest.mark.parametrize("case", CASES)
def test_mixed_paths_have_the_references_forward_and_backward(paths, case, cpp_available):
    x, w, b, conv, group = problem(case)
    expected = reference.group_conv2d(x, w, b, *conv, group)
    out = conv_passes.group_conv2d(x, w, b, *conv, group, paths)
    assert out.grad_fn.name().startswith("GeneratedBackwardFor_ger_kernels_paths_group_conv2d")
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    dy = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (x, w, b), dy), torch.autograd.grad(expected, (x, w, b), dy)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_each_pass_runs_on_its_path(monkeypatch, cpp_available):
    """The op calls the forward of paths.forward and the two gradients of their own paths."""
    calls = []
    for name in conv_passes.PASSES:
        original = getattr(conv_passes, name)

        def spy(path, *args, name=name, original=original):
            calls.append((name, path))
            return original(path, *args)

        monkeypatch.setattr(conv_passes, name, spy)
    x, w, b, conv, group = problem(CASES[1])
    conv_passes.group_conv2d(x, w, b, *conv, group, PassPaths("cpp", "reference", "cpp")).sum().backward()
    assert sorted(calls) == [("forward", "cpp"), ("input_grad", "reference"), ("weight_grad", "cpp")]
    calls.clear()
    conv_passes.group_conv2d(x.detach(), w, None, *conv, group, PassPaths("reference", "cpp", "cpp")).sum().backward()
    assert calls == [("forward", "reference"), ("weight_grad", "cpp")]  # no input gradient asked for


def test_mixed_paths_are_differentiable_twice(cpp_available):
    x, w, b, conv, group = problem((P4M, 1, 8, 1, 3, 2, 1, 1, 5, 4))
    for paths in MIXED[:2]:
        def conv2d(x, w, b):
            return conv_passes.group_conv2d(x, w, b, *conv, group, paths)

        assert torch.autograd.gradcheck(conv2d, (x, w, b))
        assert torch.autograd.gradgradcheck(conv2d, (x, w, b))


def test_mixed_paths_under_autocast_compute_in_its_dtype(cpp_available):
    x, w, b, conv, group = problem(CASES[1])
    x, w, b = (t.detach().float().requires_grad_() for t in (x, w, b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv_passes.group_conv2d(x, w, b, *conv, group, MIXED[0])
        expected = reference.group_conv2d(x, w, b, *conv, group)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert w.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


def test_mixed_paths_compile_into_one_graph(cpp_available):
    x, w, b, conv, group = problem(CASES[1])
    x, w, b = x.detach(), w.detach(), b.detach()

    def conv2d(x):
        return conv_passes.group_conv2d(x, w, b, *conv, group, MIXED[0])

    compiled = torch.compile(conv2d, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), reference.group_conv2d(x, w, b, *conv, group), rtol=0, atol=1e-12)


def test_a_bad_path_is_refused_naming_the_pass():
    x, w, b, conv, group = problem(CASES[0])
    with pytest.raises(ValueError, match=r"paths.input_grad must be one of \['reference', 'cpp', 'triton'\], "
                                         r"got 'cudnn'"):
        conv_passes.group_conv2d(x, w, b, *conv, group, PassPaths("reference", "cudnn", "reference"))

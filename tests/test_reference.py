import itertools

import pytest
import torch

from ger_kernels import ops, reference
from ger_kernels.groups import P4, P4M
from helpers import max_rel_err
from group_convention import matrices, naive_group_conv2d, transform_filter

CASES = [
    (group, lifting, k, stride, padding, dilation)
    for group, lifting, k, stride, padding, dilation in itertools.product(
        [P4M, P4], [True, False], [1, 3, 5], [1, 2], [0, 1, 2], [1, 2])
    if not (k == 1 and dilation == 2)
]


def random_conv_args(group, lifting, k, batch=2, c_in=2, c_out=2, height=11, width=10):
    s_in = 1 if lifting else group.order
    x = torch.randn(batch, c_in * s_in, height, width, dtype=torch.float64)
    w = torch.randn(c_out, c_in, s_in, k, k, dtype=torch.float64)
    b = torch.randn(c_out, dtype=torch.float64)
    return x, w, b


@pytest.mark.parametrize("group,lifting,k,stride,padding,dilation", CASES,
                         ids=lambda v: getattr(v, "name", str(v)))
def test_matches_naive_loops(group, lifting, k, stride, padding, dilation):
    x, w, b = random_conv_args(group, lifting, k)
    out = reference.group_conv2d(x, w, b, stride, padding, dilation, group.name)
    expected = naive_group_conv2d(x, w, b, stride, padding, dilation, group.order)
    assert out.shape == expected.shape
    assert max_rel_err(out, expected) < 1e-13


@pytest.mark.parametrize("group", [P4M, P4], ids=str)
@pytest.mark.parametrize("lifting", [True, False])
def test_expand_filter_definition(group, lifting):
    _, w, _ = random_conv_args(group, lifting, 3, c_in=3, c_out=2)
    expanded = reference.expand_filter(w, group)
    s_in = w.shape[2]
    assert expanded.shape == (2 * group.order, 3 * s_in, 3, 3)
    blocks = expanded.view(2, group.order, 3, s_in, 3, 3)
    ms = matrices(group.order)
    for o, t, i, s in itertools.product(range(2), group.elements(), range(3), range(s_in)):
        source = 0 if lifting else int(group.T[t, s])
        assert torch.equal(blocks[o, t, i, s], transform_filter(w[o, i, source], ms[t]))


@pytest.mark.parametrize("group,lifting", [(P4M, True), (P4M, False), (P4, False)], ids=str)
def test_gradcheck(group, lifting):
    x, w, b = random_conv_args(group, lifting, 3, batch=1, c_in=1, c_out=2, height=5, width=4)
    for t in (x, w, b):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: reference.group_conv2d(x, w, b, 2, 1, 1, group), (x, w, b))


def test_layouts_and_empty_batch():
    x, w, b = random_conv_args(P4M, False, 3, batch=3)
    out = reference.group_conv2d(x, w, b, padding=1)
    channels_last = reference.group_conv2d(x.to(memory_format=torch.channels_last), w, b, padding=1)
    strided = torch.randn(3, 16, 11, 20, dtype=torch.float64)[..., ::2]
    strided.copy_(x)
    assert not strided.is_contiguous()
    assert max_rel_err(channels_last, out) < 1e-14
    assert max_rel_err(reference.group_conv2d(strided, w, b, padding=1), out) < 1e-14
    assert reference.group_conv2d(x[:0], w, b, padding=1).shape == (0, 16, 11, 10)


def test_pair_arguments():
    x, w, b = random_conv_args(P4M, True, 3)
    assert torch.equal(reference.group_conv2d(x, w, b, (2, 2), (1, 1), (1, 1)),
                       reference.group_conv2d(x, w, b, 2, 1, 1))
    with pytest.raises(ValueError, match=r"stride must be an int or a pair of equal ints .* got \(1, 2\)"):
        reference.group_conv2d(x, w, b, stride=(1, 2))
    with pytest.raises(ValueError, match="padding must be an int >= 0, got -1"):
        reference.group_conv2d(x, w, b, padding=-1)


@pytest.mark.parametrize("make,message", [
    (lambda x, w, b: (x[0], w, b), r"input must be 4-D .* got 3-D"),
    (lambda x, w, b: (x[:, :15], w, b), r"input must have 16 channels \(\(B, C_in\*8, H, W\)\), got 15"),
    (lambda x, w, b: (x, w[:, :, :3], b), r"S_in\) must be 1 \(lifting\) or 8 \(p4m to p4m\), got 3"),
    (lambda x, w, b: (x, w[0], b), r"weight must be 5-D"),
    (lambda x, w, b: (x, w[..., :2], b), r"square k x k taps .* got 3 x 2"),
    (lambda x, w, b: (x, w.float(), b), r"weight.dtype must match input.dtype torch.float64, got torch.float32"),
    (lambda x, w, b: (x, w, b.float()), r"bias.dtype must match input.dtype"),
    (lambda x, w, b: (x, w.to("meta"), b), r"weight.device must match input.device cpu, got meta"),
    (lambda x, w, b: (x, w, b[:1]), r"bias must have shape \(2,\): one value per output field"),
    (lambda x, w, b: (x.long(), w.long(), None), r"weight must be a floating point tensor"),
    (lambda x, w, b: (x, w, True), r"bias must be a torch.Tensor or None, got bool"),
])
def test_bad_input(make, message):
    args = make(*random_conv_args(P4M, False, 3))
    with pytest.raises((ValueError, TypeError), match=message):
        reference.group_conv2d(*args)


def test_bad_group_and_filter():
    x, w, b = random_conv_args(P4M, False, 3)
    with pytest.raises(ValueError, match="group must be one of"):
        reference.group_conv2d(x, w, b, group="p6")
    with pytest.raises(ValueError, match=r"S_in\) must be 1 \(lifting\) or 4 \(p4 to p4\), got 8"):
        reference.expand_filter(w, "p4")
    with pytest.raises(ValueError, match=r"weight must be 5-D"):
        reference.expand_filter(w[0], "p4m")


def test_autocast_computes_as_conv2d_does():
    """Inside torch.autocast, float32 weights with bfloat16 activations run (F.conv2d casts W~);
    outside, the mix is the user's error, as for nn.Conv2d."""
    x, w, b = (t.float() for t in random_conv_args(P4M, False, 3))
    low = [t.bfloat16() for t in (x, w, b)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = reference.group_conv2d(low[0], w, b, padding=1)
        with pytest.raises(TypeError, match="weight.dtype must match input.dtype torch.float64, got torch.float32"):
            reference.group_conv2d(x.double(), w, b, padding=1)  # autocast leaves float64 alone
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, reference.group_conv2d(*low, padding=1))
    with pytest.raises(TypeError, match=r"weight.dtype must match input.dtype torch.bfloat16, got torch.float32 "
                                        r"\(convert the layer with .to\(dtype\), or run it under torch.autocast\)"):
        reference.group_conv2d(low[0], w, b, padding=1)


def test_expands_with_the_extension_where_it_has_a_kernel():
    """The convolution folds W~'s gradient with expand_filter_backward where the op runs (CPU
    here when the extension is loaded), else through the gather's autograd."""
    assert reference.EXPAND_OP_DEVICES == {d for d in ("cpu", "cuda") if ops.has_kernel("expand_filter", d)}
    x, w, b = random_conv_args(P4M, False, 3)
    w.requires_grad_(True)
    out = reference.conv_expanded(x, w, b, 1, 1, 1, P4M)
    w_tilde = out.grad_fn.next_functions[1][0].name()  # the node that gives W~'s gradient to w
    assert ("ger_kernels_expand_filter" in w_tilde) == ("cpu" in reference.EXPAND_OP_DEVICES), w_tilde


@pytest.mark.parametrize("group,lifting", [(P4M, True), (P4M, False), (P4, False)])
@pytest.mark.parametrize("with_op", [True, False])
def test_fold_expanded_is_the_adjoint_of_the_expansion(group, lifting, with_op, monkeypatch):
    """<expand(w), g> = <w, fold(g)> for every w and g: by the extension's op where it runs, else by
    the scatter-add; differentiable either way."""
    if with_op and "cpu" not in reference.EXPAND_OP_DEVICES:
        pytest.skip("the extension's expand_filter_backward does not run here")
    if not with_op:
        monkeypatch.setattr(reference, "EXPAND_OP_DEVICES", frozenset())
    s_in = 1 if lifting else group.order
    w = torch.randn(3, 2, s_in, 3, 3, dtype=torch.float64)
    g = torch.randn(3 * group.order, 2 * s_in, 3, 3, dtype=torch.float64, requires_grad=True)
    folded = reference.fold_expanded(g, group, s_in)
    assert folded.shape == w.shape
    torch.testing.assert_close((reference.expand_filter(w, group) * g).sum(), (w * folded).sum(), rtol=1e-12,
                               atol=0)
    assert torch.autograd.gradcheck(lambda g: reference.fold_expanded(g, group, s_in), (g,))

import copy
import itertools
import math

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import ger_kernels
from ger_kernels import reference
from ger_kernels.nn import GroupConv2d, P4ConvP4, P4ConvZ2, P4MConvP4M, P4MConvZ2, conv_class
from ger_kernels.testing import check_equivariance
from helpers import max_rel_err

LAYERS = [P4MConvZ2, P4MConvP4M, P4ConvZ2, P4ConvP4]
# (kernel_size, stride, padding, dilation, size): every combination keeps the grid exact
GEOMETRIES = [(1, 1, 0, 1, 7), (3, 1, 1, 1, 7), (3, 1, 0, 1, 6), (5, 1, 2, 1, 7), (3, 1, 2, 2, 6),
              (2, 2, 0, 1, 8), (3, 2, 1, 1, 9), (3, 2, 0, 1, 7), (5, 2, 2, 1, 9), (2, 1, 0, 1, 5)]


@pytest.fixture(params=list(ger_kernels.BACKENDS))
def backend(request, monkeypatch):
    """Every backend that runs CPU tensors here (triton in its interpreter)."""
    if request.param == "triton":
        request.getfixturevalue("interpreter")
    status = ger_kernels.backends("cpu")[request.param]
    if not status.available:
        pytest.skip(status.reason)
    return request.param


def group_of(cls):
    layer = cls(1, 1, 1)
    return layer.group, layer.lifting


def make_input(cls, batch, fields, size, dtype=torch.float64):
    group, lifting = group_of(cls)
    return torch.randn(batch, fields * (1 if lifting else group.order), size, size, dtype=dtype)


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_shapes_match_reference(cls):
    layer = cls(3, 5, 3, stride=2, padding=1).double()
    x = make_input(cls, 2, 3, 9)
    out = layer(x)
    assert out.shape == (2, 5 * layer.group.order, 5, 5)
    expected = reference.group_conv2d(x, layer.weight, layer.bias, 2, 1, 1, layer.group)
    assert torch.equal(out, expected)
    assert layer.weight.shape == (5, 3, 1 if layer.lifting else layer.group.order, 3, 3)
    assert layer.bias.shape == (5,)


@pytest.mark.parametrize("cls,geometry", list(itertools.product(LAYERS, GEOMETRIES)),
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_exactly_equivariant(cls, geometry):
    k, stride, padding, dilation, size = geometry
    layer = cls(2, 3, k, stride, padding, dilation).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = make_input(cls, 2, 2, size)
    err = check_equivariance(layer, x, layer.group, "planar" if layer.lifting else "group", "group")
    assert err < 1e-13


def test_float32_equivariance():
    layer = P4MConvP4M(4, 4, 3, padding=1)
    assert check_equivariance(layer, make_input(P4MConvP4M, 2, 4, 10, torch.float32), "p4m", "group") < 1e-5


def test_inexact_geometry_is_rejected_unless_allowed():
    layer = P4MConvP4M(2, 2, 3, stride=2, padding=1).double()
    x = make_input(P4MConvP4M, 1, 2, 8)
    with pytest.raises(ValueError, match=r"P4MConvP4M: input H=8 breaks exact equivariance with kernel_size=3, "
                                         r"stride=2, padding=1, dilation=1: .* = 1, expected 0"):
        layer(x)
    layer.strict_equivariance = False
    assert layer(x).shape == (1, 16, 4, 4)
    assert check_equivariance(layer, x, "p4m", "group") > 1e-3  # the error the check guards against


def test_he_init_uses_true_fan_in():
    layer = P4MConvP4M(16, 32, 3)
    fan_in = 16 * 8 * 9
    assert abs(layer.weight.std().item() - math.sqrt(2 / fan_in)) < 0.05 * math.sqrt(2 / fan_in)
    assert torch.count_nonzero(layer.bias) == 0
    assert P4MConvZ2(3, 4, 3, bias=False).bias is None


def test_backend_switch_keeps_weights():
    layer = P4MConvP4M(2, 3, 3, padding=1)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    x = make_input(P4MConvP4M, 1, 2, 5, torch.float32)
    out = layer(x)
    layer.backend = "reference"
    assert layer.backend == "reference"
    assert torch.equal(layer(x), out)
    assert state.keys() == layer.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in layer.state_dict().items())
    with pytest.raises(ValueError, match=r"backend must be 'auto' or one of \['reference', 'cpp', 'triton'\]"):
        layer.backend = "cudnn"
    assert layer.backend == "reference"


def test_extra_repr():
    assert repr(P4MConvZ2(3, 4, 3, padding=1)) == (
        "P4MConvZ2(Z2 -> p4m, fields 3 -> 4, kernel_size=3, stride=1, padding=1, backend='auto')")
    assert repr(P4ConvP4(2, 2, 3, dilation=2, bias=False, strict_equivariance=False)) == (
        "P4ConvP4(p4 -> p4, fields 2 -> 2, kernel_size=3, stride=1, padding=0, dilation=2, bias=False, "
        "strict_equivariance=False, backend='auto')")


def test_layouts_and_empty_batch():
    layer = P4MConvP4M(3, 2, 3, padding=1).double()
    x = make_input(P4MConvP4M, 3, 3, 7)
    out = layer(x)
    assert max_rel_err(layer(x.to(memory_format=torch.channels_last)), out) < 1e-14
    wide = torch.randn(3, 24, 7, 14, dtype=torch.float64)[..., ::2]
    wide.copy_(x)
    assert max_rel_err(layer(wide), out) < 1e-14
    empty = layer(x[:0])
    assert empty.shape == (0, 16, 7, 7)
    empty_grad = x[:0].clone().requires_grad_(True)
    layer(empty_grad).sum().backward()
    assert empty_grad.grad.shape == (0, 24, 7, 7)


def test_gradients_flow_to_weight_and_bias():
    layer = P4MConvZ2(1, 2, 3, padding=1).double()
    x = make_input(P4MConvZ2, 1, 1, 5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w, b: reference.group_conv2d(x, w, b, 1, 1, 1, "p4m"),
                                    (x, layer.weight, layer.bias))


@pytest.mark.parametrize("make,error,message", [
    (lambda: P4MConvP4M(2, 2, (3, 5)), ValueError, r"kernel_size must be an int or a pair of equal ints"),
    (lambda: P4MConvP4M(2, 2, 3, stride=(2, 1)), ValueError, r"stride must be an int or a pair of equal ints"),
    (lambda: P4MConvP4M(0, 2, 3), ValueError, r"in_channels must be an int >= 1, got 0"),
    (lambda: P4MConvP4M(2, 2.0, 3), ValueError, r"out_channels must be an int >= 1, got 2.0"),
    (lambda: P4MConvP4M(2, 2, 3, backend="nope"), ValueError, r"backend must be 'auto' or one of"),
    (lambda: GroupConv2d(2, 2, 3), TypeError, r"GroupConv2d is a base class: use P4MConvZ2"),
])
def test_bad_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_bad_input():
    layer = P4MConvP4M(2, 2, 3, padding=1)
    with pytest.raises(ValueError, match=r"input must have 16 channels \(\(B, C_in\*8, H, W\)\), got 12"):
        layer(torch.randn(1, 12, 5, 5))
    with pytest.raises(ValueError, match=r"input must be 4-D .* got 5-D"):
        layer(torch.randn(1, 2, 8, 5, 5))
    with pytest.raises(TypeError, match=r"weight.dtype must match input.dtype torch.float64, got torch.float32"):
        layer(torch.randn(1, 16, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"input must have 3 channels \(planar \(B, C_in, H, W\)\), got 24"):
        P4MConvZ2(3, 2, 3)(torch.randn(1, 24, 5, 5))


def test_conv_class_by_orientations():
    assert [conv_class(s_in, s) for s_in, s in [(1, 8), (8, 8), (1, 4), (4, 4)]] == LAYERS
    with pytest.raises(ValueError, match=r"\(in_orientations, group_order\) must be one of .* got \(4, 8\)"):
        conv_class(4, 8)


def test_autocast_as_conv2d_eager_and_compiled(backend):
    """float32 weights, float32 input: computed in the autocast dtype, exactly as the layer cast
    to it; gradients float32, within SPEC section 8's bound of the float32 ones."""
    dtype = torch.float16 if backend == "triton" else torch.bfloat16  # the interpreter's bf16 tl.dot is wrong
    layer = P4MConvP4M(2, 3, 3, padding=1, backend=backend)
    x = make_input(P4MConvP4M, 1, 2, 5, torch.float32).requires_grad_(True)
    expected = torch.autograd.grad(layer(x).sum(), (x, layer.weight, layer.bias))
    low = copy.deepcopy(layer).to(dtype)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, fullgraph=True, backend=counter)
    with torch.autocast("cpu", dtype=dtype):
        out, out_compiled = layer(x), compiled(x)
    assert out.dtype == dtype and torch.equal(out, low(x.detach().to(dtype)))
    assert torch.equal(out_compiled, out) and counter.frame_count == 1
    grads = torch.autograd.grad(out.float().sum(), (x, layer.weight, layer.bias))
    for grad, reference_grad in zip(grads, expected):
        assert grad.dtype == torch.float32 and max_rel_err(grad, reference_grad) <= 1e-2


def test_channels_last_in_and_out(backend):
    layer = P4MConvP4M(3, 2, 3, padding=1, backend=backend)
    x = make_input(P4MConvP4M, 2, 3, 6, torch.float32)
    out = layer(x)
    layer.to(memory_format=torch.channels_last)
    y = x.to(memory_format=torch.channels_last).requires_grad_(True)
    channels_last = layer(y)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    assert max_rel_err(channels_last, out) <= 1e-5
    channels_last.backward(torch.ones_like(channels_last))
    assert y.grad.is_contiguous(memory_format=torch.channels_last)


def test_memory_format_conversion_keeps_the_5d_weight():
    """``.to(memory_format=torch.channels_last)`` on any model holding group layers: the weight
    keeps its shape and values and is laid out as a Conv2d weight (its 4-D view)."""
    model = torch.nn.Sequential(P4MConvZ2(3, 2, 3, padding=1), torch.nn.Conv2d(16, 4, 1))
    model(torch.randn(1, 3, 4, 4)).sum().backward()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(memory_format=torch.channels_last)
    weight = model[0].weight
    assert weight.shape == weight.grad.shape == (2, 3, 1, 3, 3)
    assert weight.flatten(1, 2).is_contiguous(memory_format=torch.channels_last)
    assert model[1].weight.is_contiguous(memory_format=torch.channels_last)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    model.double().to(memory_format=torch.contiguous_format)
    assert weight.dtype == weight.grad.dtype == torch.float64 and weight.is_contiguous()


def test_inexact_geometry_is_rejected_under_compile():
    layer = P4MConvP4M(2, 2, 3, stride=2, padding=1)
    x = make_input(P4MConvP4M, 1, 2, 8, torch.float32)
    message = r"P4MConvP4M: input H=8 breaks exact equivariance with kernel_size=3"
    torch._dynamo.reset()
    # fullgraph: dynamo reports the ValueError it met while tracing, with its message
    with pytest.raises(torch._dynamo.exc.Unsupported, match=message):
        torch.compile(layer, fullgraph=True, backend="eager")(x)
    torch._dynamo.reset()
    with pytest.raises(ValueError, match=message):
        torch.compile(layer, backend="eager")(x)

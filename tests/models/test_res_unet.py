import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import ger_kernels
from ger_kernels.models import PAPER_WIDTHS, GERUNet, RUNet, count_parameters, group_widths
from ger_kernels.testing import check_equivariance, equivariance_errors
from helpers import max_rel_err

SMALL = (2, 3, 4, 5)


def randomized(model):
    """Random output layer (it starts at zero) and BN scale/shift, so exactness is not by accident."""
    with torch.no_grad():
        for p in model.output_layer.parameters():
            p.normal_(0, 0.3)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model


def test_paper_parameter_counts():
    assert group_widths(PAPER_WIDTHS) == (23, 45, 91, 181)
    ger, regular = count_parameters(GERUNet()), count_parameters(RUNet())
    assert abs(ger / 12.78e6 - 1) < 0.05 and abs(regular / 12.75e6 - 1) < 0.05
    assert abs(ger / regular - 1) < 0.01


@pytest.mark.parametrize("cls,kwargs", [(GERUNet, {"widths": SMALL}), (GERUNet, {"widths": SMALL, "group": "p4"}),
                                        (GERUNet, {"widths": SMALL, "skip": "concat"}),
                                        (RUNet, {"widths": (4, 5, 6, 7)})])
@pytest.mark.parametrize("in_channels,num_classes,size", [(3, 2, (16, 16)), (1, 3, (8, 24))])
def test_shapes(cls, kwargs, in_channels, num_classes, size):
    model = cls(in_channels, num_classes, **kwargs)
    out = model(torch.randn(2, in_channels, *size))
    assert out.shape == (2, num_classes, *size)
    assert model(torch.randn(0, in_channels, *size)).shape == (0, num_classes, *size)


@pytest.mark.parametrize("group,skip,upsample", [("p4m", "add", "nearest"), ("p4m", "concat", "bilinear"),
                                                 ("p4", "add", "bilinear")])
@pytest.mark.parametrize("train", [True, False])
def test_ger_unet_exactly_equivariant(group, skip, upsample, train):
    model = randomized(GERUNet(widths=SMALL, group=group, skip=skip, upsample_mode=upsample)).double()
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    model(x)  # running statistics away from their initial values
    model.train(train)
    errors = equivariance_errors(model, x, group, "planar", "planar")
    assert len(errors) == (8 if group == "p4m" else 4) and max(errors) < 1e-10


def test_ger_unet_float32_equivariance():
    model = randomized(GERUNet(widths=SMALL)).eval()
    assert check_equivariance(model, torch.randn(1, 3, 16, 16), "p4m", "planar", "planar") < 1e-5


def test_r_unet_is_not_equivariant():
    model = randomized(RUNet(widths=(4, 5, 6, 7))).double().eval()
    errors = equivariance_errors(model, torch.randn(2, 3, 16, 16, dtype=torch.float64), "p4m", "planar", "planar")
    assert errors[0] < 1e-15 and min(errors[1:]) > 1e-3


def test_output_layer_starts_at_equal_class_scores():
    for model in (GERUNet(widths=SMALL), RUNet(widths=(4, 5, 6, 7))):
        assert torch.count_nonzero(model(torch.randn(2, 3, 8, 8))) == 0


def test_state_dict_independent_of_backend():
    a = GERUNet(widths=SMALL, backend="reference")
    b = GERUNet(widths=SMALL, backend="auto")
    b.load_state_dict(a.state_dict())
    assert a.state_dict().keys() == b.state_dict().keys()
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(a.eval()(x), b.eval()(x))


def test_layouts():
    model = randomized(GERUNet(widths=SMALL)).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert max_rel_err(model(x.to(memory_format=torch.channels_last)), model(x)) < 1e-13


CPU_BACKENDS = [n for n in ("reference", "cpp") if ger_kernels.backends("cpu")[n].available]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_autocast_trains_float32_weights(backend):
    """bfloat16 autocast, as the training loop runs it on CUDA: scores in bfloat16 within its
    rounding of the float32 model's, float32 gradients that point the same way."""
    model = randomized(GERUNet(widths=SMALL, backend=backend))
    x, target = torch.randn(2, 3, 16, 16), torch.randn(2, 2, 16, 16)
    expected = model(x)
    expected_grads = torch.autograd.grad((expected * target).sum(), list(model.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    grads = torch.autograd.grad((out.float() * target).sum(), list(model.parameters()))
    assert out.dtype == torch.bfloat16 and max_rel_err(out, expected) <= 3e-2
    assert all(g.dtype == torch.float32 for g in grads)
    flat, expected_flat = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in expected_grads])
    assert torch.cosine_similarity(flat, expected_flat, dim=0) > 0.9


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_channels_last_end_to_end(backend):
    """``model.to(memory_format=torch.channels_last)`` and a channels_last input: every group
    layer gives channels_last, so do the scores and the input gradient; values as NCHW."""
    model = randomized(GERUNet(widths=SMALL, backend=backend)).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    expected = model(x)
    model.to(memory_format=torch.channels_last)
    layouts = {}

    def record(name):
        def hook(module, args, out):
            layouts[name] = out.is_contiguous(memory_format=torch.channels_last)
        return hook

    for name, module in model.named_modules():
        if type(module).__module__.startswith("ger_kernels.nn"):
            module.register_forward_hook(record(name))
    y = x.to(memory_format=torch.channels_last).requires_grad_(True)
    out = model(y)
    out.backward(torch.ones_like(out))
    assert len(layouts) > 30 and all(layouts.values()), [n for n, cl in layouts.items() if not cl]
    assert out.is_contiguous(memory_format=torch.channels_last) and max_rel_err(out, expected) < 1e-13
    assert y.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_fullgraph_once_per_shape(backend):
    """One graph for the whole model (no graph break, the layers inlined) and no recompile
    for a second step of the same shape."""
    model = randomized(GERUNet(widths=SMALL, backend=backend)).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    for _ in range(2):
        out = compiled(x)
        out.sum().backward()
        assert counter.frame_count == 1
    assert max_rel_err(out, model(x)) < 1e-12


def test_torch_compile_dynamic_shapes_in_training():
    """``dynamic=True``: one graph for every exact size (the exactness checks guard on
    symbolic sizes without specializing them); training mode, reference backend."""
    model = randomized(GERUNet(widths=SMALL, backend="reference"))
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, dynamic=True, backend=counter)
    compiles = []
    for batch, size in [(2, 16), (3, 24)]:
        x = torch.randn(batch, 3, size, size)
        out = compiled(x)
        out.sum().backward()
        assert max_rel_err(out, model(x)) < 1e-5
        compiles.append(counter.frame_count)
    assert compiles[0] >= 1 and compiles[1] == compiles[0]  # (dynamo may restart the first trace once)


def test_bad_input_and_arguments():
    model = GERUNet(widths=SMALL)
    with pytest.raises(ValueError, match=r"GERUNet needs H and W divisible by 8 .* got 12x16"):
        model(torch.randn(1, 3, 12, 16))
    with pytest.raises(ValueError, match=r"input must have 3 channels"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="skip must be 'add' or 'concat', got 'sum'"):
        GERUNet(skip="sum")
    with pytest.raises(ValueError, match="widths must be 4 positive ints"):
        RUNet(widths=(4, 8, 16))


def test_ger_unet_fuses_batch_norm_relu_and_residual_add():
    """Every group BN of a GER-UNet but the blocks' last and shortcuts' fuses its ReLU; the
    blocks end in one BN+add+ReLU pass, equal to the unfused block; state dict keys unchanged."""
    from ger_kernels.nn import GroupBatchNorm2d

    model = randomized(GERUNet(widths=SMALL)).double()
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    block = model.encoder[1]
    assert block.body[1].relu and not block.body[4].relu and not block.shortcut[1].relu
    assert isinstance(block.body[4], GroupBatchNorm2d)
    x = torch.randn(2, SMALL[0] * 8, 8, 8, dtype=torch.float64)
    block(x)  # running statistics away from their initial values
    block.eval()
    h = block.body[:4](x)
    expected = torch.relu(block.body[4](h) + block.shortcut(x))
    assert max_rel_err(block(x), expected) < 1e-15
    keys = set(model.state_dict())
    assert {"encoder.1.body.1.running_var", "encoder.1.body.4.weight", "encoder.1.shortcut.1.bias"} <= keys
    assert not any(key.startswith("encoder.1.body.2.") for key in keys)


def test_ger_unet_on_triton_fuses_convolutions_with_their_batch_norms(monkeypatch, interpreter):
    """On the Triton backend (its interpreter here) every group conv runs fused with the batch
    norms around it (``ger_kernels.nn.fused``): a training step gives the scores, gradients and
    running statistics of the same model on the reference backend."""
    if not ger_kernels.backends("cpu")["triton"].available:
        pytest.skip(ger_kernels.backends("cpu")["triton"].reason)
    from ger_kernels.nn import fused

    calls = []
    original = fused._fused
    monkeypatch.setattr(fused, "_fused", lambda *args: calls.append(args[2] is not None) or original(*args))
    model = randomized(GERUNet(widths=(2, 2, 3, 3), backend="reference"))
    fused_model = GERUNet(widths=(2, 2, 3, 3), backend="triton")
    fused_model.load_state_dict(model.state_dict())
    x, target = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 8, 8)
    expected, out = model(x), fused_model(x)
    (expected * target).sum().backward()
    (out * target).sum().backward()
    convs = sum(isinstance(m, ger_kernels.nn.GroupConv2d) for m in model.modules())
    assert len(calls) == convs - 1  # all but the output layer's 1x1 conv, which no batch norm follows
    assert sum(calls) == 8  # each block's second conv applies the first BN-ReLU on load
    assert max_rel_err(out, expected) <= 1e-5
    for (name, p), q in zip(fused_model.named_parameters(), model.parameters()):
        assert max_rel_err(p.grad, q.grad) <= 1e-4, name
    for (name, b), c in zip(fused_model.named_buffers(), model.buffers()):
        assert max_rel_err(b.float(), c.float()) <= 1e-5, name

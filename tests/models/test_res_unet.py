import pytest
import torch

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


def test_torch_compile_runs_the_model():
    model = randomized(GERUNet(widths=SMALL)).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert max_rel_err(compiled(x), model(x)) < 1e-12


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

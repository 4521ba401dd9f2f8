import io

import pytest
import torch
from torch import nn

from ger_kernels.convert import export
from ger_kernels.models import GERUNet
from ger_kernels.nn import (GroupAvgPool2d, GroupBatchNorm2d, GroupConv2d, GroupMaxPool2d, GroupOrientationPool,
                            GroupUpsample, P4ConvP4, P4ConvZ2, P4MConvP4M, P4MConvZ2)
from ger_kernels.testing import check_equivariance
from helpers import max_rel_err


def randomized(model, size=16):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.train()
    model(torch.randn(2, 3, size, size, dtype=torch.float64))  # running statistics
    return model.eval()


def package_modules(model):
    return [type(m).__name__ for m in model.modules() if type(m).__module__.startswith("ger_kernels.nn")]


def test_every_layer_kind():
    layers = nn.Sequential(P4MConvZ2(3, 2, 3, padding=1), GroupBatchNorm2d(2), nn.ReLU(), GroupMaxPool2d(),
                           P4MConvP4M(2, 2, 3, stride=2, padding=1, dilation=1), GroupAvgPool2d(3, 1, 1),
                           GroupUpsample(2, "bilinear", align_corners=True), GroupOrientationPool("p4m", "max"))
    model = randomized(layers.double(), size=18)
    plain = export(model)
    assert package_modules(plain) == []  # nothing of ger_kernels left
    x = torch.randn(2, 3, 18, 18, dtype=torch.float64)
    assert max_rel_err(plain(x), model(x)) < 1e-14
    assert not plain.training and model[1].track_running_stats
    assert isinstance(model[0], GroupConv2d)  # the original is untouched


def test_single_layer_and_p4():
    layer = P4ConvP4(2, 3, 3, padding=1).double()
    plain = export(layer)
    assert isinstance(plain, nn.Conv2d) and plain.weight.dtype == torch.float64
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    assert max_rel_err(plain(x), layer(x)) < 1e-14


@pytest.mark.parametrize("group,lift", [("p4m", P4MConvZ2), ("p4", P4ConvZ2)])
@pytest.mark.parametrize("settings", [{"track_running_stats": False}, {"track_running_stats": False, "affine": False},
                                      {"affine": False}, {"momentum": None}])
def test_batch_norm_settings_keep_function_and_equivariance_in_eval_mode(group, lift, settings):
    """Without running statistics eval mode normalizes with batch statistics per field: a
    per-channel BatchNorm2d would normalize each orientation alone and lose equivariance."""
    model = randomized(nn.Sequential(lift(3, 2, 3, padding=1), GroupBatchNorm2d(2, group, **settings)).double())
    with torch.no_grad():
        for p in model[1].parameters():
            p.normal_(1, 0.5)
    plain = export(model)
    assert package_modules(plain) == [] and not plain.training
    x = torch.randn(3, 3, 7, 7, dtype=torch.float64)
    assert max_rel_err(plain(x), model(x)) < 1e-14
    assert check_equivariance(plain, x, group, "planar", "group") < 1e-13


@pytest.mark.parametrize("skip", ["add", "concat"])
def test_ger_unet_round_trip(skip):
    model = randomized(GERUNet(widths=(2, 3, 4, 5), skip=skip).double())
    plain = export(model)
    assert package_modules(plain) == []
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert max_rel_err(plain(x), model(x)) < 1e-13


def test_torch_export_of_exported_ger_unet():
    model = export(randomized(GERUNet(widths=(2, 3, 4, 5)).double()))
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    program = torch.export.export(model, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("ger_kernels" in t for t in targets)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    assert max_rel_err(loaded.module()(x), model(x)) < 1e-13


def test_onnx_export_of_exported_ger_unet(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = export(randomized(GERUNet(widths=(2, 3, 4, 5)).double()).float())
    x = torch.randn(1, 3, 16, 16)
    path = tmp_path / "ger_unet.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert max_rel_err(torch.from_numpy(out), model(x)) < 1e-5

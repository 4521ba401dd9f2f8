import os

import torch
from PIL import Image

from ger_kernels.figures import equivariance_figure, prediction_disagreement, training_curves
from ger_kernels.models import GERUNet, RUNet


def models():
    torch.manual_seed(0)
    ms = {"R-UNet": RUNet(widths=(4, 5, 6, 7)).double().eval(),
          "GER-UNet": GERUNet(widths=(2, 3, 4, 5)).double().eval()}
    with torch.no_grad():  # the output layers start at zero
        for model in ms.values():
            head = model.output_layer if isinstance(model, RUNet) else model.output_layer[0]
            head.weight.normal_()
    return ms


def test_equivariant_model_agrees_with_itself_rotated_back():
    ms = models()
    image = torch.randn(3, 16, 16, dtype=torch.float64)
    for element in range(8):
        pred, _, back = prediction_disagreement(ms["GER-UNet"], image, element)
        assert torch.equal(pred, back)
    pred, _, back = prediction_disagreement(ms["R-UNet"], image, 1)
    assert not torch.equal(pred, back)


def test_figure_png_and_counts(tmp_path):
    path = tmp_path / "fig1.png"
    image = torch.randn(3, 16, 16, dtype=torch.float64)
    mask = torch.zeros(16, 16, dtype=torch.long)
    mask[4:9, 5:11] = 1
    counts = equivariance_figure(models(), image, mask, str(path), element=1)
    assert counts["GER-UNet"] == 0 and counts["R-UNet"] > 0
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] > 500
    assert os.listdir(tmp_path) == ["fig1.png"]


def test_training_curves_png(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_dice": 1 - 1 / e} for e in (1, 2, 3)]
    path = tmp_path / "curves.png"
    training_curves({"a": history, "b": history[:2]}, str(path))
    with Image.open(path) as png:
        assert png.format == "PNG"

"""Build a small p4m segmentation head from ger_kernels layers, check that it is exactly
equivariant under all 8 quarter-turn/mirror elements, and switch its backend.

Uses only the public API; run it as `python python/check_my_model.py`.
"""

import torch
from torch import nn

import ger_kernels
from ger_kernels.convert import set_backend
from ger_kernels.nn import GroupBatchNorm2d, GroupMaxPool2d, GroupOrientationPool, GroupUpsample, P4MConvP4M, P4MConvZ2
from ger_kernels.testing import equivariance_errors


def build_model() -> nn.Module:
    """3-channel image -> 2 class scores, with one down- and one up-sampling."""
    return nn.Sequential(
        P4MConvZ2(3, 6, 3, padding=1), GroupBatchNorm2d(6), nn.ReLU(),
        GroupMaxPool2d(),
        P4MConvP4M(6, 6, 3, padding=1), GroupBatchNorm2d(6), nn.ReLU(),
        GroupUpsample(2, "nearest"),
        P4MConvP4M(6, 2, 1), GroupOrientationPool("p4m", "mean"),
    )


def main() -> None:
    torch.manual_seed(0)
    model = build_model().double().eval()
    image = torch.randn(1, 3, 24, 24, dtype=torch.float64)
    errors = equivariance_errors(model, image, "p4m", input="planar", output="planar")
    print("max relative error of model(A_g x) vs A_g model(x), per element g:")
    print("  " + "  ".join(f"{g}:{e:.1e}" for g, e in enumerate(errors)))

    scores = model(image)
    for name, status in ger_kernels.backends("cpu").items():
        if not status.available:
            print(f"backend {name}: unavailable ({status.reason})")
            continue
        set_backend(model, name)
        diff = (model(image) - scores).abs().max().item()
        print(f"backend {name}: max |difference| to the first run {diff:.1e}")

    try:
        model(torch.randn(1, 3, 25, 25, dtype=torch.float64))
    except ValueError as error:
        print(f"odd input size refused: {error}")


if __name__ == "__main__":
    main()

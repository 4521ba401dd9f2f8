"""Take a regular segmentation network written in plain PyTorch, build its p4m counterpart with
the same parameter budget, switch backends, export it back to plain PyTorch, and print the
outputs and equivariance errors along the way. Uses only the public API.
"""

import math

import torch
from torch import nn

import ger_kernels
from ger_kernels.convert import export, set_backend
from ger_kernels.models import count_parameters
from ger_kernels.nn import (GroupBatchNorm2d, GroupMaxPool2d, GroupOrientationPool, GroupUpsample, P4MConvP4M,
                            P4MConvZ2)
from ger_kernels.testing import equivariance_errors


def regular_network(widths=(16, 32), classes=2) -> nn.Sequential:
    """An existing plain network: conv-BN-ReLU, pool, conv-BN-ReLU, upsample, 1x1 classifier."""
    a, b = widths
    return nn.Sequential(
        nn.Conv2d(3, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(),
        nn.Upsample(scale_factor=2), nn.Conv2d(b, classes, 1))


def p4m_counterpart(plain: nn.Sequential) -> nn.Sequential:
    """The same layer sequence on p4m: channels / sqrt(8) fields keeps the parameter count;
    the classifier's scores are averaged over orientations."""
    layers, fields = [], None
    convs = [m for m in plain if isinstance(m, nn.Conv2d)]
    for module in plain:
        if isinstance(module, nn.Conv2d):
            last = module is convs[-1]
            out = module.out_channels if last else round(module.out_channels / math.sqrt(8))
            k, bias = module.kernel_size[0], module.bias is not None
            layers.append(P4MConvZ2(module.in_channels, out, k, padding=module.padding[0], bias=bias) if fields is None
                          else P4MConvP4M(fields, out, k, padding=module.padding[0], bias=bias))
            fields = out
            if last:
                layers.append(GroupOrientationPool("p4m", "mean"))
        elif isinstance(module, nn.BatchNorm2d):
            layers.append(GroupBatchNorm2d(fields))
        elif isinstance(module, nn.MaxPool2d):
            layers.append(GroupMaxPool2d(module.kernel_size, module.stride))
        elif isinstance(module, nn.Upsample):
            layers.append(GroupUpsample(int(module.scale_factor), module.mode))
        else:
            layers.append(module)
    return nn.Sequential(*layers)


def main() -> None:
    torch.manual_seed(0)
    plain = regular_network().double().eval()
    group = p4m_counterpart(plain).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    print(f"parameters: regular {count_parameters(plain)}, p4m {count_parameters(group)}")
    for name, model in (("regular", plain), ("p4m", group)):
        errors = equivariance_errors(model, x, "p4m", "planar", "planar")
        print(f"{name:>8} equivariance error per element: " + " ".join(f"{e:.1e}" for e in errors))

    reference_out = group(x)
    for backend, status in ger_kernels.backends("cpu").items():
        if status.available:
            set_backend(group, backend)
            print(f"backend {backend}: max |out - first run| = {(group(x) - reference_out).abs().max():.1e}")
        else:
            print(f"backend {backend}: unavailable ({status.reason})")

    exported = export(group)
    kinds = sorted({type(m).__name__ for m in exported.modules()} - {"Sequential"})
    print(f"exported to plain torch.nn ({', '.join(kinds)}): max |out - p4m| = "
          f"{(exported(x) - reference_out).abs().max():.1e}")
    print(f"exported equivariance error: {max(equivariance_errors(exported, x, 'p4m', 'planar', 'planar')):.1e}")


if __name__ == "__main__":
    main()

"""Command line: ``ger-unet`` or ``python -m ger_kernels``.

- ``info``: versions and which backends are available here, and why not the others.
- ``demo``: builds a small p4m network from the layers, prints its equivariance error
  for every group element and the parity of every available backend with the
  float64 reference.
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch
from torch import nn

import ger_kernels
from ger_kernels.nn import (GroupBatchNorm2d, GroupMaxPool2d, GroupOrientationPool, GroupUpsample, P4MConvP4M,
                            P4MConvZ2)
from ger_kernels.testing import equivariance_errors


def _print_backends() -> None:
    for name, status in ger_kernels.backends().items():
        print(f"  {name:<10} {'available' if status.available else 'unavailable':<12} {status.reason}")


def info(_args: argparse.Namespace) -> int:
    print(f"ger_kernels {ger_kernels.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}")
    print("backends:")
    _print_backends()
    return 0


def demo_network() -> nn.Sequential:
    """3 planar channels -> p4m (8 fields) -> BN -> ReLU -> pool -> p4m -> upsample -> mean over orientations."""
    return nn.Sequential(
        P4MConvZ2(3, 8, 3, padding=1), GroupBatchNorm2d(8), nn.ReLU(), GroupMaxPool2d(),
        P4MConvP4M(8, 8, 3, padding=1), GroupBatchNorm2d(8), nn.ReLU(),
        GroupUpsample(2, "bilinear"), P4MConvP4M(8, 2, 3, padding=1), GroupOrientationPool("p4m", "mean"))


def demo(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    net = demo_network().double()
    x = torch.randn(args.batch, 3, args.size, args.size, dtype=torch.float64)
    net.train()
    net(x)  # move the running statistics away from their initial values
    print(f"p4m network: {sum(p.numel() for p in net.parameters())} parameters, input {tuple(x.shape)}")
    print("equivariance error max|f(A_g x) - A_g f(x)| / max|A_g f(x)|, float64:")
    print("  g   train      eval")
    worst = 0.0
    train_errors = equivariance_errors(net, x, "p4m", "planar", "planar")
    net.eval()
    eval_errors = equivariance_errors(net, x, "p4m", "planar", "planar")
    for g, (e_train, e_eval) in enumerate(zip(train_errors, eval_errors)):
        print(f"  {g}   {e_train:.2e}   {e_eval:.2e}")
        worst = max(worst, e_train, e_eval)
    with torch.no_grad():
        expected = net(x)
        print("backend parity, float32 output vs the float64 reference (max|out - ref| / max|ref|):")
        for name, status in ger_kernels.backends().items():
            if not status.available:
                print(f"  {name:<10} unavailable: {status.reason}")
                continue
            net32 = demo_network()
            net32.load_state_dict(net.state_dict())
            for m in net32.modules():
                if hasattr(m, "backend"):
                    m.backend = name
            out = net32.eval()(x.float()).double()
            print(f"  {name:<10} {((out - expected).abs().max() / expected.abs().max()).item():.2e}")
    print(f"worst equivariance error {worst:.2e} (SPEC bound 1e-10): {'OK' if worst <= 1e-10 else 'FAILED'}")
    return 0 if worst <= 1e-10 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ger-unet", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions and available backends").set_defaults(run=info)
    demo_parser = commands.add_parser("demo", help="equivariance and backend parity of a small p4m network")
    demo_parser.add_argument("--size", type=int, default=32, help="input height and width (even)")
    demo_parser.add_argument("--batch", type=int, default=2)
    demo_parser.add_argument("--seed", type=int, default=0)
    demo_parser.set_defaults(run=demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

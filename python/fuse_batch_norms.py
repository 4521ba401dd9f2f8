"""Fuse the group batch norms of a p4m block into its convolutions with ``FusedSequential``:
on the Triton backend each conv writes the next batch norm's statistics from its epilogue and the
second conv applies the first BN-ReLU while loading its input; elsewhere the same modules run
unfused. The result, the gradients and the running statistics are those of a plain
``nn.Sequential`` of the same modules. Uses only the public API.

    python python/fuse_batch_norms.py            # CUDA with triton: fused; CPU: the unfused path
"""

import copy

import torch
from torch import nn

import ger_kernels
from ger_kernels.nn import FusedSequential, GroupBatchNorm2d, P4MConvP4M, fuses


def block(fields: int, backend: str) -> FusedSequential:
    """conv -> group BN + ReLU -> conv -> group BN, as GER-UNet's residual blocks (no conv bias:
    the batch norm after each conv takes it out)."""
    return FusedSequential(P4MConvP4M(fields, fields, 3, padding=1, bias=False, backend=backend),
                           GroupBatchNorm2d(fields, relu=True), nn.Identity(),
                           P4MConvP4M(fields, fields, 3, padding=1, bias=False, backend=backend),
                           GroupBatchNorm2d(fields))


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "triton" if ger_kernels.backends(device)["triton"].available else "reference"
    torch.manual_seed(0)
    fused = block(4, backend).to(device)
    plain = copy.deepcopy(nn.Sequential(*fused))  # the same modules, unfused
    for module in plain:
        if isinstance(module, P4MConvP4M):
            module.backend = "reference"
    x = torch.randn(2, 4 * 8, 16, 16, device=device)
    print(f"device {device}, backend {backend}: convolutions fused with their batch norms: "
          f"{fuses(fused[0], x)}")

    out, expected = fused(x), plain(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    scale = expected.abs().max().item()
    print(f"output: max |fused - plain| / max |plain| = {(out - expected).abs().max().item() / scale:.1e}")
    worst = max((p.grad - q.grad).abs().max().item() / q.grad.abs().max().item()
                for p, q in zip(fused.parameters(), plain.parameters()))
    print(f"gradients: largest relative difference {worst:.1e}")
    stats = max((b.float() - c.float()).abs().max().item() for b, c in zip(fused.buffers(), plain.buffers()))
    print(f"running statistics: largest difference {stats:.1e}")
    assert fused.state_dict().keys() == plain.state_dict().keys()
    print("state dict: the same keys as nn.Sequential")


if __name__ == "__main__":
    main()

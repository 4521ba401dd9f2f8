"""The groups p4m and p4 and their actions (SPEC sections 1 and 4).

Element ``t = 4*m + r`` (``m`` mirror bit, ``r`` quarter turns; p4 has ``m = 0``)
acts on the last two axes of an array as ``A_t(x) = flip_H^m(rot90^r(x))``:
rotate first, then mirror the row axis. ``A_{mul(a, b)} = A_a o A_b``.

A group feature map is a tensor ``(..., C*S, H, W)`` with the orientation index
fastest (channel ``c*S + s``); ``transform`` is the action ``L_g`` on it.
"""

from __future__ import annotations

import torch

__all__ = ["Group", "P4M", "P4", "GROUPS", "get_group"]


class Group:
    """p4m (``mirrors=True``, 8 elements) or p4 (``mirrors=False``, 4 elements)."""

    def __init__(self, name: str, mirrors: bool):
        self.name = name
        self.mirrors = mirrors
        self.order = 8 if mirrors else 4
        # T[t, s] = index of g_t^-1 * g_s, an (S, S) int64 tensor
        self.T = torch.tensor([[self.mul(self.inv(t), s) for s in self.elements()] for t in self.elements()])

    def __repr__(self) -> str:
        return f"Group({self.name!r}, order={self.order})"

    def elements(self) -> range:
        return range(self.order)

    def _check_element(self, g: int) -> tuple[int, int]:
        if not isinstance(g, int) or isinstance(g, bool) or not 0 <= g < self.order:
            raise ValueError(f"group element g must be an int in [0, {self.order}) for {self.name}, got {g!r}")
        return divmod(g, 4)

    def mul(self, a: int, b: int) -> int:
        """Index of ``g_a * g_b``, from ``R F = F R^-1``."""
        ma, ra = self._check_element(a)
        mb, rb = self._check_element(b)
        r = rb - ra if mb else rb + ra
        return 4 * (ma ^ mb) + r % 4

    def inv(self, a: int) -> int:
        """Index of ``g_a^-1``: mirrors are involutions, rotations turn back."""
        m, r = self._check_element(a)
        return a if m else (-r) % 4

    def transform_planar(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """``A_g(x)`` on the last two axes of ``x``."""
        m, r = self._check_element(g)
        y = torch.rot90(x, r, dims=(-2, -1)) if r else x
        return torch.flip(y, dims=(-2,)) if m else y

    def transform(self, y: torch.Tensor, g: int) -> torch.Tensor:
        """``L_g y`` on a group feature map ``(..., C*S, H, W)``:
        ``(L_g y)[..., c, t] = A_g(y[..., c, T[g, t]])``."""
        self._check_element(g)
        if y.dim() < 3 or y.shape[-3] % self.order:
            raise ValueError(
                f"y must be a {self.name} feature map (..., C*{self.order}, H, W), got shape {tuple(y.shape)}"
            )
        fields = y.unflatten(-3, (y.shape[-3] // self.order, self.order))
        permuted = fields.index_select(-3, self.T[g].to(y.device))
        return self.transform_planar(permuted, g).flatten(-4, -3)

    def tap_permutation(self, kernel_size: int) -> torch.Tensor:
        """``(S, k*k)`` int64: ``A_t(w).flatten()[j] == w.flatten()[perm[t, j]]``."""
        taps = torch.arange(kernel_size * kernel_size).view(kernel_size, kernel_size)
        return torch.stack([self.transform_planar(taps, t).flatten() for t in self.elements()])


P4M = Group("p4m", mirrors=True)
P4 = Group("p4", mirrors=False)
GROUPS = {P4M.name: P4M, P4.name: P4}


def get_group(group: str | int | Group) -> Group:
    """The group named ``group`` ("p4m" or "p4"), of order ``group`` (8 or 4), or ``group`` itself."""
    if isinstance(group, Group):
        return group
    by_order = {g.order: g for g in GROUPS.values()}
    try:
        return by_order[group] if isinstance(group, int) and not isinstance(group, bool) else GROUPS[group]
    except (KeyError, TypeError):
        raise ValueError(f"group must be one of {sorted(GROUPS)} or an order in {sorted(by_order)}, "
                         f"got {group!r}") from None

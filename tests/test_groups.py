import itertools

import numpy as np
import pytest
import torch

from ger_kernels.groups import GROUPS, P4, P4M, get_group
from group_convention import inv_mul_table

SPEC_T_P4M = [[0, 1, 2, 3, 4, 5, 6, 7],
              [3, 0, 1, 2, 5, 6, 7, 4],
              [2, 3, 0, 1, 6, 7, 4, 5],
              [1, 2, 3, 0, 7, 4, 5, 6],
              [4, 5, 6, 7, 0, 1, 2, 3],
              [5, 6, 7, 4, 3, 0, 1, 2],
              [6, 7, 4, 5, 2, 3, 0, 1],
              [7, 4, 5, 6, 1, 2, 3, 0]]

GROUP_LIST = [P4M, P4]


def test_orders_and_lookup():
    assert P4M.order == 8 and P4.order == 4
    assert get_group("p4m") is P4M and get_group(P4) is P4 and set(GROUPS) == {"p4m", "p4"}
    assert get_group(8) is P4M and get_group(4) is P4
    for bad in ["d4", 6, True]:
        with pytest.raises(ValueError, match=r"group must be one of \['p4', 'p4m'\] or an order in \[4, 8\], got"):
            get_group(bad)


def test_spec_table():
    assert P4M.T.tolist() == SPEC_T_P4M
    assert P4.T.tolist() == [[(s - t) % 4 for s in range(4)] for t in range(4)]


@pytest.mark.parametrize("group", GROUP_LIST, ids=str)
def test_table_matches_spec_formula_and_matrix_group(group):
    for t, s in itertools.product(group.elements(), repeat=2):
        mt, rt, ms, rs = t // 4, t % 4, s // 4, s % 4
        r = (rt + rs) if mt != ms else (rs - rt)
        assert group.T[t, s] == 4 * (mt ^ ms) + r % 4
    np.testing.assert_array_equal(group.T.numpy(), inv_mul_table(group.order))


@pytest.mark.parametrize("group", GROUP_LIST, ids=str)
def test_group_axioms(group):
    elements = list(group.elements())
    for a, b in itertools.product(elements, repeat=2):
        assert group.mul(a, b) in elements  # closure
    for a, b, c in itertools.product(elements, repeat=3):
        assert group.mul(group.mul(a, b), c) == group.mul(a, group.mul(b, c))
    for a in elements:
        assert group.mul(0, a) == a == group.mul(a, 0)
        assert group.mul(a, group.inv(a)) == 0 == group.mul(group.inv(a), a)
    assert group.T.tolist() == [[group.mul(group.inv(t), s) for s in elements] for t in elements]


def test_spec_test_vectors():
    w = torch.arange(9).reshape(3, 3)
    assert P4M.transform_planar(w, 1).tolist() == [[2, 5, 8], [1, 4, 7], [0, 3, 6]]
    assert P4M.transform_planar(w, 4).tolist() == [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
    assert torch.equal(P4M.transform_planar(w, 5), w.T)
    assert torch.equal(P4.transform_planar(w, 1), P4M.transform_planar(w, 1))


@pytest.mark.parametrize("group", GROUP_LIST, ids=str)
def test_planar_action_is_homomorphism(group):
    x = torch.randn(2, 3, 5, 7)  # non-square: quarter turns swap H and W
    for a, b in itertools.product(group.elements(), repeat=2):
        expected = group.transform_planar(x, group.mul(a, b))
        assert torch.equal(group.transform_planar(group.transform_planar(x, b), a), expected)


@pytest.mark.parametrize("group", GROUP_LIST, ids=str)
def test_feature_map_action_is_homomorphism(group):
    y = torch.randn(2, 3 * group.order, 5, 6)
    for a, b in itertools.product(group.elements(), repeat=2):
        assert torch.equal(group.transform(group.transform(y, b), a), group.transform(y, group.mul(a, b)))
    assert torch.equal(group.transform(y, 0), y)


def test_feature_map_action_definition():
    y = torch.randn(1, 2 * 8, 4, 4)
    g = 5
    out = P4M.transform(y, g).view(1, 2, 8, 4, 4)
    fields = y.view(1, 2, 8, 4, 4)
    for t in range(8):
        assert torch.equal(out[:, :, t], P4M.transform_planar(fields[:, :, int(P4M.T[g, t])], g))


@pytest.mark.parametrize("group", GROUP_LIST, ids=str)
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_tap_permutation(group, k):
    w = torch.randn(k, k)
    perm = group.tap_permutation(k)
    assert perm.shape == (group.order, k * k)
    for t in group.elements():
        assert torch.equal(w.flatten()[perm[t]], group.transform_planar(w, t).flatten())


def test_bad_elements_and_maps():
    with pytest.raises(ValueError, match=r"g must be an int in \[0, 4\) for p4, got 4"):
        P4.transform_planar(torch.zeros(3, 3), 4)
    with pytest.raises(ValueError, match="got -1"):
        P4M.mul(-1, 0)
    with pytest.raises(ValueError, match=r"p4m feature map \(..., C\*8, H, W\), got shape \(1, 12, 3, 3\)"):
        P4M.transform(torch.zeros(1, 12, 3, 3), 1)

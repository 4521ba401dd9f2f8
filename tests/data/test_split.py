import random

import pytest

from ger_kernels.data.split import split_volume_ids

IDS = [f"volume-{n}" for n in range(20)]


def test_every_volume_lands_on_exactly_one_side():
    train, test = split_volume_ids(IDS, 0.2, seed=0)
    assert not set(train) & set(test) and sorted(train + test) == sorted(IDS)
    assert len(test) == 4 and train == sorted(train) and test == sorted(test)


def test_the_split_is_deterministic_per_seed_and_changes_with_it():
    assert split_volume_ids(IDS, 0.2, seed=3) == split_volume_ids(IDS, 0.2, seed=3)
    assert split_volume_ids(IDS, 0.2, seed=3)[1] != split_volume_ids(IDS, 0.2, seed=4)[1]


def test_the_split_does_not_depend_on_the_order_of_the_ids():
    shuffled = IDS[:]
    random.Random(1).shuffle(shuffled)
    assert split_volume_ids(shuffled, 0.2, seed=7) == split_volume_ids(IDS, 0.2, seed=7)


@pytest.mark.parametrize("n, fraction, n_test", [(2, 0.2, 1), (2, 0.9, 1), (5, 0.2, 1), (10, 0.25, 2), (131, 0.2, 26),
                                                  (3, 0.01, 1), (3, 0.99, 2)])
def test_each_side_gets_at_least_one_volume(n, fraction, n_test):
    train, test = split_volume_ids([f"v{k}" for k in range(n)], fraction)
    assert len(test) == n_test and len(train) == n - n_test


def test_too_few_volumes_is_an_error():
    with pytest.raises(ValueError, match=r"at least 2 volumes, got 1: \['volume-0'\]"):
        split_volume_ids(["volume-0", "volume-0"])


@pytest.mark.parametrize("fraction", [0, 1, -0.5, 1.5, float("nan"), "0.2"])
def test_the_test_fraction_must_lie_strictly_between_0_and_1(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        split_volume_ids(IDS, fraction)

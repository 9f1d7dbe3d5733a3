from collections import Counter

import pytest

from annotation.reading.ordering import permute, slot_for


@pytest.mark.parametrize("n", [1, 2, 3, 10, 97, 1000, 4097])
def test_permute_is_a_bijection(n):
    assert sorted(permute(p, n, key=1234) for p in range(n)) == list(range(n))


def test_permute_depends_on_key_and_is_reproducible():
    a = [permute(p, 500, key=1) for p in range(500)]
    assert a == [permute(p, 500, key=1) for p in range(500)]
    assert a != [permute(p, 500, key=2) for p in range(500)]
    assert a != list(range(500))


def test_permute_rejects_positions_outside_range():
    with pytest.raises(IndexError):
        permute(5, 5, key=1)


@pytest.mark.parametrize("fraction", [0.5, 0.3, 1 / 3, 0.25, 0.8, 0.0, 1.0])
def test_every_block_of_ten_keeps_the_ratio_within_one(fraction):
    for key in range(20):
        slots = [slot_for(t, fraction, key) for t in range(200)]
        for start in range(0, 200, 10):
            real = Counter(slots[start : start + 10])["real"]
            assert abs(real - 10 * fraction) <= 1
    orders = {tuple(slot_for(t, 0.5, key) for t in range(10)) for key in range(20)}
    assert len(orders) > 5  # the order inside a block differs between readers

"""Per-reader case order: seeded, reproducible, and balanced between real and synthetic.

No Django here. A reader's walk through a pool of n cases is a keyed bijection of [0, n): position p reads case
`permute(p, n, key)`. Computing it needs no stored permutation, so a reader joining a 100k-case round costs the
same as one joining a 10-case round.
"""

from __future__ import annotations

import hashlib
import random

BLOCK = 10
_ROUNDS = 4


def derive_seed(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _round_fn(value: int, key: int, rnd: int, bits: int) -> int:
    digest = hashlib.blake2b(f"{value}:{key}:{rnd}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << bits) - 1)


def permute(position: int, n: int, key: int) -> int:
    """The case index at `position` of a keyed permutation of range(n): a Feistel network with cycle walking."""
    if not 0 <= position < n:
        raise IndexError(f"position {position} outside 0..{n - 1}")
    if n == 1:
        return 0
    bits = max(2, (n - 1).bit_length())
    bits += bits % 2
    half = bits // 2
    mask = (1 << half) - 1
    value = position
    while True:
        left, right = value >> half, value & mask
        for rnd in range(_ROUNDS):
            left, right = right, left ^ _round_fn(right, key, rnd, half)
        value = (left << half) | right
        if value < n:
            return value


def slot_for(served: int, real_fraction: float, key: int) -> str:
    """Which pool ("real" or "synthetic") feeds queue position `served`.

    Each block of 10 positions holds round(10·f) real cases in a seeded order, so every block keeps the ratio
    to within one case.
    """
    block, offset = divmod(served, BLOCK)
    n_real = round(BLOCK * real_fraction)
    pattern = ["real"] * n_real + ["synthetic"] * (BLOCK - n_real)
    random.Random(derive_seed(key, "block", block)).shuffle(pattern)
    return pattern[offset]


def chance(key: int, *parts: object) -> float:
    """A reproducible uniform draw in [0, 1) for a named decision of a reader's queue."""
    return derive_seed(key, *parts) / float(1 << 63)

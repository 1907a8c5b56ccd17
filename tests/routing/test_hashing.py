"""routing.hashing agrees bit for bit with the GrowthBook Python SDK."""

import random
import string

import pytest
from growthbook import core as gb

from routing.hashing import bucket_hash, fnv1a32, hash_v1, hash_v2, in_namespace, namespace_hash


def _ids(count, seed=7):
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-_:. éüß漢字🙂"
    ids = [f"project-{i}" for i in range(count // 2)]
    ids += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(count)]
    return ids


IDS = _ids(4000)
SEEDS = ["", "exp1", "checkout-test", "ß-unicode-seed", "a" * 80]


def test_fnv1a32_matches_sdk():
    for value in IDS:
        assert fnv1a32(value) == gb.fnv1a32(value)


@pytest.mark.parametrize("seed", SEEDS)
def test_hash_v2_matches_sdk(seed):
    for value in IDS:
        assert hash_v2(seed, value) == gb.gbhash(seed, value, 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_hash_v1_matches_sdk(seed):
    for value in IDS:
        assert hash_v1(seed, value) == gb.gbhash(seed, value, 1)


def test_hash_range_and_dispatch():
    values = [hash_v2("s", v) for v in IDS]
    assert all(0 <= v < 1 for v in values)
    assert bucket_hash("s", "x", 2) == hash_v2("s", "x")
    assert bucket_hash("s", "x", 1) == hash_v1("s", "x")
    with pytest.raises(ValueError, match="hash version 3"):
        bucket_hash("s", "x", 3)


def test_namespace_matches_sdk():
    for value in IDS[:2000]:
        assert namespace_hash("ns", value) == gb.gbhash("__ns", value, 1)
        assert in_namespace(value, "ns", 0.2, 0.6) == gb.inNamespace(value, ("ns", 0.2, 0.6))

"""Deterministic bucketing hashes, bit-for-bit compatible with the GrowthBook SDKs.

GrowthBook hashes a seed and a user id with 32-bit FNV-1a over UTF-16 code units (the JS SDK's
`charCodeAt` loop). Hash version 2 hashes twice, `fnv1a32(str(fnv1a32(seed + value)))`, and keeps
4 decimal places; version 1 hashes `value + seed` once and keeps 3. Namespaces use version 1 with
the seed `"__" + namespace`. An app that buckets client-side with a GrowthBook SDK and this router
therefore agree on every project.
"""

from __future__ import annotations

from functools import lru_cache

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_MASK = 0xFFFFFFFF


def fnv1a32(text: str, hval: int = _FNV_OFFSET) -> int:
    """32-bit FNV-1a of the string's UTF-16 code units (bytes for ASCII: the same units),
    continuing from the state `hval` (the offset basis: a fresh hash)."""
    if text.isascii():
        for unit in text.encode("ascii"):
            hval = ((hval ^ unit) * _FNV_PRIME) & _MASK
        return hval
    data = text.encode("utf-16-le", "surrogatepass")
    for i in range(0, len(data), 2):
        hval = ((hval ^ (data[i] | (data[i + 1] << 8))) * _FNV_PRIME) & _MASK
    return hval


@lru_cache(maxsize=1024)
def _seed_state(seed: str) -> int:
    """FNV-1a is sequential: the state after an experiment's seed is computed once."""
    return fnv1a32(seed)


def hash_v2(seed: str, value: str) -> float:
    """GrowthBook hash version 2: a number in [0, 1) with 4 decimals."""
    # seed + value hashes unit by unit: resume after the (ASCII, so one unit a byte) seed
    ascii_seed = seed.isascii()
    inner = fnv1a32(value, _seed_state(seed)) if ascii_seed else fnv1a32(seed + value)
    return (fnv1a32(str(inner)) % 10000) / 10000


def hash_v1(seed: str, value: str) -> float:
    """GrowthBook hash version 1 (legacy): a number in [0, 1) with 3 decimals."""
    return (fnv1a32(value + seed) % 1000) / 1000


def bucket_hash(seed: str, value: str, version: int = 2) -> float:
    """The hash of `version` (1 or 2); any other version is a `ValueError`."""
    if version == 2:
        return hash_v2(seed, value)
    if version == 1:
        return hash_v1(seed, value)
    raise ValueError(f"unknown hash version {version!r}; GrowthBook defines 1 and 2")


def namespace_hash(namespace: str, value: str) -> float:
    """Position of `value` in a namespace, as GrowthBook's `inNamespace` computes it."""
    return hash_v1("__" + namespace, value)


def in_namespace(value: str, namespace: str, start: float, end: float) -> bool:
    """Whether `value` falls in the namespace's range `[start, end)`."""
    return start <= namespace_hash(namespace, value) < end

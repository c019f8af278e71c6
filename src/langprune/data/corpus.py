"""Shared pieces of every corpus: text units with alignment keys, and the calibration/evaluation split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Unit:
    """One piece of text; units with the same ``key`` are translations of each other."""

    key: str
    text: str


def split_keys(keys: list[str], eval_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Disjoint (calibration, evaluation) key sets, decided by a seeded hash of each key.

    Hashing keys rather than shuffling a list keeps a unit on the same side
    whatever other units exist, and keeps parallel units on the same side in
    every language, so no evaluation text ever calibrates.
    """
    evaluation = {
        k for k in keys if int(hashlib.sha256(f"{seed}:{k}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < eval_fraction
    }
    return set(keys) - evaluation, evaluation

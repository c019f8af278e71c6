"""RankC: ranking-based consistency of predictions across two languages (translation-feature paper, Appendix E).

For parallel examples x_i (language l) and x'_i (language l'), each with its
candidate labels ranked from most to least likely,
consist = sum_j w_j * P@j, where P@j is the overlap of the two top-j sets
divided by j and w_j = softmax over j of (|Y| - j): the top of the ranking
weighs most. RankC(l, l') is the mean of consist over the shared examples.
"""

from __future__ import annotations

import math


def weights(size: int) -> list[float]:
    exps = [math.exp(size - j) for j in range(1, size + 1)]
    return [e / sum(exps) for e in exps]


def consistency(ranking: list, other: list) -> float:
    """consist(x, x') for two rankings (most likely first) of the same label set."""
    if sorted(map(str, ranking)) != sorted(map(str, other)):
        raise ValueError("RankC compares rankings of the same label set")
    w = weights(len(ranking))
    return sum(w[j - 1] * len(set(ranking[:j]) & set(other[:j])) / j for j in range(1, len(ranking) + 1))


def rankc(rankings: dict[str, list], reference: dict[str, list]) -> tuple[float | None, int]:
    """Mean consistency over the example keys both languages have, and how many there were.

    Two languages that share no example have no RankC: the value is None
    (with n = 0), never NaN, so it can be written and tabulated.
    """
    values = consistencies(rankings, reference)
    return (sum(values) / len(values) if values else None), len(values)


def consistencies(rankings: dict[str, list], reference: dict[str, list]) -> list[float]:
    """consist of each example key both languages have, in ``rankings``' order (per-item values a paired test
    resamples)."""
    return [consistency(rankings[key], reference[key]) for key in rankings if key in reference]


def rankings_of(items: list[dict]) -> dict[str, list]:
    """Label rankings from scored choice items: options sorted by score, most likely first."""
    return {
        item["key"]: [item["options"][i] for i in sorted(range(len(item["scores"])), key=lambda i: -item["scores"][i])]
        for item in items
    }

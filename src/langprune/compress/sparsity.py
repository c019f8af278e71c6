"""Sparsity targets: an unstructured ratio per output row, or N:M groups."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Sparsity:
    """What fraction of each layer to prune and in which pattern.

    ``ratio`` is the fraction of weights removed. For N:M sparsity (``n`` and
    ``m`` set) at most ``n`` of every ``m`` consecutive input weights of a row
    are kept, so ``ratio = 1 - n/m``.
    """

    ratio: float
    n: int | None = None
    m: int | None = None

    @property
    def structured(self) -> bool:
        return self.m is not None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else f"{self.ratio:g}"

    @classmethod
    def parse(cls, text: str | float | Sparsity) -> Sparsity:
        """Read ``0.5``, ``50%`` or ``2:4``; refuse anything outside [0, 1)."""
        if isinstance(text, Sparsity):
            return text
        if isinstance(text, (int, float)):
            return cls._ratio(float(text), str(text))
        text = str(text).strip()
        if ":" in text:
            match = re.fullmatch(r"(\d+):(\d+)", text)
            if not match:
                raise UserError(f"malformed N:M sparsity {text!r}: write two integers such as 2:4 or 4:8")
            n, m = int(match.group(1)), int(match.group(2))
            if m < 1 or not 0 < n <= m:
                raise UserError(f"N:M sparsity {text!r} needs 0 < N <= M, e.g. 2:4")
            return cls(ratio=1.0 - n / m, n=n, m=m)
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise UserError(f"sparsity {text!r} is neither a ratio like 0.5 nor an N:M pattern like 2:4") from None
        return cls._ratio(value, text)

    @classmethod
    def _ratio(cls, value: float, text: str) -> Sparsity:
        if not 0.0 <= value < 1.0:
            raise UserError(f"sparsity {text} is outside [0, 1): give the fraction of weights to remove, e.g. 0.5")
        return cls(ratio=value)

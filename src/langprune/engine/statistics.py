"""Per-input statistics accumulated over calibration tokens, in float32 or wider, on the execution device.

Each statistic sees the input of one or more layers (layers fed by the same
tensor share one statistic) as a (tokens, features) matrix of real tokens
only; padding has already been dropped by the engine. A statistic lives on
the device its activations come from (``device``), so nothing crosses to the
host while a block runs. ``tag`` is the batch's ``Tag``: statistics that keep
sets apart (the contrast set Z) read its role, never a batch's position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from .collection import Tag
from .distributed import all_reduce_sum_, sum_count
from .memory import all_finite, mirror_upper_


def accumulate_gram_upper_(acc: torch.Tensor, x: torch.Tensor, block: int = 256) -> None:
    """acc += XᵀX, computing only the blocks on and above the diagonal.

    XᵀX is symmetric, so this does about (k+1)/(2k) of the multiply-adds of a
    full product for k column blocks; ``symmetrize_upper_`` fills in the rest
    once at the end. X is (tokens, features).
    """
    d = x.shape[1]
    if d <= block:
        acc.addmm_(x.T, x)
        return
    starts = range(0, d, block)
    for i in starts:
        xi_t = x[:, i : i + block].T
        acc[i : i + block, i:].addmm_(xi_t, x[:, i:])


def symmetrize_upper_(acc: torch.Tensor, block: int = 256) -> torch.Tensor:
    """Mirror, in place and with no second matrix, the upper block triangle written by ``accumulate_gram_upper_``
    (at most one block wide, it computed the full product)."""
    return mirror_upper_(acc, block) if acc.shape[0] > block else acc


CONTRAST = "contrast"
"""The role of batches from the contrast set Z (``--contrast``)."""


AGGREGATIONS = ("tokens", "mean", "max", "power:P")


@dataclass(frozen=True)
class LanguageAggregation:
    """How the languages of a calibration set combine into one statistic (``--lang-aggregate``).

    With ``tokens`` (the default) every token counts once: the statistics of the
    mixed set, bit for bit as without aggregation, so a language with more
    tokens or larger activations weighs more. Otherwise each language l first
    gets its per-token statistic m_l = S_l / T_l (S_l summed over its T_l
    tokens), and the languages combine as the weighted power mean with the
    serving weights w_l:

        A = (Σ_l w_l m_l^p / Σ_l w_l)^(1/p)

    ``mean`` is p = 1, ``power:P`` any p > 0, ``max`` the limit p → ∞ (max_l m_l:
    a feature any served language needs is kept). For SparseGPT and GPTQ the
    Hessian is the weighted mean of per-language Hessians H_l = 2/T_l Σ x xᵀ
    (only ``mean`` is linear in the Gram matrix: a maximum of matrices is not
    a Hessian), accumulated as one matrix by scaling each batch by w_l / (T_l Σw).
    """

    mode: str = "tokens"
    power: float = 1.0
    weights: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.mode != "tokens"

    def language(self, tag: Tag | None) -> str:
        """A batch's language, one of the weighted ones; a batch without one is refused."""
        language = tag.language if tag is not None else None
        if language not in self.weights:
            raise UserError(
                f"--lang-aggregate: a calibration batch has no language ({language!r}); use mix: or --serve"
            )
        return language

    def scale(self, language: str) -> float:
        """A language's factor in the linear (``mean``) combination: w_l / (T_l Σ w)."""
        return self.weights[language] / (self.tokens[language] * sum(self.weights.values()))

    def combine(self, means: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted power mean of per-language per-token statistics (float64)."""
        if self.mode == "max":
            return torch.stack(list(means.values())).amax(0)
        total = sum(self.weights[lang] for lang in means)
        p = 1.0 if self.mode == "mean" else self.power
        mixed = sum(self.weights[lang] * m.pow(p) for lang, m in means.items()) / total
        return mixed if p == 1.0 else mixed.pow(1.0 / p)

    def record(self) -> dict:
        power = self.power if math.isfinite(self.power) else None  # max: the limit p -> infinity
        return {"mode": self.mode, "power": power, "weights": self.weights, "tokens": self.tokens}


def parse_aggregation(text: str) -> tuple[str, float]:
    """``tokens``, ``mean``, ``max`` or ``power:P`` (P > 0) as (mode, p); anything else is one error."""
    mode, _, value = str(text).partition(":")
    if mode in ("tokens", "mean", "max") and not value:
        return mode, math.inf if mode == "max" else 1.0
    if mode == "power":
        try:
            p = float(value)
        except ValueError:
            p = float("nan")
        if p > 0 and math.isfinite(p):
            return "power", p
    raise UserError(f"--lang-aggregate {text!r}: choose {', '.join(AGGREGATIONS)} (P a number above 0)")


class InputStatistic:
    """Lifecycle: ``add_batch`` per calibration batch, read, then ``free``."""

    def __init__(
        self,
        features: int,
        name: str,
        device: torch.device | str = "cpu",
        aggregation: LanguageAggregation | None = None,
    ):
        self.features = features
        self.name = name
        self.device = torch.device(device)
        self.tokens = 0
        self.aggregation = aggregation if aggregation is not None and aggregation.active else None

    def add_batch(self, x: torch.Tensor, tag: Tag | None = None) -> None:
        """Accumulate a (tokens, features) batch of real tokens; ``tag`` says which set it belongs to."""
        raise NotImplementedError

    def free(self) -> None:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Sum what every rank accumulated (data-parallel calibration); every rank then reads the same value.

        A single process has nothing to sum. Called once, after the last batch and before the value is read.
        """
        raise NotImplementedError

    def _check_finite(self, value: torch.Tensor) -> torch.Tensor:
        if not all_finite(value):
            raise UserError(
                f"non-finite activations reached {self.name}: the model overflows on the calibration text "
                "in this dtype; load it in float32 or check the input"
            )
        return value


class SquaredNorms(InputStatistic):
    """Σ_t x_tj² per input feature j: Wanda's ||X_j||₂², accumulated in float64; with a language aggregation,
    per language, combined when read."""

    def __init__(self, features: int, name: str, device: torch.device | str = "cpu", aggregation=None):
        super().__init__(features, name, device, aggregation)
        self._sum = torch.zeros(features, dtype=torch.float64, device=self.device)
        self._by_language: dict[str, list] = {}  # language -> [sum, tokens]

    def add_batch(self, x: torch.Tensor, tag: Tag | None = None) -> None:
        target = self._sum
        if self.aggregation is not None:
            language = self.aggregation.language(tag)
            entry = self._by_language.setdefault(language, [torch.zeros_like(self._sum), 0])
            target, entry[1] = entry[0], entry[1] + x.shape[0]
        # In chunks of rows: the squares never need a full tokens x features temporary, which would land
        # on the block's memory peak (hooks run while the block's own intermediates are alive).
        for chunk in x.split(1024):
            chunk = chunk.to(torch.float32)
            target += (chunk * chunk).sum(0, dtype=torch.float32).to(torch.float64)
        self.tokens += x.shape[0]

    def synchronize(self) -> None:
        self._sum = all_reduce_sum_(self._sum)
        self.tokens = sum_count(self.tokens, self.device)
        if self.aggregation is None:
            return
        # Every rank reduces every language in one order, also those its own share of batches lacked.
        for language in sorted(self.aggregation.weights):
            entry = self._by_language.setdefault(language, [torch.zeros_like(self._sum), 0])
            entry[0] = all_reduce_sum_(entry[0])
            entry[1] = sum_count(entry[1], self.device)
        self._by_language = {k: entry for k, entry in self._by_language.items() if entry[1] > 0}

    @property
    def value(self) -> torch.Tensor:
        if self.aggregation is not None:
            return self._check_finite(self.aggregation.combine({k: s / n for k, (s, n) in self._by_language.items()}))
        return self._check_finite(self._sum)

    def free(self) -> None:
        self._sum = None
        self._by_language = {}


class ContrastedNorms(InputStatistic):
    """||X_j||² over the calibration set and ||Z_j||² over the contrast set, kept apart by role.

    The roles come from each batch's tag (``contrast`` for Z), never from the
    order in which batches happen to run, so X and Z cannot swap between runs.
    """

    def __init__(self, features: int, name: str, device: torch.device | str = "cpu", aggregation=None):
        super().__init__(features, name, device, aggregation)
        self.x = SquaredNorms(features, name, device, aggregation)  # X: the served languages, combined
        self.z = SquaredNorms(features, name, device)

    def add_batch(self, x: torch.Tensor, tag: Tag | None = None) -> None:
        (self.z if tag is not None and tag.role == CONTRAST else self.x).add_batch(x, tag)
        self.tokens += x.shape[0]

    def synchronize(self) -> None:
        self.x.synchronize()
        self.z.synchronize()
        self.tokens = self.x.tokens + self.z.tokens

    @property
    def value(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.x.tokens == 0 or self.z.tokens == 0:
            raise UserError(
                f"{self.name}: the contrastive score needs tokens from both the calibration and the contrast set"
            )
        return self.x.value, self.z.value

    def free(self) -> None:
        self.x.free()
        self.z.free()


class Hessian(InputStatistic):
    """H = 2/T Σ_t x_t x_tᵀ, the layer-wise reconstruction Hessian of SparseGPT.

    Only the upper block triangle is accumulated (float32) and mirrored once,
    which saves about a third of the multiply-adds on wide inputs.
    """

    def __init__(self, features: int, name: str, device: torch.device | str = "cpu", aggregation=None):
        super().__init__(features, name, device, aggregation)
        self._gram = torch.zeros(features, features, dtype=torch.float32, device=self.device)
        self._finished = self._taken = False

    def add_batch(self, x: torch.Tensor, tag: Tag | None = None) -> None:
        if self._finished:
            raise RuntimeError(f"{self.name}: the Hessian was already read; no more batches can be added")
        x = x.to(torch.float32)
        if self.aggregation is not None:  # the weighted mean of per-language Hessians, as one matrix
            x = x * math.sqrt(self.aggregation.scale(self.aggregation.language(tag)))
        accumulate_gram_upper_(self._gram, x)
        self.tokens += x.shape[0]

    def synchronize(self) -> None:
        if self._finished:
            raise RuntimeError(f"{self.name}: the Hessian was already read; it cannot be summed over ranks now")
        self._gram = all_reduce_sum_(self._gram)  # the upper block triangles, mirrored once afterwards
        self.tokens = sum_count(self.tokens, self.device)

    @property
    def value(self) -> torch.Tensor:
        """The finished Hessian; computed in place on first read, so no second matrix is allocated."""
        if self.tokens == 0:
            raise UserError(f"no calibration tokens reached {self.name}: give non-empty calibration text")
        if self._taken:
            raise RuntimeError(f"{self.name}: the Hessian was handed over (take) and may be overwritten")
        if not self._finished:
            symmetrize_upper_(self._gram).mul_(2.0 if self.aggregation is not None else 2.0 / self.tokens)
            self._finished = True
        return self._check_finite(self._gram)

    def take(self) -> torch.Tensor:
        """The finished Hessian, handed over: the statistic lets go of it, so the caller may overwrite it (SparseGPT
        factorises it in place) and nothing can read it from here again."""
        value = self.value
        self._gram, self._taken = None, True
        return value

    def free(self) -> None:
        self._gram = None

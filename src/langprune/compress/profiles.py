"""Sparsity profiles: how a target sparsity is spread over the decoder blocks.

``uniform`` gives every block the target. ``owl`` (Yin et al., ICML 2024,
outlier-weighted layerwise sparsity) gives blocks with more outliers in
their Wanda scores less sparsity: the outlier ratio D_l of block l is the
share of its Wanda scores |W_ij|·||X_j|| above M times the block's mean
score; the ratios are rescaled to [0, 2λ], centred, and subtracted from the
target, so the per-block sparsities average to the target and stay within
2λ of it. The ratios come from one dense pass over the calibration text
before pruning, whatever method prunes afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from ..engine import BlockEngine, weight_matrix
from ..engine.statistics import CONTRAST, LanguageAggregation, SquaredNorms
from ..errors import UserError
from .kernels import wanda_scores
from .sparsity import Sparsity

PROFILES = ("uniform", "owl")
OWL_M, OWL_LAMBDA = 5.0, 0.08  # the published defaults


@dataclass(frozen=True)
class Profile:
    name: str = "uniform"
    m: float = OWL_M
    lam: float = OWL_LAMBDA

    def check(self, target: Sparsity, has_calibration: bool) -> None:
        """Refuse, before any work, a profile that cannot apply to this target."""
        if self.name not in PROFILES:
            raise UserError(f"unknown --profile {self.name!r}: choose one of {', '.join(PROFILES)}")
        if self.name == "uniform":
            return
        if target.structured:
            raise UserError(
                f"--profile owl varies the sparsity per block, which an N:M pattern ({target}) fixes: "
                "use a ratio such as --sparsity 0.5"
            )
        if not has_calibration:
            raise UserError(
                "--profile owl needs calibration text for its outlier ratios (even for magnitude): "
                "pass --calib, e.g. --calib mix:en+de"
            )
        if not 1.0 <= self.m <= 1000.0:
            raise UserError(
                f"--owl-m {self.m:g} is outside [1, 1000]: scores above M times the mean are "
                f"outliers (published default {OWL_M:g})"
            )
        if not 0.0 <= self.lam <= min(target.ratio, 1.0 - target.ratio) / 2:
            raise UserError(
                f"--owl-lambda {self.lam:g} is outside [0, {min(target.ratio, 1 - target.ratio) / 2:g}]: "
                f"block sparsities would leave [0, 1) around {target} (published default {OWL_LAMBDA:g})"
            )

    def record(self) -> dict:
        return {"name": self.name} if self.name == "uniform" else {"name": self.name, "m": self.m, "lambda": self.lam}


def outlier_ratio(layer_scores: list[Callable[[], torch.Tensor]], m: float) -> float:
    """Share of all scores of a block above ``m`` times their mean (the block's outlier ratio D_l).

    Each layer's scores come from a function and are made twice (once for
    the mean, once for the count) instead of being held together: a 70B
    block's scores would take gigabytes.
    """
    total = count = 0
    for scores in layer_scores:
        values = scores()
        total, count = total + float(values.sum(dtype=torch.float64)), count + values.numel()
    threshold = m * total / count
    return sum(int((scores() > threshold).sum()) for scores in layer_scores) / count


def owl_sparsities(ratios: list[float], target: float, lam: float) -> list[float]:
    """Per-block sparsities: ratios rescaled to [0, 2λ], centred, subtracted from the target (mean = target)."""
    values = torch.tensor(ratios, dtype=torch.float64)
    spread = values.max() - values.min()
    if spread == 0:
        return [target] * len(ratios)
    scaled = (values - values.min()) / spread * (2 * lam)
    return (target - (scaled - scaled.mean())).tolist()


def owl_ratios(
    engine: BlockEngine, m: float, progress=None, aggregation: LanguageAggregation | None = None
) -> list[float]:
    """One dense pass: each block's outlier ratio of the Wanda scores of its selected layers (calibration set X only).

    With a language ``aggregation`` the norms are the run's combination of per-language norms, so a served
    language's outliers count as much as its weight says, not as much as its token count and activation size.
    A common factor on all norms leaves the ratios unchanged (the threshold is relative to the mean score).
    """
    placement = engine.placement
    ratios = []
    for index in range(len(engine.blocks)):
        with placement.hold(index):
            norms: dict[str, SquaredNorms] = {}

            def on_input(leader, x, batch):
                if batch.tag is not None and batch.tag.role == CONTRAST:
                    return
                norms.setdefault(leader, SquaredNorms(x.shape[1], leader, x.device, aggregation)).add_batch(
                    x, batch.tag
                )

            groups = engine.run_block(index, on_input, write_outputs=True)
            for statistic in norms.values():
                statistic.synchronize()
            layers = engine.layers(index)
            scores = [
                partial(wanda_scores, weight_matrix(layers[name]), norms[leader].value)
                for leader in norms
                for name in groups.members(leader)
            ]
            ratios.append(outlier_ratio(scores, m) if scores else 0.0)
        if progress:
            progress(index + 1, len(engine.blocks))
    return ratios

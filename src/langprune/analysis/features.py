"""Large-magnitude features per set and how they overlap (translation-feature paper, section 3, RQ1).

For set S and layer k, ``||X_S^k||`` holds, per hidden feature j, the L2
norm of feature j over every real token of S (as Wanda's statistic, after
Sun et al. 2024). X^k is the hidden state entering decoder block k (the
residual stream), taken by the block engine; ``--at LAYER`` takes the input
of a named layer instead (Wanda's own X). With d_beta = floor(d * beta / 100)
the overlap of set A's top-beta% features with set B's bottom-beta% is
``|top(A) ∩ bottom(B)| / d_beta`` (the paper's formula); a high value means
features strong on A are weak on B. The sets x sets matrix of these ratios
per layer is Figures 1 and 3; averaged per quadrant (monolingual rows or
translation rows x monolingual or translation columns, diagonal left out
since a set's top and bottom never meet) it is Figure 4; the top-20
features of a translation set next to its monolingual sets is Figure 2;
the share of a translation set's top-k features absent from the top-k of
each of its two monolingual sets is Table 7. Ties in magnitude rank by
feature index (a stable sort), so results repeat exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from .. import calibration
from ..engine import find_blocks, sweep
from ..errors import UserError, check_at_least
from ..models import load_model
from ..runs import Reporter
from ..settings import setting
from . import figures
from .base import ModelAnalysis, register
from .inputs import block_index, check_layers, trimmed

QUADRANTS = {
    "monolingual x monolingual": ("monolingual", "monolingual"),
    "monolingual x translation": ("monolingual", "translation"),
    "translation x monolingual": ("translation", "monolingual"),
    "translation x translation": ("translation", "translation"),
}
UNIQUE_TOP_K = (20, 50, 100)


@dataclass(frozen=True)
class FeatureSet:
    """A named set of texts (a calibration recipe), monolingual or translation, with its languages."""

    name: str
    kind: str  # monolingual | translation
    languages: tuple[str, ...]


def describe_set(recipe: str) -> FeatureSet:
    parsed = calibration.check_recipe(recipe)
    return FeatureSet(recipe, "translation" if parsed.kind == "mt" else "monolingual", parsed.languages)


def check_beta(beta: float) -> float:
    if not 0 < beta <= 50:
        raise UserError(f"--beta {beta} is outside (0, 50]: the top and bottom beta% of features must not overlap")
    return beta


def feature_norms(model, batches, at: str | None = None, progress=None) -> dict[str, torch.Tensor]:
    """Per set (a batch's ``tag.role``), a (blocks x features) float64 tensor of feature L2 norms over its real tokens.

    The features are those entering each block (the residual stream), or with
    ``at`` those entering the named layer of each block (``self_attn.q_proj``:
    Wanda's X for the attention projections, after the block's input norm).
    """
    blocks_name, blocks = find_blocks(model)
    squares: dict[str, torch.Tensor] = {}

    def visit(name: str, states: torch.Tensor, batch) -> None:
        if at is not None and not name.endswith("." + at):
            return
        layer = block_index(name, blocks_name)
        if batch.tag.role not in squares:
            squares[batch.tag.role] = torch.zeros(
                len(blocks), states.shape[-1], dtype=torch.float64, device=states.device
            )
        squares[batch.tag.role][layer] += states.double().square().sum(0)

    visitors = {"on_block_input": visit} if at is None else {"on_input": visit}
    sweep(model, [trimmed(b) for b in batches], progress=progress, **visitors)
    if not squares:
        raise UserError(
            f"no layer {at!r} reads its own input in the blocks: name a prunable layer that is first "
            "to read its input, e.g. self_attn.q_proj, mlp.gate_proj or mlp.down_proj"
        )
    norms = {name: value.sqrt().cpu() for name, value in squares.items()}
    for name, value in norms.items():
        if not torch.isfinite(value).all():
            raise UserError(
                f"feature norms of {name} are not finite (overflow in the compute dtype): use --dtype float32"
            )
    return norms


def ranked(norms: torch.Tensor) -> torch.Tensor:
    """Feature indices by descending magnitude, ties by index, for each row of (sets x features)."""
    return torch.sort(norms, dim=-1, descending=True, stable=True).indices


def overlap_matrix(norms: torch.Tensor, beta: float) -> torch.Tensor:
    """(sets x sets): entry [a, b] = share of set a's top-beta% features among set b's bottom-beta%."""
    count, width = norms.shape
    top_count = max(1, int(width * beta / 100))
    order = ranked(norms)
    top = torch.zeros(count, width, dtype=torch.float64)
    bottom = torch.zeros(count, width, dtype=torch.float64)
    top.scatter_(1, order[:, :top_count], 1.0)
    bottom.scatter_(1, order[:, width - top_count :], 1.0)
    return top @ bottom.T / top_count


def quadrant_means(matrix: torch.Tensor, kinds: list[str]) -> dict[str, float | None]:
    """Mean of the off-diagonal entries in each (row kind x column kind) quadrant; None where a quadrant is empty."""
    means = {}
    for label, (row_kind, column_kind) in QUADRANTS.items():
        values = [
            float(matrix[a, b])
            for a, ka in enumerate(kinds)
            for b, kb in enumerate(kinds)
            if a != b and ka == row_kind and kb == column_kind
        ]
        means[label] = sum(values) / len(values) if values else None
    return means


def unique_top_share(translation: torch.Tensor, monolingual: torch.Tensor, k: int) -> float:
    """Share of the translation set's top-k features that are not among the monolingual set's top-k (Table 7)."""
    k = min(k, translation.numel())
    top_translation = set(ranked(translation)[:k].tolist())
    return len(top_translation - set(ranked(monolingual)[:k].tolist())) / k


def monolingual_partners(chosen: FeatureSet, sets: list[FeatureSet]) -> list[FeatureSet]:
    """The monolingual sets in the translation set's source and target languages."""
    return [s for s in sets if s.kind == "monolingual" and len(s.languages) == 1 and s.languages[0] in chosen.languages]


def analyze_features(
    norms: dict[str, torch.Tensor],
    sets: list[FeatureSet],
    beta: float,
    figure_layers: list[int],
    at: str | None = None,
    top: int = 20,
) -> dict:
    """Every number of the features analysis, from the norms: overlap matrices, quadrant means, top features, Table 7."""
    stacked = torch.stack([norms[s.name] for s in sets])  # sets x layers x features
    layers = stacked.shape[1]
    kinds = [s.kind for s in sets]
    matrices = [overlap_matrix(stacked[:, layer], beta) for layer in range(layers)]
    quadrants = [quadrant_means(m, kinds) for m in matrices]
    top_features, unique = [], []
    for chosen in (s for s in sets if s.kind == "translation"):
        partners = monolingual_partners(chosen, sets)
        for layer in figure_layers:
            dims = ranked(norms[chosen.name][layer])[:top].tolist()
            top_features.append(
                {
                    "set": chosen.name,
                    "layer": layer,
                    "features": dims,
                    "norms": {s.name: [float(norms[s.name][layer][d]) for d in dims] for s in [chosen, *partners]},
                }
            )
            for partner in partners:
                unique.append(
                    {
                        "set": chosen.name,
                        "against": partner.name,
                        "layer": layer,
                        "share": {
                            str(k): unique_top_share(norms[chosen.name][layer], norms[partner.name][layer], k)
                            for k in UNIQUE_TOP_K
                        },
                    }
                )
    return {
        "sets": [{"name": s.name, "kind": s.kind, "languages": list(s.languages)} for s in sets],
        "beta": beta,
        "features": int(stacked.shape[2]),
        "layers": layers,
        "where": "input of each decoder block (the residual stream)" if at is None else f"input of {at} in each block",
        "overlap": [m.tolist() for m in matrices],
        "quadrants": {label: [q[label] for q in quadrants] for label in QUADRANTS},
        "figure_layers": figure_layers,
        "top_features": top_features,
        "unique_top": unique,
    }


@register
@dataclass(kw_only=True)
class FeatureOverlap(ModelAnalysis):
    """Feature magnitudes per set and their top/bottom overlap per block (translation-feature paper, Figures 1-4, Table 7)."""

    name: ClassVar[str] = "features"
    model: str = setting("gemma-3-270m", "Alias, local folder or hub id.")
    sets: tuple[str, ...] = setting(
        (), "Comma-separated sets (calibration recipes): demo:en,demo:fr,mt:fr-en,mono:de...", required=True
    )
    beta: float = setting(30.0, "Top and bottom share of features, in percent, (0, 50].")
    at: str | None = setting(
        None, "Analyse the input of this layer in each block (e.g. self_attn.q_proj) instead of the block's input."
    )
    layers: tuple[int, ...] = setting(
        (), "Blocks drawn as heatmaps (Figures 1 and 3), e.g. 9,17 (default: middle and last)."
    )
    nsamples: int | None = setting(None, "Sequences per set (default: 128, or 100 demonstrations).")
    shots: int = setting(4, "Shots per demonstration.")
    seqlen: int = setting(512, "Tokens per sequence.")
    seed: int = setting(0, "Seed for sampling the sets.")
    batch_size: int = setting(8, "Sequences per forward pass.")

    def validate(self) -> None:
        check_at_least("--seqlen", self.seqlen, 2)
        check_at_least("--batch-size", self.batch_size, 1)
        check_at_least("--nsamples", self.nsamples, 1)
        check_beta(self.beta)
        if len(self.sets) < 2:
            raise UserError("features compares sets: give at least two, e.g. --sets demo:en,demo:fr,mt:fr-en")
        if len(set(self.sets)) != len(self.sets):
            raise UserError("--sets names a set twice")
        for recipe in self.sets:
            describe_set(recipe)
        super().validate()

    def compute(self, reporter: Reporter) -> dict:
        described = [describe_set(recipe) for recipe in self.sets]
        with reporter.loading(self.model):
            model, tokenizer = load_model(self.model, self.dtype, self.device, self.offload)
        calibration.check_seqlen(self.seqlen, model)
        sets = {}
        for recipe in self.sets:
            sets[recipe] = calibration.build(
                recipe, tokenizer, self.nsamples, self.seqlen, self.seed, self.shots, model=model
            )
            reporter.note(f"{recipe}: {sets[recipe].input_ids.shape[0]} sequences, {sets[recipe].tokens} real tokens")
        batches = [b for name, chosen in sets.items() for b in chosen.batches(self.batch_size, role=name)]
        norms = feature_norms(model, batches, self.at, lambda d, t: reporter.evaluating(d, t, "feature norms"))
        blocks = next(iter(norms.values())).shape[0]
        figure_layers = check_layers(self.layers or (blocks // 2, blocks - 1), blocks)
        result = analyze_features(norms, described, self.beta, figure_layers, self.at)
        for entry in result["sets"]:
            entry["tokens"] = sets[entry["name"]].tokens
        return {"model": self.model, **result}

    @staticmethod
    def draw(result: dict, folder: Path) -> list[Path]:
        return figures.draw_features(result, folder)

    @staticmethod
    def summary(result: dict) -> list[str]:
        lines = []
        for label, values in result["quadrants"].items():
            known = [v for v in values if v is not None]
            if known:
                lines.append(
                    f"{label}: mean overlap {sum(known) / len(known):.3f} over {len(known)} blocks "
                    f"(min {min(known):.3f} at block {values.index(min(known))})"
                )
        for entry in result["unique_top"]:
            shares = ", ".join(f"top-{k} {v:.0%}" for k, v in entry["share"].items())
            lines.append(
                f"{entry['set']} block {entry['layer']}: features absent from {entry['against']}'s top: {shares}"
            )
        return lines

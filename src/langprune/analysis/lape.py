"""Language-specific FFN neurons and what pruning does to them (calibration paper 5.3 and D.4; Tang et al. 2024).

A neuron is one output of the FFN's activation function (the value that,
gated or not, feeds the down projection). It is active on a token when that
output is > 0; its activation probability in language k is the share of
language k's real tokens on which it is active. Normalising the
probabilities over languages (L1) gives a distribution whose entropy is the
neuron's LAPE (the paper prints the sum without its minus sign; the entropy
is meant): low LAPE = active mostly in few languages. A neuron never active
in any language has no distribution and is left out (counted).

The paper's relaxed view sorts all neurons of all blocks by their dense
LAPE, cuts them into groups of 2% and compares, group by group, the LAPE
distribution (boxplots), activation probability and mean absolute output
(the down projection's input) of the dense and each pruned model
(Figure 3). Tang et al.'s selection is given too: keep neurons whose
probability in some language exceeds the 95th percentile of all
probabilities, take the 1% of all neurons with the lowest LAPE among them,
and assign each to every language where its probability exceeds the 95th
percentile again (``filter_rate``, ``top_rate``, ``bar_rate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..engine import find_blocks, sweep
from ..engine.architecture import is_prunable
from ..engine.distributed import all_reduce_sum_, check_share, world
from ..errors import UserError
from ..runs import Reporter, load_report
from ..settings import setting
from . import figures
from .base import TextAnalysis, register
from .inputs import block_index

ACTIVATION_PACKAGES = ("transformers.activations", "torch.nn.modules.activation")


def find_activation(block: nn.Module) -> str:
    """The name inside a block of its FFN activation module (``mlp.act_fn``, ``mlp.act``, ``activation_fn``...)."""
    found = [
        name
        for name, module in block.named_modules()
        if name
        and not list(module.children())
        and not list(module.parameters(recurse=False))
        and (type(module).__module__ in ACTIVATION_PACKAGES or "gelu" in type(module).__name__.lower())
    ]
    if len(found) != 1:
        detail = f"candidates: {', '.join(found)}" if found else "none found"
        raise UserError(
            f"cannot tell which module is the FFN activation of {type(block).__name__} ({detail}): "
            "name it with --tap, e.g. --tap mlp.act_fn"
        )
    return found[0]


def check_tap(block: nn.Module, tap: str) -> None:
    """Refuse a ``--tap`` that names no module inside a block, listing the leaf modules that could be meant."""
    try:
        block.get_submodule(tap)
    except AttributeError:
        leaves = [name for name, module in block.named_modules() if name and not list(module.children())]
        raise UserError(
            f"--tap {tap} is not a module inside a {type(block).__name__} block: choose one of {', '.join(leaves)}"
        ) from None


@dataclass
class NeuronCounts:
    """Float64 sums per block, neuron and language: active tokens and |output|, with real tokens per language."""

    languages: list[str]
    active: torch.Tensor  # blocks x neurons x languages
    magnitude: torch.Tensor  # blocks x neurons x languages
    tokens: torch.Tensor  # languages

    @property
    def probability(self) -> torch.Tensor:
        return self.active / self.tokens

    @property
    def mean_magnitude(self) -> torch.Tensor:
        return self.magnitude / self.tokens


def count_neurons(model, batches, languages: list[str], tap: str | None = None, progress=None) -> NeuronCounts:
    """One pass through the engine: activation counts from the activation's output, magnitudes from the FFN output layer's input."""
    blocks_name, blocks = find_blocks(model)
    tap = tap or find_activation(blocks[0])
    check_tap(blocks[0], tap)
    output_layer = [name for name, module in blocks[0].named_modules() if is_prunable(module)][-1]  # the FFN output
    column = {language: i for i, language in enumerate(languages)}
    sums: dict[str, torch.Tensor] = {}

    def add(kind: str, layer: int, values: torch.Tensor, batch) -> None:
        if kind not in sums:
            sums[kind] = torch.zeros(
                len(blocks), values.shape[-1], len(languages), dtype=torch.float64, device=values.device
            )
        sums[kind][layer, :, column[batch.tag.language]] += values.sum(0, dtype=torch.float64)

    def on_activation(name, outputs, batch):
        add("active", block_index(name, blocks_name), outputs > 0, batch)

    def on_input(name, inputs, batch):
        if name.endswith("." + output_layer):
            add("magnitude", block_index(name, blocks_name), inputs.abs(), batch)

    check_share(len(batches), "sentence batches")
    sweep(model, world().share(batches), on_input=on_input, taps={tap: on_activation}, progress=progress)
    for kind in ("active", "magnitude"):  # under torchrun each rank counted its share of the batches
        all_reduce_sum_(sums[kind], "summing neuron counts")
    tokens = torch.zeros(len(languages), dtype=torch.float64)
    for batch in batches:
        tokens[column[batch.tag.language]] += int(batch.attention_mask.sum())
    active, magnitude = sums["active"].cpu(), sums["magnitude"].cpu()
    if active.shape != magnitude.shape:
        raise UserError(
            f"{tap} has {active.shape[1]} outputs but the FFN output layer {output_layer} reads "
            f"{magnitude.shape[1]}: name the activation feeding it with --tap"
        )
    if not torch.isfinite(magnitude).all():
        raise UserError("neuron outputs are not finite (overflow in the compute dtype): use --dtype float32")
    return NeuronCounts(languages, active, magnitude, tokens)


def lape(probability: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the L1-normalised per-language probabilities, last dimension; NaN where a neuron never fires."""
    total = probability.sum(-1, keepdim=True)
    normalised = probability / total
    terms = torch.where(normalised > 0, normalised * normalised.log(), torch.zeros_like(normalised))
    entropy = -terms.sum(-1)
    return torch.where(total.squeeze(-1) > 0, entropy, torch.full_like(entropy, float("nan")))


def language_specific(
    probability: torch.Tensor,
    languages: list[str],
    filter_rate: float = 0.95,
    top_rate: float = 0.01,
    bar_rate: float = 0.95,
) -> dict[str, list[list[int]]]:
    """Tang et al.'s language-specific neurons: per language, [block, neuron] pairs."""
    flat = probability.flatten()
    filter_value = flat.kthvalue(max(1, round(flat.numel() * filter_rate))).values
    entropy = lape(probability)
    entropy = torch.where((probability > filter_value).any(-1), entropy, torch.full_like(entropy, float("inf")))
    entropy = torch.nan_to_num(entropy, nan=float("inf"))
    count = round(entropy.numel() * top_rate)
    chosen = torch.sort(entropy.flatten(), stable=True).indices[:count]
    chosen = chosen[torch.isfinite(entropy.flatten()[chosen])]
    bar = flat.kthvalue(max(1, round(flat.numel() * bar_rate))).values
    blocks, neurons = chosen // entropy.shape[1], chosen % entropy.shape[1]
    found: dict[str, list[list[int]]] = {language: [] for language in languages}
    for block, neuron in zip(blocks.tolist(), neurons.tolist()):
        for k in torch.nonzero(probability[block, neuron] > bar).flatten().tolist():
            found[languages[k]].append([block, neuron])
    return found


def box(values: torch.Tensor) -> dict:
    """Boxplot numbers (matplotlib's bxp): quartiles, whiskers at 1.5 IQR within the data, mean; NaNs left out."""
    values = values[~torch.isnan(values)].double()
    if values.numel() == 0:
        return {"med": None, "q1": None, "q3": None, "whislo": None, "whishi": None, "mean": None, "n": 0}
    q1, med, q3 = (float(torch.quantile(values, q)) for q in (0.25, 0.5, 0.75))
    low, high = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    return {
        "med": med,
        "q1": q1,
        "q3": q3,
        "whislo": float(values[values >= low].min()),
        "whishi": float(values[values <= high].max()),
        "mean": float(values.mean()),
        "n": int(values.numel()),
    }


def analyze_lape(counts: dict[str, NeuronCounts], group_share: float = 0.02, **selection) -> dict:
    """Groups by dense LAPE with per-model boxplots, probabilities and magnitudes; Tang et al.'s neurons per model.

    ``counts`` maps model labels to their counts; the first is the dense model.
    """
    labels = list(counts)
    dense = counts[labels[0]]
    entropies = {label: lape(c.probability).flatten() for label, c in counts.items()}
    order = torch.sort(entropies[labels[0]], stable=True).indices  # NaN (never active) sorts last
    order = order[~torch.isnan(entropies[labels[0]][order])]
    size = max(1, round(entropies[labels[0]].numel() * group_share))
    groups = [order[start : start + size] for start in range(0, order.numel(), size)]
    per_model = {}
    for label, c in counts.items():
        probability = c.probability.reshape(-1, len(c.languages))
        magnitude = c.mean_magnitude.reshape(-1, len(c.languages))
        specific = language_specific(c.probability, c.languages, **selection)
        per_model[label] = {
            "lape_box": [box(entropies[label][g]) for g in groups],
            "probability": {
                lang: [float(probability[g, k].mean()) for g in groups] for k, lang in enumerate(c.languages)
            },
            "magnitude": {lang: [float(magnitude[g, k].mean()) for g in groups] for k, lang in enumerate(c.languages)},
            "never_active": int(torch.isnan(entropies[label]).sum()),
            "specific_neurons": specific,
            "specific_counts": {lang: len(v) for lang, v in specific.items()},
        }
    dense_specific = {
        (lang, b, n) for lang, pairs in per_model[labels[0]]["specific_neurons"].items() for b, n in pairs
    }
    for label in labels[1:]:
        mine = {(lang, b, n) for lang, pairs in per_model[label]["specific_neurons"].items() for b, n in pairs}
        per_model[label]["specific_kept"] = len(mine & dense_specific) / len(dense_specific) if dense_specific else None
    return {
        "languages": dense.languages,
        "tokens": {lang: int(t) for lang, t in zip(dense.languages, dense.tokens.tolist())},
        "blocks": int(dense.active.shape[0]),
        "neurons_per_block": int(dense.active.shape[1]),
        "group_share": group_share,
        "group_size": size,
        "models": labels,
        "per_model": per_model,
    }


@register
@dataclass(kw_only=True)
class Lape(TextAnalysis):
    """Language activation probability entropy of FFN neurons, dense vs pruned (calibration paper, Figure 3)."""

    name: ClassVar[str] = "lape"
    tap: str | None = setting(None, "The FFN activation module inside a block, e.g. mlp.act_fn (default: found).")
    focus: str | None = setting(
        None, "Language of the probability and magnitude panels (default: the first run's calibration language)."
    )
    group_share: float = setting(0.02, "Share of all neurons per group.")
    plot_share: float = setting(0.3, "Lowest-LAPE share of neurons drawn.")
    filter_rate: float = setting(0.95, "Tang et al.: percentile a neuron's probability must pass in some language.")
    top_rate: float = setting(0.01, "Tang et al.: share of neurons with the lowest LAPE selected.")
    bar_rate: float = setting(0.95, "Tang et al.: percentile above which a selected neuron belongs to a language.")

    def validate(self) -> None:
        if self.focus is not None and self.focus not in self.langs:
            raise UserError(f"--focus {self.focus} is not among --langs {','.join(self.langs)}")
        for flag, value in (
            ("--group-share", self.group_share),
            ("--plot-share", self.plot_share),
            ("--filter-rate", self.filter_rate),
            ("--top-rate", self.top_rate),
            ("--bar-rate", self.bar_rate),
        ):
            if not 0 < value <= 1:
                raise UserError(f"{flag} {value} is outside (0, 1]: give a share such as 0.02")
        super().validate()

    def compute(self, reporter: Reporter) -> dict:
        languages = list(self.langs)
        counts, _ = self.per_model(
            reporter,
            "neuron activations",
            lambda model, batches, tokenizer, progress: count_neurons(model, batches, languages, self.tap, progress),
        )
        result = analyze_lape(
            counts, self.group_share, filter_rate=self.filter_rate, top_rate=self.top_rate, bar_rate=self.bar_rate
        )
        return {
            "model": self.model,
            "corpus": self.corpus,
            "focus_language": self.focus or self._calibration_language() or languages[0],
            "plot_share": self.plot_share,
            "pruned_runs": [str(r) for r in self.pruned],
            **result,
        }

    def _calibration_language(self) -> str | None:
        """The first pruned run's single calibration language when it is among --langs: the paper's focus (DE for DE runs)."""
        if not self.pruned:
            return None
        languages = (load_report(self.pruned[0]).get("calibration") or {}).get("languages") or []
        return languages[0] if len(languages) == 1 and languages[0] in self.langs else None

    @staticmethod
    def draw(result: dict, folder: Path) -> list[Path]:
        return figures.draw_lape(result, folder)

    @staticmethod
    def summary(result: dict) -> list[str]:
        lines = []
        for label in result["models"]:
            per = result["per_model"][label]
            first = per["lape_box"][0]
            kept = (
                f", {per['specific_kept']:.0%} of the dense model's language-specific neurons kept"
                if "specific_kept" in per
                else ""
            )
            lines.append(
                f"{label}: lowest group median LAPE {first['med']:.3f}, "
                f"language-specific neurons {sum(per['specific_counts'].values())}{kept}"
            )
        return lines

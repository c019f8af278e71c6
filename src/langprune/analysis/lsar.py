"""Language-agnostic and language-specific parts of sentence embeddings, dense vs pruned (calibration paper 5.1, D.2).

After Xie et al. (2022, LSAR): per block, each sentence's embedding e is the
mean of the block's output over the sentence's real tokens, special tokens
(BOS, EOS, padding) left out. The language means form M (d x L). Centred on
their mean, the top-r left singular vectors of M give a first subspace;
M is rebuilt from it, the shared vector mu is chosen orthogonal to the
language signal (mu = v / ||v||^2 with v the least-norm solution of
M'^T v = 1, so mu . (m_l - mu) = 0 for every language), and the top-r left
singular vectors of M' - mu 1^T are M_s. The language-specific part of e is
s = M_s M_s^T e, the agnostic part a = e - s (Eq. 7). r defaults to L - 1,
every direction along which the language means differ.

As in the paper, each model gets its own M_s, computed on the analysed
sentences themselves. For every pruned model, block and language the result
is the mean over sentences of ||a_pruned - a_dense|| and ||s_pruned - s_dense||
(Figure 1), with the same divided by the dense part's mean norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ..engine import find_blocks, sweep
from ..errors import UserError, check_at_least
from ..runs import Reporter
from ..settings import setting
from . import figures
from .base import TextAnalysis, register
from .inputs import SentenceBatch, block_index


def lsar_subspace(means: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, M_s) for language means (d x L), float64: the shared vector and an orthonormal d x rank basis."""
    means = means.double()
    if not 1 <= rank < means.shape[1]:
        raise UserError(
            f"LSAR rank {rank} must be between 1 and the number of languages minus one ({means.shape[1] - 1})"
        )
    centre = means.mean(1, keepdim=True)
    u, s, vh = torch.linalg.svd(means - centre, full_matrices=False)
    rebuilt = centre + u[:, :rank] @ (vh[:rank].T * s[:rank]).T
    v = torch.linalg.pinv(rebuilt.T) @ torch.ones(means.shape[1], dtype=torch.float64)
    shared = v / (v @ v)
    basis = torch.linalg.svd(rebuilt - shared[:, None], full_matrices=False).U[:, :rank]
    return shared, basis


def split(embeddings: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(agnostic, specific) parts of (n x d) embeddings for an orthonormal language basis (d x r)."""
    specific = (embeddings.double() @ basis) @ basis.T
    return embeddings.double() - specific, specific


def sentence_embeddings(model, batches: list[SentenceBatch], special_ids: set[int], progress=None) -> torch.Tensor:
    """(blocks x sentences x d) float32, sentences at their ``positions``: each block output averaged over each
    row's real, non-special tokens."""
    blocks_name, blocks = find_blocks(model)
    rows = sum(len(b.positions) for b in batches)
    out: torch.Tensor | None = None
    special = torch.tensor(sorted(special_ids), dtype=torch.long)

    def visit(name, states, batch):
        nonlocal out
        if out is None:
            out = torch.zeros(len(blocks), rows, states.shape[-1], dtype=torch.float32)
        mask = batch.attention_mask.bool()
        row_of = torch.arange(mask.shape[0]).unsqueeze(1).expand_as(mask)[mask]
        content = ~torch.isin(batch.input_ids[mask], special)
        sums = torch.zeros(mask.shape[0], states.shape[-1], dtype=torch.float64)
        sums.index_add_(0, row_of[content], states.double().cpu()[content])
        counts = torch.bincount(row_of[content], minlength=mask.shape[0]).clamp(min=1)
        out[block_index(name, blocks_name), list(batch.positions)] = (sums / counts[:, None]).float()

    sweep(model, batches, on_output=visit, progress=progress)
    if not torch.isfinite(out).all():
        raise UserError("sentence embeddings are not finite (overflow in the compute dtype): use --dtype float32")
    return out


def decompose(
    embeddings: torch.Tensor, languages: list[str], rank: int | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block, (agnostic, specific) parts of every sentence under this model's own LSAR subspace."""
    names = list(dict.fromkeys(languages))
    rank = len(names) - 1 if rank is None else rank
    index = torch.tensor([names.index(lang) for lang in languages])
    parts = []
    for block in embeddings:
        means = torch.stack([block[index == k].double().mean(0) for k in range(len(names))], dim=1)
        _, basis = lsar_subspace(means, rank)
        parts.append(split(block, basis))
    return parts


def analyze_lsar(embeddings: dict[str, torch.Tensor], languages: list[str], rank: int | None) -> dict:
    """Per pruned model, block and language: mean change of the agnostic and specific parts against the dense model.

    ``embeddings`` maps model labels to (blocks x sentences x d); the first is the dense model.
    ``languages`` gives each sentence's language.
    """
    names = list(dict.fromkeys(languages))
    if len(names) < 2:
        raise UserError("LSAR needs at least two languages: the language subspace is where their means differ")
    labels = list(embeddings)
    dense = decompose(embeddings[labels[0]], languages, rank)
    index = torch.tensor([names.index(lang) for lang in languages])
    result = {
        "languages": names,
        "rank": len(names) - 1 if rank is None else rank,
        "blocks": len(dense),
        "sentences": {lang: int((index == k).sum()) for k, lang in enumerate(names)},
        "models": labels,
        "delta": {},
    }
    for label in labels[1:]:
        pruned = decompose(embeddings[label], languages, rank)
        per = {part: {lang: [] for lang in names} for part in ("agnostic", "specific")}
        relative = {part: {lang: [] for lang in names} for part in ("agnostic", "specific")}
        for (a_dense, s_dense), (a_pruned, s_pruned) in zip(dense, pruned):
            for part, d, p in (("agnostic", a_dense, a_pruned), ("specific", s_dense, s_pruned)):
                change, size = (p - d).norm(dim=1), d.norm(dim=1)
                for k, lang in enumerate(names):
                    chosen = index == k
                    per[part][lang].append(float(change[chosen].mean()))
                    relative[part][lang].append(float(change[chosen].mean() / size[chosen].mean()))
        result["delta"][label] = {"magnitude": per, "relative": relative}
    return result


@register
@dataclass(kw_only=True)
class Lsar(TextAnalysis):
    """Change of language-agnostic and language-specific sentence features after pruning (calibration paper, Figure 1)."""

    name: ClassVar[str] = "lsar"
    rank: int | None = setting(None, "Rank of the language subspace (default: languages - 1).")

    def validate(self) -> None:
        check_at_least("--rank", self.rank, 1)
        if not self.pruned:
            raise UserError("lsar compares pruned models with the dense one: give at least one run with --pruned")
        super().validate()

    def compute(self, reporter: Reporter) -> dict:
        embeddings, batches = self.per_model(
            reporter,
            "sentence embeddings",
            lambda model, batches, tokenizer, progress: sentence_embeddings(
                model, batches, set(tokenizer.all_special_ids), progress
            ),
        )
        languages = [b.tag.language for b in batches for _ in range(int(b.input_ids.shape[0]))]
        result = analyze_lsar(embeddings, languages, self.rank)
        return {"model": self.model, "corpus": self.corpus, "pruned_runs": [str(r) for r in self.pruned], **result}

    @staticmethod
    def draw(result: dict, folder: Path) -> list[Path]:
        return figures.draw_lsar(result, folder)

    @staticmethod
    def summary(result: dict) -> list[str]:
        lines = []
        for label, delta in result["delta"].items():
            for part in ("agnostic", "specific"):
                per = delta["relative"][part]
                mean = sum(sum(v) / len(v) for v in per.values()) / len(per)
                lines.append(
                    f"{label}: {part} features change by {mean:.1%} of their dense norm (mean over blocks and languages)"
                )
        return lines

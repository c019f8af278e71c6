"""The LRP2 baseline (Xu et al., 2023; translation-feature paper, sections 3 and 5.1).

Language Representation Projection shifts the hidden states of a
non-English input towards English at decoder block a (subtract the
language's mean vector, add English's) and back at block b (the inverse, with
block b's vectors). The mean vectors are the mean-pooled outputs of every
block over real tokens of text in each language, taken from the calibration
part of a corpus, as the paper aligns them with the data used for pruning.
(a, b) is searched on a development split: the calibration part of a cloze
task, never its evaluation part; its prompts are built once for the whole search. The projection is applied by forward hooks,
so any architecture the engine supports works and the weights stay untouched.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..calibration import calibration_texts
from ..engine import Tag, find_blocks, sweep
from ..engine.collection import block_output
from ..engine.scoring import window_batches
from ..text import pad_id, text_windows
from .choice import prompts, score_prompts
from .tasks import TaskSpec


@dataclass
class Projection:
    """Per-block mean vectors of one language and of English, and the chosen blocks (a, b)."""

    language: str
    language_means: torch.Tensor  # (blocks, d)
    english_means: torch.Tensor
    a: int = 0
    b: int = 1
    search: list = field(default_factory=list)  # (a, b, dev accuracy) tried
    dev_task: str | None = None


@torch.no_grad()
def mean_states(
    model,
    tokenizer,
    texts: list[str],
    seqlen: int = 256,
    max_windows: int = 32,
    batch_size: int = 4,
    language: str | None = None,
) -> torch.Tensor:
    """Mean over real tokens of every decoder block's raw output: (blocks, d), accumulated in float64.

    Raw outputs for every block, the last included (no final norm): the
    projection hooks shift exactly these tensors, so the vectors and the
    shift live in the same space at every block.
    """
    windows = text_windows(tokenizer, texts, seqlen, complete=False)[:max_windows]
    batches = window_batches(windows, pad_id(tokenizer), batch_size, Tag("evaluation", language))
    sums: dict[str, torch.Tensor] = {}

    def visit(name: str, states: torch.Tensor, batch) -> None:
        sums[name] = sums[name] + states.double().sum(0) if name in sums else states.double().sum(0)

    sweep(model, batches, on_output=visit)
    tokens = sum(int(batch.attention_mask.sum()) for batch in batches)
    return (torch.stack(list(sums.values())) / tokens).float()


def language_projection(model, tokenizer, language: str, corpus: str, seed: int = 0, seqlen: int = 256) -> Projection:
    means = {
        lang: mean_states(model, tokenizer, calibration_texts(corpus, lang, seed), seqlen, language=lang)
        for lang in (language, "en")
    }
    return Projection(language, means[language], means["en"])


@contextmanager
def projected(model, projection: Projection):
    """Within the block, block a's output moves towards English and block b's moves back."""
    _, blocks = find_blocks(model)
    shift = projection.english_means - projection.language_means  # (blocks, d)

    def hook(index, sign):
        def apply(module, args, output):
            hidden = block_output(output) + sign * shift[index].to(block_output(output).dtype)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return apply

    # Prepended, so that anything else watching the block (transformers' hidden-state recording) sees the shift.
    handles = [
        blocks[projection.a].register_forward_hook(hook(projection.a, +1), prepend=True),
        blocks[projection.b].register_forward_hook(hook(projection.b, -1), prepend=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def search_layers(
    model,
    tokenizer,
    projection: Projection,
    task: TaskSpec,
    corpus: str,
    limit: int = 32,
    stride: int = 1,
    batch_size: int = 8,
) -> Projection:
    """Try every (a, b) with a < b on a grid of ``stride`` blocks; keep the best dev accuracy (first on ties)."""
    dev = prompts(task, corpus, projection.language, limit, part="calibration")
    count = projection.language_means.shape[0]
    candidates = [(a, b) for a in range(0, count, stride) for b in range(a + 1, count, stride)]
    best = None
    for a, b in candidates:
        projection.a, projection.b = a, b
        with projected(model, projection):
            items = score_prompts(model, tokenizer, dev, batch_size)
        accuracy = sum(item["correct"] for item in items) / len(items)
        projection.search.append((a, b, accuracy))
        if best is None or accuracy > best[2]:
            best = (a, b, accuracy)
    projection.a, projection.b = best[0], best[1]
    return projection

"""Log-likelihoods from a causal LM, batched, with logits only where they are needed.

Every likelihood-based score (perplexity, cloze, multiple choice, RankC)
goes through here. The output head of multilingual models is huge (262k rows
for Gemma 3), so the backbone runs on a whole right-padded batch and the head
is applied only to the positions whose next token is scored; log-softmax
sums are kept in float64. Right padding never changes a real token's
hidden state in a causal model, so batching and padding leave every score
unchanged (tests check this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..engine import Tag, TokenBatch
from ..errors import UserError
from ..text import right_padded


@dataclass(frozen=True)
class Request:
    """Score ``continuation`` after ``context`` (both token ids); the sum of log p(continuation | context)."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


def logits_for(model, hidden: torch.Tensor) -> torch.Tensor:
    """The output head on selected hidden states, in float32, with the model's final logit soft-capping."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def backbone(model):
    """The decoder stack without the output head (``model.model`` for Llama, ``model.transformer`` for GPT-2...)."""
    return model.base_model


@torch.no_grad()
def score_rows(
    model, rows: list[list[int]], first_scored: list[int], pad: int = 0, batch_size: int = 8, progress=None
) -> list[tuple[float, int]]:
    """For each row of ids, (sum of log p(token) for tokens from ``first_scored`` on, number of those tokens).

    Rows are run longest first so that a batch holds rows of similar length
    (less padding); results come back in the input order.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = right_padded([rows[i] for i in chunk], pad, device)
        hidden = backbone(model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        for row, i in enumerate(chunk):
            begin, end = max(first_scored[i], 1), len(rows[i])
            if end <= begin:
                continue
            logits = logits_for(model, hidden[row, begin - 1 : end - 1])
            picked = torch.log_softmax(logits, dim=-1).gather(1, ids[row, begin:end, None])
            value = float(picked.double().sum())
            if not math.isfinite(value):
                raise UserError("the model gives NaN or inf log-probabilities: its weights are broken (check the run)")
            results[i] = (value, end - begin)
        if progress:
            progress(len(chunk))
    return results


def score_requests(model, requests: list[Request], pad: int = 0, batch_size: int = 8, progress=None) -> list[float]:
    """Sum of log-probabilities of each request's continuation given its context."""
    rows = [list(r.context) + list(r.continuation) for r in requests]
    starts = [len(r.context) for r in requests]
    return [total for total, _ in score_rows(model, rows, starts, pad, batch_size, progress)]


def window_batches(windows: list[list[int]], pad: int, batch_size: int, tag: Tag) -> list[TokenBatch]:
    """Token windows as right-padded, tagged batches for the block engine, in the order given."""
    return [
        TokenBatch(*right_padded(windows[i : i + batch_size], pad), tag) for i in range(0, len(windows), batch_size)
    ]

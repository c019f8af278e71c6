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

from ..errors import UserError
from ..text import right_padded
from .collection import Tag, TokenBatch
from .distributed import run_shared


@dataclass(frozen=True)
class Request:
    """Score ``continuation`` after ``context`` (both token ids); the sum of log p(continuation | context)."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


def logits_for(model, hidden: torch.Tensor) -> torch.Tensor:
    """The output head on selected hidden states, in float32, with what the model's own forward does after it:
    Cohere's ``logit_scale``, Granite's ``logits_scaling``, Gemma's final soft-capping. ``check_head`` makes sure
    nothing else is left out."""
    logits = model.get_output_embeddings()(hidden).float()
    config = model.config
    if getattr(config, "logit_scale", None) is not None:
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None) is not None:
        logits = logits / config.logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


@torch.no_grad()
def check_head(model) -> None:
    """Refuse a model whose forward changes its logits in a way ``logits_for`` does not repeat (checked once per
    model, on four tokens): scores computed from the head alone would be silently wrong."""
    if getattr(model, "_langprune_head_checked", False):
        return
    device = next(model.parameters()).device
    ids = torch.arange(4, device=device)[None] % model.get_input_embeddings().num_embeddings
    hidden = backbone(model)(input_ids=ids, use_cache=False).last_hidden_state[0]
    expected = model(input_ids=ids, use_cache=False).logits[0].float()
    if not torch.allclose(logits_for(model, hidden), expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max())):
        raise UserError(
            f"{type(model).__name__} changes its logits after the output head in a way langprune does not know "
            "(a scale or cap it does not read from the config): its scores would be wrong; please report it"
        )
    model._langprune_head_checked = True


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
    check_head(model)
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))

    def run(chunk: list[int]) -> dict[int, tuple[float, int]]:
        ids, mask = right_padded([rows[i] for i in chunk], pad, device)
        hidden = backbone(model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        out = {}
        for row, i in enumerate(chunk):
            begin, end = max(first_scored[i], 1), len(rows[i])
            if end <= begin:
                continue
            logits = logits_for(model, hidden[row, begin - 1 : end - 1])
            picked = torch.log_softmax(logits, dim=-1).gather(1, ids[row, begin:end, None])
            value = float(picked.double().sum())
            if not math.isfinite(value):
                raise UserError("the model gives NaN or inf log-probabilities: its weights are broken (check the run)")
            out[i] = (value, end - begin)
        if progress:
            progress(len(chunk))
        return out

    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    done = run_shared(batches, run)  # with torchrun, each rank runs its share of the batches
    return [done.get(i, (0.0, 0)) for i in range(len(rows))]


def score_requests(
    model, requests: list[Request], pad: int = 0, batch_size: int = 8, progress=None, shared: bool = True
) -> list[float]:
    """Sum of log-probabilities of each request's continuation given its context.

    With ``shared`` (the default), requests with the same context (a cloze item's options) run that context once:
    when every option is one token (``It is positive`` / ``negative``), the contexts of many items run together
    in length-sorted batches and each option is read from its context's last position (``score_next_tokens``);
    otherwise each context runs alone and its options follow from its key/value cache (``score_shared``). The rest
    go through ``score_rows``.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(request.context if shared else (i,), []).append(i)
    results: list[float] = [0.0] * len(requests)
    one_token = [m for m in groups.values() if len(m) > 1 and all(len(requests[i].continuation) == 1 for i in m)]
    if one_token:
        batched = {m[0] for m in one_token}
        contexts = [requests[m[0]].context for m in one_token]
        tokens = [[requests[i].continuation[0] for i in m] for m in one_token]
        for members, totals in zip(one_token, score_next_tokens(model, contexts, tokens, pad, batch_size, progress)):
            for i, total in zip(members, totals):
                results[i] = total
        groups = {key: m for key, m in groups.items() if m[0] not in batched}
    alone = [members[0] for members in groups.values() if len(members) == 1]
    rows = [list(requests[i].context) + list(requests[i].continuation) for i in alone]
    scored = score_rows(model, rows, [len(requests[i].context) for i in alone], pad, batch_size, progress)
    for i, (total, _) in zip(alone, scored):
        results[i] = total

    def run_group(members: list[int]) -> dict[int, float]:
        totals = score_shared(model, requests[members[0]].context, [requests[i].continuation for i in members], pad)
        if progress:
            progress(len(members))
        return dict(zip(members, totals))

    for i, total in run_shared([m for m in groups.values() if len(m) > 1], run_group).items():
        results[i] = total
    return results


def length_batches(lengths: list[int], batch_size: int, fill: float = 0.8) -> list[list[int]]:
    """Indices, longest first, cut into batches of at most ``batch_size`` whose members are all at least ``fill``
    times as long as the batch's first: on a CPU a padded position costs as much as a real one."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if batches and len(batches[-1]) < batch_size and lengths[i] >= fill * lengths[batches[-1][0]]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def score_next_tokens(
    model, contexts: list, tokens: list[list[int]], pad: int = 0, batch_size: int = 8, progress=None
) -> list[list[float]]:
    """For each context, log p(token | context) of each of its candidate next tokens.

    Contexts run longest first in right-padded batches of at most ``batch_size`` whose shortest context is at
    least 80% of the longest (``length_batches``), so padding never wastes more than a quarter of a batch; the
    head is applied once per context, at its last real position. Equal to ``score_rows`` on context + token up
    to float rounding.
    """
    check_head(model)
    device = next(model.parameters()).device

    def run(chunk: list[int]) -> dict[int, list[float]]:
        ids, mask = right_padded([list(contexts[i]) for i in chunk], pad, device)
        hidden = backbone(model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        last = torch.tensor([len(contexts[i]) - 1 for i in chunk], device=device)
        logp = torch.log_softmax(logits_for(model, hidden[torch.arange(len(chunk), device=device), last]), dim=-1)
        out = {}
        for row, i in enumerate(chunk):
            values = logp[row, torch.tensor(tokens[i], device=device)].double().tolist()
            if not all(math.isfinite(v) for v in values):
                raise UserError("the model gives NaN or inf log-probabilities: its weights are broken (check the run)")
            out[i] = values
        if progress:
            progress(sum(len(tokens[i]) for i in chunk))
        return out

    done = run_shared(length_batches([len(c) for c in contexts], batch_size), run)
    return [done[i] for i in range(len(contexts))]


@torch.no_grad()
def score_shared(model, context, continuations, pad: int = 0) -> list[float]:
    """Sum of log p(continuation | context) for several continuations of one context, which runs once.

    The context's last hidden state scores every continuation's first token; its key/value cache, repeated once
    per continuation, lets the continuations (right-padded into one batch) run without the context again. The
    scores equal ``score_rows`` on the concatenated rows up to float rounding (tests check five architectures).
    """
    check_head(model)
    device = next(model.parameters()).device
    ids = torch.tensor([list(context)], device=device)
    first = backbone(model)(input_ids=ids, use_cache=True)
    first_logp = torch.log_softmax(logits_for(model, first.last_hidden_state[0, -1:]), dim=-1)[0]
    cache = first.cache
    rest = [list(c) for c in continuations]
    totals = [float(first_logp[c[0]].double()) if c else 0.0 for c in rest]
    longer = [j for j, c in enumerate(rest) if len(c) > 1]
    if longer:
        cache.batch_repeat_interleave(len(longer))
        body, mask = right_padded([rest[j][:-1] for j in longer], pad, device)
        mask = torch.cat([torch.ones(len(longer), len(context), dtype=mask.dtype, device=device), mask], dim=1)
        hidden = backbone(model)(input_ids=body, attention_mask=mask, cache=cache, use_cache=True)
        for row, j in enumerate(longer):
            targets = torch.tensor(rest[j][1:], device=device)
            logits = logits_for(model, hidden.last_hidden_state[row, : len(targets)])
            totals[j] += float(torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).double().sum())
    if not all(math.isfinite(t) for t in totals):
        raise UserError("the model gives NaN or inf log-probabilities: its weights are broken (check the run)")
    return totals


def window_batches(windows: list[list[int]], pad: int, batch_size: int, tag: Tag) -> list[TokenBatch]:
    """Token windows as right-padded, tagged batches for the block engine, in the order given."""
    return [
        TokenBatch(*right_padded(windows[i : i + batch_size], pad), tag) for i in range(0, len(windows), batch_size)
    ]

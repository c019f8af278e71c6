"""Self-generated calibration for a language no corpus has (Ji et al., ICLR 2025, "Beware of Calibration Data for
Pruning LLMs"): the model writes its own calibration text.

Prompts: the demonstrations' template, ``Yoruba: <seed phrase>``, one per hand-written seed phrase of
``languages.SEED_PHRASES`` (a few everyday openings per language, in the language's own script). The English
name tells the model which language follows, the phrase starts it in that language and script.

Generation: ``ceil(n / (1 - DROP_FRACTION))`` continuations, split evenly over the prompts, sampled from the
``TOP_K`` likeliest tokens at ``TEMPERATURE`` with the torch generator seeded by the calibration seed, each exactly
``seqlen`` tokens long (BOS, prompt, continuation; EOS is held back until the row is full). Rows are generated
together, left-padded to the longest prompt: one step reads the weights once for all of them. Each continuation is
scored by the model's own perplexity on its generated tokens, and the most perplexing ``DROP_FRACTION`` is dropped
as low-quality text (Ji et al. filter the same way); the ``n`` kept rows stay in generation order. The same model,
seed and settings give the same rows; another seed gives other rows.
"""

from __future__ import annotations

import math
import unicodedata

import torch

from .errors import UserError
from .languages import SEED_PHRASES, english_name
from .text import bos_ids, encode, pad_id, shot_text

GENERATED = "gen"  # the pseudo-corpus name of self-generated text in recipes: gen:yo, mix:de=1+yo@gen=2
DROP_FRACTION = 0.2
TOP_K = 64  # Gemma's own sampling default; top-k alone, since nucleus sampling sorts the whole vocabulary every step
TEMPERATURE = 1.0
GENERATION_BATCH = 64  # rows per generate call: on a CPU a step costs about the same for 1 row as for 64


def prompts(language: str) -> list[str]:
    """The prompts for ``language``: ``<English name>: <seed phrase>``; refused where no seed phrase is known."""
    phrases = SEED_PHRASES.get(language)
    if not phrases:
        raise UserError(
            f"gen:{language}: langprune has no seed phrases in {english_name(language)} to start generation from; "
            f"add a few to languages.SEED_PHRASES, or calibrate with your own text, file:PATH@{language}"
        )
    return [shot_text(english_name(language), phrase) for phrase in phrases]


def check_writable(tokenizer, language: str) -> list[list[int]]:
    """The prompts' token ids, after checking that the tokenizer writes them back unchanged (no unknown tokens)."""
    rows = []
    for prompt in prompts(language):
        ids = encode(tokenizer, prompt)
        written = tokenizer.decode(ids)
        unknown = tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids
        if unknown or _normal(written) != _normal(prompt):
            raise UserError(
                f"gen:{language}: this tokenizer cannot write {english_name(language)} "
                f"({prompt!r} comes back as {written!r}); choose a model whose tokenizer covers the language"
            )
        rows.append(bos_ids(tokenizer) + ids)
    return rows


def _normal(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


@torch.no_grad()
def generate_rows(model, tokenizer, language: str, count: int, seqlen: int, seed: int) -> tuple[list[list[int]], dict]:
    """``count`` self-generated rows of exactly ``seqlen`` tokens in ``language``, and what to record about them."""
    from transformers import GenerationConfig

    from .calibration import shares
    from .engine.scoring import score_rows

    if model is None:
        raise UserError(f"gen:{language} has the model write its calibration: build it with the model (prune does)")
    starts = check_writable(tokenizer, language)
    if max(len(s) for s in starts) >= seqlen:
        raise UserError(f"gen:{language}: --seqlen {seqlen} leaves no room after the prompts; raise it")
    if tokenizer.eos_token_id is None:
        raise UserError(f"gen:{language}: generation needs a tokenizer with an eos_token")
    total = math.ceil(count / (1 - DROP_FRACTION))
    starts = [start for start, many in zip(starts, shares(total, [1.0] * len(starts))) for _ in range(many)]
    device, pad = next(model.parameters()).device, pad_id(tokenizer)
    longest, shortest = max(len(s) for s in starts), min(len(s) for s in starts)
    config = GenerationConfig(
        do_sample=True, top_k=TOP_K, top_p=1.0, temperature=TEMPERATURE, max_new_tokens=seqlen - shortest,
        min_new_tokens=seqlen - shortest, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
    )  # fmt: skip
    rows: list[list[int]] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for first in range(0, total, GENERATION_BATCH):  # left-padded: every row's continuation starts together
            chunk = starts[first : first + GENERATION_BATCH]
            ids = torch.tensor([[pad] * (longest - len(s)) + s for s in chunk], device=device)
            mask = torch.tensor([[0] * (longest - len(s)) + [1] * len(s) for s in chunk], device=device)
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config).tolist()
            rows += [row[longest - len(s) :][:seqlen] for row, s in zip(out, chunk)]
    scored = score_rows(model, rows, [len(s) for s in starts], pad)
    perplexities = [math.exp(-total_logp / max(n, 1)) for total_logp, n in scored]
    keep = sorted(sorted(range(len(rows)), key=lambda i: (perplexities[i], i))[:count])
    kept = [perplexities[i] for i in keep]
    record = {
        "prompts": prompts(language),
        "generated": len(rows),
        "kept": len(keep),
        "dropped": len(rows) - len(keep),
        "sampling": {"top_k": TOP_K, "temperature": TEMPERATURE, "seed": seed},
        "perplexity_kept": {"min": min(kept), "median": sorted(kept)[len(kept) // 2], "max": max(kept)},
        "perplexity_dropped_above": max(kept) if len(keep) < len(rows) else None,
    }
    return [rows[i] for i in keep], record

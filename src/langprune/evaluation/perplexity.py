"""Per-language perplexity on held-out text, token-weighted, with bits per byte.

The evaluation part of a corpus is joined and cut into windows of ``seqlen``
tokens (each after BOS); every token after the first of a window is
predicted. Perplexity is exp of the summed NLL over the summed token count,
so languages that a tokenizer splits finely are not favoured; bits per byte
divide the same NLL by the UTF-8 bytes of the text, which compares across
languages and tokenizers. Per-window sums are kept for bootstrap tests.
"""

from __future__ import annotations

import math

from ..calibration import evaluation_texts
from ..engine.scoring import score_rows
from ..text import pad_id, text_windows


def text_nll(model, tokenizer, texts: list[str], seqlen: int = 512, batch_size: int = 4) -> dict:
    """Summed NLL over every predicted token of the joined texts, with per-window (nll, tokens)."""
    windows = text_windows(tokenizer, texts, seqlen, complete=False)
    pad = pad_id(tokenizer)
    scored = score_rows(model, windows, [1] * len(windows), pad, batch_size)
    per_window = [[-total, count] for total, count in scored]
    return {
        "nll": sum(w[0] for w in per_window),
        "tokens": sum(w[1] for w in per_window),
        "bytes": len("\n\n".join(texts).encode("utf-8")),
        "windows": per_window,
    }


def summarize(nll: float, tokens: int, nbytes: int) -> dict:
    return {"ppl": math.exp(nll / tokens), "bits_per_byte": nll / math.log(2) / nbytes}


def evaluate_perplexity(model, tokenizer, corpus: str, language: str, seqlen: int = 512, batch_size: int = 4) -> dict:
    scores = text_nll(model, tokenizer, evaluation_texts(language, corpus), seqlen, batch_size)
    return {"corpus": corpus, **summarize(scores["nll"], scores["tokens"], scores["bytes"]), **scores}


def perplexity(model, tokenizer, languages: list[str], seqlen: int = 512, corpus: str = "udhr") -> dict[str, dict]:
    """Perplexity and bits per byte per language on the corpus' evaluation part."""
    return {language: evaluate_perplexity(model, tokenizer, corpus, language, seqlen) for language in languages}

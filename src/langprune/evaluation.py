"""Per-language perplexity on held-out text, token-weighted, with bits per byte.

The output head of multilingual models is huge (262k rows for Gemma 3), so
logits are produced for one sequence chunk at a time and reduced at once;
the sum of negative log-likelihoods is kept in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .calibration import evaluation_texts
from .errors import UserError


@torch.no_grad()
def text_nll(model, tokenizer, texts: list[str], seqlen: int = 512, batch_size: int = 4) -> dict:
    """Summed NLL over every predicted token of the joined texts, cut into windows of ``seqlen``."""
    stream = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    body = seqlen - len(bos)
    windows = [bos + stream[i : i + body] for i in range(0, len(stream), body)]
    windows = [w for w in windows if len(w) > 1]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id or 0
    head = model.get_output_embeddings()
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        width = max(len(w) for w in chunk)
        ids = torch.tensor([w + [pad] * (width - len(w)) for w in chunk], device=device)
        mask = torch.tensor([[1] * len(w) + [0] * (width - len(w)) for w in chunk], device=device)
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        for row in range(len(chunk)):
            n = int(mask[row].sum())
            logits = head(hidden[row, : n - 1]).float()
            if hasattr(model.config, "final_logit_softcapping") and model.config.final_logit_softcapping:
                cap = model.config.final_logit_softcapping
                logits = torch.tanh(logits / cap) * cap
            nll = F.cross_entropy(logits, ids[row, 1:n], reduction="sum")
            total += float(nll)
            count += n - 1
    if not math.isfinite(total):
        raise UserError("perplexity is not finite: the model produces NaN or inf logits")
    return {"nll": total, "tokens": count, "bytes": len("\n\n".join(texts).encode("utf-8"))}


def perplexity(model, tokenizer, languages: list[str], seqlen: int = 512, corpus: str = "udhr") -> dict[str, dict]:
    """Perplexity and bits per byte per language on the corpus' evaluation part."""
    results = {}
    for language in languages:
        scores = text_nll(model, tokenizer, evaluation_texts(language, corpus), seqlen)
        scores["ppl"] = math.exp(scores["nll"] / scores["tokens"])
        scores["bits_per_byte"] = scores["nll"] / math.log(2) / scores["bytes"]
        results[language] = scores
    return results

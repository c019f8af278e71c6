"""Text to token rows, in one place for calibration and evaluation: windows, BOS, the paper's shot template.

Calibration and evaluation must cut text and write demonstrations exactly
alike (a perplexity window and a calibration window of the same text are the
same tokens; a translation prompt's shots are calibration demonstrations),
so both read these helpers and neither has its own copy.
"""

from __future__ import annotations

import torch


def bos_ids(tokenizer) -> list[int]:
    """``[BOS]`` when the model uses one, else nothing."""
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (BOS and EOS are placed explicitly)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def text_windows(tokenizer, texts: list[str], seqlen: int, complete: bool = True) -> list[list[int]]:
    """Cut the joined texts into consecutive windows of ``seqlen`` tokens, each starting with BOS if the model uses one.

    Calibration wants ``complete`` windows of exactly ``seqlen`` tokens;
    evaluation keeps the shorter last one too, so that no held-out token is lost.
    """
    stream = encode(tokenizer, "\n\n".join(texts))
    bos = bos_ids(tokenizer)
    body = seqlen - len(bos)
    stop = len(stream) - body + 1 if complete else len(stream)
    windows = [bos + stream[i : i + body] for i in range(0, stop, body)]
    return windows if complete else [w for w in windows if len(w) > 1]


def shot_text(source_name: str, source: str, target_name: str | None = None, target: str | None = None) -> str:
    """One shot of the paper's templates, without its EOS: ``French: s`` and, for translation, newline ``English: t``."""
    text = f"{source_name}: {source}"
    return text if target_name is None else f"{text}\n{target_name}: {target}"


def demonstration_ids(tokenizer, shots, source_name: str, target_name: str | None = None) -> list[int]:
    """BOS, then per shot (source, target or None) the shot's tokens and EOS (translation-feature paper, Appendix A)."""
    row = bos_ids(tokenizer)
    for s, t in shots:
        row += encode(tokenizer, shot_text(source_name, s, target_name, t))
        row.append(tokenizer.eos_token_id)
    return row


def right_padded(rows: list[list[int]], pad: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids as one right-padded (ids, attention mask) pair; padding is 0 in the mask."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    return ids, mask


def pad_id(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad token, else EOS, else 0 (masked out either way)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0

"""Calibration sets: ``nsamples`` sequences of exactly ``seqlen`` tokens, built from a seed.

Recipes name the text: ``mono:de`` (one language), ``mix:en+de+zh`` (equal
shares of one budget), ``file:PATH`` (the user's text). Language recipes read
the calibration part of a corpus (UDHR by default), never its evaluation part.
Pre-tokenized sets (an ``n x seqlen`` tensor of ids, optionally with a mask)
are accepted as they are, for token-for-token comparisons with other tools.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import CORPORA, split_keys
from .engine import TokenBatch
from .errors import UserError

EVAL_FRACTION = 0.25


@dataclass
class CalibrationSet:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    sources: list[dict] = field(default_factory=list)
    recipe: str = "tokens"
    seed: int = 0

    def __post_init__(self):
        if self.input_ids.ndim != 2 or self.input_ids.shape[0] == 0 or self.input_ids.shape[1] == 0:
            raise UserError("calibration is empty: give at least one non-empty sequence")
        if int(self.attention_mask.sum()) == 0:
            raise UserError("calibration has no real tokens: every position is padding")

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())

    def batches(self, batch_size: int) -> list[TokenBatch]:
        return [
            TokenBatch(self.input_ids[i : i + batch_size], self.attention_mask[i : i + batch_size])
            for i in range(0, self.input_ids.shape[0], batch_size)
        ]

    def summary(self) -> dict:
        return {
            "recipe": self.recipe,
            "seed": self.seed,
            "sequences": int(self.input_ids.shape[0]),
            "seqlen": int(self.input_ids.shape[1]),
            "tokens": self.tokens,
            "languages": sorted({s["language"] for s in self.sources if s.get("language")}),
            "sources": self.sources,
        }

    @classmethod
    def from_tokens(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> "CalibrationSet":
        input_ids = torch.as_tensor(input_ids, dtype=torch.long)
        if input_ids.ndim == 1:
            input_ids = input_ids.unsqueeze(0)
        mask = torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask, dtype=torch.long)
        if mask.shape != input_ids.shape:
            raise UserError(f"attention mask shape {tuple(mask.shape)} differs from input ids {tuple(input_ids.shape)}")
        return cls(input_ids, mask, [{"name": "pre-tokenized", "sequences": int(input_ids.shape[0])}])


def _windows(tokenizer, texts: list[str], seqlen: int) -> list[list[int]]:
    """Cut the joined texts into consecutive windows of exactly ``seqlen`` tokens (BOS first if the model uses one)."""
    stream = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    body = seqlen - len(bos)
    return [bos + stream[i : i + body] for i in range(0, len(stream) - body + 1, body)]


def _language_texts(corpus: str, language: str, part: str, seed: int) -> list[str]:
    """Texts of one language from the calibration or evaluation part of a corpus, shuffled by seed."""
    if corpus not in CORPORA:
        raise UserError(f"unknown corpus {corpus!r}: choose one of {', '.join(CORPORA)}")
    units = CORPORA[corpus].units(language)
    calibration, evaluation = split_keys([u.key for u in units], EVAL_FRACTION, seed=0)
    keep = calibration if part == "calibration" else evaluation
    texts = [u.text for u in units if u.key in keep]
    random.Random(seed).shuffle(texts)
    return texts


def evaluation_texts(language: str, corpus: str = "udhr") -> list[str]:
    """The held-out part of a corpus for one language, in a fixed order."""
    return _language_texts(corpus, language, "evaluation", seed=0)


def parse_recipe(recipe: str) -> tuple[str, list[str] | str]:
    kind, _, arg = recipe.partition(":")
    if kind in ("mono", "mix") and arg:
        languages = [lang.strip() for lang in arg.split("+") if lang.strip()]
        if kind == "mono" and len(languages) != 1:
            raise UserError(f"recipe {recipe!r}: mono takes one language, e.g. mono:de; use mix:en+de for several")
        return kind, languages
    if kind == "file" and arg:
        return kind, arg
    raise UserError(f"malformed calibration recipe {recipe!r}: use mono:LANG, mix:LANG+LANG or file:PATH")


def build(
    recipe: str, tokenizer, nsamples: int = 128, seqlen: int = 512, seed: int = 0, corpus: str = "udhr"
) -> CalibrationSet:
    """Build a calibration set from a recipe; fewer sequences, with a warning, if text runs out."""
    kind, arg = parse_recipe(recipe)
    if kind == "file":
        path = Path(arg).expanduser()
        if not path.is_file():
            raise UserError(f"calibration file {arg} does not exist")
        texts = [t for t in path.read_text(encoding="utf-8").split("\n\n") if t.strip()]
        return _assemble([({"name": "file", "path": str(path)}, texts, nsamples)], tokenizer, seqlen, seed, recipe)
    shares = [nsamples // len(arg) + (i < nsamples % len(arg)) for i in range(len(arg))]
    groups = [
        ({"name": corpus, "language": lang}, _language_texts(corpus, lang, "calibration", seed), share)
        for lang, share in zip(arg, shares)
    ]
    return _assemble(groups, tokenizer, seqlen, seed, recipe)


def from_texts(texts: list[str], tokenizer, nsamples: int = 128, seqlen: int = 512, seed: int = 0) -> CalibrationSet:
    """A calibration set from the caller's own texts (in memory)."""
    return _assemble([({"name": "texts", "documents": len(texts)}, list(texts), nsamples)], tokenizer, seqlen, seed, "texts")


def _assemble(groups, tokenizer, seqlen: int, seed: int, recipe: str) -> CalibrationSet:
    """Cut each group's text into windows and sample its share of them with the seed."""
    if any(share < 1 for _, _, share in groups) or seqlen < 2:
        raise UserError("calibration needs at least one sequence per source and seqlen >= 2")
    rng = random.Random(seed)
    rows, sources, shortfalls = [], [], []
    for source, texts, share in groups:
        windows = _windows(tokenizer, texts, seqlen)
        if len(windows) > share:
            windows = [windows[i] for i in sorted(rng.sample(range(len(windows)), share))]
        if len(windows) < share:
            shortfalls.append(f"{source.get('language') or source.get('path')}: {len(windows)} of {share}")
        rows += windows
        sources.append({**source, "sequences": len(windows), "tokens": len(windows) * seqlen})
    if not rows:
        raise UserError(f"calibration {recipe!r} gave no sequence of {seqlen} tokens: lower --seqlen or add text")
    if shortfalls:
        warnings.warn(f"text ran out, fewer sequences of {seqlen} tokens than asked ({'; '.join(shortfalls)})")
    ids = torch.tensor(rows, dtype=torch.long)
    return CalibrationSet(ids, torch.ones_like(ids), sources, recipe, seed)

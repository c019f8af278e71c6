"""Few-shot translation (translation-feature paper, section 4.1): BLEU and chrF with sacrebleu.

The prompt is the calibration template of Appendix A: n demonstration shots
``Source: s`` newline ``Target: t`` each followed by EOS (the same seeded
shots, from the corpus' calibration part, for every test sentence), then
``Source: s`` newline ``Target:``. Decoding is greedy by default, or samples
with the paper's Table 5 settings; the hypothesis is the generated text up to
the first newline. Prompts are left-padded in batches (position ids follow
the attention mask) and scored by sacrebleu, with the Chinese and Japanese
tokenizers where the target needs them.
"""

from __future__ import annotations

import random

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..data import get_corpus
from ..engine.distributed import run_shared
from ..errors import UserError
from ..languages import english_name
from ..text import demonstration_ids, encode, pad_id
from .tasks import TaskSpec

BLEU_TOKENIZER = {"zh": "zh", "ja": "char", "th": "char", "ko": "char"}
DIRECTIONS = ("to-en", "from-en")


def check_directions(chosen) -> None:
    """Unset (None or empty: the task's own) or a choice of ``to-en`` and ``from-en``."""
    if not chosen:  # unset (the command line gives an empty tuple): the task's own
        return
    unknown = [d for d in chosen if d not in DIRECTIONS]
    if unknown:
        raise UserError(f"unknown translation direction {unknown[0]!r}: use to-en, from-en or to-en,from-en")


def directions(task: TaskSpec, language: str) -> list[tuple[str, str]]:
    if language == "en":
        return []
    pairs = {"to-en": (language, "en"), "from-en": ("en", language)}
    return [pairs[d] for d in task.options.get("directions", ["to-en", "from-en"])]


def test_pairs(corpus: str, source: str, target: str, limit: int | None, shots: int, seed: int):
    """Seeded shots from the calibration part; test pairs from the evaluation part, in corpus order."""
    data = get_corpus(corpus)
    pool = data.pairs(source, target, "calibration")
    tests = data.pairs(source, target, "evaluation")[: limit or None]
    if len(pool) < shots or not tests:
        raise UserError(
            f"{corpus} has {len(pool)} calibration and {len(tests)} evaluation pairs for "
            f"{source}-{target}: too few for {shots}-shot translation"
        )
    return random.Random(seed).sample(pool, shots), tests


class _StopAtNewline(StoppingCriteria):
    """Finish a row once its generated text holds a newline (works for any tokenizer, word-level included)."""

    def __init__(self, tokenizer, prompt_width: int):
        self.tokenizer, self.prompt_width = tokenizer, prompt_width

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        return torch.tensor(["\n" in text for text in texts], device=input_ids.device)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    sampling: dict | None,
    seed: int,
    batch_size: int = 8,
) -> list[str]:
    """Continuations of each prompt up to the first newline (greedy unless ``sampling`` is given)."""
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)

    def run(start: int) -> dict[int, str]:
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        # generate() samples from the global generator: seed it inside a forked RNG state, so the caller's
        # random state is the same afterwards and each batch's draws depend only on (seed, batch).
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed + start)
            generated = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=bool(sampling),
                **(sampling or {"temperature": None, "top_k": None, "top_p": None}),
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=pad,
                stopping_criteria=StoppingCriteriaList([_StopAtNewline(tokenizer, width)]),
            )
        rows = generated[:, width:]
        return {
            start + k: tokenizer.decode(row, skip_special_tokens=True).split("\n")[0].strip()
            for k, row in enumerate(rows)
        }

    done = run_shared(list(range(0, len(prompts), batch_size)), run)  # with torchrun, each rank its share
    return [done[i] for i in range(len(prompts))]


def evaluate_translation(
    model,
    tokenizer,
    task: TaskSpec,
    corpus: str,
    source: str,
    target: str,
    limit: int | None,
    seed: int = 0,
    sample: bool = False,
    batch_size: int = 8,
) -> dict:
    import sacrebleu

    shots, tests = test_pairs(corpus, source, target, limit, task.options.get("shots", 4), seed)
    names = english_name(source), english_name(target)
    prefix = demonstration_ids(tokenizer, shots, *names)
    prompts = [prefix + encode(tokenizer, f"{names[0]}: {s}\n{names[1]}:") for s, _ in tests]
    sampling = task.options.get("sampling") if sample else None
    hypotheses = generate(model, tokenizer, prompts, task.options.get("max_new_tokens", 64), sampling, seed, batch_size)
    references = [t for _, t in tests]
    bleu = sacrebleu.BLEU(tokenize=BLEU_TOKENIZER.get(target, "13a"))
    chrf = sacrebleu.CHRF()
    return {
        "corpus": corpus,
        "bleu": bleu.corpus_score(hypotheses, [references]).score,
        "chrf": chrf.corpus_score(hypotheses, [references]).score,
        "n": len(tests),
        "signature": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())},
        "decoding": "sample" if sampling else "greedy",
        "hypotheses": hypotheses,
        "references": references,
        "sources": [s for s, _ in tests],
    }

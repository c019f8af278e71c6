"""Zero-shot cloze classification and multiple choice: the option whose continuation is most likely wins.

Cloze tasks fill each verbalised label into the template (``{answer}``) and
compare the likelihood of everything from the label on; the text before it
is shared by all options, so this ranks the filled-in prompts exactly as
their full likelihoods do. Multiple-choice tasks list lettered options and
compare the likelihood of each answer letter. A space that ends the shared
context moves to the options, so each option is tokenized as the model saw
such words in training (`` negative`` rather than ``negative``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data import Example, get_corpus
from ..engine.scoring import Request, score_requests
from ..text import bos_ids, encode, pad_id
from .tasks import TaskSpec

LETTERS = "ABCDEFGHIJ"


@dataclass
class Prompted:
    """One example as a shared context and one continuation per option; ``gold`` indexes ``options``."""

    key: str
    context: str
    continuations: list[str]
    options: list[str]
    gold: int


def cloze_prompt(task: TaskSpec, example: Example) -> Prompted | None:
    """None for examples whose label the verbalizer leaves out (e.g. MultiEmo's neutral reviews)."""
    verbalizer: dict = task.options["verbalizer"]
    if example.label not in verbalizer:
        return None
    head, tail = task.options["template"].split("{answer}", 1)
    context, rest = head.format(**example.fields), tail.format(**example.fields)
    labels = list(verbalizer)
    return Prompted(
        example.key, context, [verbalizer[label] + rest for label in labels], labels, labels.index(example.label)
    )


def choice_prompt(task: TaskSpec, example: Example) -> Prompted:
    letters = LETTERS[: len(example.choices)]
    options = "\n".join(
        task.options["option"].format(letter=letter, text=c) for letter, c in zip(letters, example.choices)
    )
    context = task.options["template"].format(options=options, **example.fields)
    gold = letters.index(example.label) if example.label in letters else list(example.choices).index(example.label)
    return Prompted(
        example.key, context, [task.options["answer"].format(letter=letter) for letter in letters], list(letters), gold
    )


def prompts(task: TaskSpec, corpus: str, language: str, limit: int | None, part: str = "evaluation") -> list[Prompted]:
    """The first ``limit`` usable examples of a part of the corpus (evaluation, or calibration as a dev split)."""
    build = cloze_prompt if task.type == "cloze" else choice_prompt
    chosen = []
    for example in get_corpus(corpus).examples(language, part):
        prompted = build(task, example)
        if prompted is not None:
            chosen.append(prompted)
        if limit and len(chosen) >= limit:
            break
    return chosen


def requests_for(tokenizer, prompted: Prompted) -> list[Request]:
    context, continuations = prompted.context, prompted.continuations
    if context.endswith(" "):
        context, continuations = context[:-1], [" " + c for c in continuations]
    context_ids = tuple(bos_ids(tokenizer) + encode(tokenizer, context))
    return [Request(context_ids, tuple(encode(tokenizer, c))) for c in continuations]


def score_prompts(model, tokenizer, examples: list[Prompted], batch_size: int = 8, progress=None) -> list[dict]:
    """Each example's option scores, the predicted option (most likely) and whether it is the gold one."""
    requests = [r for p in examples for r in requests_for(tokenizer, p)]
    scores = iter(score_requests(model, requests, pad_id(tokenizer), batch_size, progress))
    items = []
    for p in examples:
        option_scores = [next(scores) for _ in p.options]
        predicted = max(range(len(p.options)), key=lambda i: option_scores[i])
        items.append(
            {
                "key": p.key,
                "scores": option_scores,
                "options": p.options,
                "gold": p.gold,
                "predicted": predicted,
                "correct": int(predicted == p.gold),
            }
        )
    return items


def evaluate_choices(
    model, tokenizer, task: TaskSpec, corpus: str, language: str, limit: int | None, batch_size: int = 8, progress=None
) -> dict:
    """Accuracy with per-example option scores (kept for RankC and for significance tests)."""
    items = score_prompts(model, tokenizer, prompts(task, corpus, language, limit), batch_size, progress)
    accuracy = sum(i["correct"] for i in items) / len(items) if items else float("nan")
    return {"corpus": corpus, "accuracy": accuracy, "n": len(items), "items": items}

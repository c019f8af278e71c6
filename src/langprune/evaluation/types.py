"""Task types: what runs a task of each type, and which metrics its results carry (field, label, format, direction).

Every table (``langprune eval``'s, ``grid table``) and every verdict reads a
metric's direction from here; a metric nobody declared is an error, never a
guess. A task file (``tasks/*.yaml``) names its type; a new task type is one
``TaskType`` entry here with its runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UserError, did_you_mean
from .choice import evaluate_choices
from .fidelity import evaluate_fidelity
from .perplexity import evaluate_perplexity
from .translation import evaluate_translation

HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class Metric:
    """One number of a task's result: its field, table label, format, and which way is better (None: a count)."""

    name: str  # how tables and --metric name it (ppl, bpb, snr, error, accuracy, bleu, chrf, rankc, n, tokens)
    field: str  # its key in a result
    label: str
    format: str
    better: str | None

    @property
    def lower_is_better(self) -> bool:
        return self.better == LOWER


@dataclass(frozen=True)
class TaskType:
    """A kind of task: its metrics (the first with a direction is its headline) and the function that runs a job."""

    name: str
    metrics: tuple[Metric, ...]
    run: Callable | None  # (job, model, tokenizer, dense, settings) -> result; None: computed from other results

    @property
    def headline(self) -> Metric:
        return next(m for m in self.metrics if m.better is not None)

    def metric(self, name: str) -> Metric:
        for metric in self.metrics:
            if name in (metric.name, metric.field):
                return metric
        known = [m.name for m in self.metrics if m.better is not None]
        raise UserError(
            f"{self.name} tasks have no metric {name!r}{did_you_mean(name, known)}: choose {', '.join(known)}"
        )


def _perplexity(job, model, tokenizer, dense, settings):
    return evaluate_perplexity(model, tokenizer, job.corpus, job.key, settings.seqlen, settings.batch_size)


def _fidelity(job, model, tokenizer, dense, settings):
    if dense is None:
        raise UserError("fidelity compares with the dense model: evaluate a run folder, or pass the dense model")
    return evaluate_fidelity(dense, model, tokenizer, job.corpus, job.key, settings.seqlen, settings.batch_size)


def _choices(job, model, tokenizer, dense, settings):
    return evaluate_choices(model, tokenizer, job.task, job.corpus, job.key, settings.limit, settings.batch_size)


def _translation(job, model, tokenizer, dense, settings):
    return evaluate_translation(
        model,
        tokenizer,
        job.task,
        job.corpus,
        job.source,
        job.target,
        settings.limit,
        settings.seed,
        settings.sample,
        settings.batch_size,
    )


ACCURACY = (Metric("accuracy", "accuracy", "accuracy", ".3f", HIGHER), Metric("n", "n", "n", "d", None))
TASK_TYPES: dict[str, TaskType] = {
    t.name: t
    for t in (
        TaskType(
            "perplexity",
            (
                Metric("ppl", "ppl", "ppl", ".2f", LOWER),
                Metric("bpb", "bits_per_byte", "bits/byte", ".3f", LOWER),
                Metric("tokens", "tokens", "tokens", "d", None),
            ),
            _perplexity,
        ),
        TaskType(
            "fidelity",
            (
                Metric("snr", "snr_db", "SNR dB", ".2f", HIGHER),
                Metric("error", "pruning_error", "pruning error", ".4f", LOWER),
            ),
            _fidelity,
        ),
        TaskType("cloze", ACCURACY, _choices),
        TaskType("choice", ACCURACY, _choices),
        TaskType(
            "translation",
            (
                Metric("bleu", "bleu", "BLEU", ".2f", HIGHER),
                Metric("chrf", "chrf", "chrF", ".2f", HIGHER),
                Metric("n", "n", "n", "d", None),
            ),
            _translation,
        ),
        TaskType("rankc", (Metric("rankc", "rankc", "RankC vs en", ".3f", HIGHER),), None),
    )
}

"""Run evaluation tasks over languages: plan which corpus serves each (task, language), then score.

Planning comes first so that a task without data for a language is refused
before any model work (or skipped and recorded, when asked). Results keep
per-item details (window NLLs, option scores, hypotheses) so that
``langprune compare`` can run paired significance tests later.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError, check_at_least
from ..languages import check_language
from ..settings import setting
from .harness import harness_evaluate
from .lrp2 import language_projection, projected, search_layers
from .rankc import rankc, rankings_of
from .tasks import GROUPS, TaskSpec, catalog, select, with_overrides
from .translation import check_directions, directions
from .types import TASK_TYPES


@dataclass
class EvalOptions:
    """Evaluation options (the ``eval`` command's, a grid's ``evaluation``); out-of-range values are refused when made."""

    seqlen: int = setting(512, "Tokens per perplexity/fidelity window.")
    batch_size: int = setting(8, "Sequences per forward pass.")
    limit: int | None = setting(
        None,
        "At most this many examples (or sentences) per task and language (1 or more); ppl and fidelity always "
        "read the whole held-out part.",
    )
    seed: int = setting(0, "Seed for translation shots and sampling.")
    sample: bool = setting(False, "Translation: sample with the paper's Table 5 settings instead of greedy.")
    corpus: str | None = setting(None, "Corpus for ppl and fidelity (default: udhr).")
    translation_corpus: str | None = setting(
        None, "Parallel corpus for translation (default: flores if fetched, else libreoffice-help).", flag="mt-corpus"
    )
    translation_directions: tuple[str, ...] | None = setting(
        None,
        "Translation directions, comma-separated: to-en, from-en or both (default: the task's own, both).",
        flag="mt-directions",
    )
    skip_missing: bool = setting(False, "Skip (and record) tasks without data for a language instead of failing.")
    lrp2: bool = setting(
        False, "The LRP2 baseline: project non-English hidden states towards English at searched blocks (a, b)."
    )
    lrp2_corpus: str = setting("udhr", "LRP2: corpus whose calibration part gives the mean vectors per language.")
    lrp2_stride: int = setting(3, "LRP2: step of the (a, b) search grid, in blocks.")
    lrp2_dev: int = setting(32, "LRP2: development examples per (a, b).")
    harness: tuple[str, ...] = setting(
        (), "lm-evaluation-harness tasks, comma-separated (e.g. arc_easy), run on the model in memory."
    )
    harness_include: str | None = setting(None, "A folder of harness task YAML files (local data; no network).")
    num_fewshot: int | None = setting(None, "lm-eval tasks: few-shot examples per prompt (default: each task's own).")
    log_samples: bool = setting(
        False, "lm-eval tasks: also write per-sample logs (samples_<task>_<date>.jsonl), which compare tests."
    )
    harness_model_args: str | None = setting(
        None, "lm-eval's HFLM arguments as key=value,... (e.g. max_length=2048,add_bos_token=True)."
    )

    def __post_init__(self):
        for option, value, minimum in (
            ("--seqlen", self.seqlen, 2),
            ("--batch-size", self.batch_size, 1),
            ("--limit", self.limit, 1),
            ("--lrp2-stride", self.lrp2_stride, 1),
            ("--num-fewshot", self.num_fewshot, 0),
        ):
            check_at_least(option, value, minimum)
        if isinstance(self.translation_directions, str):  # a grid file may give one direction as a word
            self.translation_directions = tuple(self.translation_directions.split(","))
        check_directions(self.translation_directions)
        harness_only = {
            "--num-fewshot": self.num_fewshot is not None,
            "--log-samples": self.log_samples,
            "--harness-model-args": self.harness_model_args,
        }
        asked = [flag for flag, given in harness_only.items() if given]
        if asked and not self.harness:
            raise UserError(f"{asked[0]} applies to lm-eval tasks: add --harness TASKS (e.g. --harness arc_easy)")


@dataclass(frozen=True)
class Job:
    task: TaskSpec
    key: str  # a language, or "src-tgt" for translation
    corpus: str
    source: str | None = None
    target: str | None = None


def plan(names: list[str], languages: list[str], settings: EvalOptions) -> tuple[list[Job], list[str]]:
    """Jobs for every task and language that has data; the rest is an error, or skipped with ``skip_missing``."""
    for language in languages:
        check_language(language)
    tasks = [
        with_overrides(t, settings.corpus, settings.translation_corpus, settings.translation_directions)
        for t in select(names)
    ]
    if any(t.type == "rankc" for t in tasks) and not any(t.type == "cloze" for t in tasks):
        tasks += select(["cloze"])  # RankC ranks the labels of cloze tasks
    jobs, missing = [], []
    grouped = {name: [t for t in tasks if t.type == GROUPS[name]] for name in names if name in GROUPS}
    for task in tasks:
        if task.type == "rankc":
            continue
        wanted = list(languages)
        if task.type == "cloze" and any(t.type == "rankc" for t in tasks) and "en" not in wanted:
            wanted.append("en")  # the reference language of RankC
        for language in wanted:
            if task.type == "translation":
                for source, target in directions(task, language):
                    corpus = task.corpus_for(target, source)
                    if corpus:
                        jobs.append(Job(task, f"{source}-{target}", corpus, source, target))
                    else:
                        missing.append(f"{task.name} {source}-{target}")
                continue
            corpus = task.corpus_for(language)
            if corpus:
                jobs.append(Job(task, language, corpus))
            elif not any(task in members for members in grouped.values()):
                missing.append(f"{task.name} {language}")
    for group, members in grouped.items():
        for language in languages:
            if not any(j.task in members and j.key == language for j in jobs):
                missing.append(f"{group} {language} (tasks {', '.join(t.name for t in members)})")
    if missing and not settings.skip_missing:
        raise UserError(
            f"no data for {'; '.join(missing)}: fetch a corpus that has them (`langprune data list`), "
            "drop those languages, or pass --skip-missing"
        )
    return jobs, missing


def run_job(job: Job, model, tokenizer, dense, settings: EvalOptions) -> dict:
    """One (task, language) job, run by its task type's runner."""
    return TASK_TYPES[job.task.type].run(job, model, tokenizer, dense, settings)


def evaluate(
    model,
    tokenizer,
    tasks: list[str],
    languages: list[str],
    settings: EvalOptions | None = None,
    dense=None,
    progress=None,
    finished: dict | None = None,
    on_result=None,
    folder: Path | None = None,
    model_name: str = "langprune-model",
) -> dict:
    """Evaluate ``model`` on task names or groups (ppl, fidelity, cloze, mcq, translation, rankc) per language.

    ``dense`` is the unpruned model that fidelity compares with. ``progress(done,
    total, description)`` is told about each (task, language) as it starts.
    ``finished`` holds results of an earlier run (``{task: {key: result}}``)
    that are kept instead of recomputed; ``on_result(results)`` is called
    after every (task, language) that finishes, so a caller can save as it
    goes. A job that fails with a user-fixable error is recorded under
    ``failed`` and the others go on; a bug still raises. With ``folder``,
    lm-eval tasks also leave lm-eval's own results files there (named after
    ``model_name``).
    """
    settings = settings or EvalOptions()
    jobs, skipped = plan(tasks, languages, settings)
    results: dict[str, dict] = {name: dict(per_key) for name, per_key in (finished or {}).items()}
    jobs = [job for job in jobs if job.key not in results.get(job.task.name, {})]
    projections = lrp2_projections(model, tokenizer, languages, settings, progress) if settings.lrp2 and jobs else {}
    failed: dict[str, str] = {}

    def snapshot() -> dict:
        return {
            "tasks": results,
            "languages": languages,
            "skipped": skipped,
            "failed": failed,
            "settings": asdict(settings),
        }

    for done, job in enumerate(jobs):
        if progress:
            progress(done, len(jobs), f"{job.task.name} {job.key}")
        language = job.target if job.source == "en" else (job.source or job.key)
        try:
            with projected(model, projections[language]) if language in projections else nullcontext():
                result = run_job(job, model, tokenizer, dense, settings)
            for name, value in result.items():
                if isinstance(value, float) and not math.isfinite(value):
                    raise UserError(f"{name} is {value} (no examples, or a broken model)")
        except UserError as exc:
            failed[f"{job.task.name} {job.key}"] = str(exc)
            continue
        results.setdefault(job.task.name, {})[job.key] = result
        if on_result:
            on_result(snapshot())
    if "rankc" in [t.name for t in select(tasks)]:
        results["rankc"] = consistency_with_reference(results, catalog()["rankc"].options.get("reference", "en"))
    if progress:
        progress(len(jobs), len(jobs), "done")
    out = snapshot()
    if settings.harness:
        if progress:
            progress(len(jobs), len(jobs), f"lm-eval {', '.join(settings.harness)}")
        out["harness"] = harness_evaluate(
            model,
            tokenizer,
            list(settings.harness),
            settings.harness_include,
            settings.limit,
            settings.batch_size,
            num_fewshot=settings.num_fewshot,
            seed=settings.seed,
            model_args=settings.harness_model_args,
            log_samples=settings.log_samples,
            folder=folder,
            model_name=model_name,
        )
    if projections:
        out["lrp2"] = {
            lang: {"a": p.a, "b": p.b, "dev_task": p.dev_task, "search": p.search} for lang, p in projections.items()
        }
    return out


def lrp2_projections(model, tokenizer, languages: list[str], settings: EvalOptions, progress=None) -> dict:
    """For each non-English language: mean vectors, then (a, b) searched on a cloze task's development split."""
    projections = {}
    cloze = [t for t in catalog().values() if t.type == "cloze"]
    for language in [lang for lang in languages if lang != "en"]:
        dev = next(((t, t.corpus_for(language)) for t in cloze if t.corpus_for(language)), None)
        if dev is None:
            raise UserError(f"LRP2 searches its layers on a cloze task's development split, and none has {language}")
        if progress:
            progress(0, None, f"LRP2 {language}: mean vectors and (a, b) search on {dev[0].name}")
        projection = language_projection(model, tokenizer, language, settings.lrp2_corpus, settings.seed)
        search_layers(
            model, tokenizer, projection, dev[0], dev[1], settings.lrp2_dev, settings.lrp2_stride, settings.batch_size
        )
        projection.dev_task = dev[0].name
        projections[language] = projection
    return projections


def consistency_with_reference(results: dict, reference: str) -> dict:
    """RankC of every cloze task's language against the reference language, on shared example keys."""
    scores = {}
    for name, task in catalog().items():
        per_language = results.get(name, {})
        if task.type != "cloze" or reference not in per_language:
            continue
        base = rankings_of(per_language[reference]["items"])
        for language, result in per_language.items():
            if language != reference:
                value, n = rankc(rankings_of(result["items"]), base)  # None when they share no example
                scores.setdefault(name, {})[language] = {"rankc": value, "n": n, "reference": reference}
    return scores

"""Evaluation tasks, declared as data: one YAML file per task in ``tasks/``.

A task names its type (perplexity, fidelity, cloze, choice, translation,
rankc), the corpora it reads (the first one that has the language and can be
had wins) and its template. Adding a task over a new corpus is adding a YAML
file. ``--tasks`` takes task names or the group names ``cloze`` (every cloze
task) and ``mcq`` (every multiple-choice task).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import yaml

from ..data import get_corpus, usable
from ..errors import UserError, did_you_mean

GROUPS = {"cloze": "cloze", "mcq": "choice"}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    type: str
    corpora: tuple[str, ...]
    options: dict = field(default_factory=dict, compare=False, hash=False)

    def corpus_for(self, language: str, source: str | None = None) -> str | None:
        """The first of the task's corpora that has ``language`` (and ``source`` for pairs) and can be read."""
        for name in self.corpora:
            corpus = get_corpus(name)
            wanted = {language} | ({source} if source else set())
            if wanted <= set(corpus.languages) and usable(corpus):
                return name
        return None


@cache
def catalog() -> dict[str, TaskSpec]:
    tasks = {}
    for entry in sorted(resources.files(__package__).joinpath("tasks").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            spec = yaml.safe_load(entry.read_text(encoding="utf-8"))
            name, kind = spec.pop("name"), spec.pop("type")
            if kind not in task_types():
                raise ValueError(f"task file {entry.name}: unknown type {kind!r}")
            corpora = spec.pop("corpora", None) or ([spec.pop("corpus")] if "corpus" in spec else [])
            tasks[name] = TaskSpec(name, kind, tuple(corpora), spec)
    return tasks


def with_overrides(
    task: TaskSpec, text_corpus: str | None, translation_corpus: str | None, translation_directions=None
) -> TaskSpec:
    """The task reading a user-chosen corpus (``text_corpus`` for ppl and fidelity, ``translation_corpus`` for
    translation), and translating in the chosen directions only."""
    if task.type == "translation" and translation_directions:
        task = TaskSpec(
            task.name, task.type, task.corpora, {**task.options, "directions": list(translation_directions)}
        )
    corpus = {"perplexity": text_corpus, "fidelity": text_corpus, "translation": translation_corpus}.get(task.type)
    if corpus is None:
        return task
    if task.type == "translation" and get_corpus(corpus).kind != "parallel":
        raise UserError(f"translation needs a parallel corpus, and {corpus} is {get_corpus(corpus).kind}")
    get_corpus(corpus)
    return TaskSpec(task.name, task.type, (corpus,), task.options)


def select(names: list[str]) -> list[TaskSpec]:
    """Task specs for task and group names, in catalog order within a group, without repeats."""
    tasks = catalog()
    chosen: list[TaskSpec] = []
    for name in names:
        if name in GROUPS:
            members = [t for t in tasks.values() if t.type == GROUPS[name]]
        elif name in tasks:
            members = [tasks[name]]
        else:
            known = [*tasks, *GROUPS]
            raise UserError(f"unknown task {name!r}{did_you_mean(name, known)}: choose from {', '.join(known)}")
        chosen += [t for t in members if t not in chosen]
    return chosen


def task_types() -> dict:
    """The task type registry (imported here lazily: the types' runners import this module's TaskSpec)."""
    from .types import TASK_TYPES

    return TASK_TYPES

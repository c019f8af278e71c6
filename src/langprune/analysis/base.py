"""What every analysis shares: its settings are its fields, and one runner validates, computes, writes and draws.

An analysis is a dataclass subclass of ``Analysis`` (its options are its
fields, declared with ``setting``, so the CLI command is made from them) with
``validate`` (every check that needs no model), ``compute`` (the numbers, as
a JSON-ready dict), ``draw`` (PNGs from that dict alone) and ``summary`` (a
few lines for the terminal). ``register`` adds it to ``ANALYSES``; that line
and the class are all a new analysis needs.

An analysis folder holds ``analysis.json`` (the numbers, the settings and
provenance) and the PNGs drawn from that JSON alone; ``redraw`` draws them
again. The folder is built under a temporary name and renamed at the end.
Models are loaded one after another (dense first, then each pruned run),
each with the requested placement, so no analysis holds two models.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .. import calibration
from ..data import get_corpus
from ..engine import distributed
from ..engine.placement import PlacementSettings, resolve_device
from ..errors import UserError, check_at_least
from ..languages import check_language
from ..models import load_model
from ..runs import Reporter, load_report
from ..runs.folder import check_out
from ..runs.provenance import provenance
from ..settings import jsonable, setting
from ..storage import publish_folder, read_json_object, write_json_atomic
from .inputs import sentence_batches

RESULT_FILE = "analysis.json"
LARGEST = 1e30  # a number beyond this in analysis.json is a corrupt or hand-edited file, not a result


@dataclass(kw_only=True)
class Analysis:
    """Base of every analysis: where it writes, and the four steps a subclass fills in."""

    name: ClassVar[str] = ""
    out: Path = setting(
        help="Folder for analysis.json and the figures (refused if it exists, unless --overwrite).", required=True
    )
    overwrite: bool = setting(False, "Replace an existing --out.")

    def validate(self) -> None:
        """Everything that can be checked before a model loads; one clear line for the first mistake."""
        check_out(Path(self.out), self.overwrite)

    def compute(self, reporter: Reporter) -> dict:
        raise NotImplementedError

    @staticmethod
    def draw(result: dict, folder: Path) -> list[Path]:
        """The PNG files drawn from ``result`` alone into ``folder``."""
        return []

    @staticmethod
    def summary(result: dict) -> list[str]:
        """A few lines that say what the analysis found, for the terminal."""
        return []

    def record(self) -> dict:
        """The settings as JSON: paths as strings, tuples as lists."""
        return jsonable(dataclasses.asdict(self))


@dataclass(kw_only=True)
class ModelAnalysis(PlacementSettings, Analysis):
    """An analysis that runs a model: where and in which dtype."""

    def validate(self) -> None:
        self.check_placement()
        super().validate()


@dataclass(kw_only=True)
class TextAnalysis(ModelAnalysis):
    """An analysis of the dense model and pruned runs of it on the same held-out sentences per language."""

    model: str = setting("gemma-3-270m", "The dense model the runs were pruned from.")
    pruned: tuple[Path, ...] = setting((), "A pruned run folder to compare (repeatable).")
    langs: tuple[str, ...] = setting(
        ("en", "de", "fr", "zh", "hi", "sw"), "Comma-separated languages whose held-out text is analysed."
    )
    corpus: str = setting("udhr", "Corpus whose held-out part is analysed.")
    limit: int | None = setting(None, "At most this many texts per language.")
    seqlen: int = setting(512, "Tokens kept per text.")
    batch_size: int = setting(8, "Texts per forward pass.")

    def validate(self) -> None:
        check_at_least("--seqlen", self.seqlen, 2)
        check_at_least("--batch-size", self.batch_size, 1)
        check_at_least("--limit", self.limit, 1)
        if len(set(self.langs)) < 2:
            raise UserError(f"{self.name} compares languages: give at least two with --langs, e.g. --langs en,de,fr")
        corpus = get_corpus(self.corpus)
        for language in self.langs:
            check_language(language)
            corpus.check(language)
        for run in self.pruned:
            report = load_report(run)
            if report.get("model") != self.model:
                raise UserError(
                    f"{run} prunes {report.get('model')}, not --model {self.model}: compare runs of that model"
                )
        labels = [self.model] + [Path(run).name for run in self.pruned]
        if len(set(labels)) != len(labels):
            raise UserError("two pruned runs share a folder name: give runs with distinct names")
        super().validate()

    def per_model(self, reporter: Reporter, what: str, collect) -> tuple[dict, list]:
        """Run ``collect(model, batches, tokenizer, progress)`` on every model in turn, on the same sentences."""
        found, batches = {}, None
        labels = [self.model] + [Path(run).name for run in self.pruned]
        device = distributed.rank_device(resolve_device(self.device))  # this rank's GPU under torchrun
        for label, source in zip(labels, [self.model, *map(str, self.pruned)]):
            model, tokenizer = load_model(source, self.dtype, device, self.offload)
            if batches is None:
                batches = sentence_batches(
                    tokenizer, list(self.langs), self.corpus, self.limit, self.seqlen, self.batch_size
                )
                calibration.check_seqlen(min(self.seqlen, max(int(b.input_ids.shape[1]) for b in batches)), model)
            reporter.note(f"{what}: {label}")
            # every run prunes --model (checked in validate), so all models share one architecture
            found[label] = collect(model, batches, tokenizer, lambda d, t: reporter.evaluating(d, t, f"{what} {label}"))
            del model  # the next model loads only once this one is gone
            gc.collect()
        return found, batches


ANALYSES: dict[str, type[Analysis]] = {}


def register(cls: type[Analysis]) -> type[Analysis]:
    """Add an analysis class under its ``name`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    ANALYSES[cls.name] = cls
    return cls


def run_analysis(analysis: Analysis, reporter: Reporter | None = None) -> dict:
    """Validate, compute, write ``analysis.json`` and the figures into ``analysis.out``; returns the result.

    Under torchrun every rank computes (LAPE splits its sentence batches over the ranks and sums the counts;
    the other analyses run whole on each rank) and rank 0 writes.
    """
    analysis.validate()
    device = resolve_device(getattr(analysis, "device", "cpu"))
    with distributed.session(os.environ.get("LANGPRUNE_DIST_BACKEND", "auto"), device) as world:
        distributed.check_agreement(analysis.record())
        result = _analyse(analysis, (reporter or Reporter()) if world.leader else Reporter(), world.leader)
        distributed.barrier("rank 0 wrote the analysis")
    return result


def _analyse(analysis: Analysis, reporter: Reporter, write: bool) -> dict:
    start = time.perf_counter()
    result = analysis.compute(reporter)
    result = {
        "analysis": analysis.name,
        **result,
        "seconds": time.perf_counter() - start,
        "settings": analysis.record(),
        "provenance": provenance(),
    }

    def fill(partial: Path) -> None:
        write_json_atomic(partial / RESULT_FILE, result)
        type(analysis).draw(result, partial)

    if write:
        publish_folder(Path(analysis.out), analysis.overwrite, fill)
    return result


def redraw(folder: Path) -> list[Path]:
    """Draw an analysis folder's figures again from its ``analysis.json`` alone; a damaged file is one clear line."""
    path = Path(folder) / RESULT_FILE
    result = read_json_object(path, "analysis result")
    kind = ANALYSES.get(result.get("analysis"))
    if kind is None:
        raise UserError(f"{path} is not a langprune analysis result (no known 'analysis' kind)")
    bad = _bad_number(result)
    if bad is not None:
        where, value = bad
        raise UserError(
            f"{path} holds {value} at {where}: an analysis writes finite numbers only, so the file is damaged "
            "or edited; run the analysis again"
        )
    try:
        return kind.draw(result, Path(folder))
    except (KeyError, IndexError, TypeError) as exc:
        raise UserError(
            f"{path} is not a complete {kind.name} result ({type(exc).__name__}: {exc}); run the analysis again"
        ) from None


def _bad_number(value, where: str = "the top") -> tuple[str, float] | None:
    """The first number that is NaN, infinite or beyond ``LARGEST`` in a JSON value, with its path."""
    if isinstance(value, float) and (not math.isfinite(value) or abs(value) > LARGEST):
        return where, value
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _bad_number(item, f"{where}/{key}" if where != "the top" else str(key))
        if found is not None:
            return found
    return None

"""Experiment tracking (``--report-to wandb``): a run's settings, per-language metrics and small files, logged
where the rest of a team's experiments are.

A tracked step is one tracker run: a ``prune`` (its settings, sparsity and
held-out perplexity per language), an ``eval`` (every task's metrics per
language, lm-eval's included), or a grid cell (both, the cell's axes as its
config, the grid's name as its group, so a grid reads as one table in one
project). Files are the run folder's small ones (report, evaluation, model
card, recipe), never the weights. The tracker's own settings are its
environment variables (``WANDB_PROJECT``, default ``langprune``;
``WANDB_MODE=offline``; ``WANDB_DIR``). Trackers are checked before any work
starts: an unknown name or a tracker that is not installed is one error.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError, did_you_mean

TRACKERS = ("wandb",)
SMALL_FILES = ("report.json", "eval.json", "README.md", "recipe.yaml", "cell.json")
log = logging.getLogger(__name__)


def check_trackers(names: Sequence[str]) -> None:
    """Refuse an unknown tracker, or one whose library is missing, before anything runs."""
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"unknown tracker {name!r} for --report-to{did_you_mean(name, TRACKERS)}: choose wandb")
        try:
            __import__(name)
        except ImportError:
            raise UserError(f"--report-to {name} needs {name}: pip install 'langprune[tracking]'") from None


class WandbRun:
    """One wandb run: settings as its config, metrics into its summary (and history), small files saved."""

    def __init__(self, kind: str, name: str, config: dict, group: str | None):
        import wandb

        quiet = logging.getLogger("langprune").getEffectiveLevel() > logging.INFO
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or "langprune",
                name=name,
                group=group,
                job_type=kind,
                config=config,
                reinit="create_new",
                settings=wandb.Settings(silent=quiet),
            )
        except Exception as exc:  # noqa: BLE001 - wandb raises its own errors for a missing login or network
            raise UserError(
                f"wandb could not start a run ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}):"
                " run `wandb login`, or set WANDB_MODE=offline and `wandb sync` later"
            ) from None

    def log(self, metrics: dict[str, float]) -> None:
        self.run.log(metrics)
        self.run.summary.update(metrics)

    def save(self, folder: Path) -> None:
        for name in SMALL_FILES:
            if (Path(folder) / name).is_file():
                self.run.save(str(Path(folder) / name), base_path=str(folder), policy="now")

    def finish(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Tracking:
    """The trackers of one step: ``log`` and ``save`` go to every one of them."""

    def __init__(self, runs: list):
        self.runs = runs

    def log(self, metrics: dict[str, float]) -> None:
        finite = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        for run in self.runs:
            run.log(finite)

    def save(self, folder: Path) -> None:
        for run in self.runs:
            run.save(folder)


@contextmanager
def tracking(names: Sequence[str], kind: str, name: str, config: dict, group: str | None = None) -> Iterator[Tracking]:
    """Open one run per tracker for the block (none: a Tracking that does nothing); a failing block marks them failed."""
    check_trackers(names)
    runs = [WandbRun(kind, name, config, group) for tracker in names if tracker == "wandb"]
    failed = True
    try:
        yield Tracking(runs)
        failed = False
    finally:
        for run in runs:
            run.finish(failed)


def prune_metrics(report: dict) -> dict[str, float]:
    """A prune report's numbers by name: sparsity, seconds, and dense/compressed perplexity per language."""
    metrics = {
        "sparsity/pruned_layers": report.get("sparsity_pruned_layers"),
        "sparsity/all_parameters": report.get("sparsity_all_parameters"),
        "prune/seconds": report.get("seconds"),
    }
    perplexity = report.get("perplexity") or {}
    for state in ("dense", "pruned"):
        for lang, values in perplexity.get(state, {}).items():
            metrics[f"ppl/{lang}/{state}"] = values.get("ppl")
            metrics[f"bpb/{lang}/{state}"] = values.get("bits_per_byte")
    return metrics

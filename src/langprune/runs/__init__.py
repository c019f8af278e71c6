"""Runs: the run folder (checkpoint, masks, report), provenance, and the prune/eval cells every entry point calls."""

from .cell import EvalSettings, PruneSettings, Reporter, run_eval, run_prune
from .folder import SavedMasks, load_eval, load_masks, load_report, remeasure

__all__ = [
    "EvalSettings",
    "PruneSettings",
    "Reporter",
    "SavedMasks",
    "load_eval",
    "load_masks",
    "load_report",
    "remeasure",
    "run_eval",
    "run_prune",
]

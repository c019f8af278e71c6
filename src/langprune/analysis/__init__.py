"""The papers' analyses (feature overlap, mask IoU, LAPE neurons, LSAR subspaces): built on the engine's collection pass.

Each analysis has its numbers in one module (``features``, ``masks``,
``lape``, ``lsar``: pure functions on tensors plus one collection pass),
its pictures in ``figures`` (drawn from the JSON alone) and its entry point
in ``commands`` (settings in, folder out), which the CLI and grids call.
"""

from .commands import AnalysisSettings, redraw, run_analysis, summary

__all__ = ["AnalysisSettings", "redraw", "run_analysis", "summary"]

"""The papers' analyses (feature overlap, mask IoU, LAPE neurons, LSAR subspaces): built on the engine's collection pass.

Each analysis is one class in its own module (``features``, ``masks``,
``lape``, ``lsar``): its settings are its fields, with ``validate``,
``compute`` (pure functions on tensors plus one collection pass), ``draw``
(pictures drawn from the JSON alone, with ``figures``' helpers) and
``summary``; ``register`` puts it in ``ANALYSES``, from which the CLI makes
one ``langprune analyze NAME`` command each. ``run_analysis`` (``base``)
validates, computes and writes the folder for the CLI and the Python API.
"""

from .base import ANALYSES, Analysis, ModelAnalysis, TextAnalysis, redraw, register, run_analysis
from .features import FeatureOverlap
from .lape import Lape
from .lsar import Lsar
from .masks import MaskOverlap

__all__ = [
    "ANALYSES",
    "Analysis",
    "FeatureOverlap",
    "Lape",
    "Lsar",
    "MaskOverlap",
    "ModelAnalysis",
    "TextAnalysis",
    "redraw",
    "register",
    "run_analysis",
]

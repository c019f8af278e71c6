"""What pruning does to each language: perplexity, fidelity, cloze, multiple choice, translation, RankC.

Tasks are data (``tasks/*.yaml``); ``evaluate`` plans which corpus serves
each task and language, scores through one batched likelihood engine
(``scoring``), and keeps per-item results for paired significance tests
(``significance``).
"""

from .perplexity import perplexity, text_nll
from .runner import EvalOptions, evaluate

__all__ = ["EvalOptions", "evaluate", "perplexity", "text_nll"]

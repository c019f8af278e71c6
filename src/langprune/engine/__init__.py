"""The block engine: find a model's decoder blocks, run them one at a time, hand out activations and statistics.

Shared by pruning, evaluation and analyses; knows nothing about any of them.
"""

from .architecture import LayerFilter, find_blocks, prunable_layers, weight_matrix
from .collection import BlockEngine, InputGroups, Tag, TokenBatch, sweep

__all__ = [
    "BlockEngine",
    "InputGroups",
    "LayerFilter",
    "Tag",
    "TokenBatch",
    "sweep",
    "find_blocks",
    "prunable_layers",
    "weight_matrix",
]

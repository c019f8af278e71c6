"""Compression: sparsity targets, pure kernels, methods that compress a layer group, and the block loop."""

from .loop import PruneResult, prune_model
from .methods import METHODS, Method, get_method
from .result import LayerChange, SparsityTally
from .sparsity import Sparsity

__all__ = ["LayerChange", "METHODS", "Method", "PruneResult", "Sparsity", "get_method", "SparsityTally", "prune_model"]

"""What a compression method did to a layer, and the one way langprune measures sparsity.

A method returns a ``LayerChange`` per layer of the group it compressed: the
keep mask, whether surviving weights were rewritten (SparseGPT's OBS update),
and, for quantizing methods, their parameters. The run folder stores the
masks from it, the report records it, and ``SparsityTally`` counts zeros
the same way on a model being pruned and on a saved checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch


@dataclass
class LayerChange:
    """One layer's compression: ``keep`` is an (out, in) boolean mask, True where the weight survives."""

    keep: torch.Tensor | None
    weights_updated: bool = False  # surviving weights were changed, not only zeroed
    quantization: dict = field(default_factory=dict)  # bits, group size, output error ... (empty: not quantized)
    scale: torch.Tensor | None = None  # (out, groups) grid of a quantized layer: weight = scale * (code - zero_point)
    zero_point: torch.Tensor | None = None  # (out, groups), codes in [0, 2^bits - 1]
    target_sparsity: float | None = None  # set when a profile (OWL) gave this layer's block its own target

    def record(self) -> dict:
        """The JSON-ready part of the change, for the report."""
        record = {"weights_updated": self.weights_updated}
        if self.quantization:
            record["quantization"] = self.quantization
        if self.target_sparsity is not None:
            record["target_sparsity"] = self.target_sparsity
        return record


def zeros(tensor: torch.Tensor) -> int:
    return tensor.numel() - int(torch.count_nonzero(tensor))


class SparsityTally:
    """Exact zeros, counted tensor by tensor as they come by: per compressed layer, over them, over all parameters.

    Counting as tensors come by is what lets a run measure a model that is
    never whole in memory (offloaded blocks, a checkpoint read shard by
    shard). ``inspect`` re-measures a saved run the same way.
    """

    def __init__(self):
        self.layers: dict[str, dict] = {}
        self.pruned_zeros = self.pruned_total = self.all_zeros = self.all_params = 0
        self.violations: int | None = None

    def layer(self, name: str, weight: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """A compressed layer's weight (any layout); with ``keep`` (same layout), weights left where it prunes count too."""
        z = zeros(weight)
        self.layers[name] = {"shape": list(weight.shape), "sparsity": z / weight.numel()}
        self.pruned_zeros, self.pruned_total = self.pruned_zeros + z, self.pruned_total + weight.numel()
        if keep is not None:
            self.violations = (self.violations or 0) + int((weight[~keep] != 0).sum())

    def tensor(self, numel: int, zero_count: int) -> None:
        """One parameter of the model, counted once."""
        self.all_zeros, self.all_params = self.all_zeros + zero_count, self.all_params + numel

    def tensors(self, tensors: Iterable[torch.Tensor]) -> None:
        for tensor in tensors:
            self.tensor(tensor.numel(), zeros(tensor))

    def summary(self) -> dict:
        summary = {
            "layers": self.layers,
            "sparsity_pruned_layers": self.pruned_zeros / self.pruned_total if self.pruned_total else 0.0,
            "sparsity_all_parameters": self.all_zeros / self.all_params if self.all_params else 0.0,
            "pruned_parameters": self.pruned_total,
            "all_parameters": self.all_params,
        }
        if self.violations is not None:
            summary["nonzero_where_mask_prunes"] = self.violations
        return summary

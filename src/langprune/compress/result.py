"""What a compression method did to a layer, and the one way langprune measures sparsity.

A method returns a ``LayerChange`` per layer of the group it compressed: the
keep mask, whether surviving weights were rewritten (SparseGPT's OBS update),
and, for quantizing methods, their parameters. The run folder stores the
masks from it, the report records it, and ``measure_sparsity`` counts zeros
the same way on a model in memory and on a saved checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch


@dataclass
class LayerChange:
    """One layer's compression: ``keep`` is an (out, in) boolean mask, True where the weight survives."""

    keep: torch.Tensor | None
    weights_updated: bool = False  # surviving weights were changed, not only zeroed
    quantization: dict = field(default_factory=dict)  # bits, group size, ... (empty: not quantized)

    def record(self) -> dict:
        """The JSON-ready part of the change, for the report."""
        return {"weights_updated": self.weights_updated, **({"quantization": self.quantization} if self.quantization else {})}


def zeros(tensor: torch.Tensor) -> int:
    return tensor.numel() - int(torch.count_nonzero(tensor))


def measure_sparsity(layers: dict[str, torch.Tensor], all_tensors: Iterable[torch.Tensor],
                     masks: dict[str, torch.Tensor] | None = None) -> dict:  # fmt: skip
    """Exact zeros per compressed layer, over compressed layers, and over all parameters.

    ``layers`` maps layer names to weights (in any layout), ``all_tensors``
    is every parameter once. With ``masks`` (same layout as the weights), the
    weights that survive where a mask prunes are counted too (0 for a sound run).
    """
    per_layer, pruned_zeros, pruned_total, violations = {}, 0, 0, 0
    for name, weight in layers.items():
        z = zeros(weight)
        per_layer[name] = {"shape": list(weight.shape), "sparsity": z / weight.numel()}
        pruned_zeros, pruned_total = pruned_zeros + z, pruned_total + weight.numel()
        if masks is not None:
            violations += int((weight[~masks[name]] != 0).sum())
    all_zeros = all_params = 0
    for tensor in all_tensors:
        all_zeros, all_params = all_zeros + zeros(tensor), all_params + tensor.numel()
    summary = {
        "layers": per_layer,
        "sparsity_pruned_layers": pruned_zeros / pruned_total if pruned_total else 0.0,
        "sparsity_all_parameters": all_zeros / all_params if all_params else 0.0,
        "pruned_parameters": pruned_total,
        "all_parameters": all_params,
    }
    if masks is not None:
        summary["nonzero_where_mask_prunes"] = violations
    return summary

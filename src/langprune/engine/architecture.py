"""Find the decoder blocks of any causal LM and the prunable layers inside them.

No per-architecture tables: the blocks are the largest ``nn.ModuleList`` of
identical modules, and the prunable layers are every ``nn.Linear`` and GPT-2
style ``Conv1D`` inside a block. Conv1D stores its weight transposed, so
``weight_matrix`` returns an ``(out, in)`` view that writes through.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError


def is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features); a view of the parameter's data."""
    weight = module.weight.data
    return weight.T if is_conv1d(module) else weight


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks: the ModuleList of same-type modules holding most parameters."""
    best, best_size = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if not any(is_prunable(m) for m in module[0].modules()):
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = (name, module), size
    if best is None:
        raise UserError(
            f"no decoder blocks found in {type(model).__name__}: langprune needs a decoder-only model "
            "whose layers sit in a ModuleList of identical blocks containing Linear or Conv1D layers"
        )
    return best


@dataclass
class LayerFilter:
    """Which layers of a block to prune, by glob on the name inside the block (e.g. ``mlp.*``)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __call__(self, full_name: str, name_in_block: str) -> bool:
        def hit(patterns):
            return any(fnmatch.fnmatch(full_name, p) or fnmatch.fnmatch(name_in_block, p) for p in patterns)

        if self.include and not hit(self.include):
            return False
        return not hit(self.exclude)


def prunable_layers(block: nn.Module, prefix: str, layer_filter: LayerFilter) -> dict[str, nn.Module]:
    """Prunable layers of one block, keyed by their full name in the model."""
    found = {}
    for name, module in block.named_modules():
        full = f"{prefix}.{name}" if name else prefix
        if is_prunable(module) and layer_filter(full, name):
            found[full] = module
    return found

"""Run a causal LM block by block over a fixed set of token batches.

The engine is shared by pruning, evaluation and analyses. ``capture`` runs the
model's own forward once with every decoder block replaced by a recorder, so
each block's real call arguments are kept exactly as the architecture builds
them (attention masks per layer type, position ids or rotary embeddings,
ALiBi, cache flags) while no block does any work. After that, only one block's
activations of the whole calibration set are held, and ``run_block`` advances
them through one block at a time, optionally feeding every prunable layer's
input (real tokens only) to a callback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .architecture import LayerFilter, find_blocks, prunable_layers


@dataclass
class TokenBatch:
    """Right-padded token ids and the mask of real (non-padding) tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def padded(self) -> bool:
        return not bool(self.attention_mask.all())


class _Relay(tuple):
    """What a recorder returns: unwrapped by the next recorder, indexable like a block's tuple output."""


class _StopCapture(Exception):
    pass


class _StopBlock(Exception):
    pass


def block_output(output) -> torch.Tensor:
    """Decoder blocks return a tensor or a tuple whose first item is the hidden states."""
    return output[0] if isinstance(output, tuple) else output


@dataclass
class InputGroups:
    """Prunable layers in the order they ran, and for each the first layer that read the same input."""

    order: list[str] = field(default_factory=list)
    leader: dict[str, str] = field(default_factory=dict)

    def members(self, leader: str) -> list[str]:
        return [name for name in self.order if self.leader[name] == leader]


@dataclass
class _Call:
    args: tuple
    kwargs: dict


@dataclass
class BlockEngine:
    """Holds the current block's inputs for every batch and advances them block by block."""

    model: nn.Module
    batches: list[TokenBatch]
    layer_filter: LayerFilter = field(default_factory=LayerFilter)

    def __post_init__(self):
        self.blocks_name, self.blocks = find_blocks(self.model)
        self.hidden: list[torch.Tensor] = []
        self.calls: list[list[_Call]] = []  # calls[block][batch]
        self.device = next(self.model.parameters()).device

    def layers(self, index: int) -> dict[str, nn.Module]:
        return prunable_layers(self.blocks[index], f"{self.blocks_name}.{index}", self.layer_filter)

    @torch.no_grad()
    def capture(self) -> None:
        """Record every block's call arguments and the first block's input, for all batches."""
        self.calls = [[] for _ in self.blocks]
        self.hidden = []
        last = len(self.blocks) - 1

        def recorder(index):
            def forward(hidden_states, *args, **kwargs):
                if isinstance(hidden_states, _Relay):
                    hidden_states = hidden_states[0]
                if index == 0:
                    self.hidden.append(hidden_states)
                self.calls[index].append(_Call(args, kwargs))
                if index == last:
                    raise _StopCapture
                return _Relay((hidden_states,))

            return forward

        for index, block in enumerate(self.blocks):
            block.forward = recorder(index)
        try:
            for batch in self.batches:
                try:
                    self.model(
                        input_ids=batch.input_ids.to(self.device),
                        attention_mask=batch.attention_mask.to(self.device),
                        use_cache=False,
                    )
                except _StopCapture:
                    pass
        finally:
            for block in self.blocks:
                del block.forward

    def token_mask(self, batch: int) -> torch.Tensor | None:
        """Flat boolean mask of real tokens for a batch, or None when nothing is padded."""
        tokens = self.batches[batch]
        return tokens.attention_mask.reshape(-1).bool().to(self.device) if tokens.padded else None

    @torch.no_grad()
    def run_block(
        self,
        index: int,
        on_input: Callable[[str, torch.Tensor, int], None] | None = None,
        write_outputs: bool = True,
        stop_after: str | None = None,
        batches: range | None = None,
    ) -> InputGroups:
        """Run block ``index`` over the given batches (all by default).

        ``on_input(leader, x, batch)`` receives each distinct prunable-layer
        input as (real tokens, features), once per group of layers that read
        the same tensor, named by the group's first layer. With
        ``write_outputs`` the block's outputs replace the held activations
        (they become the next block's inputs). ``stop_after`` names a layer
        after whose input the forward is cut short, for passes that only
        gather statistics. Groups and order are learnt on the first batch run.
        """
        block = self.blocks[index]
        groups = InputGroups()
        handles = []
        current = {"batch": 0, "first": True, "inputs": {}}
        if on_input is not None:
            for name, layer in self.layers(index).items():
                hook = self._input_hook(name, on_input, current, groups, stop_after)
                handles.append(layer.register_forward_pre_hook(hook))
        try:
            for b in batches if batches is not None else range(len(self.batches)):
                current["batch"] = b
                call = self.calls[index][b]
                try:
                    output = block(self.hidden[b], *call.args, **call.kwargs)
                    if write_outputs:
                        self.hidden[b] = block_output(output)
                except _StopBlock:
                    pass
                current["first"], current["inputs"] = False, {}
        finally:
            for handle in handles:
                handle.remove()
        return groups

    def _input_hook(self, name, on_input, current, groups, stop_after):
        def hook(module, args):
            raw = args[0]
            if current["first"]:
                # Identity of the tensor object tells which layers share an input.
                leader = current["inputs"].setdefault(id(raw), (raw, name))[1]
                groups.order.append(name)
                groups.leader[name] = leader
            if groups.leader.get(name) == name:
                x = raw.reshape(-1, raw.shape[-1])
                mask = self.token_mask(current["batch"])
                if mask is not None:
                    if mask.numel() != x.shape[0]:
                        raise RuntimeError(f"{name}: input has {x.shape[0]} rows, expected {mask.numel()} tokens")
                    x = x[mask]
                on_input(name, x, current["batch"])
            if name == stop_after:
                raise _StopBlock

        return hook

    def release(self) -> None:
        self.hidden, self.calls = [], []

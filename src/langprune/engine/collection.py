"""The collection pass: run a causal LM block by block over tagged token batches and hand out what callers ask for.

The engine knows nothing about pruning. ``capture`` runs the model's own
forward once per batch with every decoder block replaced by a recorder, so
each block's real call arguments are kept exactly as the architecture builds
them (attention masks per layer type, position ids or rotary embeddings,
ALiBi, cache flags) while no block does any work. After that only one
block's activations of the whole batch set are held, and ``run_block``
advances them one block at a time, handing out on request:

- ``on_input``: every prunable layer's input (layers reading the same tensor
  are one group, named by its first layer);
- ``taps``: the output of any submodule of the block, by its name inside the
  block (e.g. ``mlp.act_fn``, the activation feeding the down projection);
- ``on_block_input``: the block's input (the residual stream entering it);
- ``on_output``: the block's output.

Every tensor handed out holds real tokens only (padding dropped), as
(tokens, features), together with the ``TokenBatch`` it came from, whose
``tag`` says which set it belongs to (calibration or contrast, language,
demonstration kind). Roles are never inferred from a batch's position.
``final_states`` runs what follows the last block (the final norm) on the
held states, for callers that need the model's last hidden state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .architecture import LayerFilter, find_blocks, prunable_layers
from .placement import available_memory, placement_of


@dataclass(frozen=True)
class Tag:
    """What a batch is: its role (``calibration``, ``contrast``, ``evaluation``...), language and kind."""

    role: str = "calibration"
    language: str | None = None  # None when the batch mixes languages
    kind: str | None = None  # windows | demonstrations | tokens


@dataclass
class TokenBatch:
    """Right-padded token ids, the mask of real (non-padding) tokens, and the batch's tag."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tag: Tag = field(default_factory=Tag)

    @property
    def padded(self) -> bool:
        return not bool(self.attention_mask.all())


Visitor = Callable[[str, torch.Tensor, TokenBatch], None]
"""Called with (name, real tokens x features, the batch they came from)."""


class _Relay(tuple):
    """What a recorder returns: unwrapped by the next recorder, indexable like a block's tuple output."""


class _StopCapture(Exception):
    pass


class _StopBlock(Exception):
    pass


def _moved(value, device: torch.device):
    """Tensors inside call arguments (tuples, lists, dicts) on ``device``; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_moved(v, device) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    return value


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
        self.placement = placement_of(self.model)
        self.device = self.placement.device
        self.store = self.device  # where held activations live between blocks (host memory when the device is short)
        self.returns_tuple = False  # what the blocks return, learnt when one runs

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
                    self.hidden.append(hidden_states.to(self.store))
                self.calls[index].append(_Call(_moved(args, self.store), _moved(kwargs, self.store)))
                if index == last:
                    raise _StopCapture
                return _Relay((hidden_states,))

            return forward

        self.store = self._activation_store()
        for index, block in enumerate(self.blocks):
            block.forward = recorder(index)
        try:
            with self.placement.paused():
                self._record_calls()
        finally:
            for block in self.blocks:
                del block.forward
        self.placement.set_aside_embedding()  # every batch is embedded: the blocks never read it

    def _activation_store(self, share: float = 0.5) -> torch.device:
        """The execution device when every batch's activations fit in ``share`` of its free memory, else the host."""
        if self.device.type == "cpu":
            return self.device
        config = getattr(self.model, "config", None)
        width = getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0
        tokens = sum(batch.input_ids.numel() for batch in self.batches)
        needed = 2 * tokens * width * self.placement.dtype.itemsize  # the held states and one block's outputs
        return self.device if needed <= share * available_memory(self.device) else torch.device("cpu")

    def _record_calls(self) -> None:
        for batch in self.batches:
            try:
                self.model(
                    input_ids=batch.input_ids.to(self.device),
                    attention_mask=batch.attention_mask.to(self.device),
                    use_cache=False,
                )
            except _StopCapture:
                pass

    def token_mask(self, batch: int) -> torch.Tensor | None:
        """Flat boolean mask of real tokens for a batch, or None when nothing is padded."""
        tokens = self.batches[batch]
        return tokens.attention_mask.reshape(-1).bool().to(self.device) if tokens.padded else None

    def real_tokens(self, tensor: torch.Tensor, batch: int, name: str) -> torch.Tensor:
        """``tensor`` (batch, seq, features) as (real tokens, features)."""
        flat = tensor.reshape(-1, tensor.shape[-1])
        mask = self.token_mask(batch)
        if mask is None:
            return flat
        if mask.numel() != flat.shape[0]:
            raise RuntimeError(f"{name}: tensor has {flat.shape[0]} rows, expected {mask.numel()} tokens")
        return flat[mask]

    @torch.no_grad()
    def run_block(
        self,
        index: int,
        on_input: Visitor | None = None,
        write_outputs: bool = True,
        stop_after: str | None = None,
        batches: range | None = None,
        taps: dict[str, Visitor] | None = None,
        on_output: Visitor | None = None,
        on_block_input: Visitor | None = None,
    ) -> InputGroups:
        """Run block ``index`` over the given batches (all by default).

        ``on_input(leader, x, batch)`` receives each distinct prunable-layer
        input, once per group of layers that read the same tensor, named by
        the group's first layer. ``taps`` maps submodule names inside the
        block to visitors of their outputs; ``on_output`` visits the block's
        output. With ``write_outputs`` the block's outputs replace the held
        activations (they become the next block's inputs). ``stop_after``
        names a layer after whose input the forward is cut short, for passes
        that only gather statistics. Groups and order are learnt on the first
        batch run.
        """
        block = self.blocks[index]
        prefix = f"{self.blocks_name}.{index}"
        groups = InputGroups()
        handles = []
        current = {"batch": 0, "first": True, "inputs": {}}
        if on_input is not None:
            for name, layer in self.layers(index).items():
                hook = self._input_hook(name, on_input, current, groups, stop_after)
                handles.append(layer.register_forward_pre_hook(hook))
        modules = dict(block.named_modules())
        for tap_name, visitor in (taps or {}).items():
            if tap_name not in modules:
                raise KeyError(f"block {prefix} has no submodule {tap_name!r}")
            handles.append(
                modules[tap_name].register_forward_hook(self._tap_hook(f"{prefix}.{tap_name}", visitor, current))
            )
        try:
            with self.placement.hold(index), self.placement.paused():  # held here: no streaming hooks
                self.placement.prefetch(index + 1)  # read while this block computes (disk offloading)
                for b in batches if batches is not None else range(len(self.batches)):
                    current["batch"] = b
                    call = self.calls[index][b]
                    args, kwargs = (_moved(call.args, self.device), _moved(call.kwargs, self.device))
                    hidden = self.hidden[b].to(self.device)
                    if on_block_input is not None:
                        on_block_input(prefix, self.real_tokens(hidden, b, prefix), self.batches[b])
                    try:
                        raw = block(hidden, *args, **kwargs)
                        self.returns_tuple = isinstance(raw, tuple)
                        output = block_output(raw)
                        if on_output is not None:
                            on_output(prefix, self.real_tokens(output, b, prefix), self.batches[b])
                        if write_outputs:
                            self.hidden[b] = output.to(self.store)
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
                b = current["batch"]
                on_input(name, self.real_tokens(raw, b, name), self.batches[b])
            if name == stop_after:
                raise _StopBlock

        return hook

    def _tap_hook(self, name, visitor, current):
        def hook(module, args, output):
            b = current["batch"]
            visitor(name, self.real_tokens(block_output(output), b, name), self.batches[b])

        return hook

    @torch.no_grad()
    def final_states(self, batch: int) -> torch.Tensor:
        """The model's last hidden state (after the final norm) for one batch, from the held last-block outputs.

        The backbone's own forward runs with every block stubbed out and the
        last one returning the held states, so whatever the architecture does
        after its blocks (final norm, projection) is applied exactly as in a
        full forward. Call it after the last block has run with ``write_outputs``.
        """
        held, last = self.hidden[batch].to(self.device), len(self.blocks) - 1

        def stub(index):
            def forward(hidden_states, *args, **kwargs):
                if index < last:
                    return _Relay((hidden_states,))
                return (held,) if self.returns_tuple else held

            return forward

        for index, block in enumerate(self.blocks):
            block.forward = stub(index)
        try:
            tokens = self.batches[batch]
            with self.placement.paused():
                out = self.model.base_model(
                    input_ids=tokens.input_ids.to(self.device),
                    attention_mask=tokens.attention_mask.to(self.device),
                    use_cache=False,
                )
        finally:
            for block in self.blocks:
                del block.forward
        return self.real_tokens(out.last_hidden_state, batch, "final states")

    def release(self) -> None:
        self.hidden, self.calls = [], []
        self.placement.restore_embedding()


def sweep(
    model: nn.Module,
    batches: list[TokenBatch],
    *,
    on_input: Visitor | None = None,
    taps: dict[str, Visitor] | None = None,
    on_output: Visitor | None = None,
    on_block_input: Visitor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """One dense pass over every block for every batch, one block's activations at a time, visiting what is asked.

    The shared collection pass of evaluation and analyses: visitors as in
    ``BlockEngine.run_block``; ``progress(done, total)`` after each block.
    """
    engine = BlockEngine(model, batches)
    engine.capture()
    try:
        for index in range(len(engine.blocks)):
            engine.run_block(index, on_input=on_input, taps=taps, on_output=on_output, on_block_input=on_block_input)
            if progress is not None:
                progress(index + 1, len(engine.blocks))
    finally:
        engine.release()

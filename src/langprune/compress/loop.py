"""The compression loop: statistics per block, a method per layer group, then propagation.

For each decoder block: one collection pass gathers the statistic the method
needs for every distinct layer input (layers fed by the same tensor share
it), cut short after the block's last prunable layer since its output is not
needed; the method compresses each group and says what it did
(``LayerChange``); a second pass recomputes the block's outputs from the
compressed weights for the next block (``propagate="pruned"``, as the
reference implementations do). With ``propagate="dense"`` the statistics
pass itself writes the dense outputs, so there is a single pass per block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..calibration import CalibrationSet
from ..engine import BlockEngine, LayerFilter, find_blocks, prunable_layers, weight_matrix
from ..engine.placement import outside_blocks, placement_of
from ..engine.memory import return_freed_memory
from ..engine.statistics import CONTRAST, ContrastedNorms
from ..errors import UserError, check_at_least
from .methods import ContrastiveWanda, Method, get_method
from .result import LayerChange, SparsityTally, zeros
from .sparsity import Sparsity

PROPAGATE = ("pruned", "dense")


@dataclass
class PruneResult:
    """What a run did: the change per layer (keep masks, updated weights) and a JSON-ready summary."""

    changes: dict[str, LayerChange] = field(default_factory=dict)  # empty when handed to ``on_block``
    summary: dict = field(default_factory=dict)

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """``(out, in)`` keep masks per layer."""
        return {name: change.keep for name, change in self.changes.items()}


def check_shapes(blocks_name: str, blocks, sparsity: Sparsity, layer_filter: LayerFilter) -> None:
    """Refuse, before any work and from shapes alone, a selection with no layer or an N:M pattern that does not fit."""
    count = 0
    for index, block in enumerate(blocks):
        for name, layer in prunable_layers(block, f"{blocks_name}.{index}", layer_filter).items():
            width = weight_matrix(layer).shape[1]
            if sparsity.structured and width % sparsity.m:
                raise UserError(f"{sparsity} sparsity needs input widths divisible by {sparsity.m}, and {name} has "
                                f"{width} inputs: choose an M that divides it (e.g. 2:4) or --exclude it")  # fmt: skip
            count += 1
    if not count:
        raise UserError("no layer was selected for pruning: check --include/--exclude patterns")


def check_finite(layers: dict[str, nn.Module]) -> None:
    """Refuse NaN or infinite weights, naming the layer; run per block, just before its weights are pruned."""
    for name, layer in layers.items():
        if not bool(torch.isfinite(layer.weight).all()):
            raise UserError(f"layer {name} has NaN or infinite weights: the checkpoint is broken; "
                            "langprune refuses to prune (and save) it")  # fmt: skip


def prune_model(
    model: nn.Module,
    calibration: CalibrationSet | torch.Tensor | None,
    method: str | Method = "wanda",
    sparsity: str | float | Sparsity = 0.5,
    *,
    propagate: str = "pruned",
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    seed: int = 0,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    contrast: CalibrationSet | torch.Tensor | None = None,
    on_block: Callable[[int, dict[str, LayerChange]], None] | None = None,
) -> PruneResult:
    """Prune ``model`` in place; returns each layer's change and a summary with measured sparsity.

    ``on_block(index, changes)`` is called for every block as soon as it is
    compressed, while it is still on the execution device (a run writer
    streams its masks and weights to disk, after which an offloaded block
    can be dropped); the changes are then not kept, so memory does not grow
    with the model. Without it the changes are returned. The model runs
    where its placement says (device, dtype, offloading), one block at a
    time, and the sparsity is counted block by block. With a
    ``contrast`` set, wanda becomes the contrastive score of the
    translation-feature paper: X is always ``calibration`` and Z
    ``contrast``, told apart by the tags their batches carry; both pass
    through the same engine, block by block, in one run.

    Shapes are checked before any work (a selection without layers, an N:M
    that does not divide a layer). NaN or infinite weights are refused per
    block, just before that block is pruned, so no extra pass reads every
    weight up front; the blocks before it are then already pruned in place
    (the run cell writes nothing).
    """
    if isinstance(contrast, torch.Tensor):
        contrast = CalibrationSet.from_tokens(contrast)
    method = method_for_contrast(get_method(method), contrast is not None)
    sparsity = Sparsity.parse(sparsity)
    if propagate not in PROPAGATE:
        raise UserError(f"propagate must be one of {', '.join(PROPAGATE)}, not {propagate!r}")
    check_at_least("batch size", batch_size, 1)
    if isinstance(calibration, torch.Tensor):
        calibration = CalibrationSet.from_tokens(calibration)
    layer_filter = LayerFilter(tuple(include), tuple(exclude))
    blocks_name, blocks = find_blocks(model)
    check_shapes(blocks_name, blocks, sparsity, layer_filter)
    started = time.perf_counter()
    kept: dict[str, LayerChange] = {}
    records: dict[str, dict] = {}
    engine = None
    if method.statistic is not None:
        if calibration is None:
            raise UserError(f"{method.name} needs calibration text: pass --calib")
        batches = calibration.batches(batch_size)
        if contrast is not None:
            batches += contrast.batches(batch_size, role=CONTRAST)
        engine = BlockEngine(model, batches, layer_filter)
        engine.capture()
    placement, tally = placement_of(model), SparsityTally()
    with torch.no_grad():
        for index in range(len(blocks)):
            with placement.hold(index):
                layers = prunable_layers(blocks[index], f"{blocks_name}.{index}", layer_filter)
                check_finite(layers)
                if engine is None:
                    changes = {}
                    for name, layer in layers.items():
                        changes.update(method.prune_group({name: weight_matrix(layer)}, None, sparsity, seed))
                else:
                    changes = _prune_block(engine, index, layers, method, sparsity, seed, propagate)
                for name in changes:
                    tally.layer(name, weight_matrix(layers[name]))
                tally.tensors(blocks[index].parameters())
                records.update({name: change.record() for name, change in changes.items()})
                if on_block is not None:
                    on_block(index, changes)
                else:
                    kept.update(changes)
            if progress:
                progress(index + 1, len(blocks))
    if engine is not None:
        engine.release()
    for name, param in outside_blocks(model, blocks_name):  # untouched by pruning: counted in the source file if known
        key = placement.key(name)
        tally.tensor(param.numel(), placement.checkpoint.count_zeros(key) if key else zeros(param))
    measured = tally.summary()
    for name, record in records.items():
        measured["layers"][name].update(record)
    summary = {
        "method": method.name,
        "sparsity": str(sparsity),
        "propagate": propagate,
        "seed": seed,
        "include": list(include),
        "exclude": list(exclude),
        "calibration": calibration.summary() if calibration is not None and engine is not None else None,
        **({"contrast": contrast.summary(), "roles": {"X": "calibration", "Z": "contrast"}} if contrast else {}),
        "placement": placement.describe(),
        "seconds": round(time.perf_counter() - started, 3),
        **measured,
    }
    return PruneResult(kept, summary)


def method_for_contrast(method: Method, has_contrast: bool) -> Method:
    """Wanda with a contrast set is the contrastive score; every other pairing is a user error."""
    if has_contrast and method.name == "wanda":
        return ContrastiveWanda()
    if has_contrast and method.statistic is not ContrastedNorms:
        raise UserError(f"a contrast set (--contrast) works with wanda only, not {method.name}")
    if not has_contrast and method.statistic is ContrastedNorms:
        raise UserError(f"{method.name} needs a contrast set: pass --contrast, e.g. --contrast code")
    return method


def _prune_block(engine, index, layers, method, sparsity, seed, propagate) -> dict[str, LayerChange]:
    if not layers:
        engine.run_block(index)
        return {}
    statistics: dict[str, object] = {}

    def on_input(leader: str, x: torch.Tensor, batch) -> None:
        if leader not in statistics:
            statistics[leader] = method.statistic(x.shape[1], leader, x.device)
        statistics[leader].add_batch(x, batch.tag)

    dense = propagate == "dense"
    if dense:
        groups = engine.run_block(index, on_input, write_outputs=True)
    else:
        # The first batch runs whole to learn the layers' order; the rest stop after the last layer's input.
        groups = engine.run_block(index, on_input, write_outputs=False, batches=range(1))
        engine.run_block(index, on_input, write_outputs=False, stop_after=groups.order[-1],
                         batches=range(1, len(engine.batches)))  # fmt: skip
    changes = {}
    for leader, statistic in statistics.items():
        group = {name: weight_matrix(layers[name]) for name in groups.members(leader)}
        changes.update(method.prune_group(group, statistic, sparsity, seed))
        statistic.free()
    return_freed_memory()
    if not dense:
        engine.run_block(index)
    return changes

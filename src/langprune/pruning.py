"""The pruning loop: statistics per block, masks per layer group, then propagation.

For each decoder block: one pass gathers the statistic the method needs for
every distinct layer input (layers fed by the same tensor share it), cut
short after the block's last prunable layer since its output is not needed;
the block's layers are pruned; a second pass recomputes the block's outputs
from the pruned weights for the next block (``propagate="pruned"``, as the
reference implementations do). With ``propagate="dense"`` the statistics
pass itself writes the dense outputs, so there is a single pass per block.
"""

from __future__ import annotations

import ctypes
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .architecture import LayerFilter, find_blocks, prunable_layers, weight_matrix
from .calibration import CalibrationSet
from .engine import BlockEngine
from .errors import UserError
from .methods import ContrastiveWanda, Method, get_method
from .statistics import ContrastedNorms
from .sparsity import Sparsity

PROPAGATE = ("pruned", "dense")


def _load_libc():
    try:
        return ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
    except OSError:  # not glibc (e.g. musl): nothing to trim
        return None


_LIBC = _load_libc()


def return_freed_memory() -> None:
    """Give memory freed by a block's statistics and solves back to the OS.

    glibc keeps freed chunks in its arenas; without this, the next block's
    forward pass allocates beside them and the peak RSS creeps up by the size
    of the Hessians and solve buffers. Costs about a millisecond.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


@dataclass
class PruneResult:
    """What a pruning run did: masks (``(out, in)`` keep masks per layer) and a JSON-ready summary."""

    masks: dict[str, torch.Tensor]  # empty when they were handed to ``on_masks``
    summary: dict = field(default_factory=dict)


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
    on_masks: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> PruneResult:
    """Prune ``model`` in place; returns the keep masks and a summary with measured sparsity.

    ``on_masks`` receives each block's masks as soon as they exist (a run
    writer streams them to disk) and they are not kept, so memory does not
    grow with the model; without it the masks are returned. With a ``contrast`` set, wanda becomes the contrastive score of the
    translation-feature paper: X is always ``calibration`` and Z ``contrast``;
    both pass through the same engine, block by block, in one run.
    """
    if isinstance(contrast, torch.Tensor):
        contrast = CalibrationSet.from_tokens(contrast)
    method = method_for_contrast(get_method(method), contrast is not None)
    sparsity = Sparsity.parse(sparsity)
    if propagate not in PROPAGATE:
        raise UserError(f"propagate must be one of {', '.join(PROPAGATE)}, not {propagate!r}")
    if isinstance(calibration, torch.Tensor):
        calibration = CalibrationSet.from_tokens(calibration)
    layer_filter = LayerFilter(tuple(include), tuple(exclude))
    blocks_name, blocks = find_blocks(model)
    started = time.perf_counter()
    masks: dict[str, torch.Tensor] = {}
    pruned: list[str] = []
    engine = None
    if method.statistic is not None:
        if calibration is None:
            raise UserError(f"{method.name} needs calibration text: pass --calib")
        batches = calibration.batches(batch_size)
        contrast_from = len(batches)  # batches from here on belong to the contrast set Z
        if contrast is not None:
            batches += contrast.batches(batch_size)
        engine = BlockEngine(model, batches, layer_filter)
        engine.capture()
    with torch.no_grad():
        for index in range(len(blocks)):
            layers = prunable_layers(blocks[index], f"{blocks_name}.{index}", layer_filter)
            if engine is None:
                block_masks = {}
                for name, layer in layers.items():
                    block_masks.update(method.prune_group({name: weight_matrix(layer)}, None, sparsity, seed))
            else:
                block_masks = _prune_block(engine, index, layers, method, sparsity, seed, propagate, contrast_from)
            pruned += list(block_masks)
            if on_masks is not None:
                on_masks(block_masks)
            else:
                masks.update(block_masks)
            if progress:
                progress(index + 1, len(blocks))
    if engine is not None:
        engine.release()
    if not pruned:
        raise UserError("no layer was selected for pruning: check --include/--exclude patterns")
    summary = {
        "method": method.name,
        "sparsity": str(sparsity),
        "propagate": propagate,
        "seed": seed,
        "include": list(include),
        "exclude": list(exclude),
        "calibration": calibration.summary() if calibration is not None and engine is not None else None,
        **({"contrast": contrast.summary(), "roles": {"X": "calibration", "Z": "contrast"}} if contrast else {}),
        "seconds": round(time.perf_counter() - started, 3),
        **measure_sparsity(model, pruned),
    }
    return PruneResult(masks, summary)


def method_for_contrast(method: Method, has_contrast: bool) -> Method:
    """Wanda with a contrast set is the contrastive score; every other pairing is a user error."""
    if has_contrast and method.name == "wanda":
        return ContrastiveWanda()
    if has_contrast and method.statistic is not ContrastedNorms:
        raise UserError(f"a contrast set (--contrast) works with wanda only, not {method.name}")
    if not has_contrast and method.statistic is ContrastedNorms:
        raise UserError(f"{method.name} needs a contrast set: pass --contrast, e.g. --contrast code")
    return method


def _prune_block(engine, index, layers, method, sparsity, seed, propagate, contrast_from):
    if not layers:
        engine.run_block(index)
        return {}
    statistics: dict[str, object] = {}

    def on_input(leader: str, x: torch.Tensor, batch: int) -> None:
        if leader not in statistics:
            statistics[leader] = method.statistic(x.shape[1], leader)
        statistics[leader].add_batch(x, "contrast" if batch >= contrast_from else "calibration")

    dense = propagate == "dense"
    if dense:
        groups = engine.run_block(index, on_input, write_outputs=True)
    else:
        # The first batch runs whole to learn the layers' order; the rest stop after the last layer's input.
        groups = engine.run_block(index, on_input, write_outputs=False, batches=range(1))
        engine.run_block(index, on_input, write_outputs=False, stop_after=groups.order[-1],
                         batches=range(1, len(engine.batches)))
    masks = {}
    for leader, statistic in statistics.items():
        group = {name: weight_matrix(layers[name]) for name in groups.members(leader)}
        masks.update(method.prune_group(group, statistic, sparsity, seed))
        statistic.free()
    return_freed_memory()
    if not dense:
        engine.run_block(index)
    return masks


def measure_sparsity(model: nn.Module, pruned_layers: list[str]) -> dict:
    """Fraction of exact zeros per pruned layer, over pruned layers, and over all parameters."""
    modules = dict(model.named_modules())
    per_layer, zeros, total = {}, 0, 0
    for name in pruned_layers:
        weight = modules[name].weight
        z = weight.numel() - int(torch.count_nonzero(weight))
        per_layer[name] = {"shape": list(weight_matrix(modules[name]).shape), "sparsity": z / weight.numel()}
        zeros, total = zeros + z, total + weight.numel()
    all_zeros = sum(p.numel() - int(torch.count_nonzero(p)) for p in model.parameters())
    all_params = sum(p.numel() for p in model.parameters())
    return {
        "layers": per_layer,
        "sparsity_pruned_layers": zeros / total if total else 0.0,
        "sparsity_all_parameters": all_zeros / all_params,
        "pruned_parameters": total,
        "all_parameters": all_params,
    }

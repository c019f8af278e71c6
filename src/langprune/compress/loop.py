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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..calibration import CalibrationSet
from ..engine import BlockEngine, LayerFilter, find_blocks, prunable_layers, weight_matrix
from ..engine.architecture import is_conv1d
from ..engine.distributed import check_share, world
from ..engine.memory import all_finite, return_freed_memory
from ..engine.placement import outside_blocks, placement_of
from ..engine.statistics import CONTRAST, Hessian, LanguageAggregation, parse_aggregation
from ..errors import UserError, check_at_least
from .methods import GPTQ, Method, get_method
from .profiles import Profile, owl_ratios, owl_sparsities
from .quantization import QuantSpec
from .result import LayerChange, SparsityTally, zeros
from .sparsity import Sparsity

PROPAGATE = ("pruned", "dense")

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    """What a run did: the change per layer (keep masks, updated weights) and a JSON-ready summary."""

    changes: dict[str, LayerChange] = field(default_factory=dict)  # empty when handed to ``on_block``
    summary: dict = field(default_factory=dict)

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """``(out, in)`` keep masks per layer."""
        return {name: change.keep for name, change in self.changes.items()}


def check_shapes(
    blocks_name: str, blocks, sparsity: Sparsity, layer_filter: LayerFilter, quant: QuantSpec | None = None
) -> None:
    """Refuse, before any work and from shapes alone, a selection with no layer or a pattern or group that does not fit."""
    count = 0
    for index, block in enumerate(blocks):
        for name, layer in prunable_layers(block, f"{blocks_name}.{index}", layer_filter).items():
            width = weight_matrix(layer).shape[1]
            if sparsity.structured and width % sparsity.m:
                raise UserError(
                    f"{sparsity} sparsity needs input widths divisible by {sparsity.m}, and {name} has "
                    f"{width} inputs: choose an M that divides it (e.g. 2:4) or --exclude it"
                )
            if quant is not None:
                if is_conv1d(layer):
                    raise UserError(
                        f"{name} is a GPT-2 style Conv1D layer, which the compressed-tensors format does "
                        "not quantize: prune without --quantize, or use a model with Linear layers"
                    )
                quant.check_width(name, width)
                if sparsity.structured and quant.group_size and quant.group_size % sparsity.m:
                    raise UserError(
                        f"quantization group size {quant.group_size} is not a multiple of M={sparsity.m} "
                        f"of {sparsity} sparsity: choose a group such as g128"
                    )
            count += 1
    if not count:
        raise UserError("no layer was selected for pruning: check --include/--exclude patterns")


def check_finite(layers: dict[str, nn.Module]) -> None:
    """Refuse NaN or infinite weights, naming the layer; run per block, just before its weights are pruned."""
    for name, layer in layers.items():
        if not all_finite(layer.weight):
            raise UserError(
                f"layer {name} has NaN or infinite weights: the checkpoint is broken; "
                "langprune refuses to prune (and save) it"
            )


@dataclass
class Plan:
    """A run's choices resolved and checked together, before any work: the one place every pairing rule runs."""

    method: Method
    sparsity: Sparsity
    quant: QuantSpec | None
    profile: Profile
    propagate: str
    lang_aggregate: str = "tokens"

    @property
    def needs_calibration(self) -> bool:
        return self.method.statistic is not None or self.quant is not None or self.profile.name != "uniform"


def resolve(
    method: str | Method,
    sparsity: str | float | Sparsity,
    *,
    quantize: str | QuantSpec | None = None,
    profile: str | Profile = "uniform",
    propagate: str = "pruned",
    batch_size: int = 8,
    has_calibration: bool,
    has_contrast: bool = False,
    method_options: dict | None = None,
    lang_aggregate: str = "tokens",
) -> Plan:
    """Resolve the method (with its options and a contrast set), target, quantization and profile; refuse what cannot work.

    ``run_prune`` calls this from settings before loading anything, and
    ``prune_model`` with the objects themselves: each check has one place
    and one message.
    """
    chosen = get_method(method, **(method_options or {})).with_contrast(has_contrast)
    target = Sparsity.parse(sparsity) if chosen.prunes else Sparsity(0.0)  # a method that does not prune ignores it
    quant = QuantSpec.parse(quantize)
    profile = profile if isinstance(profile, Profile) else Profile(profile)
    chosen.check(quant, target)
    profile.check(target, has_calibration)
    if propagate not in PROPAGATE:
        raise UserError(f"--propagate must be one of {', '.join(PROPAGATE)}, not {propagate!r}")
    check_at_least("--batch-size", batch_size, 1)
    mode, _ = parse_aggregation(lang_aggregate)
    hessian = chosen.statistic is Hessian or quant is not None
    if mode not in ("tokens", "mean") and hessian:
        raise UserError(
            f"--lang-aggregate {lang_aggregate} combines norms (wanda, ria); the Hessian of "
            f"{'GPTQ' if quant is not None else chosen.name} takes tokens or mean (a weighted mean of per-language "
            "Hessians)"
        )
    if mode != "tokens" and chosen.statistic is None and quant is None and profile.name != "owl":
        raise UserError(
            f"--lang-aggregate {lang_aggregate}: {chosen.name} reads no calibration statistic to combine "
            "(with --profile owl its outlier ratios would)"
        )
    plan = Plan(chosen, target, quant, profile, propagate, lang_aggregate)
    if plan.needs_calibration and not has_calibration:
        why = chosen.name if chosen.statistic is not None else "--quantize (GPTQ)" if quant else "--profile owl"
        raise UserError(f"{why} needs calibration text: pass --calib, e.g. --calib mix:en+de")
    return plan


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
    quantize: str | QuantSpec | None = None,
    profile: str | Profile = "uniform",
    lang_aggregate: str = "tokens",
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

    ``quantize`` (a ``QuantSpec`` or text such as ``w4g128``) adds GPTQ on
    the same Hessian statistic: SparseGPT prunes and quantizes in one sweep;
    any other method is followed, in the same block pass, by GPTQ with its
    mask fixed, so pruned weights stay zero. ``profile`` spreads the target
    over the blocks (``"owl"``: outlier-weighted, from a dense pass first).

    Three steps: ``resolve`` (every check that needs no weights), the block
    loop (``_compress_blocks``), and the summary (``_summary``). Shapes are
    checked before any work (a selection without layers, an N:M that does
    not divide a layer). NaN or infinite weights are refused per block, just
    before that block is pruned, so no extra pass reads every weight up
    front; the blocks before it are then already pruned in place (the run
    cell writes nothing).
    """
    if isinstance(contrast, torch.Tensor):
        contrast = CalibrationSet.from_tokens(contrast)
    if isinstance(calibration, torch.Tensor):
        calibration = CalibrationSet.from_tokens(calibration)
    plan = resolve(
        method,
        sparsity,
        quantize=quantize,
        profile=profile,
        propagate=propagate,
        batch_size=batch_size,
        has_calibration=calibration is not None,
        has_contrast=contrast is not None,
        lang_aggregate=lang_aggregate,
    )
    layer_filter = LayerFilter(tuple(include), tuple(exclude))
    blocks_name, blocks = find_blocks(model)
    check_shapes(blocks_name, blocks, plan.sparsity, layer_filter, plan.quant)
    started = time.perf_counter()
    engine, aggregation = None, LanguageAggregation()
    if plan.needs_calibration:
        aggregation = calibration.aggregation(plan.lang_aggregate)
        batches = calibration.batches(batch_size, by_language=aggregation.active)
        if contrast is not None:
            batches += contrast.batches(batch_size, role=CONTRAST)
        check_share(len(batches))
        engine = BlockEngine(model, world().share(batches), layer_filter)
    per_block, profile_summary = _block_targets(plan, engine, len(blocks), aggregation)
    kept, records, tally = _compress_blocks(
        model, plan, engine, per_block, layer_filter, seed, progress, on_block, aggregation
    )
    summary = {
        "method": plan.method.name,
        "sparsity": str(plan.sparsity),
        "profile": profile_summary,
        "quantization": plan.quant.record() if plan.quant else None,
        "propagate": plan.propagate,
        "seed": seed,
        "include": list(include),
        "exclude": list(exclude),
        "calibration": calibration.summary() if calibration is not None and engine is not None else None,
        **({"lang_aggregate": aggregation.record()} if aggregation.active else {}),
        **({"contrast": contrast.summary(), "roles": {"X": "calibration", "Z": "contrast"}} if contrast else {}),
        **_measured(model, blocks_name, tally, records, started),
    }
    return PruneResult(kept, summary)


def _block_targets(plan: Plan, engine, count: int, aggregation) -> tuple[list[Sparsity], dict]:
    """Each block's target: the plan's, or OWL's spread from one dense pass (its norms combined across languages
    as the run's statistics are); and the profile's record."""
    record = plan.profile.record()
    if plan.profile.name != "owl":
        return [plan.sparsity] * count, record
    engine.capture()
    ratios = owl_ratios(engine, plan.profile.m, aggregation=aggregation)
    engine.release()
    targets = owl_sparsities(ratios, plan.sparsity.ratio, plan.profile.lam)
    record.update(outlier_ratios=ratios, block_sparsity=targets)
    return [Sparsity(ratio=value) for value in targets], record


def _compress_blocks(model, plan: Plan, engine, per_block, layer_filter, seed, progress, on_block, aggregation=None):
    """The block loop: statistics, compression and propagation per block; changes handed on or kept."""
    blocks_name, blocks = find_blocks(model)
    placement = placement_of(model)
    compressor = Compressor.for_run(plan.method, plan.quant, placement.save_dtype)
    kept: dict[str, LayerChange] = {}
    records: dict[str, dict] = {}
    tally = SparsityTally()
    if engine is not None:
        engine.capture()
    with torch.no_grad():
        for index in range(len(blocks)):
            block_started = time.perf_counter()
            with placement.hold(index):
                layers = prunable_layers(blocks[index], f"{blocks_name}.{index}", layer_filter)
                check_finite(layers)
                if engine is None:
                    changes = {}
                    for name, layer in layers.items():
                        changes.update(
                            plan.method.prune_group({name: weight_matrix(layer)}, None, per_block[index], seed)
                        )
                else:
                    changes = _prune_block(
                        engine, index, layers, compressor, per_block[index], seed, plan.propagate, aggregation
                    )
                for name in changes:
                    tally.layer(name, weight_matrix(layers[name]))
                    if plan.profile.name != "uniform":
                        changes[name].target_sparsity = per_block[index].ratio
                tally.tensors(blocks[index].parameters())
                records.update({name: change.record() for name, change in changes.items()})
                if on_block is not None:
                    on_block(index, changes)
                else:
                    kept.update(changes)
            log.debug(
                "block %d/%d: %d layers in %.2f s",
                index + 1,
                len(blocks),
                len(changes),
                time.perf_counter() - block_started,
            )
            if progress:
                progress(index + 1, len(blocks))
    if engine is not None:
        engine.release()
    return kept, records, tally


def _measured(model, blocks_name: str, tally: SparsityTally, records: dict, started: float) -> dict:
    """The measured sparsity (tensors outside the blocks counted from the source file when known) and timing."""
    placement = placement_of(model)
    for name, param in outside_blocks(model, blocks_name):
        key = placement.key(name)
        tally.tensor(param.numel(), placement.checkpoint.count_zeros(key) if key else zeros(param))
    measured = tally.summary()
    for name, record in records.items():
        measured["layers"][name].update(record)
    return {"placement": placement.describe(), "seconds": round(time.perf_counter() - started, 3), **measured}


@dataclass
class Compressor:
    """What compresses one group of layers in a run: the pruning method, then GPTQ unless the method quantized jointly."""

    method: Method
    gptq: GPTQ | None = None

    @classmethod
    def for_run(cls, method: Method, quant: QuantSpec | None, scale_dtype: torch.dtype) -> Compressor:
        if quant is None:
            return cls(method)
        joint = method.jointly_quantizing(quant, scale_dtype)
        return cls(joint) if joint is not None else cls(method, GPTQ(quant, scale_dtype))

    @property
    def statistics(self) -> list[type]:
        """The statistics to gather per layer input: the method's, plus the Hessian GPTQ needs (shared when equal)."""
        kinds = [self.method.statistic] if self.method.statistic is not None else []
        if self.gptq is not None and Hessian not in kinds:
            kinds.append(Hessian)
        return kinds

    def compress(self, group: dict[str, torch.Tensor], statistics: dict[type, object], sparsity, seed):
        changes = self.method.prune_group(group, statistics.get(self.method.statistic), sparsity, seed)
        if self.gptq is not None:
            changes = self.gptq.quantize_group(group, statistics[Hessian], changes)
        return changes


def _prune_block(
    engine, index, layers, compressor: Compressor, sparsity, seed, propagate, aggregation=None
) -> dict[str, LayerChange]:
    if not layers:
        engine.run_block(index)
        return {}
    statistics: dict[str, dict[type, object]] = {}

    def on_input(leader: str, x: torch.Tensor, batch) -> None:
        if leader not in statistics:
            statistics[leader] = {
                kind: kind(x.shape[1], leader, x.device, aggregation) for kind in compressor.statistics
            }
        contrast = batch.tag is not None and batch.tag.role == CONTRAST
        for kind, statistic in statistics[leader].items():
            if kind is compressor.method.statistic or not contrast:  # GPTQ's Hessian sees the calibration set X only
                statistic.add_batch(x, batch.tag)

    dense = propagate == "dense"
    if dense:
        groups = engine.run_block(index, on_input, write_outputs=True)
    else:
        # The first batch runs whole to learn the layers' order; the rest stop after the last layer's input.
        groups = engine.run_block(index, on_input, write_outputs=False, batches=range(1))
        engine.run_block(
            index, on_input, write_outputs=False, stop_after=groups.order[-1], batches=range(1, len(engine.batches))
        )
    for gathered in statistics.values():  # the same leaders in the same order on every rank
        for statistic in gathered.values():
            statistic.synchronize()
    changes = {}
    # Widest input first: once its group is solved and its statistic freed, the other solves run beside small
    # statistics only (a 14336-wide down projection's Hessian is 822 MB). Every statistic was gathered before any
    # group changed, so the order changes no result; the changes keep the groups' own order.
    order = [name for leader in statistics for name in groups.members(leader)]
    for leader in sorted(statistics, key=lambda leader: -weight_matrix(layers[leader]).shape[1]):
        gathered = statistics.pop(leader)
        group = {name: weight_matrix(layers[name]) for name in groups.members(leader)}
        changes.update(compressor.compress(group, gathered, sparsity, seed))
        for statistic in gathered.values():
            statistic.free()
    changes = {name: changes[name] for name in order}
    return_freed_memory()
    if not dense:
        engine.run_block(index)
    return changes

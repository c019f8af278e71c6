"""How alike pruning masks are across calibration languages (language-specific calibration paper, 5.2 and D.3).

Runs are grouped by calibration language (their reports' calibration
languages, e.g. ``de`` or ``en+de+zh``; the method joins the label when the
runs mix methods). Within a group, the runs differ by seed (calibration
sample). For every layer, ``M_i`` is the set of weights run i pruned; the
group's stable set is the intersection ``M_I`` over its runs and its union
``M_U``, and ``|M_I| / |M_U|`` is how certain pruning is in that language
(Figure 2, left). Between two groups the similarity is
``IoU = |M_I^a ∩ M_I^b| / |M_I^a ∪ M_I^b|`` (Eq. 9; Figure 2, right).
Everything is reported per decoder block and module type (the layer's name
inside its block: ``self_attn.q_proj``, ``mlp.down_proj`` or the model's
own), and averaged over blocks per module (the paper's Tables 16 and 17).
Masks are read one layer at a time from the run folders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import ClassVar

from ..errors import UserError
from ..runs import Reporter, SavedMasks, load_report
from ..settings import setting
from . import figures
from .base import Analysis, register


@dataclass
class RunGroup:
    """Runs calibrated in one language (or mix), one per seed or calibration sample."""

    label: str
    runs: list[Path] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)


def split_name(name: str) -> tuple[int, str]:
    """``model.layers.7.self_attn.q_proj`` -> (7, ``self_attn.q_proj``): the block index and the module type."""
    parts = name.split(".")
    for position, part in enumerate(parts):
        if part.isdigit():
            return int(part), ".".join(parts[position + 1 :])
    raise UserError(f"mask {name!r} is not inside a numbered decoder block")


def group_runs(runs: list[Path]) -> tuple[list[RunGroup], str]:
    """Group run folders by calibration language (and method when they differ); one error line for unusable sets."""
    if len(runs) < 2:
        raise UserError("give at least two run folders: IoU compares masks across runs")
    reports = {Path(run): load_report(run) for run in runs}
    models = {report.get("model") for report in reports.values()}
    if len(models) != 1:
        raise UserError(
            f"the runs prune different models ({', '.join(sorted(map(str, models)))}): compare runs of one model"
        )
    methods = {report.get("method") for report in reports.values()}
    groups: dict[str, RunGroup] = {}
    for run, report in reports.items():
        calibration = report.get("calibration") or {}
        label = "+".join(calibration.get("languages") or []) or calibration.get("recipe") or "tokens"
        if len(methods) > 1:
            label = f"{report.get('method')}:{label}"
        group = groups.setdefault(label, RunGroup(label))
        group.runs.append(run)
        group.seeds.append(report.get("seed"))
    return list(groups.values()), models.pop()


def ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def analyze_masks(runs: list[Path], progress=None) -> dict:
    """Stable share per group and IoU between groups, per block and module type, from the runs' saved masks."""
    groups, model = group_runs(runs)
    readers = {run: SavedMasks(run) for group in groups for run in group.runs}
    first = next(iter(readers.values()))
    for run, reader in readers.items():
        if set(reader.names) != set(first.names):
            raise UserError(
                f"{run} pruned other layers than {first.run}: compare runs of the same model and layer choice"
            )
    blocks = sorted({split_name(name)[0] for name in first.names})
    modules = list(dict.fromkeys(split_name(name)[1] for name in first.names))
    empty = {module: [None] * (max(blocks) + 1) for module in modules}
    stable = {g.label: {m: list(v) for m, v in empty.items()} for g in groups}
    pairs = [f"{a.label}|{b.label}" for a, b in combinations(groups, 2)]
    iou = {pair: {m: list(v) for m, v in empty.items()} for pair in pairs}
    done = 0
    for names in first.by_shard():  # one block's masks of every run at a time, each shard opened once
        kept = {run: reader.read(names) for run, reader in readers.items()}
        for name in names:
            _compare_layer(name, groups, kept, stable, iou)
            done += 1
            if progress is not None:
                progress(done, len(first.names))
    return {
        "model": model,
        "groups": [{"label": g.label, "runs": [str(r) for r in g.runs], "seeds": g.seeds} for g in groups],
        "modules": modules,
        "blocks": max(blocks) + 1,
        "stable": stable,
        "iou": iou,
        "stable_mean": {label: {m: _mean(v) for m, v in per.items()} for label, per in stable.items()},
        "iou_mean": {pair: {m: _mean(v) for m, v in per.items()} for pair, per in iou.items()},
    }


def _compare_layer(name: str, groups: list[RunGroup], kept: dict, stable: dict, iou: dict) -> None:
    """Fill in one layer's stable share per group and IoU per pair of groups."""
    block, module = split_name(name)
    intersections = {}
    for group in groups:
        pruned = [~kept[run][name] for run in group.runs]
        if len({tuple(p.shape) for p in pruned}) != 1:
            raise UserError(
                f"layer {name} has different shapes across runs {[str(r) for r in group.runs]}: "
                "compare runs of the same model"
            )
        inter, union = pruned[0].clone(), pruned[0].clone()
        for other in pruned[1:]:
            inter &= other
            union |= other
        intersections[group.label] = inter
        stable[group.label][module][block] = ratio(int(inter.sum()), int(union.sum()))
    for a, b in combinations(groups, 2):
        x, y = intersections[a.label], intersections[b.label]
        if x.shape != y.shape:
            raise UserError(
                f"layer {name} has different shapes in {a.label} and {b.label} runs: compare runs of one model"
            )
        iou[f"{a.label}|{b.label}"][module][block] = ratio(int((x & y).sum()), int((x | y).sum()))


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


@register
@dataclass(kw_only=True)
class MaskOverlap(Analysis):
    """Pruning-mask stability across seeds and IoU across calibration languages (calibration paper, Figure 2)."""

    name: ClassVar[str] = "masks"
    runs: tuple[Path, ...] = setting(
        (), "Run folders (several seeds per calibration language).", argument=True, required=True
    )

    def validate(self) -> None:
        for run in self.runs:
            load_report(run)
        super().validate()

    def compute(self, reporter: Reporter) -> dict:
        return analyze_masks([Path(r) for r in self.runs], lambda d, t: reporter.evaluating(d, t, "mask layers"))

    @staticmethod
    def draw(result: dict, folder: Path) -> list[Path]:
        return figures.draw_masks(result, folder)

    @staticmethod
    def summary(result: dict) -> list[str]:
        lines = [
            f"{label}: stable share {', '.join(f'{m} {v:.3f}' for m, v in per.items() if v is not None)}"
            for label, per in result["stable_mean"].items()
        ]
        lines += [
            f"IoU {pair.replace('|', ' vs ')}: {', '.join(f'{m} {v:.3f}' for m, v in per.items() if v is not None)}"
            for pair, per in result["iou_mean"].items()
        ]
        return lines

"""A grid file: axes that multiply into cells, each cell a pruning run plus its evaluation in a folder named by its content.

A grid is YAML. The axes ``models``, ``methods``, ``sparsities``,
``calibration`` (recipes) and ``seeds`` multiply; ``exclude`` drops the
combinations that match every key it names, ``include`` adds combinations
(after exclusion), each naming every axis (``calib`` may be left out for a
method that reads no calibration) and optionally its own ``settings`` (e.g.
a ``contrast`` recipe for wanda-contrastive) and ``evaluation`` options (the
row adds them to its name); a ``method: dense`` entry with ``evaluation``
options is the dense model evaluated another way (LRP2).
``evaluation`` names tasks, languages, any option of
``evaluation.EvalOptions`` (``EVAL_KEYS``) and ``dtype``, the dtype the
evaluation computes in when it differs from the pruning's (bfloat16 scoring
of a float32 prune). ``settings`` holds the options
every pruning run shares: any ``langprune prune`` option by its name with
underscores (``setting_keys()``: nsamples, seqlen, batch_size, shots,
contrast, tokens, propagate, include, exclude, quantize, profile, owl_m,
owl_lambda, device, dtype, offload) and every registered method's options
(ria_alpha, mask_selection...). Each model also gets a dense cell (method
``dense``): the baseline, evaluated once. ``profiles`` name overrides of
any top-level key (``--profile quick``). ``verdict`` names the paper
findings counted from the tables (one mapping or a list; ``verdicts``). ``out`` is the grid's folder, relative to
the grid file's own folder.

A cell's folder is ``<out>/cells/<key>``, the key a SHA-256 of the
canonical JSON of its resolved settings: the same settings give the same
folder in any order and on any machine. Every mistake in a grid file is
found before anything runs and reported in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import calibration
from ..compress.methods import get_method, method_options
from ..compress.sparsity import Sparsity
from ..engine.placement import check_dtype, check_placement
from ..errors import UserError, did_you_mean
from ..evaluation import EvalOptions
from ..evaluation.harness import check_harness_tasks
from ..evaluation.runner import plan
from ..languages import check_language
from ..models import check_model
from ..runs.cell import PruneSettings
from ..storage import read_yaml_mapping

AXES = {"models": "model", "methods": "method", "sparsities": "sparsity", "calibration": "calib", "seeds": "seed"}
TOP_KEYS = set(AXES) | {
    "name",
    "description",
    "evaluation",
    "settings",
    "exclude",
    "include",
    "profiles",
    "verdict",
    "out",
}
# Keys of a grid's ``settings`` (and of an include entry's): every ``prune`` option but the axes, the run folder
# and its pruning-time perplexity (the grid evaluates through ``evaluation``), plus every method's options.
# grid run has its own --report-to: a cell's prune and evaluation are logged as one tracker run
NOT_SETTINGS = {"out", "overwrite", "method_options", "eval_langs", "eval_corpus", "report_to", *AXES.values()}
EVAL_KEYS = {"tasks", "langs", "dtype", *(f.name for f in dataclasses.fields(EvalOptions))}


def setting_keys() -> set[str]:
    """The keys a grid's ``settings`` accept, read from ``PruneSettings`` and the registered methods."""
    return {f.name for f in dataclasses.fields(PruneSettings) if f.name not in NOT_SETTINGS} | set(method_options())


DENSE = "dense"
KEY_VERSION = 1  # bump when a cell's meaning changes, so old folders are not mistaken for new cells


@dataclass(frozen=True)
class Cell:
    """One pruning run (none for the dense baseline) and its evaluation, fully resolved."""

    axes: dict  # model, method, sparsity, calib, seed (None where a dense cell has none)
    prune: dict | None  # PruneSettings fields except out
    evaluation: dict  # tasks, langs, options (EvalOptions fields), device, dtype, offload

    @property
    def key(self) -> str:
        content = {"version": KEY_VERSION, "prune": self.prune, "evaluation": self.evaluation}
        if self.prune is None:  # a dense cell has no prune settings to name its model: two models, two folders
            content["model"] = self.axes["model"]
        text = json.dumps(content, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def dense(self) -> bool:
        return self.prune is None

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.axes.items() if v is not None)


@dataclass
class Grid:
    path: Path
    name: str
    out: Path
    cells: list[Cell] = field(default_factory=list)
    verdicts: list[dict] = field(default_factory=list)

    def folder(self, cell: Cell) -> Path:
        return self.out / "cells" / cell.key


def _mistake(path: Path, text: str) -> UserError:
    return UserError(f"{path}: {text}")


def _unknown(path: Path, keys, allowed: set[str], where: str) -> None:
    for key in keys:
        if key not in allowed:
            raise _mistake(
                path,
                f"unknown key {key!r} in {where}{did_you_mean(str(key), allowed)}; known: {', '.join(sorted(allowed))}",
            )


def _as_list(path: Path, value, name: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise _mistake(path, f"{name} is empty: give at least one value")
    return values


def load_grid(path: Path, profile: str | None = None, out: Path | None = None) -> Grid:
    """Read, validate and expand a grid file; one clear line for the first mistake."""
    path = Path(path)
    spec = read_yaml_mapping(path, "grid file", "is a mapping of keys (models, methods, calibration, ...)")
    _unknown(path, spec, TOP_KEYS, "the grid")
    profiles = spec.get("profiles") or {}
    if profile is not None:
        if profile not in profiles:
            raise _mistake(path, f"no profile {profile!r}; profiles: {', '.join(profiles) or 'none'}")
        _unknown(path, profiles[profile], TOP_KEYS - {"profiles"}, f"profile {profile!r}")
        spec = {**spec, **profiles[profile]}
    settings = spec.get("settings") or {}
    _unknown(path, settings, setting_keys(), "settings")
    evaluation = spec.get("evaluation") or {}
    _unknown(path, evaluation, EVAL_KEYS, "evaluation")
    values = {
        axis: _as_list(path, spec.get(name, default), name)
        for name, axis, default in [
            ("models", "model", "gemma-3-270m"),
            ("methods", "method", "wanda"),
            ("sparsities", "sparsity", "0.5"),
            ("calibration", "calib", None),
            ("seeds", "seed", 0),
        ]
    }
    values["sparsity"] = [str(s) for s in values["sparsity"]]
    _check_axes(path, values, settings)
    combos = [dict(zip(values, combo)) for combo in itertools.product(*values.values())]
    for rule in _as_rules(path, spec.get("exclude"), "exclude"):
        combos = [c for c in combos if not all(str(c[k]) == str(v) for k, v in rule.items())]
    dense_variants = []
    for rule in _as_rules(path, spec.get("include"), "include", extra={"settings", "evaluation"}):
        overrides = rule.get("evaluation") or {}
        _unknown(path, overrides, EVAL_KEYS - {"tasks", "langs"}, "an include entry's evaluation")
        if rule.get("method") == DENSE:  # the dense model evaluated another way: LRP2's projection, say
            _unknown(path, rule, {"model", "method", "evaluation"}, "a dense include entry")
            if not overrides:
                raise _mistake(path, "a dense include entry changes the evaluation: give evaluation: {lrp2: true}, say")
            _check_axes(path, {"model": [rule.get("model", values["model"][0])]}, settings)
            dense_variants.append(rule)
            continue
        missing = [axis for axis in values if axis not in rule and not (axis == "calib" and _calibration_free(rule))]
        if missing:
            raise _mistake(path, f"an include entry must name every axis; missing: {', '.join(missing)}")
        own = rule.get("settings") or {}
        _unknown(path, own, setting_keys(), "an include entry's settings")
        axes = {k: (str(v) if k == "sparsity" else v) for k, v in rule.items() if k not in ("settings", "evaluation")}
        axes.setdefault("calib", None)
        _check_axes(path, {k: [v] for k, v in axes.items() if not (k == "calib" and v is None)}, {**settings, **own})
        combos.append({**axes, "settings": own, "evaluation": overrides})
    if not combos:
        raise _mistake(path, "the grid is empty: exclude removes every combination")
    eval_cell = _evaluation(path, evaluation, settings)
    cells = [
        Cell({"model": m, "method": DENSE, "sparsity": None, "calib": None, "seed": None}, None, eval_cell)
        for m in dict.fromkeys(c["model"] for c in combos)
    ]
    for rule in dense_variants:
        axes = {"model": rule.get("model", values["model"][0]), "method": DENSE, "sparsity": None, "calib": None,
                "seed": None, "variant": variant_label(rule["evaluation"])}  # fmt: skip
        cells.append(Cell(axes, None, _evaluation(path, {**evaluation, **rule["evaluation"]}, settings)))
    seen = {cell.key for cell in cells}
    for combo in combos:
        own = combo.pop("settings", {})
        overrides = combo.pop("evaluation", {})
        if overrides:
            combo["variant"] = variant_label(overrides)
        prune = {
            "model": combo["model"],
            "calib": combo["calib"],
            "method": combo["method"],
            "sparsity": combo["sparsity"],
            "seed": combo["seed"],
            **settings,
            **own,
        }
        own_eval = _evaluation(path, {**evaluation, **overrides}, settings) if overrides else eval_cell
        cell = Cell(dict(combo), prune, own_eval)
        if cell.key not in seen:
            seen.add(cell.key)
            cells.append(cell)
    name = str(spec.get("name") or path.stem)
    # An out: written in the file resolves against the file's folder, so every command finds the same cells from any
    # working folder; without one (or with --out) the folder is relative to the current one, like every CLI path.
    root = Path(out) if out else path.parent / spec["out"] if spec.get("out") else Path("runs") / "grids" / name
    found = spec.get("verdict") or []
    grid = Grid(path, name, root, cells, found if isinstance(found, list) else [found])
    for cell in cells:  # every pairing a run would refuse (a method and its contrast set, say) is refused now
        if not cell.dense:
            try:
                PruneSettings.from_mapping(
                    cell.prune, f"{path}: settings", out=grid.folder(cell), overwrite=True
                ).validate()
            except UserError as exc:
                raise _mistake(path, f"cell {cell.label()}: {exc}") from None
    from .verdicts import check_verdicts  # verdicts read tables, which read grids

    check_verdicts(grid)
    return grid


def variant_label(overrides: dict) -> str:
    """How a row whose evaluation differs from the grid's is named: its options (``lrp2``, ``lrp2_stride=2``)."""
    return " ".join(key if value is True else f"{key}={value}" for key, value in sorted(overrides.items()))


def _calibration_free(rule: dict) -> bool:
    """An include entry for a method that reads no calibration (random, magnitude) may leave out calib."""
    try:
        method = get_method(str(rule.get("method")))
    except UserError:
        return False
    return method.statistic is None and not (rule.get("settings") or {}).get("quantize")


def _as_rules(path: Path, rules, name: str, extra: frozenset | set = frozenset()) -> list[dict]:
    rules = rules or []
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise _mistake(path, f"{name} is a list of mappings such as {{method: sparsegpt, calib: mono:de}}")
    for rule in rules:
        _unknown(path, rule, set(AXES.values()) | set(extra), name)
    return rules


def _check_axes(path: Path, values: dict, settings: dict) -> None:
    try:
        for model in values.get("model", []):
            check_model(str(model))
        for method in values.get("method", []):
            get_method(method)
        for sparsity in values.get("sparsity", []):
            Sparsity.parse(str(sparsity))
        serve = settings.get("serve")
        if serve is not None:
            if values.get("calib") != [None]:
                raise UserError("settings serve builds the calibration: leave out the calibration axis")
            calibration.check_recipe(calibration.serve_recipe(serve))
        for recipe in values.get("calib", []) if serve is None else []:
            if recipe is None:
                raise UserError(
                    "calibration is missing: list recipes, e.g. calibration: [mono:en, mono:de], or set settings: "
                    "{serve: de,hi=2}"
                )
            calibration.check_recipe(recipe)
        for seed in values.get("seed", []):
            if not isinstance(seed, int) or seed < 0:
                raise UserError(f"seed {seed!r} is not a non-negative integer")
        check_placement(settings.get("device", "auto"), settings.get("dtype", "auto"), settings.get("offload", "auto"))
    except UserError as exc:
        raise _mistake(path, str(exc)) from None


def _evaluation(path: Path, evaluation: dict, settings: dict) -> dict:
    tasks = _as_list(path, evaluation.get("tasks", ["ppl"]), "evaluation tasks")
    langs = _as_list(path, evaluation.get("langs", ["en"]), "evaluation langs")
    options = {k: v for k, v in evaluation.items() if k not in ("tasks", "langs", "dtype")}
    try:
        for language in langs:
            check_language(language)
        chosen = EvalOptions(**options)
        plan(list(tasks), list(langs), chosen)
        if chosen.harness:
            check_harness_tasks(list(chosen.harness), chosen.harness_include)
    except (UserError, TypeError) as exc:
        raise _mistake(path, str(exc)) from None
    placement = {k: settings.get(k, "auto") for k in ("device", "dtype", "offload")}
    if "dtype" in evaluation:  # evaluate in another dtype than the prune computes in (bfloat16 scoring)
        try:
            check_dtype(evaluation["dtype"])
        except UserError as exc:
            raise _mistake(path, f"evaluation: {exc}") from None
        placement["dtype"] = evaluation["dtype"]
    return {"tasks": list(tasks), "langs": list(langs), "options": options, **placement}

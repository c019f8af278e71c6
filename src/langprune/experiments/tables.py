"""Tables from a grid's cells: any axis against any other, mean ± std over seeds, best marked, paired bootstrap.

Rows and columns are axes: ``calib``, ``method``, ``sparsity``, ``model``,
``seed`` or ``eval`` (the evaluation language, or translation direction).
Axes that are neither rows nor columns nor ``seed`` must hold one value in
the cells shown, else the table splits into one section per value. The
dense cell of each model is the ``dense`` row (when rows are ``calib`` or
``method``). Seeds are averaged (mean ± sample std). The best value per
column is marked, in the direction the metric declares (``evaluation.types``);
with ``baseline`` each value is tested against that row's with a paired
bootstrap over the evaluation's items (windows for perplexity, examples for
accuracy and RankC, per-item values averaged over seeds first; sentences for
BLEU and chrF, for a row with one seed), and p < 0.05 is
marked (two-sided, with its 95% interval of the difference: ``evaluation.significance``). Every configured row and column appears: a cell that has not
finished is ``None`` (printed ``–``), and the table counts them. Rendering
lives in ``render``, verdicts in ``verdicts``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from ..errors import UserError, did_you_mean
from ..evaluation.rankc import consistencies, rankings_of
from ..evaluation.significance import accuracy_test, perplexity_test, translation_tests
from ..evaluation.tasks import TaskSpec, catalog, select, with_overrides
from ..evaluation.translation import directions
from ..evaluation.types import TASK_TYPES, Metric
from ..runs.folder import load_eval
from .execute import cell_state
from .grid import DENSE, Cell, Grid

TABLE_AXES = ("calib", "method", "sparsity", "model", "seed", "eval")
ALPHA = 0.05
PAIRED_TYPES = ("perplexity", "cloze", "choice", "rankc", "translation")  # results that keep per-item values
RANKC = TASK_TYPES["rankc"].headline


def metric_spec(metric: str) -> tuple[TaskSpec, Metric]:
    """The task and metric a table shows: ``TASK`` (its headline metric), ``TASK:METRIC``, or a metric only one task
    carries (``ppl``, ``bpb``, ``snr``, ``error``); anything else is one clear error."""
    tasks = catalog()
    task_name, _, name = metric.partition(":")
    if name == RANKC.name and task_name in tasks and tasks[task_name].type == "cloze":
        return tasks[task_name], RANKC  # the RankC of one cloze task's items
    if name:
        if task_name not in tasks:
            raise UserError(f"unknown task {task_name!r} in --metric {metric}{did_you_mean(task_name, tasks)}")
        task = tasks[task_name]
        chosen = TASK_TYPES[task.type].metric(name)
    elif metric in tasks:
        task = tasks[metric]
        chosen = TASK_TYPES[task.type].headline
    else:
        owners = [t for t in tasks.values() if any(m.name == metric and m.better for m in TASK_TYPES[t.type].metrics)]
        if len(owners) > 1:
            raise UserError(
                f"metric {metric!r} belongs to several tasks ({', '.join(t.name for t in owners)}): "
                f"write TASK:{metric}, e.g. {owners[0].name}:{metric}"
            )
        if not owners:
            shorts = sorted({m.name for t in TASK_TYPES.values() if t.run for m in t.metrics if m.better})
            raise UserError(
                f"unknown metric {metric!r}{did_you_mean(metric, [*tasks, *shorts])}: give a task name "
                f"(headline metric), TASK:METRIC, or one of {', '.join(shorts)}"
            )
        task = owners[0]
        chosen = TASK_TYPES[task.type].metric(metric)
    if chosen.better is None:
        raise UserError(f"{chosen.name} is a count, not a metric to compare: choose another --metric")
    return task, chosen


@dataclass
class Entry:
    """A table cell: its values over seeds, and per-item details for the significance test."""

    values: list[float] = field(default_factory=list)
    items: list = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


def row_label(axes: dict, rows: str) -> str:
    """The row of a cell: one axis, or several joined by + (``method+calib``), without the axes a cell has no value
    for (a random pruning's calibration); the dense cell is ``dense``; a row with its own evaluation options adds
    them (``dense lrp2``)."""
    names = rows.split("+")
    variant = [axes["variant"]] if axes.get("variant") else []  # a row evaluated its own way (LRP2, say)
    if axes["method"] == DENSE:
        return " ".join([axes["model"], DENSE] if "model" in names else [DENSE]) + "".join(f" {v}" for v in variant)
    return " ".join([*(str(axes[name]) for name in names if axes[name] is not None), *variant])


def _configured_keys(cell: Cell, task: TaskSpec) -> list[str]:
    """The evaluation keys a cell will have for the task: its languages, or translation directions."""
    langs = cell.evaluation.get("langs") or []
    if task.type == "translation":
        task = with_overrides(task, None, None, (cell.evaluation.get("options") or {}).get("translation_directions"))
        return [f"{s}-{t}" for lang in langs for s, t in directions(task, lang)]
    return [str(lang) for lang in langs]


def check_axes(rows: str, cols: str) -> None:
    for axis in rows.split("+") + [cols]:
        if axis not in TABLE_AXES:
            raise UserError(
                f"unknown table axis {axis!r}: choose from {', '.join(TABLE_AXES)} (rows may join axes with +)"
            )
    if cols in rows.split("+"):
        raise UserError("rows and columns must be different axes")


def collect(grid: Grid, metric: str, rows: str, cols: str) -> tuple[dict, int]:
    """{section: {row: {column: Entry or None}}} over every configured cell, and how many cells are not finished."""
    check_axes(rows, cols)
    task, chosen = metric_spec(metric)
    evaluated = {t.name for cell in grid.cells for t in select(list(cell.evaluation.get("tasks") or []))}
    if chosen is RANKC:
        task = _rankc_task(task, evaluated, metric)
    if task.name not in evaluated:
        raise UserError(
            f"the grid does not evaluate {task.name} (--metric {metric}): it evaluates {', '.join(sorted(evaluated))}"
        )
    split = [a for a in ("model", "method", "sparsity") if a not in rows.split("+") + [cols]]
    placed, missing = [], 0  # (axes, value or None, items)
    for cell in grid.cells:
        done = cell_state(grid, cell) == "done"
        missing += not done
        results = load_eval(grid.folder(cell)).get("tasks", {}).get(task.name, {}) if done else {}
        configured = _configured_keys(cell, task)
        if chosen is RANKC:
            results, configured = rankc_results(results), [k for k in configured if k != rankc_reference()]
        keys = list(dict.fromkeys([*configured, *results])) if cols == "eval" else [None]
        for key in keys:
            found = [(k, r) for k, r in results.items() if key is None or k == key]
            if not found:
                placed.append((cell, {**cell.axes, "eval": key}, None, None))
            for k, result in found:
                value = result.get(chosen.field)
                items = (
                    result.get("windows")
                    or result.get("per_item")
                    or [i.get("correct") for i in result.get("items", [])]
                    or _sentences(result, k, chosen.name)
                ) or None
                placed.append((cell, {**cell.axes, "eval": k}, None if value is None else float(value), items))
    sections: dict = {}

    def add(section: str, axes: dict, value, items) -> None:
        row = sections.setdefault(section, {}).setdefault(row_label(axes, rows), {})
        column = str(axes[cols])
        if value is None:
            row.setdefault(column, None)
            return
        entry = row.get(column) or Entry()
        entry.values.append(value)
        entry.items.append(items)
        row[column] = entry

    for cell, axes, value, items in placed:
        if not cell.dense:
            add(" ".join(f"{a}={axes[a]}" for a in split), axes, value, items)
    for cell, axes, value, items in placed:  # the dense row joins every section of its model
        if cell.dense:
            own = f"model={axes['model']}"
            targets = [s for s in sections if "model" not in split or own in s.split(" ")]
            for section in targets or [own if "model" in split else ""]:
                add(section, axes, value, items)
    return sections, missing


def _rankc_task(task: TaskSpec, evaluated: set[str], metric: str) -> TaskSpec:
    """The cloze task whose RankC a table shows: the named one, or (``--metric rankc``) the grid's only one."""
    if task.type == "cloze":
        return task
    cloze = sorted(name for name in evaluated if catalog()[name].type == "cloze")
    if len(cloze) != 1:
        raise UserError(
            f"--metric {metric}: RankC is per cloze task, and the grid evaluates "
            + (f"several ({', '.join(cloze)}): write TASK:rankc, e.g. {cloze[0]}:rankc" if cloze else "none")
        )
    return catalog()[cloze[0]]


def rankc_reference() -> str:
    """The language RankC compares with (the rankc task's ``reference``)."""
    return catalog()["rankc"].options.get("reference", "en")


def rankc_results(results: dict) -> dict:
    """{language: {"rankc", "per_item"}} from one cell's results of a cloze task: each example's consistency with the
    reference language's ranking (``rankc.consistency``), so rows can be tested item by item like accuracy."""
    base = rankc_reference()
    if base not in results:
        return {}
    reference = rankings_of(results[base]["items"])
    out = {}
    for language, result in results.items():
        values = consistencies(rankings_of(result.get("items", [])), reference)
        if language != base and values:
            out[language] = {"rankc": statistics.fmean(values), "per_item": values}
    return out


def _sentences(result: dict, key: str, metric: str) -> dict | None:
    """A translation result's hypotheses and references, which BLEU and chrF resample sentence by sentence."""
    if "hypotheses" not in result:
        return None
    return {"hypotheses": result["hypotheses"], "references": result["references"], "target": key.split("-")[-1],
            "metric": metric}  # fmt: skip


def _mean_items(items: list):
    if any(i is None for i in items) or not items:
        return None
    if isinstance(items[0], dict):  # translations: hypotheses of different seeds do not average; one seed is tested
        return items[0] if len(items) == 1 else None
    if isinstance(items[0][0], list):  # windows: (nll, tokens) pairs, averaged over seeds
        return [[statistics.fmean(w[k][0] for w in items), items[0][k][1]] for k in range(len(items[0]))]
    return [statistics.fmean(i[k] for i in items) for k in range(len(items[0]))]


def _test(entry: Entry, base: Entry) -> dict | None:
    """The paired test of ``entry`` against ``base`` (p-value and interval), or None where items do not pair."""
    a, b = _mean_items(base.items), _mean_items(entry.items)
    if isinstance(a, dict) and isinstance(b, dict):
        if a["references"] != b["references"] or len(a["references"]) < 2:
            return None
        tests = translation_tests(a["hypotheses"], b["hypotheses"], a["references"], a["target"])
        return next((t for t in tests if t["metric"] == a["metric"]), None)
    if a is None or b is None or isinstance(a, dict) or isinstance(b, dict) or len(a) != len(b) or len(a) < 2:
        return None
    try:
        return perplexity_test(a, b) if isinstance(a[0], list) else accuracy_test(a, b)
    except UserError:
        return None


def build_table(grid: Grid, metric: str, rows: str, cols: str, baseline: str | None = None, ci: bool = False) -> dict:
    """Everything a rendering needs: per section, row and column labels, means, stds, best marks and p-values;
    ``ci`` shows each tested value's 95% interval of the difference to the baseline."""
    task, chosen = metric_spec(metric)
    if ci and baseline is None:
        raise UserError("--ci gives the interval of each row's difference to a baseline: add --baseline ROW")
    if ci and task.type not in PAIRED_TYPES:
        raise UserError(
            f"--ci needs per-item results, and {metric} ({task.type}) keeps none: use it with ppl or an accuracy task"
        )
    lower = chosen.lower_is_better
    sections, missing = collect(grid, metric, rows, cols)
    out = {
        "grid": grid.name,
        "metric": metric,
        "rows": rows,
        "cols": cols,
        "baseline": baseline,
        "ci": ci,
        "lower_is_better": lower,
        "missing_cells": missing,
        "cells_total": len(grid.cells),
        "sections": [],
    }
    for section, table in sections.items():
        row_labels = sorted(table, key=lambda r: (r != DENSE, r))
        col_labels = sorted({c for per in table.values() for c in per})
        if baseline is not None and baseline not in table:
            raise UserError(f"baseline row {baseline!r} is not in the table; rows: {', '.join(row_labels)}")
        cells = {}
        for c in col_labels:
            present = [
                (r, table[r][c].mean)
                for r in row_labels
                if table[r].get(c) is not None and r != baseline and not r.endswith(DENSE)
            ]  # best among pruned rows
            best = (min if lower else max)(present, key=lambda x: x[1])[0] if present else None
            base = table[baseline].get(c) if baseline else None
            for r in row_labels:
                entry = table[r].get(c)
                if entry is None:
                    cells[f"{r}|{c}"] = None
                    continue
                tested = _test(entry, base) if base is not None and r != baseline else None
                moved = base is not None and entry.mean != base.mean and (entry.mean < base.mean) == lower
                cells[f"{r}|{c}"] = {
                    "mean": entry.mean,
                    "std": entry.std,
                    "n": len(entry.values),
                    "best": r == best,
                    "p_value": tested and tested["p_value"],
                    "ci": tested and tested["ci"],
                    "mde": tested and tested["mde"],
                    "improves": moved if tested else None,
                }
        out["sections"].append({"section": section, "row_labels": row_labels, "col_labels": col_labels, "cells": cells})
    return out

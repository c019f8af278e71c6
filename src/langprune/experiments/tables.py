"""Tables from finished cells: any axis against any other, mean ± std over seeds, best marked, paired bootstrap.

Rows and columns are axes: ``calib``, ``method``, ``sparsity``, ``model``,
``seed`` or ``eval`` (the evaluation language, or translation direction).
Axes that are neither rows nor columns nor ``seed`` must hold one value in
the cells shown, else the table splits into one section per value. The
dense cell of each model is the ``dense`` row (when rows are ``calib`` or
``method``). Seeds are averaged (mean ± sample std). The best value per
column is marked; with ``baseline`` each value is tested against that row's
with a paired bootstrap over the evaluation's items (windows for
perplexity, examples for accuracy; per-item values averaged over seeds
first), and p < 0.05 is marked. Missing cells print as ``–``.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..evaluation.significance import accuracy_test, perplexity_test
from ..runs.folder import load_eval
from .execute import cell_state
from .grid import DENSE, Grid

METRICS = {  # name: (task, field, lower is better)
    "ppl": ("ppl", "ppl", True),
    "bpb": ("ppl", "bits_per_byte", True),
    "snr": ("fidelity", "snr_db", False),
    "error": ("fidelity", "pruning_error", True),
}
TABLE_AXES = ("calib", "method", "sparsity", "model", "seed", "eval")
FORMATS = ("md", "csv", "tex", "png")
ALPHA = 0.05


def metric_spec(metric: str) -> tuple[str, str, bool]:
    """(task, field, lower is better): ppl, bpb, snr, error, or TASK (accuracy) / TASK:chrf|bleu|accuracy."""
    if metric in METRICS:
        return METRICS[metric]
    task, _, name = metric.partition(":")
    return task, name or "accuracy", False


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


def _row_label(axes: dict, rows: str) -> str:
    """The row of a cell: one axis, or several joined by + (``method+calib``); the dense cell is ``dense``."""
    names = rows.split("+")
    if axes["method"] == DENSE:
        return f"{axes['model']} {DENSE}" if "model" in names else DENSE
    return " ".join(str(axes[name]) for name in names)


def collect(grid: Grid, metric: str, rows: str, cols: str) -> dict:
    """{section: {row: {column: Entry}}} from every finished cell of the grid."""
    for axis in rows.split("+") + [cols]:
        if axis not in TABLE_AXES:
            raise UserError(
                f"unknown table axis {axis!r}: choose from {', '.join(TABLE_AXES)} (rows may join axes with +)"
            )
    if cols in rows.split("+"):
        raise UserError("rows and columns must be different axes")
    task, name, _ = metric_spec(metric)
    split = [a for a in ("model", "method", "sparsity") if a not in rows.split("+") + [cols]]
    found, finished, pruned, dense = False, False, [], []
    for cell in grid.cells:
        if cell_state(grid, cell) != "done":
            continue
        finished = True
        results = load_eval(grid.folder(cell)).get("tasks", {})
        found = found or task in results
        for key, result in results.get(task, {}).items():
            if result.get(name) is not None:
                items = result.get("windows") or [i.get("correct") for i in result.get("items", [])] or None
                (dense if cell.dense else pruned).append(({**cell.axes, "eval": key}, float(result[name]), items))
    if finished and not found:
        raise UserError(
            f"no finished cell has task {task!r}: the grid evaluates {', '.join(grid.cells[0].evaluation['tasks'])}"
        )
    sections: dict = {}

    def add(section: str, axes: dict, value: float, items) -> None:
        entry = (
            sections.setdefault(section, {}).setdefault(_row_label(axes, rows), {}).setdefault(str(axes[cols]), Entry())
        )
        entry.values.append(value)
        entry.items.append(items)

    for axes, value, items in pruned:
        add(" ".join(f"{a}={axes[a]}" for a in split), axes, value, items)
    for axes, value, items in dense:  # the dense row joins every section of its model
        own = f"model={axes['model']}"
        targets = [s for s in sections if "model" not in split or own in s.split(" ")]
        for section in targets or [own if "model" in split else ""]:
            add(section, axes, value, items)
    return sections


def _mean_items(items: list):
    if any(i is None for i in items) or not items:
        return None
    if isinstance(items[0][0], list):  # windows: (nll, tokens) pairs, averaged over seeds
        return [[statistics.fmean(w[k][0] for w in items), items[0][k][1]] for k in range(len(items[0]))]
    return [statistics.fmean(i[k] for i in items) for k in range(len(items[0]))]


def _test(entry: Entry, base: Entry) -> float | None:
    a, b = _mean_items(base.items), _mean_items(entry.items)
    if a is None or b is None or len(a) != len(b) or len(a) < 2:
        return None
    try:
        if isinstance(a[0], list):
            return perplexity_test(a, b)["p_value"]
        return accuracy_test(a, b)["p_value"]
    except UserError:
        return None


def build_table(grid: Grid, metric: str, rows: str, cols: str, baseline: str | None = None) -> dict:
    """Everything a rendering needs: per section, row and column labels, means, stds, best marks and p-values."""
    _, _, lower = metric_spec(metric)
    sections = collect(grid, metric, rows, cols)
    out = {
        "grid": grid.name,
        "metric": metric,
        "rows": rows,
        "cols": cols,
        "baseline": baseline,
        "lower_is_better": lower,
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
                (r, table[r][c].mean) for r in row_labels if c in table[r] and r != baseline and not r.endswith(DENSE)
            ]  # best among pruned rows
            best = (min if lower else max)(present, key=lambda x: x[1])[0] if present else None
            for r in row_labels:
                entry = table[r].get(c)
                if entry is None:
                    cells[f"{r}|{c}"] = None
                    continue
                p = _test(entry, table[baseline][c]) if baseline and r != baseline and c in table[baseline] else None
                cells[f"{r}|{c}"] = {
                    "mean": entry.mean,
                    "std": entry.std,
                    "n": len(entry.values),
                    "best": r == best,
                    "p_value": p,
                }
        out["sections"].append({"section": section, "row_labels": row_labels, "col_labels": col_labels, "cells": cells})
    return out


def _text(cell: dict | None, marks: bool = True, tex: bool = False) -> str:
    if cell is None:
        return "–" if not tex else "--"
    text = f"{cell['mean']:.2f}" + (f" ± {cell['std']:.2f}" if cell["std"] is not None else "")
    if tex:
        text = text.replace("±", r"$\pm$")
    if marks and cell["p_value"] is not None and cell["p_value"] < ALPHA:
        text += "†" if not tex else r"$^\dagger$"
    if marks and cell["best"]:
        text = f"**{text}**" if not tex else rf"\textbf{{{text}}}"
    return text


def render(table: dict, fmt: str, png: Path | None = None) -> str:
    """The table as Markdown, CSV or LaTeX text; ``png`` writes a heatmap of the means instead."""
    if fmt not in FORMATS:
        raise UserError(f"unknown table format {fmt!r}: choose md, csv, tex or png")
    if fmt == "png":
        return _heatmap(table, png)
    lines = []
    note = (
        f"{table['metric']} ({'lower' if table['lower_is_better'] else 'higher'} is better), mean ± std over seeds; "
        f"bold: best pruned row per column"
        + (f"; †: p < {ALPHA} against {table['baseline']} (paired bootstrap)" if table["baseline"] else "")
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for section in table["sections"]:
        header = [f"{table['rows']} \\ {table['cols']}"] + section["col_labels"]
        body = [
            [r] + [_text(section["cells"][f"{r}|{c}"], fmt != "csv", fmt == "tex") for c in section["col_labels"]]
            for r in section["row_labels"]
        ]
        if fmt == "md":
            lines += [f"**{section['section']}**", ""] if section["section"] else []
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in body] + [""]
        elif fmt == "csv":
            for row in [header] + body:
                writer.writerow([section["section"]] + row)
        else:
            lines += [f"% {section['section']}"] if section["section"] else []
            lines += [
                r"\begin{tabular}{l" + "r" * len(section["col_labels"]) + "}",
                r"\toprule",
                " & ".join(header).replace("\\ ", r"\textbackslash\ ") + r" \\",
                r"\midrule",
            ]
            lines += [" & ".join(row) + r" \\" for row in body] + [r"\bottomrule", r"\end{tabular}", ""]
    if fmt == "csv":
        return buffer.getvalue()
    return "\n".join(lines + [note])


def _heatmap(table: dict, png: Path | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    from ..storage import partial_path

    if png is None:
        raise UserError("a PNG table needs --out FILE.png")
    sections = table["sections"]
    if not sections:
        raise UserError("no finished cells to draw yet: run the grid first")
    figure, axes = plt.subplots(
        1,
        len(sections),
        figsize=(
            1.5 + 1.1 * len(sections[0]["col_labels"]) * len(sections),
            1.2 + 0.5 * len(sections[0]["row_labels"]),
        ),
        squeeze=False,
        layout="constrained",
    )
    for axis, section in zip(axes.flat, sections):
        values = [
            [(section["cells"][f"{r}|{c}"] or {}).get("mean", math.nan) for c in section["col_labels"]]
            for r in section["row_labels"]
        ]
        known = [v for row in values for v in row if not math.isnan(v)]
        # perplexities span orders of magnitude: a log scale keeps the good cells apart
        norm = LogNorm() if table["metric"] == "ppl" and known and min(known) > 0 else None
        image = axis.imshow(
            values, cmap="viridis_r" if table["lower_is_better"] else "viridis", aspect="auto", norm=norm
        )
        axis.set_xticks(range(len(section["col_labels"])), section["col_labels"])
        axis.set_yticks(range(len(section["row_labels"])), section["row_labels"])
        axis.set_xlabel(table["cols"])
        axis.set_ylabel(table["rows"])
        axis.set_title(section["section"] or table["grid"], fontsize=9)
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                if not math.isnan(value):
                    shade = image.cmap(image.norm(value))
                    dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
                    axis.text(
                        j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="white" if dark else "black"
                    )
        figure.colorbar(image, ax=axis, label=table["metric"])
    partial = partial_path(Path(png))
    figure.savefig(partial, format="png", dpi=130)
    plt.close(figure)
    partial.replace(png)
    return str(png)


def verdict(grid: Grid) -> str | None:
    """The paper finding the grid file names under ``verdict``, counted on the table (never asserted)."""
    spec = grid.verdict
    if not spec:
        return None
    table = build_table(grid, spec.get("metric", "ppl"), spec.get("rows", "calib"), spec.get("cols", "eval"))
    if spec.get("kind") == "own-language-best":
        lines = []
        for section in table["sections"]:
            wins, columns = 0, 0
            for c in section["col_labels"]:
                own = [
                    r
                    for r in section["row_labels"]
                    if r.split(":")[-1].split("@")[0] == c and section["cells"].get(f"{r}|{c}") is not None
                ]
                if own:
                    columns += 1
                    wins += any(section["cells"][f"{r}|{c}"]["best"] for r in own)
            lines.append(
                f"{section['section'] or grid.name}: calibrating on the evaluated language gives the best "
                f"{table['metric']} in {wins} of {columns} columns"
            )
        return "\n".join(lines)
    if spec.get("kind") == "best-row":
        expected = spec["row"]
        lines = []
        for section in table["sections"]:
            best = [c for c in section["col_labels"] if (section["cells"].get(f"{expected}|{c}") or {}).get("best")]
            lines.append(
                f"{section['section'] or grid.name}: {expected} gives the best {table['metric']} among pruned rows "
                f"in {len(best)} of {len(section['col_labels'])} columns"
            )
        return "\n".join(lines)
    raise UserError(f"{grid.path}: unknown verdict kind {spec.get('kind')!r}: own-language-best or best-row")

"""Verdicts: the paper findings a grid file names under ``verdict`` (one mapping or a list), counted on its tables
and printed when the grid finishes; never asserted.

Kinds (each with ``metric``, ``rows``, ``cols`` as in ``grid table``, and an optional ``claim``, the finding in
words, printed before the count):

- ``own-language-best``: in how many columns the row calibrated on the column's language is the best;
- ``best-row``: in how many columns ``row`` is the best pruned row;
- ``significant``: per pruned row (those matching the globs in ``only``, if given), the columns (``columns``, if
  given) where it is significantly better than ``baseline`` and where significantly worse: the table's two-sided
  paired bootstrap, p < 0.05, the direction the metric's own;
- ``pairs``: for each ``[row, twin]`` in ``pairs``, the columns where the twin is significantly better than the
  row, and where worse (the contrastive rows against their plain twins, say);
- ``group-gain``: per column, whether the mean change against ``baseline`` of the rows of the first group in
  ``groups`` is better than that of the second (high-resource pairs against hi and sw, say).

Every row, column and metric a verdict names is checked against the grid when it loads, before anything runs.
"""

from __future__ import annotations

import fnmatch

from ..errors import UserError
from .grid import DENSE, Grid
from .tables import build_table, check_axes, metric_spec, row_label

KINDS = ("own-language-best", "best-row", "significant", "pairs", "group-gain")
ALPHA = 0.05


def verdict(grid: Grid) -> str | None:
    """Every verdict the grid file names, counted on the table (never asserted), as lines of text."""
    lines = [line for spec in grid.verdicts for line in _count(grid, spec)]
    return "\n".join(lines) or None


def check_verdicts(grid: Grid) -> None:
    """Refuse, before anything runs, a verdict of an unknown kind or naming a metric, row or column the grid lacks."""
    for spec in grid.verdicts:
        where = f"{grid.path}: verdict {spec.get('kind')!r}"
        if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
            raise UserError(f"{grid.path}: each verdict is a mapping with a kind, one of {', '.join(KINDS)}")
        rows, cols = spec.get("rows", "calib"), spec.get("cols", "eval")
        try:
            metric_spec(spec.get("metric", "ppl"))
            check_axes(rows, cols)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        row_labels = {row_label(cell.axes, rows) for cell in grid.cells}
        col_labels = {str(lang) for cell in grid.cells for lang in cell.evaluation.get("langs") or []}
        named = [spec.get("baseline"), spec.get("row")] + [r for pair in spec.get("pairs", []) for r in pair]
        named += [r for group in (spec.get("groups") or {}).values() for r in group]
        for row in filter(None, named):
            if row not in row_labels:
                raise UserError(f"{where} names row {row!r}, which the grid does not have; rows: {_listed(row_labels)}")
        for pattern in spec.get("only", []):
            if not fnmatch.filter(row_labels, pattern):
                raise UserError(f"{where}: only {pattern!r} matches no row; rows: {_listed(row_labels)}")
        for column in spec.get("columns", []) if cols == "eval" else []:
            if column not in col_labels:
                raise UserError(f"{where} names column {column!r}, which the grid does not evaluate")
        needs = {"significant": "baseline", "pairs": "pairs", "group-gain": "groups", "best-row": "row"}
        if spec["kind"] in needs and not spec.get(needs[spec["kind"]]):
            raise UserError(f"{where} needs {needs[spec['kind']]}")
        if spec["kind"] == "group-gain" and (len(spec["groups"]) != 2 or not spec.get("baseline")):
            raise UserError(f"{where} compares two groups against a baseline: give groups: {{A: [...], B: [...]}}")


def _listed(labels) -> str:
    return ", ".join(sorted(labels))


def _table(grid: Grid, spec: dict, baseline: str | None = None) -> dict:
    return build_table(grid, spec.get("metric", "ppl"), spec.get("rows", "calib"), spec.get("cols", "eval"), baseline)


def _count(grid: Grid, spec: dict) -> list[str]:
    kind = spec["kind"]
    claim = f"{spec['claim']}: " if spec.get("claim") else ""
    if kind == "own-language-best":
        return [claim + line for line in _own_language_best(grid, _table(grid, spec))]
    if kind == "best-row":
        table = _table(grid, spec)
        lines = []
        for section in table["sections"]:
            best = [c for c in section["col_labels"] if (section["cells"].get(f"{spec['row']}|{c}") or {}).get("best")]
            lines.append(
                f"{claim}{section['section'] or grid.name}: {spec['row']} gives the best {table['metric']} among "
                f"pruned rows in {len(best)} of {len(section['col_labels'])} columns"
            )
        return lines
    if kind == "significant":
        table = _table(grid, spec, spec["baseline"])
        lines = []
        for section in table["sections"]:
            rows = [r for r in section["row_labels"] if r != spec["baseline"] and not r.endswith(DENSE)]
            rows = [r for r in rows if not spec.get("only") or any(fnmatch.fnmatch(r, p) for p in spec["only"])]
            for row in rows:
                better, worse, tested = _significant(section, row, spec.get("columns"))
                lines.append(f"{claim}{row}: {_against(better, worse, tested, spec['baseline'], table['metric'])}")
        return lines
    if kind == "pairs":
        lines = []
        for row, twin in spec["pairs"]:
            table = _table(grid, spec, row)
            for section in table["sections"]:
                better, worse, tested = _significant(section, twin, spec.get("columns"))
                lines.append(f"{claim}{twin}: {_against(better, worse, tested, row, table['metric'])}")
        return lines
    return _group_gain(grid, spec, claim)


def _significant(section: dict, row: str, columns) -> tuple[list[str], list[str], int]:
    """The columns where ``row`` is significantly better, and worse, than the table's baseline; how many were tested.

    A cell's p-value is two-sided; the side is the sign of its difference in the metric's direction (better: the
    mean moved the way the metric prefers)."""
    better, worse, tested = [], [], 0
    for column in section["col_labels"]:
        if columns and column not in columns:
            continue
        cell = section["cells"].get(f"{row}|{column}")
        if not cell or cell["p_value"] is None:
            continue
        tested += 1
        if cell["p_value"] < ALPHA:
            (better if cell["improves"] else worse).append(column)
    return better, worse, tested


def _against(better: list[str], worse: list[str], tested: int, baseline: str, metric: str) -> str:
    named = lambda columns: f" ({', '.join(columns)})" if columns else ""
    return (
        f"significantly better {metric} than {baseline} in {len(better)} of {tested} columns{named(better)}, "
        f"worse in {len(worse)}{named(worse)}"
    )


def _group_gain(grid: Grid, spec: dict, claim: str) -> list[str]:
    table = _table(grid, spec, spec["baseline"])
    (first, first_rows), (second, second_rows) = spec["groups"].items()
    sign = -1.0 if table["lower_is_better"] else 1.0
    lines = []
    for section in table["sections"]:
        wins, compared = 0, 0
        for column in section["col_labels"]:
            if spec.get("columns") and column not in spec["columns"]:
                continue
            base = section["cells"].get(f"{spec['baseline']}|{column}")
            gains = [
                [sign * (cell["mean"] - base["mean"]) for r in rows if (cell := section["cells"].get(f"{r}|{column}"))]
                for rows in (first_rows, second_rows)
            ]
            if base is None or not all(gains):
                continue
            compared += 1
            wins += sum(gains[0]) / len(gains[0]) > sum(gains[1]) / len(gains[1])
        lines.append(
            f"{claim}{section['section'] or grid.name}: {first} rows gain more {table['metric']} over "
            f"{spec['baseline']} than {second} rows in {wins} of {compared} columns"
        )
    return lines


def _own_language_best(grid: Grid, table: dict) -> list[str]:
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
    return lines

"""Verdicts: the paper finding a grid file names under ``verdict``, counted on its table (never asserted)."""

from __future__ import annotations

from ..errors import UserError
from .grid import Grid
from .tables import build_table


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

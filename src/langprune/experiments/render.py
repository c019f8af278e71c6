"""Rendering a built table (``tables.build_table``): Markdown, CSV, LaTeX, or a PNG heatmap of the means."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..errors import UserError
from .tables import ALPHA

FORMATS = ("md", "csv", "tex", "png")


def missing_note(table: dict) -> str | None:
    """'2 of 7 cells are not finished (shown as –)', or None when every cell is done."""
    if not table.get("missing_cells"):
        return None
    return (
        f"{table['missing_cells']} of {table['cells_total']} cells are not finished (shown as –): "
        "run `langprune grid run` on the grid to finish them"
    )


def _text(cell: dict | None, marks: bool = True, tex: bool = False, ci: bool = False) -> str:
    if cell is None:
        return "–" if not tex else "--"
    text = f"{cell['mean']:.2f}" + (f" ± {cell['std']:.2f}" if cell["std"] is not None else "")
    if ci and cell.get("ci"):
        low, high = cell["ci"]
        text += f" [{low:+.3g}, {high:+.3g}]"
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
        + (f"; †: p < {ALPHA} against {table['baseline']} (paired bootstrap, two-sided)" if table["baseline"] else "")
        + ("; [low, high]: 95% interval of the difference to it" if table.get("ci") else "")
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for section in table["sections"]:
        header = [f"{table['rows']} \\ {table['cols']}"] + section["col_labels"]
        body = [
            [r]
            + [
                _text(section["cells"][f"{r}|{c}"], fmt != "csv", fmt == "tex", table.get("ci", False))
                for c in section["col_labels"]
            ]
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
    missing = missing_note(table)
    return "\n".join(lines + [note] + mde_lines(table) + ([missing] if missing else []))


def mde_lines(table: dict) -> list[str]:
    """Per section, each column's minimum detectable effect against the baseline (its range over the tested rows):
    what a difference must reach to be found at p < 0.05 in 80% of repeats, from how much the rows' items differ."""
    lines = []
    for section in table["sections"]:
        spans = []
        for column in section["col_labels"]:
            found = [
                cell["mde"]
                for row in section["row_labels"]
                if (cell := section["cells"].get(f"{row}|{column}")) and cell.get("mde") is not None
            ]
            if found:
                low, high = min(found), max(found)
                spans.append(f"{column} {low:.3g}" + (f"-{high:.3g}" if high > low else ""))
        if spans:
            where = f" ({section['section']})" if section["section"] else ""
            lines.append(
                f"minimum detectable effect against {table['baseline']}{where} (p < {ALPHA}, power 0.8; range over "
                f"rows): {', '.join(spans)}"
            )
    return lines


def _heatmap(table: dict, png: Path | None) -> str:
    import numpy as np
    from matplotlib.colors import LogNorm

    from ..analysis.figures import subplots
    from ..storage import partial_path

    if png is None:
        raise UserError("a PNG table needs --out FILE.png")
    sections = table["sections"]
    if not any(cell for section in sections for cell in section["cells"].values()):
        raise UserError("no finished cells to draw yet: run the grid first")
    figure, axes = subplots(
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
                    # flattened: with every value equal, the norm returns a one-element array, not a scalar
                    shade = np.asarray(image.cmap(image.norm(value)), dtype=float).reshape(-1)
                    dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
                    axis.text(
                        j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="white" if dark else "black"
                    )
                else:  # not finished yet
                    axis.text(j, i, "–", ha="center", va="center", fontsize=7, color="grey")
        figure.colorbar(image, ax=axis, label=table["metric"])
    partial = partial_path(Path(png))
    # tight: a narrow table (two columns) would otherwise clip its section title
    figure.savefig(partial, format="png", dpi=130, bbox_inches="tight")
    partial.replace(png)
    return str(png)

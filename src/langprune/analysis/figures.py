"""The papers' pictures, drawn from an analysis' JSON alone (so ``langprune analyze plot`` can redraw them).

Each ``draw_*`` takes the result dictionary and a folder and returns the PNG
files it wrote, named after the paper figure they mirror. matplotlib runs
without pyplot (no backend is chosen or forced); every PNG is written to a temporary name and renamed.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..storage import partial_path

DPI = 130


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, layout=None, **options):
    """A figure and its axes, like ``pyplot.subplots`` but without pyplot: no backend is chosen or forced, nothing
    global is kept, and matplotlib is imported only when something is drawn."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout=layout)
    return figure, figure.subplots(nrows, ncols, **options)


def integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(figure, path: Path) -> Path:
    partial = partial_path(path.with_suffix(".png"))
    figure.savefig(partial, format="png", dpi=DPI, bbox_inches="tight")
    partial.replace(path)
    return path


def _short(name: str) -> str:
    """A set's label on an axis: ``demo:fr`` -> ``fr``, ``mt:fr-en`` -> ``fr-en``, others as they are."""
    return name.split(":", 1)[1].split("@")[0] if name.startswith(("demo:", "mono:", "mt:")) else name


def _heatmap(axis, values, rows, columns, title, vmin=0.0, vmax=1.0, cmap="viridis", annotate=True):
    image = axis.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    axis.set_xticks(range(len(columns)), columns, rotation=90 if max(map(len, columns)) > 3 else 0)
    axis.set_yticks(range(len(rows)), rows)
    axis.set_title(title, fontsize=10)
    if annotate and len(rows) * len(columns) <= 144:
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    axis.text(
                        j,
                        i,
                        f"{value:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if value < (vmin + vmax) / 2 else "black",
                    )
    return image


def draw_features(result: dict, folder: Path) -> list[Path]:
    names = [_short(s["name"]) for s in result["sets"]]
    written = []
    split = sum(1 for s in result["sets"] if s["kind"] == "monolingual") - 0.5
    for number, layer in zip((1, 3), result["figure_layers"]):
        figure, axis = subplots(figsize=(1.2 + 0.6 * len(names), 0.9 + 0.55 * len(names)))
        image = _heatmap(
            axis,
            result["overlap"][layer],
            names,
            names,
            f"Overlap of top-{result['beta']:g}% (rows) and bottom-{result['beta']:g}% (columns) features, block {layer}",
        )
        if 0 < split < len(names) - 1:
            axis.axhline(split, color="white", linewidth=2)
            axis.axvline(split, color="white", linewidth=2)
        axis.set_xlabel("set whose bottom features are taken")
        axis.set_ylabel("set whose top features are taken")
        figure.colorbar(image, ax=axis, label="overlap ratio")
        written.append(_save(figure, folder / f"figure{number}-overlap-block{layer}.png"))
    figure, axis = subplots(figsize=(7, 4))
    for label, values in result["quadrants"].items():
        if any(v is not None for v in values):
            axis.plot(
                range(result["layers"]),
                [math.nan if v is None else v for v in values],
                marker="o",
                markersize=3,
                label=label,
            )
    axis.set_xlabel("decoder block")
    integer_ticks(axis)
    axis.set_ylabel("mean overlap ratio (off-diagonal)")
    axis.set_title(f"Figure 4: quadrant averages of the top/bottom-{result['beta']:g}% overlap (rows x columns)")
    axis.legend(fontsize=8)
    written.append(_save(figure, folder / "figure4-quadrants.png"))
    for entry in result["top_features"]:
        figure, axis = subplots(figsize=(9, 3.5))
        count, width = len(entry["features"]), 0.8 / len(entry["norms"])
        for k, (name, values) in enumerate(entry["norms"].items()):
            axis.bar([i + k * width for i in range(count)], values, width=width, label=_short(name))
        axis.set_xticks([i + 0.4 - width / 2 for i in range(count)], [str(d) for d in entry["features"]], rotation=90)
        axis.set_xlabel(f"feature (top {count} of {_short(entry['set'])} by magnitude)")
        axis.set_ylabel("L2 norm over tokens")
        axis.set_title(f"Figure 2: largest features of {entry['set']}, block {entry['layer']}")
        axis.legend(fontsize=8)
        written.append(_save(figure, folder / f"figure2-top-features-{_short(entry['set'])}-block{entry['layer']}.png"))
    return written


def draw_masks(result: dict, folder: Path) -> list[Path]:
    modules, blocks = result["modules"], result["blocks"]
    layers = [str(b) for b in range(blocks)]
    written = []
    panels = [(f"stable share, {label}", per) for label, per in result["stable"].items()]
    panels += [(f"IoU {pair.replace('|', ' vs ')}", per) for pair, per in result["iou"].items()]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    known = [v for _, per in panels for m in modules for v in per[m] if v is not None]
    low = math.floor(min(known, default=0.0) * 10) / 10  # the colour scale starts near the data, as in the paper
    figure, axes = subplots(
        rows,
        columns,
        figsize=(0.22 * blocks * columns + 2.8, 0.32 * len(modules) * rows + 1.0 * rows),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for k, (axis, (title, per)) in enumerate(zip(axes.flat, panels)):
        values = [[math.nan if v is None else v for v in per[m]] for m in modules]
        image = _heatmap(axis, values, modules, layers, title, vmin=low, annotate=False)
        axis.set_xlabel("decoder block")
        if k % columns:
            axis.set_yticklabels([])
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    figure.suptitle(
        "Figure 2: pruning-mask stability per calibration language (|∩ seeds| / |∪ seeds|) and IoU between languages"
    )
    figure.colorbar(image, ax=axes, label="share of pruned weights")
    written.append(_save(figure, folder / "figure2-mask-iou.png"))
    labels = [g["label"] for g in result["groups"]]
    figure, axes = subplots(1, len(modules), figsize=(2.2 * len(modules) + 1, 2.8), squeeze=False, layout="constrained")
    for axis, module in zip(axes.flat, modules):
        matrix = [[1.0 if a == b else _pair(result, a, b, module) for b in labels] for a in labels]
        image = _heatmap(axis, matrix, labels, labels, module, vmin=low)
    figure.suptitle("Mean IoU over blocks between calibration languages, per module (paper Table 17)")
    figure.colorbar(image, ax=axes, label="IoU")
    written.append(_save(figure, folder / "table17-iou-by-module.png"))
    return written


def _pair(result: dict, a: str, b: str, module: str):
    found = result["iou_mean"].get(f"{a}|{b}") or result["iou_mean"].get(f"{b}|{a}")
    value = found[module] if found else None
    return math.nan if value is None else value


def draw_lape(result: dict, folder: Path) -> list[Path]:
    models, focus = result["models"], result["focus_language"]
    shown = max(1, round(result["plot_share"] / result["group_share"]))
    figure, axes = subplots(
        3, 1, figsize=(max(8, 0.7 * shown * len(models) / 2 + 4), 10), sharex=True, layout="constrained"
    )
    width = 0.8 / len(models)
    from matplotlib import rcParams

    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    for k, label in enumerate(models):
        per = result["per_model"][label]
        stats = [dict(s, label="") for s in per["lape_box"][:shown] if s["n"]]
        positions = [g + k * width for g, s in enumerate(per["lape_box"][:shown]) if s["n"]]
        parts = axes[0].bxp(
            stats, positions=positions, widths=width * 0.9, showfliers=False, patch_artist=True, manage_ticks=False
        )
        for patch in parts["boxes"]:
            patch.set_facecolor(colours[k % len(colours)])
        axes[0].plot([], [], color=colours[k % len(colours)], linewidth=6, label=label)
        groups = range(len(per["probability"][focus][:shown]))
        axes[1].bar(
            [g + k * width for g in groups],
            per["probability"][focus][:shown],
            width=width,
            color=colours[k % len(colours)],
        )
        axes[2].bar(
            [g + k * width for g in groups],
            per["magnitude"][focus][:shown],
            width=width,
            color=colours[k % len(colours)],
        )
    share = result["group_share"]
    axes[0].set_ylabel("LAPE (nats)")
    axes[0].set_title(
        f"Figure 3: LAPE of FFN neuron groups ({share:.0%} each, sorted by dense LAPE), lowest {result['plot_share']:.0%}"
    )
    axes[0].legend(fontsize=8)
    axes[1].set_ylabel(f"activation probability ({focus})")
    axes[2].set_ylabel(f"mean |neuron output| ({focus})")
    axes[2].set_xlabel(f"neuron group by dense LAPE (each {result['group_size']} neurons)")
    axes[2].set_xticks([g + 0.4 - width / 2 for g in range(shown)], [str(g + 1) for g in range(shown)])
    return [_save(figure, folder / "figure3-lape.png")]


def draw_lsar(result: dict, folder: Path) -> list[Path]:
    languages, blocks, pruned = result["languages"], result["blocks"], result["models"][1:]
    chosen = sorted({round(i * (blocks - 1) / 3) for i in range(4)})
    written = []
    figure, axes = subplots(
        2, len(chosen), figsize=(3.2 * len(chosen), 6.5), sharey="row", squeeze=False, layout="constrained"
    )
    for row, part in enumerate(("agnostic", "specific")):
        for column, block in enumerate(chosen):
            axis = axes[row][column]
            for label in pruned:
                values = [result["delta"][label]["magnitude"][part][lang][block] for lang in languages]
                axis.plot(languages, values, marker="o", linestyle="none", label=label)
            axis.set_title(f"{part}, block {block}", fontsize=10)
            if row == 1:
                axis.set_xlabel("evaluation language")
        axes[row][0].set_ylabel(f"Δ magnitude ({part})")
    axes[0][-1].legend(fontsize=7)
    figure.suptitle("Figure 1: change of language-agnostic and language-specific features after pruning (LSAR)")
    written.append(_save(figure, folder / "figure1-lsar.png"))
    figure, axes = subplots(1, 2, figsize=(11, 4), squeeze=False, layout="constrained")
    for column, part in enumerate(("agnostic", "specific")):
        axis = axes[0][column]
        for label in pruned:
            per = result["delta"][label]["relative"][part]
            axis.plot(
                range(blocks),
                [sum(per[lang][b] for lang in languages) / len(languages) for b in range(blocks)],
                marker="o",
                markersize=3,
                label=label,
            )
        axis.set_xlabel("decoder block")
        integer_ticks(axis)
        axis.set_ylabel(f"Δ {part} / dense {part} norm (mean over languages)")
        axis.set_title(f"{part} features, all blocks")
    axes[0][1].legend(fontsize=7)
    written.append(_save(figure, folder / "figure5-lsar-blocks.png"))
    return written

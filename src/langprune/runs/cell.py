"""Run cells: what ``langprune prune`` and ``langprune eval`` do, as library functions taking one settings object.

The CLI, the Python API and the experiment grid runner all call
``run_prune`` and ``run_eval``; none of them repeats the steps. Each cell
validates everything that can be checked without the model first (recipes,
corpora, files, ranges, the output folder), then loads, computes and writes
its output atomically. What a cell has to say while it runs goes to a
``Reporter`` (the CLI's shows progress bars; the default says nothing).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import calibration as calibration_module
from ..compress import prune_model
from ..compress.loop import Plan, resolve
from ..compress.methods import METHODS, method_options
from ..compress.profiles import OWL_LAMBDA, OWL_M, Profile
from ..data import get_corpus
from ..engine import distributed
from ..engine.placement import PlacementSettings, resolve_device
from ..errors import UserError, check_at_least
from ..evaluation import EvalOptions, evaluate, perplexity
from ..evaluation.harness import check_harness_tasks, model_arguments
from ..evaluation.runner import plan
from ..evaluation.tables import metric_values
from ..languages import check_language
from ..models import check_model, load_model, safetensors_folder
from ..settings import from_mapping as settings_from_mapping
from ..settings import jsonable, setting, typed
from ..storage import read_yaml_mapping, write_json_atomic
from ..tracking import check_trackers, prune_metrics, tracking
from .card import write_card
from .folder import EVAL_FILE, RunWriter, check_out, load_eval, load_report
from .provenance import provenance
from .quantized import saved_spec

log = logging.getLogger(__name__)
REPORT_TO_HELP = "Log settings, per-language metrics and the run's small files to these trackers (wandb)."

MAX_SEED = 2**64 - 1


class Reporter:
    """What a cell tells its caller while it runs; every method may be left as the silent default."""

    @contextmanager
    def loading(self, what: str):
        yield

    def note(self, text: str) -> None:
        pass

    def blocks(self, done: int, total: int) -> None:
        pass

    def evaluating(self, done: int, total: int | None, what: str) -> None:
        pass


@dataclass(kw_only=True)
class PruneSettings(PlacementSettings):
    """Everything a pruning run needs, declared once: the ``prune`` options, the grid's and config files' keys.

    Each field carries its help text; ``langprune prune`` is made from these
    fields and from every registered method's options (``method_options``,
    e.g. ``ria_alpha``), and a grid's ``settings`` accept the same keys.
    """

    out: Path = setting(help="Run folder to write (refused if it exists, unless --overwrite).", required=True)
    model: str = setting("gemma-3-270m", "Alias (gemma-3-270m, smollm2-135m), local folder or hub id.")
    calib: str | None = setting(
        None, "Calibration recipe: mono:de, mix:en+de+zh, mt:fr-en, demo:fr, code, file:PATH; @CORPUS picks the corpus."
    )
    serve: str | None = setting(
        None,
        "The languages you serve, LANG[=WEIGHT],... (e.g. de,hi=2,sw): calibration built for them, token shares "
        "in proportion to the weights, each language from a corpus that has it (instead of --calib).",
    )
    lang_aggregate: str = setting(
        "tokens",
        "How the calibration languages combine: tokens (the mixed set, every token once), mean, max or power:P "
        "(a weighted power mean of per-language statistics, weights from --serve or mix:LANG=W); "
        "sparsegpt and GPTQ take tokens or mean.",
    )
    method: str = setting("wanda", lambda: f"One of {', '.join(METHODS)}.")
    sparsity: str = setting("0.5", "Fraction to remove (0.5) or N:M (2:4); ignored by --method none.")
    quantize: str | None = setting(
        None,
        "GPTQ to w<bits>\\[g<group>][,asym][,actorder], e.g. w4g128 or w8; saved in the compressed-tensors format.",
    )
    profile: str = setting("uniform", "Sparsity per block: uniform, or owl (outlier-weighted, Yin et al. 2024).")
    owl_m: float = setting(OWL_M, "OWL: scores above M times the block mean are outliers.")
    owl_lambda: float = setting(OWL_LAMBDA, "OWL: block sparsities range over target ± up to 2λ.")
    nsamples: int | None = setting(None, "Calibration sequences (default: 128, or 100 demonstrations).")
    shots: int = setting(4, "Shots per demonstration for mt: and demo: recipes.")
    contrast: str | None = setting(
        None, "Contrast recipe Z for wanda's Eq. 4 score, e.g. code: features strong on Z are pruned."
    )
    tokens: Path | None = setting(
        None,
        "Pre-tokenized calibration instead of --calib: a torch-saved ids tensor (n x seqlen) or dict with "
        "input_ids/attention_mask.",
    )
    seqlen: int = setting(512, "Tokens per calibration sequence.")
    seed: int = setting(0, "Seed for calibration sampling and random pruning (0 to 2^64 - 1).")
    batch_size: int = setting(8, "Calibration sequences per forward pass.")
    propagate: str = setting("pruned", "Feed later blocks the 'pruned' (default) or 'dense' outputs.")
    include: tuple[str, ...] = setting(
        (), "Only prune layers matching this glob (repeatable), e.g. '*mlp*'.", repeat=True
    )
    exclude: tuple[str, ...] = setting((), "Skip layers matching this glob (repeatable).", repeat=True)
    eval_langs: tuple[str, ...] = setting(
        (), "Comma-separated languages: perplexity before and after on held-out text."
    )
    eval_corpus: str = setting("udhr", "Corpus whose evaluation part --eval-langs reads.")
    overwrite: bool = setting(False, "Replace an existing --out run folder.")
    report_to: tuple[str, ...] = setting((), REPORT_TO_HELP, envvar="LANGPRUNE_REPORT_TO")
    dist_backend: str = setting("auto", distributed.BACKEND_HELP, envvar="LANGPRUNE_DIST_BACKEND")
    method_options: dict = setting({}, "Options of the method by key (ria_alpha, mask_selection...).", cli=False)

    @classmethod
    def from_mapping(cls, values: dict, where: str = "settings", **fixed) -> PruneSettings:
        """Settings from flat keys (a grid cell, a config file, a report): method options by their own keys."""
        options = method_options()
        own = {k: v for k, v in values.items() if k not in options}
        chosen = {k: typed(k, v, options[k][1], where) for k, v in values.items() if k in options and v is not None}
        return settings_from_mapping(cls, {**own, "method_options": chosen}, where, **fixed)

    @staticmethod
    def from_config_file(path: Path) -> dict:
        """The flat settings of a ``prune --config`` YAML file: any prune option by its name with underscores, and
        method options (``ria_alpha``); ``out`` and ``overwrite`` belong on the command line."""
        path = Path(path)
        values = read_yaml_mapping(path, "config file", "must be a mapping of prune settings, e.g. method: sparsegpt")
        for key in ("out", "overwrite", "method_options"):
            if key in values:
                raise UserError(f"config file {path}: {key!r} is not a config key; give --{key} on the command line")
        PruneSettings.from_mapping(values, f"config file {path}", out=Path("."))  # keys and types, checked now
        return values

    @staticmethod
    def from_run(run: Path) -> dict:
        """The flat settings a run's ``report.json`` recorded, for ``prune --replay`` (its folder is not reused)."""
        recorded = load_report(run).get("settings")
        if not isinstance(recorded, dict):
            raise UserError(f"{run}/report.json records no settings: it was written by an older langprune")
        return {k: v for k, v in recorded.items() if k not in ("out", "overwrite")}

    def record(self) -> dict:
        """The settings as flat JSON (method options beside the rest), as a grid or a config file writes them."""
        flat = {k: v for k, v in asdict(self).items() if k != "method_options"}
        return jsonable({**flat, **dict.fromkeys(method_options()), **self.method_options})

    @property
    def calibration_recipe(self) -> str | None:
        """``--calib``, or the weighted mix ``--serve`` stands for."""
        return calibration_module.serve_recipe(self.serve) if self.serve else self.calib

    def plan(self) -> Plan:
        """The method, target, quantization and profile resolved, every pairing rule checked."""
        return resolve(
            self.method,
            self.sparsity,
            quantize=self.quantize,
            profile=Profile(self.profile, self.owl_m, self.owl_lambda),
            propagate=self.propagate,
            batch_size=self.batch_size,
            has_calibration=bool(self.calib or self.tokens or self.serve),
            has_contrast=bool(self.contrast),
            method_options=self.method_options,
            lang_aggregate=self.lang_aggregate,
        )

    def calibration_sets(self, model, tokenizer, reporter: Reporter, pretokenized=None, part: str = "calibration"):
        """The calibration set (built, or ``pretokenized`` as read from --tokens) and the contrast set, each checked
        to fit the model; ``part`` is the corpus part language recipes read."""
        build = lambda recipe: calibration_module.build(
            recipe, tokenizer, self.nsamples, self.seqlen, self.seed, self.shots, model=model, part=part
        )
        recipe = self.calibration_recipe
        chosen_sets = (build(recipe) if recipe else pretokenized, build(self.contrast) if self.contrast else None)
        for role, chosen in zip(("calibration", "contrast"), chosen_sets):
            if chosen is not None:
                calibration_module.check_fits(chosen, model, role)
                reporter.note(
                    f"{role} {chosen.recipe}: {chosen.input_ids.shape[0]} x {chosen.input_ids.shape[1]} "
                    f"({chosen.tokens} real tokens)"
                )
        return chosen_sets

    def compress(self, model, calibration, contrast, plan: Plan, reporter: Reporter, on_block=None):
        """Prune and/or quantize ``model`` in place as these settings say; the one call of ``prune_model``."""
        log.info("compressing with %s (sparsity %s, quantize %s)", plan.method.name, self.sparsity, self.quantize)
        return prune_model(
            model,
            calibration,
            plan.method,
            plan.sparsity,
            propagate=self.propagate,
            include=tuple(self.include),
            exclude=tuple(self.exclude),
            seed=self.seed,
            batch_size=self.batch_size,
            contrast=contrast,
            progress=reporter.blocks,
            on_block=on_block,
            quantize=self.quantize,
            profile=plan.profile,
            lang_aggregate=self.lang_aggregate,
        )

    def validate(self) -> None:
        """Every check that needs no model: one clear error for the first mistake found."""
        self.check()
        check_out(Path(self.out), self.overwrite)

    def check(self) -> None:
        """Every check of the prune itself, without its output folder."""
        self.check_placement()
        distributed.check_backend(self.dist_backend)
        check_trackers(self.report_to)
        self.plan()
        check_model(self.model)
        check_not_quantized(self.model)
        check_at_least("--seqlen", self.seqlen, 2)
        check_at_least("--shots", self.shots, 1)
        check_at_least("--nsamples", self.nsamples, 1)
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"--seed {self.seed} is outside [0, 2^64 - 1]: give a non-negative 64-bit integer")
        given = [
            flag
            for flag, value in (("--calib", self.calib), ("--tokens", self.tokens), ("--serve", self.serve))
            if value
        ]
        if len(given) > 1:
            raise UserError(f"give one of --calib, --tokens and --serve, not {' and '.join(given)}")
        if self.lang_aggregate != "tokens" and (
            self.tokens or (self.calib and not calibration_module.check_recipe(self.calib).languages)
        ):
            raise UserError(
                f"--lang-aggregate {self.lang_aggregate} combines languages, and this calibration's rows have none: "
                "use --serve or mix:LANG+LANG"
            )
        for recipe in (self.calibration_recipe, self.contrast):
            if recipe:
                calibration_module.check_recipe(recipe)
        for language in self.eval_langs:
            check_language(language)
        if self.eval_langs:
            get_corpus(self.eval_corpus)


def check_not_quantized(model: str) -> None:
    """Refuse to prune a checkpoint that is already quantized: its weights are codes, not what the methods assume."""
    folder = Path(model).expanduser()
    if (folder / "config.json").is_file() and saved_spec(folder) is not None:
        raise UserError(
            f"{model} is already quantized (compressed-tensors): prune and quantize the dense model "
            "in one run instead, e.g. --method sparsegpt --quantize w4g128"
        )


def run_prune(settings: PruneSettings, reporter: Reporter | None = None) -> dict:
    """Validate, load, build calibration, prune, measure, write the run folder; returns the report (and logs it to
    the ``report_to`` trackers).

    Started by torchrun as several ranks, each rank calibrates on its share of the batches (see
    ``engine.distributed``); rank 0 alone reports, logs to trackers and writes the folder, and every rank returns
    its report.
    """
    settings.validate()
    with distributed.session(settings.dist_backend, resolve_device(settings.device)) as world:
        distributed.check_agreement(settings.record())
        if not world.leader:
            return _prune(settings, Reporter())
        reporter = reporter or Reporter()
        with tracking(settings.report_to, "prune", Path(settings.out).name, settings.record()) as tracked:
            report = _prune(settings, reporter)
            tracked.log(prune_metrics(report))
            tracked.save(Path(settings.out))
    return report


def _prune(settings: PruneSettings, reporter: Reporter) -> dict:
    plan = settings.plan()
    pretokenized = calibration_module.load_tokens(settings.tokens) if settings.tokens else None
    world = distributed.world()
    languages = list(settings.eval_langs) if world.leader else []  # rank 0 measures perplexity for the report
    # A folder that cannot be written fails here, early; only rank 0 writes one.
    with RunWriter(Path(settings.out), settings.overwrite) if world.leader else nullcontext() as run:
        started = time.perf_counter()
        device = distributed.rank_device(resolve_device(settings.device))
        with reporter.loading(settings.model):
            lm, tokenizer = load_model(settings.model, settings.dtype, device, settings.offload)
        log.info("loaded %s in %.1f s (%s)", settings.model, time.perf_counter() - started, settings.dtype)
        recipe = settings.calibration_recipe
        if recipe or settings.contrast:
            calibration_module.check_seqlen(settings.seqlen, lm)
        calibration, contrast = settings.calibration_sets(lm, tokenizer, reporter, pretokenized)
        before = perplexity(lm, tokenizer, languages, corpus=settings.eval_corpus) if languages else {}
        write = (lambda i, c: run.add_block(lm, i, c)) if run is not None else (lambda i, c: None)
        result = settings.compress(lm, calibration, contrast, plan, reporter, write)
        after = perplexity(lm, tokenizer, languages, corpus=settings.eval_corpus) if languages else {}
        report = {
            "model": settings.model,
            **result.summary,
            "settings": settings.record(),
            "provenance": provenance(),
        }
        if languages:
            report["perplexity"] = {"corpus": settings.eval_corpus, "dense": before, "pruned": after}
        if settings.serve:
            report["serve"] = serving_plan(calibration)
        if world.active:
            report["distributed"] = {"ranks": world.size, "backend": distributed.backend_name()}
        if run is not None:
            run.finish(lm, tokenizer, report)
    distributed.barrier("rank 0 wrote the run folder")  # every rank fails if writing failed
    return report


def serving_plan(calibration) -> dict:
    """What ``--serve`` built, per language: its weight, corpus, sequences and tokens, and its share of the tokens."""
    total = sum(source["tokens"] for source in calibration.sources) or 1
    return {
        "recipe": calibration.recipe,
        "languages": {
            source["language"]: {
                "weight": source.get("weight", 1.0),
                "corpus": source["name"],
                "sequences": source["sequences"],
                "tokens": source["tokens"],
                "token_share": round(source["tokens"] / total, 4),
            }
            for source in calibration.sources
        },
    }


@dataclass(kw_only=True)
class EvalSettings(PlacementSettings):
    """An evaluation run: a run folder or a dense model, tasks, languages, options, and where eval.json goes.

    Declared once, like ``PruneSettings``: ``langprune eval`` is made from these fields and ``EvalOptions``'.
    """

    run: Path | None = setting(None, "A run folder written by langprune prune (or use --model).", argument=True)
    model: str | None = setting(None, "Evaluate this dense model instead (alias, folder or hub id).")
    tasks: tuple[str, ...] = setting(
        ("ppl", "fidelity", "cloze", "mcq"),
        "Tasks or groups: ppl, fidelity, cloze, mcq, translation, rankc, or task names (xnli, multiemo, mmlu...).",
    )
    langs: tuple[str, ...] = setting(("en", "de", "fr"), "Comma-separated evaluation languages.")
    options: EvalOptions = field(default_factory=EvalOptions)
    out: Path | None = setting(None, "Folder for eval.json (default: the run folder; runs/<model>-dense with --model).")
    report_to: tuple[str, ...] = setting((), REPORT_TO_HELP, envvar="LANGPRUNE_REPORT_TO")
    dist_backend: str = setting("auto", distributed.BACKEND_HELP, envvar="LANGPRUNE_DIST_BACKEND")

    def validate(self) -> None:
        self.check_placement()
        distributed.check_backend(self.dist_backend)
        check_trackers(self.report_to)
        if (self.run is None) == (self.model is None):
            raise UserError("give a run folder or --model, not both and not neither")
        plan(list(self.tasks), list(self.langs), self.options)  # refuse a task without data before loading anything
        if self.options.harness:
            check_harness_tasks(list(self.options.harness), self.options.harness_include)
            model_arguments(self.options.harness_model_args)
        if self.run is not None:
            load_report(self.run)
            if not (Path(self.run) / "config.json").is_file():
                raise UserError(f"{self.run} has no model (config.json): it is not a complete run folder; prune again")

    @property
    def target(self) -> Path:
        """The eval.json written: in ``out``, the run folder, or ``runs/<model>-dense``."""
        folder = self.out or self.run or Path("runs") / f"{Path(self.model).name}-dense"
        return Path(folder) / EVAL_FILE


def run_eval(settings: EvalSettings, reporter: Reporter | None = None) -> dict:
    """Evaluate, writing eval.json after every finished (task, language); a rerun keeps what is finished.

    A task that fails is recorded under ``failed`` and the others go on; the
    cell then raises one error naming the failures (their results are not in
    eval.json, so the next run retries exactly those).
    """
    settings.validate()
    name = Path(settings.run).name if settings.run is not None else f"{Path(str(settings.model)).name}-dense"
    config = {"run": str(settings.run), "model": settings.model, "tasks": list(settings.tasks)}
    config.update(langs=list(settings.langs), **jsonable(asdict(settings.options)))
    with distributed.session(settings.dist_backend, resolve_device(settings.device)) as world:
        distributed.check_agreement({**config, **jsonable(asdict(settings))})
        if not world.leader:  # runs its share of every batch list; rank 0 writes eval.json
            return _evaluate(settings, Reporter())
        with tracking(settings.report_to, "eval", name, config) as tracked:
            results = _evaluate(settings, reporter or Reporter())
            tracked.log(metric_values(results))
            tracked.save(settings.target.parent)
    return results


def _evaluate(settings: EvalSettings, reporter: Reporter) -> dict:
    if settings.run is not None:
        source, dense_name = str(settings.run), load_report(settings.run)["model"]
    else:
        source, dense_name = settings.model, None
    target = settings.target
    header = {"model": source, "dense_model": dense_name, "settings": jsonable(asdict(settings.options))}
    previous = _resumable(target, header)
    if previous:
        reporter.note(f"resuming {target}: {sum(len(v) for v in previous.values())} finished results kept")
    leader = distributed.world().leader
    device = distributed.rank_device(resolve_device(settings.device))
    with reporter.loading(source):
        lm, tokenizer = load_model(source, settings.dtype, device, settings.offload)
        dense = None
        if any(t == "fidelity" for t in settings.tasks) and dense_name:
            # The dense model is read block by block from its checkpoint: never two whole models in memory.
            offload = "disk" if safetensors_folder(dense_name) else settings.offload
            dense = load_model(dense_name, settings.dtype, device, offload)[0]
        elif any(t == "fidelity" for t in settings.tasks):
            dense = lm

    def save(results: dict) -> None:
        if leader:
            write_json_atomic(target, {**results, **header, "provenance": provenance()})

    results = evaluate(
        lm,
        tokenizer,
        list(settings.tasks),
        list(settings.langs),
        settings.options,
        dense,
        progress=reporter.evaluating,
        finished=previous,
        on_result=save,
        folder=target.parent,
        model_name=Path(source).name if Path(source).exists() else source,  # a folder by its name, a hub id whole
    )
    results.update(header, provenance=provenance())
    if leader:
        write_json_atomic(target, results)
    distributed.barrier("rank 0 wrote eval.json")
    if leader and settings.run is not None and target.parent.resolve() == Path(settings.run).resolve():
        write_card(settings.run, load_report(settings.run), results)  # the card shows the new numbers
    if results["failed"]:
        failures = "; ".join(f"{job}: {why}" for job, why in results["failed"].items())
        raise UserError(
            f"{len(results['failed'])} evaluation(s) failed ({failures}); the others are in {target}, "
            "and a rerun retries only the failed ones"
        )
    return results


def _resumable(target: Path, header: dict) -> dict:
    """Finished task results of an earlier eval.json written with the same model and settings, else nothing."""
    if not target.is_file():
        return {}
    earlier = load_eval(target)
    same = all(earlier.get(key) == value for key, value in header.items())
    return {name: dict(per_key) for name, per_key in earlier["tasks"].items() if name != "rankc"} if same else {}


__all__ = ["EvalSettings", "PruneSettings", "Reporter", "run_eval", "run_prune"]

"""Run cells: what ``langprune prune`` and ``langprune eval`` do, as library functions taking one settings object.

The CLI, the Python API and the experiment grid runner all call
``run_prune`` and ``run_eval``; none of them repeats the steps. Each cell
validates everything that can be checked without the model first (recipes,
corpora, files, ranges, the output folder), then loads, computes and writes
its output atomically. What a cell has to say while it runs goes to a
``Reporter`` (the CLI's shows progress bars; the default says nothing).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import calibration as calibration_module
from ..compress import get_method, prune_model
from ..compress.loop import PROPAGATE, check_method, method_for_contrast
from ..compress.profiles import OWL_LAMBDA, OWL_M, Profile
from ..compress.quantization import QuantSpec
from ..compress.sparsity import Sparsity
from ..data import get_corpus
from ..engine.placement import check_placement
from ..errors import UserError, check_at_least
from ..evaluation import Settings as EvalOptions
from ..evaluation import evaluate, perplexity
from ..evaluation.runner import plan
from ..languages import check_language
from ..models import load_model, safetensors_folder
from ..settings import jsonable
from ..storage import write_json_atomic
from .folder import EVAL_FILE, RunWriter, check_out, load_eval, load_report
from .provenance import provenance
from .quantized import saved_spec

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


@dataclass
class PruneSettings:
    """Everything a pruning run needs; the CLI's options, the API's arguments and a grid cell's axes map onto it."""

    out: Path
    model: str = "gemma-3-270m"
    calib: str | None = None
    method: str = "wanda"
    sparsity: str = "0.5"
    nsamples: int | None = None
    shots: int = 4
    contrast: str | None = None
    tokens: Path | None = None
    seqlen: int = 512
    seed: int = 0
    batch_size: int = 8
    propagate: str = "pruned"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    eval_langs: tuple[str, ...] = ()
    eval_corpus: str = "udhr"
    overwrite: bool = False
    device: str = "auto"
    dtype: str = "auto"
    offload: str = "auto"
    quantize: str | None = None
    profile: str = "uniform"
    owl_m: float = OWL_M
    owl_lambda: float = OWL_LAMBDA
    mask_selection: str | None = None
    ria_alpha: float | None = None

    def chosen_method(self):
        """The method with the options this run sets."""
        return get_method(self.method, selection=self.mask_selection, alpha=self.ria_alpha)

    def chosen_profile(self) -> Profile:
        return Profile(self.profile, self.owl_m, self.owl_lambda)

    def validate(self) -> None:
        """Every check that needs no model: one clear error for the first mistake found."""
        target = Sparsity.parse(self.sparsity)
        check_placement(self.device, self.dtype, self.offload)
        chosen = self.chosen_method()
        quant = QuantSpec.parse(self.quantize)
        check_method(chosen, quant, target)
        self.chosen_profile().check(target, bool(self.calib or self.tokens))
        check_not_quantized(self.model)
        check_at_least("--seqlen", self.seqlen, 2)
        check_at_least("--batch-size", self.batch_size, 1)
        check_at_least("--shots", self.shots, 1)
        check_at_least("--nsamples", self.nsamples, 1)
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"--seed {self.seed} is outside [0, 2^64 - 1]: give a non-negative 64-bit integer")
        if self.propagate not in PROPAGATE:
            raise UserError(f"--propagate must be one of {', '.join(PROPAGATE)}, not {self.propagate!r}")
        if self.calib and self.tokens:
            raise UserError("give either --calib or --tokens, not both")
        method_for_contrast(chosen, bool(self.contrast))  # refuse a bad pairing before loading anything
        if (chosen.statistic is not None or quant is not None) and not (self.calib or self.tokens):
            why = self.method if chosen.statistic is not None else "--quantize (GPTQ)"
            raise UserError(f"{why} needs calibration text: pass --calib, e.g. --calib mix:en+de")
        for recipe in (self.calib, self.contrast):
            if recipe:
                calibration_module.check_recipe(recipe)
        for language in self.eval_langs:
            check_language(language)
        if self.eval_langs:
            get_corpus(self.eval_corpus)
        check_out(Path(self.out), self.overwrite)


def check_not_quantized(model: str) -> None:
    """Refuse to prune a checkpoint that is already quantized: its weights are codes, not what the methods assume."""
    folder = Path(model).expanduser()
    if (folder / "config.json").is_file() and saved_spec(folder) is not None:
        raise UserError(
            f"{model} is already quantized (compressed-tensors): prune and quantize the dense model "
            "in one run instead, e.g. --method sparsegpt --quantize w4g128"
        )


def run_prune(settings: PruneSettings, reporter: Reporter | None = None) -> dict:
    """Validate, load, build calibration, prune, measure, write the run folder; returns the report."""
    reporter = reporter or Reporter()
    settings.validate()
    target = Sparsity.parse(settings.sparsity)
    pretokenized = calibration_module.load_tokens(settings.tokens) if settings.tokens else None
    languages = list(settings.eval_langs)
    with RunWriter(Path(settings.out), settings.overwrite) as run:  # a folder that cannot be written fails here, early
        with reporter.loading(settings.model):
            lm, tokenizer = load_model(settings.model, settings.dtype, settings.device, settings.offload)
        if settings.calib or settings.contrast:
            calibration_module.check_seqlen(settings.seqlen, lm)
        build = lambda recipe: calibration_module.build(
            recipe,
            tokenizer,
            settings.nsamples,
            settings.seqlen,  # noqa: E731
            settings.seed,
            settings.shots,
        )
        calibration = build(settings.calib) if settings.calib else pretokenized
        contrast = build(settings.contrast) if settings.contrast else None
        for role, chosen in (("calibration", calibration), ("contrast", contrast)):
            if chosen is not None:
                calibration_module.check_fits(chosen, lm, role)
                reporter.note(
                    f"{role} {chosen.recipe}: {chosen.input_ids.shape[0]} x {chosen.input_ids.shape[1]} "
                    f"({chosen.tokens} real tokens)"
                )
        before = perplexity(lm, tokenizer, languages, corpus=settings.eval_corpus) if languages else {}
        result = prune_model(
            lm,
            calibration,
            settings.chosen_method(),
            target,
            propagate=settings.propagate,
            include=tuple(settings.include),
            exclude=tuple(settings.exclude),
            seed=settings.seed,
            batch_size=settings.batch_size,
            contrast=contrast,
            progress=reporter.blocks,
            on_block=lambda index, changes: run.add_block(lm, index, changes),
            quantize=settings.quantize,
            profile=settings.chosen_profile(),
        )
        after = perplexity(lm, tokenizer, languages, corpus=settings.eval_corpus) if languages else {}
        report = {
            "model": settings.model,
            **result.summary,
            "settings": jsonable(asdict(settings)),
            "provenance": provenance(),
        }
        if languages:
            report["perplexity"] = {"corpus": settings.eval_corpus, "dense": before, "pruned": after}
        run.finish(lm, tokenizer, report)
    return report


@dataclass
class EvalSettings:
    """An evaluation run: a run folder or a dense model, tasks, languages, options, and where eval.json goes."""

    run: Path | None = None
    model: str | None = None
    tasks: tuple[str, ...] = ("ppl", "fidelity", "cloze", "mcq")
    langs: tuple[str, ...] = ("en", "de", "fr")
    options: EvalOptions = field(default_factory=EvalOptions)
    out: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    offload: str = "auto"

    def validate(self) -> None:
        check_placement(self.device, self.dtype, self.offload)
        if (self.run is None) == (self.model is None):
            raise UserError("give a run folder or --model, not both and not neither")
        plan(list(self.tasks), list(self.langs), self.options)  # refuse a task without data before loading anything
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
    reporter = reporter or Reporter()
    settings.validate()
    if settings.run is not None:
        source, dense_name = str(settings.run), load_report(settings.run)["model"]
    else:
        source, dense_name = settings.model, None
    target = settings.target
    header = {"model": source, "dense_model": dense_name, "settings": jsonable(asdict(settings.options))}
    previous = _resumable(target, header)
    if previous:
        reporter.note(f"resuming {target}: {sum(len(v) for v in previous.values())} finished results kept")
    with reporter.loading(source):
        lm, tokenizer = load_model(source, settings.dtype, settings.device, settings.offload)
        dense = None
        if any(t == "fidelity" for t in settings.tasks) and dense_name:
            # The dense model is read block by block from its checkpoint: never two whole models in memory.
            offload = "disk" if safetensors_folder(dense_name) else settings.offload
            dense = load_model(dense_name, settings.dtype, settings.device, offload)[0]
        elif any(t == "fidelity" for t in settings.tasks):
            dense = lm

    def save(results: dict) -> None:
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
    )
    results.update(header, provenance=provenance())
    write_json_atomic(target, results)
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

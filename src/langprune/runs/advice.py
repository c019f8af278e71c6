"""The advisor: which calibration serves a user's languages best, found by a few trial prunes on held-out text.

``langprune advise --serve de,hi=2,sw --method wanda --sparsity 0.5`` searches a small space in stages, one trial
prune per candidate, at most ``--budget`` trials (a candidate the method cannot take, such as ``max`` for SparseGPT
or OWL for quantization alone, is skipped without spending one):

1. aggregation across languages: the one given (``tokens`` by default), then ``tokens``, ``mean``, ``max``;
2. profile: the other of uniform and OWL, at the best aggregation so far;
3. weighting: the weight of the language that the best trial so far hurts most, doubled.

With one served language, stages 1 and 3 have nothing to vary. Every trial calibrates on the **fitting** part of
each language's calibration text and is scored on the **development** part: a fifth of the calibration part, taken by
a second seeded hash of unit keys, so it shares no text with the fitting part nor with the evaluation part, which
the advisor never reads. A trial's score is, per served language, its development perplexity relative to the dense
model's; the objective ``mean`` is the serving-weighted mean of their logarithms (a weighted geometric mean of
the ratios), ``worst`` the largest ratio. The best trial becomes the recommended ``langprune prune`` command, which
calibrates on the whole calibration part as every prune does; its development ratios minus 1 are the expected
change per language. ``advice.json`` holds every trial, the pick, the command and the cost against one prune.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from .. import calibration as calibration_module
from ..compress.methods import method_options
from ..data import get_corpus
from ..errors import UserError, check_at_least
from ..evaluation.perplexity import text_nll
from ..models import load_model
from ..self_generated import GENERATED
from ..settings import fields, flag_of, jsonable, setting
from ..storage import publish_folder, write_json_atomic, write_text_atomic
from .cell import PruneSettings, Reporter
from .folder import check_out
from .provenance import provenance

ADVICE_FILE = "advice.json"
COMMAND_FILE = "prune-command.txt"
OBJECTIVES = ("mean", "worst")
AGGREGATIONS = ("tokens", "mean", "max")
DEVELOPMENT_SEQLEN = 512
ADVISOR_ONLY = ("budget", "objective")  # the advisor's own settings, not the prune's


@dataclass(kw_only=True)
class AdviseSettings(PruneSettings):
    """The prune to advise on (every ``prune`` option but the calibration source, which is ``--serve``), and the
    search's budget and objective."""

    out: Path | None = setting(
        help="Folder for advice.json and the recommended command (refused if it exists, unless --overwrite).",
        required=True,
    )
    budget: int = setting(6, "At most this many trial prunes (at least 1).")
    objective: str = setting(
        "mean",
        "What the pick minimizes: mean (the serving-weighted mean of log development perplexity ratios to dense) "
        "or worst (the largest ratio).",
    )

    def validate(self) -> None:
        if not self.serve:
            raise UserError("advise needs the languages you serve: --serve LANG[=WEIGHT],..., e.g. --serve de,hi=2,sw")
        if self.calib or self.tokens:
            raise UserError("advise chooses the calibration for --serve: give it without --calib or --tokens")
        if self.eval_langs:
            raise UserError("advise never reads held-out evaluation text: leave out --eval-langs")
        check_at_least("--budget", self.budget, 1)
        if self.objective not in OBJECTIVES:
            raise UserError(f"--objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        recipe = calibration_module.check_recipe(self.calibration_recipe)
        generated = [lang for i, lang in enumerate(recipe.languages) if recipe.corpus_of(i) == GENERATED]
        if generated:
            raise UserError(
                f"advise scores trials on held-out text, and no corpus has {', '.join(generated)} "
                "(its calibration would be self-generated): prune with --serve directly"
            )
        self.check()
        if self.out is not None:
            check_out(Path(self.out), self.overwrite)

    def prune_settings(self, **changes) -> PruneSettings:
        """The prune these settings describe, with ``changes`` (a candidate's serve, aggregation or profile), into
        ``runs/serve-<languages>``."""
        values = {name: getattr(self, name) for name in fields(PruneSettings)}
        languages = "-".join(calibration_module.parse_recipe(self.calibration_recipe).languages)
        return PruneSettings(**{**values, "out": Path("runs") / f"serve-{languages}", **changes})


def run_advise(settings: AdviseSettings, reporter: Reporter | None = None) -> dict:
    """Search, write ``advice.json`` and the recommended command into ``settings.out`` (unless it is None)."""
    reporter = reporter or Reporter()
    settings.validate()
    started = time.perf_counter()
    served = calibration_module.parse_recipe(settings.calibration_recipe)
    weights = dict(zip(served.languages, served.weights))
    model, tokenizer = load_model(settings.model, settings.dtype, settings.device, settings.offload)
    development, development_texts = {}, {}
    for index, language in enumerate(served.languages):
        corpus = served.corpus_of(index)
        texts = development_texts[language] = [u.text for u in get_corpus(corpus).units(language, "development")]
        if not texts:
            raise UserError(f"corpus {corpus} has no development text in {language}: it is too small to advise on")
        nll = text_nll(model, tokenizer, texts, DEVELOPMENT_SEQLEN)
        development[language] = {"corpus": corpus, "texts": len(texts), "tokens": nll["tokens"], "dense_ppl": _ppl(nll)}
    del model
    trials: list[dict] = []

    def score(candidate: dict) -> dict | None:
        """One trial prune of ``candidate``, scored on the development part; None if the method cannot take it."""
        trial = settings.prune_settings(**candidate)
        try:
            plan = trial.plan()
        except UserError:
            return None
        begun = time.perf_counter()
        lm, tok = load_model(trial.model, trial.dtype, trial.device, trial.offload)
        calibration, contrast = trial.calibration_sets(lm, tok, reporter, part="fitting")
        trial.compress(lm, calibration, contrast, plan, reporter)
        pruned = time.perf_counter() - begun
        ratios = {}
        for language, texts in development_texts.items():
            ratios[language] = _ppl(text_nll(lm, tok, texts, DEVELOPMENT_SEQLEN)) / development[language]["dense_ppl"]
        result = {
            **candidate,
            "ratio_to_dense": ratios,
            "objective": objective(ratios, weights, settings.objective),
            "prune_seconds": round(pruned, 2),
            "seconds": round(time.perf_counter() - begun, 2),
        }
        trials.append(result)
        reporter.note(
            f"trial {len(trials)}: {describe(candidate)}: "
            + ", ".join(f"{lang} x{ratio:.3f}" for lang, ratio in ratios.items())
        )
        return result

    search(settings, weights, score, trials)
    pick = best(trials)
    recommended = settings.prune_settings(
        serve=pick["serve"], lang_aggregate=pick["lang_aggregate"], profile=pick["profile"]
    )
    command = prune_command(recommended)
    seconds = time.perf_counter() - started
    one_prune = sum(t["prune_seconds"] for t in trials) / len(trials)
    advice = {
        "served": weights,
        "objective": settings.objective,
        "development": development,
        "trials": trials,
        "pick": _keys(pick),
        "expected_change": {lang: ratio - 1 for lang, ratio in pick["ratio_to_dense"].items()},
        "command": command,
        "cost": {
            "trials": len(trials),
            "budget": settings.budget,
            "seconds": round(seconds, 1),
            "one_prune_seconds": round(one_prune, 1),
            "relative_to_one_prune": round(seconds / one_prune, 2),
        },
        "settings": jsonable(dataclasses.asdict(settings)),
        "provenance": provenance(),
    }
    if settings.out is not None:

        def fill(partial: Path) -> None:
            write_json_atomic(partial / ADVICE_FILE, advice)
            write_text_atomic(partial / COMMAND_FILE, command + "\n")

        publish_folder(Path(settings.out), settings.overwrite, fill)
    return advice


def search(settings: AdviseSettings, weights: dict[str, float], score, trials: list[dict]) -> None:
    """The staged search of the module docstring; ``score`` runs a trial (None: not one the method takes)."""
    tried: set[tuple] = set()

    def attempt(candidate: dict) -> None:
        key = tuple(_keys(candidate).values())
        if len(trials) < settings.budget and key not in tried:
            tried.add(key)
            score(candidate)

    start = {"serve": settings.serve, "lang_aggregate": settings.lang_aggregate, "profile": settings.profile}
    several = len(weights) > 1
    for aggregation in dict.fromkeys((settings.lang_aggregate, *AGGREGATIONS)) if several else (None,):
        attempt(start if aggregation is None else {**start, "lang_aggregate": aggregation})
    if not trials:
        raise UserError(
            f"none of the advisor's candidates suit --method {settings.method}"
            f"{' with --quantize ' + settings.quantize if settings.quantize else ''}: see `langprune prune --help`"
        )
    leader = best(trials)
    attempt({**_keys(leader), "profile": "owl" if leader["profile"] == "uniform" else "uniform"})
    if several:
        leader = best(trials)
        weakest = max(leader["ratio_to_dense"], key=leader["ratio_to_dense"].get)
        tilted = {lang: weight * (2 if lang == weakest else 1) for lang, weight in weights.items()}
        attempt({**_keys(leader), "serve": ",".join(f"{lang}={w:g}" for lang, w in tilted.items())})


def _keys(trial: dict) -> dict:
    """What a candidate chooses: the serving weights, the aggregation and the profile."""
    return {key: trial[key] for key in ("serve", "lang_aggregate", "profile")}


def best(trials: list[dict]) -> dict:
    """The trial with the lowest objective; the earlier one on a tie."""
    return min(trials, key=lambda t: (t["objective"], trials.index(t)))


def _ppl(nll: dict) -> float:
    return math.exp(nll["nll"] / nll["tokens"])


def objective(ratios: dict[str, float], weights: dict[str, float], kind: str) -> float:
    """``mean``: the serving-weighted mean of log ratios; ``worst``: the largest ratio (lower is better for both)."""
    if kind == "worst":
        return max(ratios.values())
    return sum(weights[lang] * math.log(ratio) for lang, ratio in ratios.items()) / sum(weights.values())


def describe(candidate: dict) -> str:
    return (
        f"--serve {candidate['serve']} --lang-aggregate {candidate['lang_aggregate']} --profile {candidate['profile']}"
    )


def prune_command(settings: PruneSettings) -> str:
    """The ``langprune prune`` command line for ``settings``: every option that differs from its default."""
    defaults = PruneSettings(out=Path("."))
    options = method_options()
    given = [(name, field, getattr(settings, name)) for name, (field, _) in fields(PruneSettings).items()]
    given += [(key, options[key][0], value) for key, value in sorted(settings.method_options.items())]
    parts = ["langprune", "prune"]
    for name, field, value in given:
        if name == "method_options" or (name != "out" and value == getattr(defaults, name, None)):
            continue
        flag = flag_of(name, field)
        if isinstance(value, bool):
            parts.append(flag)
        elif isinstance(value, tuple) and field.metadata.get("repeat"):
            parts += [item for element in value for item in (flag, str(element))]
        elif isinstance(value, tuple):
            parts += [flag, ",".join(map(str, value))]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)

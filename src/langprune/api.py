"""The one-call Python API: ``langprune.prune(model, tokenizer, calibration, ...)``."""

from __future__ import annotations

import torch

from . import calibration as calibration_module
from .calibration import CalibrationSet
from .compress import PruneResult, prune_model
from .errors import UserError
from .runs import EvalSettings, PruneSettings, run_eval, run_prune
from .runs.advice import AdviseSettings, run_advise

__all__ = [
    "AdviseSettings",
    "EvalSettings",
    "PruneSettings",
    "advise",
    "as_calibration",
    "prune",
    "run_eval",
    "run_prune",
]


def prune(
    model,
    tokenizer,
    calibration: str | list[str] | CalibrationSet | torch.Tensor | dict | None,
    method: str = "wanda",
    sparsity: str | float = 0.5,
    *,
    nsamples: int | None = None,
    seqlen: int = 512,
    seed: int = 0,
    contrast: str | list[str] | CalibrationSet | torch.Tensor | dict | None = None,
    serve: dict[str, float] | str | None = None,
    **options,
) -> tuple[torch.nn.Module, PruneResult]:
    """Prune a model in memory, in place, and return it with the result (changes per layer, masks, summary).

    For the whole job on disk (load, calibrate, prune, write a run folder),
    use ``run_prune(PruneSettings(...))``, which is what ``langprune prune`` calls.

    ``calibration`` is a recipe (``"mix:en+de"``, ``"file:notes.txt"``), a list
    of texts, a ready ``CalibrationSet``, a tensor of input ids (n x seqlen), or
    a dict with ``input_ids`` and optional ``attention_mask``. ``contrast``
    (the same kinds) is the set Z of the contrastive wanda score. ``options``
    go to ``prune_model`` (``propagate``, ``include``, ``exclude``, ``batch_size``, ``on_block``).
    ``serve`` (``{"de": 1, "hi": 2}`` or ``"de,hi=2"``) builds the calibration for the languages served
    instead, token shares in proportion to the weights; give it with ``calibration=None``.
    """
    if serve is not None:
        if calibration is not None:
            raise UserError("give calibration or serve, not both")
        calibration = calibration_module.serve_recipe(serve)
    calibration = as_calibration(calibration, tokenizer, nsamples, seqlen, seed, model)
    contrast = as_calibration(contrast, tokenizer, nsamples, seqlen, seed, model)
    result = prune_model(model, calibration, method, sparsity, seed=seed, contrast=contrast, **options)
    return model, result


def advise(
    serve: dict[str, float] | str,
    method: str = "wanda",
    sparsity: str | float = 0.5,
    *,
    model: str = "gemma-3-270m",
    out: str | None = None,
    **options,
) -> dict:
    """The advisor (``langprune advise``): trial prunes of ``model`` for the languages served, scored on development
    text; returns the advice (trials, pick, expected change, the ``langprune prune`` command, cost), and writes it to
    ``out`` when given. ``options`` are any other ``AdviseSettings`` field (``budget``, ``objective``, ``nsamples``...).
    """
    if isinstance(serve, dict):
        serve = ",".join(f"{lang}={weight}" for lang, weight in serve.items())
    settings = AdviseSettings(serve=serve, method=method, sparsity=str(sparsity), model=model, out=out, **options)
    return run_advise(settings)


def as_calibration(
    source, tokenizer, nsamples: int | None, seqlen: int, seed: int, model=None
) -> CalibrationSet | None:
    """Any accepted form of calibration (recipe, texts, ids, dict, set) as a CalibrationSet; ``model`` writes
    self-generated text (``gen:LANG``)."""
    if isinstance(source, str):
        return calibration_module.build(source, tokenizer, nsamples, seqlen, seed, model=model)
    if isinstance(source, list):
        return calibration_module.from_texts(source, tokenizer, nsamples or 128, seqlen, seed)
    if isinstance(source, dict):
        return CalibrationSet.from_tokens(source["input_ids"], source.get("attention_mask"))
    if isinstance(source, torch.Tensor):
        return CalibrationSet.from_tokens(source)
    return source

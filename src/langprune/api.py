"""The one-call Python API: ``langprune.prune(model, tokenizer, calibration, ...)``."""

from __future__ import annotations

import torch

from . import calibration as calibration_module
from .calibration import CalibrationSet
from .pruning import PruneResult, prune_model


def prune(
    model,
    tokenizer,
    calibration: str | list[str] | CalibrationSet | torch.Tensor | dict | None,
    method: str = "wanda",
    sparsity: str | float = 0.5,
    *,
    nsamples: int = 128,
    seqlen: int = 512,
    seed: int = 0,
    **options,
) -> tuple[torch.nn.Module, PruneResult]:
    """Prune ``model`` in place and return it with the result (masks and summary).

    ``calibration`` is a recipe (``"mix:en+de"``, ``"file:notes.txt"``), a list
    of texts, a ready ``CalibrationSet``, a tensor of input ids (n x seqlen), or
    a dict with ``input_ids`` and optional ``attention_mask``. ``options`` go to
    ``prune_model`` (``propagate``, ``include``, ``exclude``, ``batch_size``).
    """
    if isinstance(calibration, str):
        calibration = calibration_module.build(calibration, tokenizer, nsamples, seqlen, seed)
    elif isinstance(calibration, list):
        calibration = calibration_module.from_texts(calibration, tokenizer, nsamples, seqlen, seed)
    elif isinstance(calibration, dict):
        calibration = CalibrationSet.from_tokens(calibration["input_ids"], calibration.get("attention_mask"))
    result = prune_model(model, calibration, method, sparsity, seed=seed, **options)
    return model, result

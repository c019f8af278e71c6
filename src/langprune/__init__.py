"""langprune: prune multilingual causal LMs with language-aware calibration.

from langprune import load_model, prune, calibration
model, tokenizer = load_model("gemma-3-270m")
calib = calibration.build("mix:en+de", tokenizer, nsamples=32, seqlen=512)
model, result = prune(model, tokenizer, calib, method="wanda", sparsity="0.5")

from langprune import PruneSettings, run_prune     # the whole job, as `langprune prune` runs it
report = run_prune(PruneSettings(out="runs/wanda50", calib="mono:de", nsamples=32))

from langprune import advise                        # which calibration serves de, hi (twice) and sw best
advice = advise({"de": 1, "hi": 2, "sw": 1}, "wanda", 0.5, budget=4)
"""

from . import calibration
from .api import AdviseSettings, EvalSettings, PruneSettings, advise, prune, run_eval, run_prune
from .calibration import CalibrationSet
from .compress import LayerChange, PruneResult, Sparsity, prune_model
from .errors import UserError
from .models import load_model

__all__ = [
    "AdviseSettings",
    "CalibrationSet",
    "EvalSettings",
    "LayerChange",
    "PruneResult",
    "PruneSettings",
    "Sparsity",
    "UserError",
    "advise",
    "calibration",
    "load_model",
    "prune",
    "prune_model",
    "run_eval",
    "run_prune",
]

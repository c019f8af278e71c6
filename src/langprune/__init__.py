"""langprune: prune multilingual causal LMs with language-aware calibration.

    from langprune import load_model, prune, calibration
    model, tokenizer = load_model("gemma-3-270m")
    calib = calibration.build("mix:en+de", tokenizer, nsamples=32, seqlen=512)
    model, result = prune(model, tokenizer, "mix:en+de", method="wanda", sparsity="0.5")
"""

from . import calibration
from .calibration import CalibrationSet
from .errors import UserError
from .models import load_model
from .api import prune
from .pruning import PruneResult, prune_model
from .sparsity import Sparsity

__all__ = ["CalibrationSet", "PruneResult", "Sparsity", "UserError", "calibration", "load_model", "prune", "prune_model"]

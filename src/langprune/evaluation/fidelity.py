"""Fidelity to the dense model: per-layer hidden-state pruning error and SNR (language-specific calibration paper, D.1).

For layer k with dense hidden states H (N real tokens x d features) and
pruned ones H~, both are divided by mu = mean over tokens of ||h_i||_2 of the
dense states; the pruning error is the mean squared difference of the
normalised states, the signal their mean square, and
SNR_dB = 10 log10(signal / error). The model SNR is the mean of the layers'
SNR_dB. Sums are kept in float64 over real tokens only, so padding and
batching do not change them. A layer whose states are identical has error 0
and no finite SNR: it is reported as identical and left out of the mean.
The layers are the model's own ``hidden_states`` after the embeddings: each
block's output, the last one after the final norm, as transformers defines them.
Dense and pruned states are computed block by block by the engine, one block's
activations at a time, never two whole forward passes' worth of states.
"""

from __future__ import annotations

import math

import torch

from ..calibration import evaluation_texts
from ..engine import BlockEngine, Tag
from ..engine.scoring import window_batches
from ..errors import UserError
from ..text import pad_id, text_windows


class LayerSums:
    """Float64 running sums for one layer: sum h^2, sum (h - h~)^2, sum ||h_i||, tokens."""

    def __init__(self):
        self.signal = self.error = self.norms = 0.0
        self.tokens = 0
        self.features = 0

    def add(self, dense: torch.Tensor, pruned: torch.Tensor) -> None:
        dense, pruned = dense.double(), pruned.double()
        self.signal += float((dense**2).sum())
        self.error += float(((dense - pruned) ** 2).sum())
        self.norms += float(dense.norm(dim=-1).sum())
        self.tokens += dense.shape[0]
        self.features = dense.shape[-1]

    def result(self) -> dict:
        mu = self.norms / self.tokens
        scale = self.tokens * self.features * mu * mu
        error, signal = self.error / scale, self.signal / scale
        snr = 10 * math.log10(signal / error) if error > 0 else None
        return {"pruning_error": error, "snr_db": snr, "identical": error == 0, "mu": mu}


def compare_hidden_states(
    dense_model, pruned_model, windows: list[list[int]], pad: int = 0, batch_size: int = 4
) -> dict:
    """Per-layer pruning error and SNR of ``pruned_model`` against ``dense_model`` on token windows."""
    batches = window_batches(windows, pad, batch_size, Tag("evaluation"))
    dense, pruned = BlockEngine(dense_model, batches), BlockEngine(pruned_model, batches)
    if len(dense.blocks) != len(pruned.blocks):
        raise UserError(
            f"the models have {len(dense.blocks)} and {len(pruned.blocks)} blocks: fidelity compares a "
            "pruned model with its own dense model"
        )
    dense.capture()
    pruned.capture()
    last = len(dense.blocks) - 1
    layers: list[LayerSums] = []
    for index in range(last + 1):
        dense.run_block(index)
        pruned.run_block(index)
        sums = LayerSums()
        for b in range(len(batches)):
            if index == last:
                d, p = dense.final_states(b), pruned.final_states(b)
            else:
                d, p = dense.real_tokens(dense.hidden[b], b, "dense"), pruned.real_tokens(pruned.hidden[b], b, "pruned")
            sums.add(d.to(p.device), p)
        layers.append(sums)
    dense.release()
    pruned.release()
    per_layer = [sums.result() for sums in layers]
    finite = [layer["snr_db"] for layer in per_layer if layer["snr_db"] is not None]
    return {
        "snr_db": sum(finite) / len(finite) if finite else None,
        "pruning_error": sum(layer["pruning_error"] for layer in per_layer) / len(per_layer),
        "identical_layers": sum(layer["identical"] for layer in per_layer),
        "tokens": layers[0].tokens if layers else 0,
        "layers": per_layer,
    }


def evaluate_fidelity(
    dense_model, model, tokenizer, corpus: str, language: str, seqlen: int = 512, batch_size: int = 4
) -> dict:
    windows = text_windows(tokenizer, evaluation_texts(language, corpus), seqlen, complete=False)
    return {"corpus": corpus, **compare_hidden_states(dense_model, model, windows, pad_id(tokenizer), batch_size)}

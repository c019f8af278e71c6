"""Pruning methods: which statistic each needs and how it compresses a group of layers.

A method prunes a *group* of layers that read the same input, so statistics
are shared and SparseGPT can stack their rows into one solve. Weights are
edited in place through ``(out, in)`` views; what was done to each layer
comes back as a ``LayerChange`` (keep mask in the same orientation, whether
surviving weights moved).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..engine.statistics import ContrastedNorms, Hessian, InputStatistic, SquaredNorms
from ..errors import UserError
from . import kernels
from .result import LayerChange
from .sparsity import Sparsity


@dataclass
class Method:
    """Base: subclasses set ``name`` and ``statistic`` and implement ``scores`` or ``prune_group``."""

    name: ClassVar[str] = ""
    statistic: ClassVar[type[InputStatistic] | None] = None

    def scores(self, layer_name: str, weight: torch.Tensor, statistic, seed: int) -> torch.Tensor:
        raise NotImplementedError

    def prune_group(
        self, weights: dict[str, torch.Tensor], statistic, sparsity: Sparsity, seed: int
    ) -> dict[str, LayerChange]:
        changes = {}
        for name, weight in weights.items():
            keep = kernels.mask_from_scores(self.scores(name, weight, statistic, seed), sparsity)
            weight[~keep] = 0
            changes[name] = LayerChange(keep)
        return changes


class Magnitude(Method):
    name = "magnitude"

    def scores(self, layer_name, weight, statistic, seed):
        return kernels.magnitude_scores(weight)


class Random(Method):
    name = "random"

    def scores(self, layer_name, weight, statistic, seed):
        # Seeded per layer by name, so a layer's mask does not depend on which layers came before it.
        # Modulo 2^64: any seed the CLI accepts stays within the generator's range.
        generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(layer_name.encode())) % 2**64)
        return kernels.random_scores(tuple(weight.shape), generator).to(weight.device)  # drawn on the CPU: same on any device


class Wanda(Method):
    name = "wanda"
    statistic = SquaredNorms

    def scores(self, layer_name, weight, statistic, seed):
        return kernels.wanda_scores(weight, statistic.value)


@dataclass
class ContrastiveWanda(Method):
    """Translation-feature paper, Eq. 4: Wanda with each input's norm on X divided by its norm on Z.

    Needs a contrast set (``--contrast``); features strong on Z lose weight.
    """

    name = "wanda-contrastive"
    statistic = ContrastedNorms
    eps: float = 1e-8

    def scores(self, layer_name, weight, statistic, seed):
        x, z = statistic.value
        return kernels.contrastive_wanda_scores(weight, x, z, self.eps)


@dataclass
class SparseGPT(Method):
    name = "sparsegpt"
    statistic = Hessian
    blocksize: int = 128
    percdamp: float = 0.01

    def prune_group(self, weights, statistic, sparsity, seed):
        names = list(weights)
        stacked = torch.cat([weights[n] for n in names], dim=0)
        updated, keep = kernels.sparsegpt_prune(
            stacked, statistic.value, sparsity, self.blocksize, self.percdamp, name=statistic.name
        )
        changes, row = {}, 0
        for name in names:
            rows = weights[name].shape[0]
            weights[name].copy_(updated[row : row + rows])
            changes[name] = LayerChange(keep[row : row + rows].clone(), weights_updated=True)
            row += rows
        return changes


METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Magnitude, Random, Wanda, ContrastiveWanda, SparseGPT)}


def get_method(method: str | Method) -> Method:
    if isinstance(method, Method):
        return method
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    return METHODS[method]()

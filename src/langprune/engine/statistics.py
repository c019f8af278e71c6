"""Per-input statistics accumulated over calibration tokens, in float32 or wider, on the execution device.

Each statistic sees the input of one or more layers (layers fed by the same
tensor share one statistic) as a (tokens, features) matrix of real tokens
only; padding has already been dropped by the engine. A statistic lives on
the device its activations come from (``device``), so nothing crosses to the
host while a block runs. ``tag`` is the batch's ``Tag``: statistics that keep
sets apart (the contrast set Z) read its role, never a batch's position.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .collection import Tag


def accumulate_gram_upper_(acc: torch.Tensor, x: torch.Tensor, block: int = 256) -> None:
    """acc += XᵀX, computing only the blocks on and above the diagonal.

    XᵀX is symmetric, so this does about (k+1)/(2k) of the multiply-adds of a
    full product for k column blocks; ``symmetrize_upper_`` fills in the rest
    once at the end. X is (tokens, features).
    """
    d = x.shape[1]
    if d <= block:
        acc.addmm_(x.T, x)
        return
    starts = range(0, d, block)
    for i in starts:
        xi_t = x[:, i : i + block].T
        acc[i : i + block, i:].addmm_(xi_t, x[:, i:])


def symmetrize_upper_(acc: torch.Tensor, block: int = 256) -> torch.Tensor:
    """Mirror, in place, the upper block triangle written by ``accumulate_gram_upper_``."""
    if acc.shape[0] > block:
        strict_upper = torch.triu(acc, 1)
        acc.tril_().triu_().add_(strict_upper).add_(strict_upper.T)
    return acc


CONTRAST = "contrast"
"""The role of batches from the contrast set Z (``--contrast``)."""


class InputStatistic:
    """Lifecycle: ``add_batch`` per calibration batch, read, then ``free``."""

    def __init__(self, features: int, name: str, device: torch.device | str = "cpu"):
        self.features = features
        self.name = name
        self.device = torch.device(device)
        self.tokens = 0

    def add_batch(self, x: torch.Tensor, tag: Tag | None = None) -> None:
        """Accumulate a (tokens, features) batch of real tokens; ``tag`` says which set it belongs to."""
        raise NotImplementedError

    def free(self) -> None:
        raise NotImplementedError

    def _check_finite(self, value: torch.Tensor) -> torch.Tensor:
        if not torch.isfinite(value).all():
            raise UserError(
                f"non-finite activations reached {self.name}: the model overflows on the calibration text "
                "in this dtype; load it in float32 or check the input"
            )
        return value


class SquaredNorms(InputStatistic):
    """Σ_t x_tj² per input feature j: Wanda's ||X_j||₂², accumulated in float64."""

    def __init__(self, features: int, name: str, device: torch.device | str = "cpu"):
        super().__init__(features, name, device)
        self._sum = torch.zeros(features, dtype=torch.float64, device=self.device)

    def add_batch(self, x: torch.Tensor, tag: Tag | None = None) -> None:
        # In chunks of rows: the squares never need a full tokens x features temporary, which would land
        # on the block's memory peak (hooks run while the block's own intermediates are alive).
        for chunk in x.split(1024):
            chunk = chunk.to(torch.float32)
            self._sum += (chunk * chunk).sum(0, dtype=torch.float32).to(torch.float64)
        self.tokens += x.shape[0]

    @property
    def value(self) -> torch.Tensor:
        return self._check_finite(self._sum)

    def free(self) -> None:
        self._sum = None


class ContrastedNorms(InputStatistic):
    """||X_j||² over the calibration set and ||Z_j||² over the contrast set, kept apart by role.

    The roles come from each batch's tag (``contrast`` for Z), never from the
    order in which batches happen to run, so X and Z cannot swap between runs.
    """

    def __init__(self, features: int, name: str, device: torch.device | str = "cpu"):
        super().__init__(features, name, device)
        self.x = SquaredNorms(features, name, device)
        self.z = SquaredNorms(features, name, device)

    def add_batch(self, x: torch.Tensor, tag: Tag | None = None) -> None:
        (self.z if tag is not None and tag.role == CONTRAST else self.x).add_batch(x)
        self.tokens += x.shape[0]

    @property
    def value(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.x.tokens == 0 or self.z.tokens == 0:
            raise UserError(
                f"{self.name}: the contrastive score needs tokens from both the calibration and the contrast set"
            )
        return self.x.value, self.z.value

    def free(self) -> None:
        self.x.free()
        self.z.free()


class Hessian(InputStatistic):
    """H = 2/T Σ_t x_t x_tᵀ, the layer-wise reconstruction Hessian of SparseGPT.

    Only the upper block triangle is accumulated (float32) and mirrored once,
    which saves about a third of the multiply-adds on wide inputs.
    """

    def __init__(self, features: int, name: str, device: torch.device | str = "cpu"):
        super().__init__(features, name, device)
        self._gram = torch.zeros(features, features, dtype=torch.float32, device=self.device)
        self._finished = False

    def add_batch(self, x: torch.Tensor, tag: Tag | None = None) -> None:
        if self._finished:
            raise RuntimeError(f"{self.name}: the Hessian was already read; no more batches can be added")
        accumulate_gram_upper_(self._gram, x.to(torch.float32))
        self.tokens += x.shape[0]

    @property
    def value(self) -> torch.Tensor:
        """The finished Hessian; computed in place on first read, so no second matrix is allocated."""
        if self.tokens == 0:
            raise UserError(f"no calibration tokens reached {self.name}: give non-empty calibration text")
        if not self._finished:
            symmetrize_upper_(self._gram).mul_(2.0 / self.tokens)
            self._finished = True
        return self._check_finite(self._gram)

    def free(self) -> None:
        self._gram = None

"""Pruning methods: which statistic each needs, which options it takes, what it pairs with, how it compresses.

A method prunes a *group* of layers that read the same input, so statistics
are shared and SparseGPT can stack their rows into one solve. Weights are
edited in place through ``(out, in)`` views; what was done to each layer
comes back as a ``LayerChange`` (keep mask in the same orientation, whether
surviving weights moved).

A method is one class: its user options are dataclass fields made with
``option`` (the field carries its CLI flag and help, from which the
``prune`` command, the grid keys and the config keys are made), its pairing
rules are ``check`` (quantization, N:M, mask selection) and
``with_contrast`` (a contrast set Z), and ``register`` adds it to
``METHODS``. Nothing outside its module names it.
"""

from __future__ import annotations

import dataclasses
import typing
import zlib
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from ..engine.statistics import ContrastedNorms, Hessian, InputStatistic, SquaredNorms
from ..errors import UserError, did_you_mean
from ..settings import setting
from . import kernels
from .quantization import QuantSpec
from .result import LayerChange
from .sparsity import Sparsity

ROW_SLICE = 1 << 22  # score elements per slice of rows (16 MB of float32 scores)


def option(default: Any, flag: str, help: str) -> Any:
    """A method field the user sets: ``--FLAG`` on ``prune``, ``FLAG_WITH_UNDERSCORES`` in grid and config files."""
    return setting(default, help, flag=flag)


@dataclass
class Method:
    """Base: subclasses set ``name`` and ``statistic`` and implement ``scores`` or ``prune_group``."""

    name: ClassVar[str] = ""
    statistic: ClassVar[type[InputStatistic] | None] = None
    prunes: ClassVar[bool] = True  # False: the sparsity target is ignored (quantization alone)
    # A row's scores depend on that row alone (not on column sums or a random stream drawn for the whole layer): the
    # mask is then made a slice of rows at a time, so scores and selection never span a whole 14336-wide layer.
    row_local: ClassVar[bool] = False

    def check(self, quant: QuantSpec | None, sparsity: Sparsity) -> None:
        """Refuse, before anything loads, a pairing with quantization or a sparsity pattern this method cannot do."""

    def with_contrast(self, has_contrast: bool) -> Method:
        """The method to run with (or without) a contrast set Z; a pairing that cannot work is a user error."""
        if has_contrast:
            takers = [  # methods that turn into a contrastive score, not those that are one already
                n
                for n, cls in METHODS.items()
                if cls.with_contrast is not Method.with_contrast and cls.statistic is not ContrastedNorms
            ]
            raise UserError(f"a contrast set (--contrast) works with {' or '.join(takers)} only, not {self.name}")
        return self

    def jointly_quantizing(self, spec: QuantSpec, scale_dtype: torch.dtype) -> Method | None:
        """A copy that prunes and quantizes in one sweep, or None when quantization must follow pruning."""
        return None

    def scores(self, layer_name: str, weight: torch.Tensor, statistic, seed: int) -> torch.Tensor:
        raise NotImplementedError

    def prune_group(
        self, weights: dict[str, torch.Tensor], statistic, sparsity: Sparsity, seed: int
    ) -> dict[str, LayerChange]:
        changes = {}
        for name, weight in weights.items():
            keep = self.keep_mask(name, weight, statistic, sparsity, seed)
            weight.masked_fill_(~keep, 0)  # not weight[~keep] = 0, which makes int64 indices of every pruned weight
            changes[name] = LayerChange(keep)
        return changes

    def keep_mask(self, name: str, weight: torch.Tensor, statistic, sparsity: Sparsity, seed: int) -> torch.Tensor:
        """The layer's keep mask from its scores; for a row-local score, made ``ROW_SLICE`` elements at a time (masks
        compare within rows, so the result is the same bit for bit, with a fraction of the temporaries)."""
        if not self.row_local:
            return kernels.mask_from_scores(self.scores(name, weight, statistic, seed), sparsity)
        keep = torch.empty(weight.shape, dtype=torch.bool, device=weight.device)
        step = max(1, ROW_SLICE // weight.shape[1])
        for start in range(0, weight.shape[0], step):
            rows = slice(start, start + step)
            keep[rows] = kernels.mask_from_scores(self.scores(name, weight[rows], statistic, seed), sparsity)
        return keep


class NoPruning(Method):
    """Prune nothing: for quantization alone (``--method none --quantize w4g128``)."""

    name = "none"
    prunes = False

    def check(self, quant, sparsity):
        if quant is None:
            raise UserError("--method none prunes nothing: add --quantize (e.g. w4g128), or choose a pruning method")

    def prune_group(self, weights, statistic, sparsity, seed):
        return {name: LayerChange(None) for name in weights}


class Magnitude(Method):
    name = "magnitude"
    row_local = True

    def scores(self, layer_name, weight, statistic, seed):
        return kernels.magnitude_scores(weight)


class Random(Method):
    name = "random"

    def scores(self, layer_name, weight, statistic, seed):
        # Seeded per layer by name, so a layer's mask does not depend on which layers came before it.
        # Modulo 2^64: any seed the CLI accepts stays within the generator's range.
        generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(layer_name.encode())) % 2**64)
        return kernels.random_scores(tuple(weight.shape), generator).to(
            weight.device
        )  # drawn on the CPU: same on any device


class Wanda(Method):
    name = "wanda"
    statistic = SquaredNorms
    row_local = True

    def with_contrast(self, has_contrast):
        """With a contrast set, Wanda becomes the translation-feature paper's contrastive score."""
        return ContrastiveWanda() if has_contrast else self

    def scores(self, layer_name, weight, statistic, seed):
        return kernels.wanda_scores(weight, statistic.value)


@dataclass
class RIA(Method):
    """Relative importance and activations (Zhang et al., ICLR 2024), compared within each output row as Wanda."""

    name = "ria"
    statistic = SquaredNorms
    alpha: float = option(0.5, "ria-alpha", "ria: exponent a of the activation norm (default 0.5).")

    def __post_init__(self):
        if not 0 <= self.alpha <= 4:
            raise UserError(f"--ria-alpha {self.alpha:g} is outside [0, 4]: the published default is 0.5")

    def scores(self, layer_name, weight, statistic, seed):
        return kernels.ria_scores(weight, statistic.value, self.alpha)


@dataclass
class ContrastiveWanda(Method):
    """Translation-feature paper, Eq. 4: Wanda with each input's norm on X divided by its norm on Z.

    Needs a contrast set (``--contrast``); features strong on Z lose weight.
    """

    name = "wanda-contrastive"
    statistic = ContrastedNorms
    row_local = True
    eps: float = 1e-8

    def with_contrast(self, has_contrast):
        if not has_contrast:
            raise UserError(f"{self.name} needs a contrast set: pass --contrast, e.g. --contrast code")
        return self

    def scores(self, layer_name, weight, statistic, seed):
        x, z = statistic.value
        return kernels.contrastive_wanda_scores(weight, x, z, self.eps)


@dataclass
class SparseGPT(Method):
    """SparseGPT's OBS sweep; with ``quant`` set it prunes and quantizes in the same sweep (the paper's joint mode).

    ``selection="row"`` (default) keeps exactly the target share per row and
    stacks the layers that share an input into one solve; ``"block"`` is the
    reference implementation's threshold per block of columns across all
    rows of one layer, to reproduce published numbers.
    """

    name = "sparsegpt"
    statistic = Hessian
    blocksize: int = 128
    percdamp: float = 0.01
    selection: str = option(
        "row",
        "mask-selection",
        "sparsegpt: 'row' (default, exact share per row) or 'block' (the reference's threshold per 128 columns).",
    )
    quant: QuantSpec | None = None
    scale_dtype: torch.dtype = torch.float32

    def __post_init__(self):
        if self.selection not in kernels.MASK_SELECTIONS:
            raise UserError(
                f"--mask-selection must be one of {', '.join(kernels.MASK_SELECTIONS)}, not {self.selection!r}"
            )

    def check(self, quant, sparsity):
        if quant is not None and quant.act_order and (sparsity.structured or self.selection == "block"):
            raise UserError(
                f"actorder visits columns out of order, which {sparsity} sparsity with "
                f"{'N:M groups' if sparsity.structured else 'block mask selection'} in the same sweep does "
                "not allow: drop actorder"
            )

    def jointly_quantizing(self, spec, scale_dtype):
        return replace(self, quant=spec, scale_dtype=scale_dtype)

    def prune_group(self, weights, statistic, sparsity, seed):
        # One solve reads the Hessian, and with no quantization nothing reads it afterwards (the output error of
        # ``_write_back`` does): the solve may then factorise it in place.
        one_solve = self.selection == "row" or len(weights) == 1
        consume = one_solve and self.quant is None
        hessian = statistic.take() if consume else statistic.value
        if not one_solve:  # the reference's threshold spans one layer's rows: one solve per layer
            return {
                name: self._compress({name: weight}, hessian, sparsity, statistic.name)[name]
                for name, weight in weights.items()
            }
        return self._compress(weights, hessian, sparsity, statistic.name, consume)

    def _compress(self, weights, hessian, sparsity, label, consume=False):
        stacked = _stacked(weights)
        result = kernels.obs_sweep(
            stacked,
            hessian,
            sparsity=sparsity,
            quant=self.quant,
            selection=self.selection,
            scale_dtype=self.scale_dtype,
            blocksize=self.blocksize,
            percdamp=self.percdamp,
            name=label,
            consume_hessian=consume,
        )
        return _write_back(weights, stacked, result, hessian, self.quant, "dense")


def _stacked(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Layers sharing an input, stacked by rows for one sweep; a lone layer (a 14336-wide down projection) is its own
    weight, with no stacked copy beside it."""
    return next(iter(weights.values())) if len(weights) == 1 else torch.cat(list(weights.values()), dim=0)


def _write_back(weights, before, result, hessian, quant, against: str) -> dict[str, LayerChange]:
    """Copy a stacked sweep's rows back into each layer; for quantized layers, record the grid and the output error."""
    changes, row = {}, 0
    alone = len(weights) == 1  # the sweep's rows are this layer's: nothing to slice, nothing to copy out

    def own(tensor: torch.Tensor, rows: slice) -> torch.Tensor:
        return tensor if alone else tensor[rows].clone()  # a slice would keep the whole stacked tensor alive

    for name, weight in weights.items():
        rows = slice(row, row + weight.shape[0])
        record = {}
        if quant is not None:  # before the copy below: with one layer, ``before`` is the weight itself
            error = kernels.relative_output_error(before[rows], result.weight[rows], hessian)
            record = {**quant.record(), "output_error": error, "error_against": against}
        weight.copy_(result.weight[rows])
        changes[name] = LayerChange(
            own(result.keep, rows),
            weights_updated=True,
            quantization=record,
            scale=None if quant is None else own(result.scale, rows),
            zero_point=None if quant is None else own(result.zero_point, rows),
        )
        row += weight.shape[0]
    return changes


@dataclass
class GPTQ:
    """GPTQ (Frantar et al., 2023) after any pruning: the OBS sweep with a fixed mask, so pruned zeros stay zero."""

    spec: QuantSpec
    scale_dtype: torch.dtype = torch.float32
    blocksize: int = 128
    percdamp: float = 0.01

    def quantize_group(
        self, weights: dict[str, torch.Tensor], hessian: Hessian, pruned: dict[str, LayerChange]
    ) -> dict[str, LayerChange]:
        names = list(weights)
        stacked = _stacked(weights)
        masks = [
            pruned[n].keep if pruned[n].keep is not None else torch.ones_like(weights[n], dtype=torch.bool)
            for n in names
        ]
        result = kernels.obs_sweep(
            stacked,
            hessian.value,
            keep=torch.cat(masks, dim=0),
            quant=self.spec,
            scale_dtype=self.scale_dtype,
            blocksize=self.blocksize,
            percdamp=self.percdamp,
            name=hessian.name,
        )
        changes = _write_back(weights, stacked, result, hessian.value, self.spec, "pruned")
        for name in names:
            if pruned[name].keep is None:
                changes[name].keep = None
        return changes


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Add a method class under its ``name``; its ``option`` fields become ``prune`` flags and grid keys."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    METHODS[cls.name] = cls
    return cls


for _cls in (NoPruning, Magnitude, Random, Wanda, RIA, ContrastiveWanda, SparseGPT):
    register(_cls)


def option_fields(cls: type[Method]) -> dict[str, dataclasses.Field]:
    """A method's user options: ``{setting key: field}``, the key being the flag with underscores (``ria_alpha``)."""
    if not dataclasses.is_dataclass(cls):
        return {}
    return {f.metadata["flag"].replace("-", "_"): f for f in dataclasses.fields(cls) if f.metadata.get("flag")}


def method_options() -> dict[str, tuple[dataclasses.Field, type]]:
    """Every registered method's options by setting key, with their types (methods may share a key)."""
    found: dict[str, tuple[dataclasses.Field, type]] = {}
    for cls in METHODS.values():
        hints = typing.get_type_hints(cls)
        for key, field in option_fields(cls).items():
            found.setdefault(key, (field, hints[field.name]))
    return found


def get_method(method: str | Method, **options) -> Method:
    """A method by name, with the options the user set by setting key (None: left at its default).

    An option the method does not take is refused, naming the methods that do.
    """
    if isinstance(method, Method):
        return method
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}{did_you_mean(method, METHODS)}: choose one of {', '.join(METHODS)}")
    cls = METHODS[method]
    own = option_fields(cls)
    given = {}
    for key, value in options.items():
        if value is None:
            continue
        if key not in own:
            takers = " or ".join(name for name, other in METHODS.items() if key in option_fields(other))
            raise UserError(f"--{key.replace('_', '-')} applies to {takers or 'no method'}, not {method}")
        given[own[key].name] = value
    return cls(**given)

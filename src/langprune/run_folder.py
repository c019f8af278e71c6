"""A run folder: the pruned checkpoint, its masks and ``report.json``, written atomically.

Everything is written into ``<out>.partial`` and renamed at the end, so a
failed or interrupted run never leaves a half-written folder behind.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .architecture import is_conv1d
from .errors import UserError

MASKS_FILE = "masks.safetensors"
REPORT_FILE = "report.json"
PACKAGES = ("langprune", "torch", "transformers", "safetensors", "accelerate", "gguf", "numpy")


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an existing output folder unless overwriting was asked for."""
    if out.exists() and not overwrite:
        raise UserError(f"output folder {out} already exists: choose another --out or pass --overwrite")


def provenance() -> dict:
    """Versions, interpreter, platform and the git commit of the langprune source, if any."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": commit,
        "command": sys.argv,
    }


def save_run(out: Path, model, tokenizer, masks: dict[str, torch.Tensor], report: dict, overwrite: bool = False) -> Path:
    """Write checkpoint, masks (boolean, parameter-shaped, True = kept) and report; then rename into place."""
    check_out(out, overwrite)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(partial)
    if tokenizer is not None:
        tokenizer.save_pretrained(partial)
    modules = dict(model.named_modules())
    # Masks are stored in each parameter's own layout (Conv1D weights are (in, out)).
    stored = {name: (keep.T if is_conv1d(modules[name]) else keep).contiguous() for name, keep in masks.items()}
    save_file(stored, str(partial / MASKS_FILE))
    (partial / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


def load_report(run: Path) -> dict:
    path = Path(run) / REPORT_FILE
    if not path.is_file():
        raise UserError(f"{run} is not a langprune run folder: it has no {REPORT_FILE}")
    return json.loads(path.read_text(encoding="utf-8"))


def remeasure(run: Path) -> dict:
    """Re-measure sparsity from the saved weights and check them against the saved masks."""
    from safetensors import safe_open

    run = Path(run)
    masks = load_file(str(run / MASKS_FILE))
    weights = {}
    for shard in sorted(run.glob("model*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                weights[key] = f.get_tensor(key)
    per_layer, zeros, total, violations = {}, 0, 0, 0
    for name, keep in masks.items():
        weight = weights.get(f"{name}.weight")
        if weight is None:
            raise UserError(f"{run}: mask {name} has no matching weight in the checkpoint")
        z = weight.numel() - int(torch.count_nonzero(weight))
        violations += int((weight[~keep] != 0).sum())
        per_layer[name] = z / weight.numel()
        zeros, total = zeros + z, total + weight.numel()
    all_zeros = sum(w.numel() - int(torch.count_nonzero(w)) for w in weights.values())
    all_params = sum(w.numel() for w in weights.values())
    return {
        "layers": per_layer,
        "sparsity_pruned_layers": zeros / total if total else 0.0,
        "sparsity_all_parameters": all_zeros / all_params if all_params else 0.0,
        "nonzero_where_mask_prunes": violations,
    }

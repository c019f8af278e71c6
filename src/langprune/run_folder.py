"""A run folder: the pruned checkpoint, its masks and ``report.json``, written atomically.

Everything is written into ``<out>.partial`` and renamed at the end, so a
failed or interrupted run never leaves a half-written folder behind. Masks
live in ``masks/``: one safetensors shard per pruned block (boolean, one
tensor per layer, True = kept) and ``index.json`` mapping layers to shards.
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

MASKS_DIR = "masks"
MASKS_INDEX = "index.json"
REPORT_FILE = "report.json"
EVAL_FILE = "eval.json"
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


class RunWriter:
    """A run folder being written: everything goes into ``<out>.partial``, renamed into place by ``finish``.

    Masks are streamed: ``add_masks`` writes each block's masks to their own
    safetensors shard under ``masks/`` at once, so pruning a 70B model never
    holds its masks in memory. Leaving the ``with`` block without ``finish``
    (an error, an interrupt) removes the partial folder.
    """

    def __init__(self, out: Path, overwrite: bool = False):
        check_out(out, overwrite)
        self.out, self.partial = Path(out), Path(out).with_name(Path(out).name + ".partial")
        shutil.rmtree(self.partial, ignore_errors=True)
        (self.partial / MASKS_DIR).mkdir(parents=True)
        self.index: dict[str, str] = {}

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)

    def add_masks(self, model, masks: dict[str, torch.Tensor]) -> None:
        """Store keep masks (True = kept) in each parameter's own layout (Conv1D weights are (in, out))."""
        if not masks:
            return
        modules = dict(model.named_modules())
        shard = f"{len(set(self.index.values())):05d}.safetensors"
        stored = {name: (keep.T if is_conv1d(modules[name]) else keep).contiguous() for name, keep in masks.items()}
        save_file(stored, str(self.partial / MASKS_DIR / shard))
        self.index.update({name: shard for name in masks})

    def finish(self, model, tokenizer, report: dict) -> Path:
        model.save_pretrained(self.partial)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.partial)
        (self.partial / MASKS_DIR / MASKS_INDEX).write_text(json.dumps(self.index, indent=1) + "\n")
        (self.partial / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if self.out.exists():
            shutil.rmtree(self.out)
        self.partial.rename(self.out)
        return self.out


def save_run(out: Path, model, tokenizer, masks: dict[str, torch.Tensor], report: dict, overwrite: bool = False) -> Path:
    """Write checkpoint, masks held in memory and report in one go."""
    with RunWriter(out, overwrite) as run:
        run.add_masks(model, masks)
        return run.finish(model, tokenizer, report)


def load_masks(run: Path) -> dict[str, torch.Tensor]:
    """All keep masks of a run folder, by layer name."""
    folder = Path(run) / MASKS_DIR
    index = folder / MASKS_INDEX
    if not index.is_file():
        raise UserError(f"{run} has no {MASKS_DIR}/{MASKS_INDEX}: it was not written by langprune prune")
    masks = {}
    for shard in sorted(set(json.loads(index.read_text()).values())):
        masks.update(load_file(str(folder / shard)))
    return masks


def load_report(run: Path) -> dict:
    path = Path(run) / REPORT_FILE
    if not path.is_file():
        raise UserError(f"{run} is not a langprune run folder: it has no {REPORT_FILE}")
    return json.loads(path.read_text(encoding="utf-8"))


def remeasure(run: Path) -> dict:
    """Re-measure sparsity from the saved weights and check them against the saved masks."""
    from safetensors import safe_open

    run = Path(run)
    masks = load_masks(run)
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


def write_json_atomic(path: Path, value: dict) -> Path:
    """Write JSON to a temporary name beside ``path``, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def load_eval(where: Path) -> dict:
    """An ``eval.json``, given itself or the folder holding it."""
    path = Path(where) / EVAL_FILE if Path(where).is_dir() else Path(where)
    if not path.is_file():
        raise UserError(f"{where} has no {EVAL_FILE}: run `langprune eval` on it first")
    return json.loads(path.read_text(encoding="utf-8"))

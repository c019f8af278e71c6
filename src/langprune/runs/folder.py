"""A run folder: the pruned checkpoint, its masks and ``report.json``, written atomically.

Everything is written into ``<out>.partial`` and renamed at the end, so a
failed or interrupted run never leaves a half-written folder behind. Masks
live in ``masks/``: one safetensors shard per pruned block (boolean, one
tensor per layer, True = kept) and ``index.json`` mapping layers to shards.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..compress.result import LayerChange, measure_sparsity
from ..engine.architecture import is_conv1d
from ..errors import UserError
from ..storage import disk_error, partial_path, read_json_object, replace_folder, write_json_atomic

MASKS_DIR = "masks"
MASKS_INDEX = "index.json"
REPORT_FILE = "report.json"
EVAL_FILE = "eval.json"


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output folder that cannot or must not be written."""
    out = Path(out)
    resolved = out.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents or resolved.parent == resolved:
        raise UserError(f"--out {out} is the current folder or one above it: name a new folder, e.g. --out runs/name")
    for parent in out.absolute().parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"--out {out} lies under {parent}, which is a file: choose another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a run folder: choose another --out")
    if out.exists() and not overwrite:
        raise UserError(f"output folder {out} already exists: choose another --out or pass --overwrite")


class RunWriter:
    """A run folder being written: everything goes into a uniquely named partial folder, renamed by ``finish``.

    Masks are streamed: ``add_block`` writes each block's masks to their own
    safetensors shard under ``masks/`` at once, so pruning a 70B model never
    holds its masks in memory. Leaving the ``with`` block without ``finish``
    (an error, an interrupt) removes this writer's partial folder and no
    other (a concurrent writer's partial folder has another name). A full
    disk or a read-only file system is a one-line error, not a traceback.
    """

    def __init__(self, out: Path, overwrite: bool = False):
        check_out(out, overwrite)
        self.out, self.overwrite = Path(out), overwrite
        try:
            self.partial = partial_path(self.out)
            (self.partial / MASKS_DIR).mkdir(parents=True)
        except OSError as exc:
            raise disk_error(exc, self.out) from None
        self.index: dict[str, str] = {}

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self.partial.exists():  # not finished: an error or an interrupt
            shutil.rmtree(self.partial, ignore_errors=True)

    def add_block(self, model, changes: dict[str, LayerChange]) -> None:
        """Store a block's keep masks (True = kept) in each parameter's own layout (Conv1D weights are (in, out))."""
        masks = {name: change.keep for name, change in changes.items() if change.keep is not None}
        if not masks:
            return
        modules = dict(model.named_modules())
        shard = f"{len(set(self.index.values())):05d}.safetensors"
        stored = {name: (keep.T if is_conv1d(modules[name]) else keep).contiguous().cpu() for name, keep in masks.items()}
        with _disk_errors(self.out):
            save_file(stored, str(self.partial / MASKS_DIR / shard))
        self.index.update({name: shard for name in masks})

    def finish(self, model, tokenizer, report: dict) -> Path:
        """Write checkpoint, mask index and report, then swap the folder into place (the old one goes last)."""
        with _disk_errors(self.out):
            model.save_pretrained(self.partial)
            if tokenizer is not None:
                tokenizer.save_pretrained(self.partial)
            (self.partial / MASKS_DIR / MASKS_INDEX).write_text(json.dumps(self.index, indent=1) + "\n")
            write_json_atomic(self.partial / REPORT_FILE, report)
        check_out(self.out, self.overwrite)  # nobody created it meanwhile
        return replace_folder(self.partial, self.out)


@contextmanager
def _disk_errors(where: Path):
    """Turn a full disk, read-only file system or missing permission while writing into a one-line error.

    safetensors reports its own write failures as SafetensorError with the OS message inside.
    """
    try:
        yield
    except OSError as exc:
        error = disk_error(exc, where)
        if error is exc:
            raise
        raise error from None
    except SafetensorError as exc:
        if "No space" not in str(exc):
            raise
        raise UserError(f"cannot write {where}: no space left on the device; free space or choose another location") from None


def save_run(out: Path, model, tokenizer, changes: dict[str, LayerChange], report: dict, overwrite: bool = False) -> Path:
    """Write checkpoint, changes held in memory and report in one go."""
    with RunWriter(out, overwrite) as run:
        run.add_block(model, changes)
        return run.finish(model, tokenizer, report)


def load_masks(run: Path) -> dict[str, torch.Tensor]:
    """All keep masks of a run folder, by layer name."""
    folder = Path(run) / MASKS_DIR
    index = folder / MASKS_INDEX
    if not index.is_file():
        raise UserError(f"{run} has no {MASKS_DIR}/{MASKS_INDEX}: it was not written by langprune prune")
    shards = read_json_object(index, "mask index")
    masks = {}
    for shard in sorted(set(shards.values())):
        try:
            masks.update(load_file(str(folder / shard)))
        except (SafetensorError, OSError) as exc:
            raise UserError(f"mask shard {folder / shard} is missing or damaged ({exc}): prune the run again") from None
    return masks


def load_report(run: Path) -> dict:
    path = Path(run) / REPORT_FILE
    if not path.is_file():
        raise UserError(f"{run} is not a langprune run folder: it has no {REPORT_FILE}")
    return read_json_object(path, "run report")


def remeasure(run: Path) -> dict:
    """Re-measure sparsity from the saved weights and check them against the saved masks."""
    run = Path(run)
    masks = load_masks(run)
    weights = {}
    for shard in sorted(run.glob("model*.safetensors")):
        try:
            with safe_open(str(shard), framework="pt") as f:
                for key in f.keys():
                    weights[key] = f.get_tensor(key)
        except (SafetensorError, OSError) as exc:
            raise UserError(f"checkpoint file {shard} is damaged ({exc}): prune the run again") from None
    layers = {}
    for name in masks:
        if f"{name}.weight" not in weights:
            raise UserError(f"{run}: mask {name} has no matching weight in the checkpoint")
        layers[name] = weights[f"{name}.weight"]
    return measure_sparsity(layers, weights.values(), masks)


def load_eval(where: Path) -> dict:
    """An ``eval.json``, given itself or the folder holding it."""
    path = Path(where) / EVAL_FILE if Path(where).is_dir() else Path(where)
    if not path.is_file():
        raise UserError(f"{where} has no {EVAL_FILE}: run `langprune eval` on it first")
    value = read_json_object(path, "evaluation file")
    if not isinstance(value.get("tasks"), dict):
        raise UserError(f"{path} has no \"tasks\" object: it is not an eval.json written by langprune eval")
    return value

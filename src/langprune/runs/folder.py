"""A run folder: the pruned checkpoint, its masks and ``report.json``, written atomically.

Everything is written into ``<out>.partial-<pid>-<random>`` and renamed at the end, so a
failed or interrupted run never leaves a half-written folder behind. The
checkpoint is sharded (one shard per decoder block, one for the rest, and
``model.safetensors.index.json``), in the source's dtype. Masks live in
``masks/``: one safetensors shard per pruned block, one bit-packed uint8
tensor per layer (True = kept; the shapes are in the shard's metadata) and
``index.json`` mapping layers to shards; ``load_masks`` unpacks them.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..compress.quantization import QuantSpec
from ..compress.result import LayerChange, SparsityTally
from ..compress.sparsity import Sparsity
from ..engine.architecture import is_conv1d
from ..engine.placement import placement_of
from ..errors import UserError
from ..storage import (
    disk_error,
    partial_folder,
    read_json_object,
    replace_folder,
    umask_permissions,
    write_json_atomic,
)
from . import quantized
from .card import write_card
from .recipe import RECIPE_FILE, recipe_text

MASKS_DIR = "masks"
MASKS_INDEX = "index.json"
REPORT_FILE = "report.json"
EVAL_FILE = "eval.json"
WEIGHTS_INDEX = "model.safetensors.index.json"
PACKED = "langprune_packed_shapes"  # mask shard metadata: the unpacked shape of each bit-packed mask


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

    Everything is streamed block by block: ``add_block`` writes a block's
    keep masks (bit-packed) and its weights, each to their own safetensors
    shard, as soon as the block is pruned and while it is still on the
    execution device, so a 70B model never holds its masks or a second copy
    of itself in memory, and an offloaded block can be dropped at once.
    Weights are written in the source checkpoint's dtype: layers whose
    surviving weights were not rewritten are the source's own weights with
    the mask applied, exactly, whatever dtype the model computed in.
    ``finish`` copies the tensors outside the blocks (embeddings, norms,
    head) byte for byte from the source files, in chunks. Leaving the
    ``with`` block without ``finish`` (an error, an interrupt) removes this
    writer's partial folder and no other (a concurrent writer's partial
    folder has another name); one left by a writer killed outright (kill -9,
    power loss) is removed by the next writer of the same folder, or by
    ``langprune clean``. Files get the permissions the umask gives, like any
    other file. A full disk or a read-only file system is a one-line error,
    not a traceback.
    """

    def __init__(self, out: Path, overwrite: bool = False):
        check_out(out, overwrite)
        self.out, self.overwrite = Path(out), overwrite
        self._writing = ExitStack()
        try:
            self.partial = self._writing.enter_context(partial_folder(self.out))
            (self.partial / MASKS_DIR).mkdir(parents=True)
        except OSError as exc:
            self._writing.close()
            raise disk_error(exc, self.out) from None
        self.index: dict[str, str] = {}
        self.weight_map: dict[str, str] = {}
        self.total_size = 0
        self.quantized: set[str] = set()  # layers stored in the compressed-tensors format
        self.quant_spec: QuantSpec | None = None
        self._placement = None  # the model's, once a block was added: its I/O thread may be writing

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._placement is not None and self.partial.exists():
            with suppress(Exception):  # the error that brought us here is the one to report
                self._placement.drain()  # no write may still be going into the folder removed next
        if self.partial.exists():  # not finished: an error or an interrupt
            shutil.rmtree(self.partial, ignore_errors=True)
        self._writing.close()

    def add_block(self, model, index: int, changes: dict[str, LayerChange]) -> None:
        """Store block ``index``'s masks and weights; the block must be on its device (inside the prune loop)."""
        placement = placement_of(model)
        block, prefix = placement.blocks[index], placement.block_prefix(index)
        modules = {f"{prefix}.{name}" if name else prefix: module for name, module in block.named_modules()}
        layouts = {
            name: (change.keep.T if is_conv1d(modules[name]) else change.keep)
            for name, change in changes.items()
            if change.keep is not None
        }
        self._placement = placement
        if layouts:
            shard = f"{len(set(self.index.values())):05d}.safetensors"
            packed = {name: pack_bits(keep).cpu() for name, keep in layouts.items()}
            shapes = json.dumps({name: list(keep.shape) for name, keep in layouts.items()})
            self.index.update({name: shard for name in layouts})
        tensors = {}
        for name, tensor in block.state_dict().items():
            full = f"{prefix}.{name}"
            layer = full.removesuffix(".weight")
            change = changes.get(layer) if full.endswith(".weight") else None
            if change is not None and change.scale is not None:
                spec = QuantSpec.parse(change.quantization["spec"])
                # Scales in the dtype the sweep rounded them to, so the saved grid is the in-memory one exactly.
                tensors.update(quantized.compressed_tensors(layer, tensor, change, spec, placement.save_dtype))
                self.quantized.add(layer)
                self.quant_spec = spec
                continue
            tensors[full] = _saved_tensor(placement, full, tensor, change, layouts.get(layer))
        path = self.partial / f"model-block-{index:05d}.safetensors"

        def write() -> None:  # on the I/O thread with disk offloading, while the next block computes
            if layouts:
                with _disk_errors(self.out):
                    save_file(packed, str(self.partial / MASKS_DIR / shard), metadata={PACKED: shapes})
            self._save_weights(tensors, path)
            placement.saved(path)

        placement.behind(write)

    def _save_weights(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        with _disk_errors(self.out):
            save_file(tensors, str(path), metadata={"format": "pt"})
        self.weight_map.update({name: path.name for name in tensors})
        self.total_size += sum(t.numel() * t.element_size() for t in tensors.values())

    def finish(self, model, tokenizer, report: dict) -> Path:
        """Write what lies outside the blocks, the index, config, tokenizer and report; swap the folder into place."""
        placement = placement_of(model)
        placement.drain()  # every block written
        copied, held, seen = {}, {}, set()
        for name, tensor in model.state_dict(keep_vars=True).items():
            if name.startswith(placement.blocks_name + ".") or id(tensor) in seen:
                continue  # blocks are written already; a tied head is its embedding
            seen.add(id(tensor))
            key = placement.key(name)
            if key is not None:
                copied[name] = key
            else:
                held[name] = _cast(tensor.detach(), placement.save_dtype).cpu().contiguous()
        with _disk_errors(self.out):
            if copied:
                path = self.partial / "model-outside-blocks.safetensors"
                placement.checkpoint.copy_to(path, copied)
                self.weight_map.update({name: path.name for name in copied})
                entries = placement.checkpoint.entries
                self.total_size += sum(entries[key].end - entries[key].begin for key in copied.values())
            if held:
                self._save_weights(held, self.partial / "model-outside-blocks-memory.safetensors")
            write_json_atomic(
                self.partial / WEIGHTS_INDEX,
                {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))},
            )
            config = copy.deepcopy(model.config)
            config.dtype = placement.save_dtype
            config.architectures = [type(model).__name__]
            scheme = quantized.quantization_config(self.quant_spec, model, self.quantized) if self.quantized else None
            sparsity = None
            if report["method"] != "none":
                pruned = set(report["layers"])
                structure = Sparsity.parse(report["sparsity"])
                sparsity = quantized.sparsity_config(
                    model,
                    pruned,
                    str(structure) if structure.structured else "unstructured",
                    report["sparsity_all_parameters"],
                )
            if scheme or sparsity:
                config.quantization_config = quantized.compression_config(scheme, sparsity)
            config.save_pretrained(self.partial)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(self.partial)
            if tokenizer is not None:
                tokenizer.save_pretrained(self.partial)
            (self.partial / MASKS_DIR / MASKS_INDEX).write_text(json.dumps(self.index, indent=1) + "\n")
            write_json_atomic(self.partial / REPORT_FILE, report)
            write_card(self.partial, report)
            recipe = recipe_text(report, model)
            if recipe is not None:
                (self.partial / RECIPE_FILE).write_text(recipe, encoding="utf-8")
            umask_permissions(self.partial)
        check_out(self.out, self.overwrite)  # nobody created it meanwhile
        final = replace_folder(self.partial, self.out)
        placement.saved_folder(final)
        return final


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Floating tensors to ``dtype``; integer and boolean buffers as they are."""
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _saved_tensor(
    placement, name: str, tensor: torch.Tensor, change: LayerChange | None, keep: torch.Tensor | None
) -> torch.Tensor:
    """What a block tensor is saved as: in the source's dtype, masked source weights when only a mask was applied."""
    key = placement.key(name)
    entry = placement.checkpoint.entries[key] if key is not None else None
    target = entry.torch_dtype if entry is not None and entry.torch_dtype is not None else placement.save_dtype
    if tensor.dtype == target or key is None or (change is not None and change.weights_updated):
        return _cast(tensor, target).cpu().contiguous()
    source = placement.checkpoint.read(key)
    if keep is not None:
        source[~keep.cpu()] = 0
    return source.contiguous()


def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as uint8 bytes, 8 values per byte, most significant bit first (numpy's packbits order)."""
    flat = keep.reshape(-1)
    if flat.numel() % 8:
        flat = torch.cat([flat, flat.new_zeros(8 - flat.numel() % 8)])
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8).to(torch.uint8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """The boolean tensor of ``shape`` that ``pack_bits`` packed."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8)
    numel = math.prod(shape)
    return ((packed.unsqueeze(1) >> shifts) & 1).bool().reshape(-1)[:numel].reshape(shape)


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
        raise UserError(
            f"cannot write {where}: no space left on the device; free space or choose another location"
        ) from None


class SavedMasks:
    """A run's keep masks, read one shard (one block) at a time: a 70B model's masks never sit in memory together."""

    def __init__(self, run: Path):
        self.run, self.folder = Path(run), Path(run) / MASKS_DIR
        index = self.folder / MASKS_INDEX
        if not index.is_file():
            raise UserError(f"{run} has no {MASKS_DIR}/{MASKS_INDEX}: it was not written by langprune prune")
        self.shards: dict[str, str] = read_json_object(index, "mask index")

    @property
    def names(self) -> list[str]:
        return list(self.shards)

    def by_shard(self) -> list[list[str]]:
        """Layer names grouped by the shard that holds them, in index order."""
        groups: dict[str, list[str]] = {}
        for name, shard in self.shards.items():
            groups.setdefault(shard, []).append(name)
        return list(groups.values())

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Boolean keep masks of ``names`` in the layout of their weights, opening each shard once."""
        masks = {}
        for shard_name in dict.fromkeys(self.shards[name] for name in names):
            shard = self.folder / shard_name
            try:
                with safe_open(str(shard), framework="pt") as handle:
                    shapes = json.loads((handle.metadata() or {}).get(PACKED, "null"))
                    for name in (n for n in names if self.shards[n] == shard_name):
                        stored = handle.get_tensor(name)
                        masks[name] = (
                            unpack_bits(stored, shapes[name]) if shapes is not None else stored
                        )  # old runs: bool
            except (SafetensorError, OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise UserError(f"mask shard {shard} is missing or damaged ({exc}): prune the run again") from None
        return masks


def load_masks(run: Path) -> dict[str, torch.Tensor]:
    """All keep masks of a run folder, by layer name, as boolean tensors in each weight's layout."""
    saved = SavedMasks(run)
    return saved.read(saved.names)


def load_report(run: Path) -> dict:
    path = Path(run) / REPORT_FILE
    if not path.is_file():
        raise UserError(f"{run} is not a langprune run folder: it has no {REPORT_FILE}")
    return read_json_object(path, "run report")


def remeasure(run: Path) -> dict:
    """Re-measure sparsity from the saved weights, one tensor at a time, and check them against the saved masks."""
    run = Path(run)
    masks = load_masks(run)
    quant = quantized.saved_spec(run)
    tally, found = SparsityTally(), set()
    for shard in sorted(run.glob("model*.safetensors")):
        try:
            with safe_open(str(shard), framework="pt") as handle:
                # Quantized layers are measured on their dequantized weights.
                for key, tensor in quantized.shard_tensors(handle, quant):
                    layer = key.removesuffix(".weight")
                    if key.endswith(".weight") and layer in masks:
                        tally.layer(layer, tensor, masks[layer])
                        found.add(layer)
                    tally.tensors([tensor])
        except (SafetensorError, OSError) as exc:
            raise UserError(f"checkpoint file {shard} is damaged ({exc}): prune the run again") from None
    missing = sorted(set(masks) - found)
    if missing:
        raise UserError(f"{run}: mask {missing[0]} has no matching weight in the checkpoint")
    summary = tally.summary()
    summary.setdefault("nonzero_where_mask_prunes", 0)
    return summary


def load_eval(where: Path) -> dict:
    """An ``eval.json``, given itself or the folder holding it."""
    path = Path(where) / EVAL_FILE if Path(where).is_dir() else Path(where)
    if not path.is_file():
        raise UserError(f"{where} has no {EVAL_FILE}: run `langprune eval` on it first")
    value = read_json_object(path, "evaluation file")
    if not isinstance(value.get("tasks"), dict):
        raise UserError(f'{path} has no "tasks" object: it is not an eval.json written by langprune eval')
    return value

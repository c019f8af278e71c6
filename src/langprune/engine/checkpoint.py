"""A checkpoint's safetensors files, indexed from their headers and read one tensor (or one chunk) at a time.

Offloading to disk reads each decoder block from here only while it runs,
and the run writer copies the tensors pruning never touches (embeddings,
norms, the head) straight from here into the new checkpoint, in chunks: the
model's own copy of a 640 MiB embedding is never read, so memory does not
jump at the end of a run. The header layout (8-byte little-endian length,
JSON with dtype, shape and byte offsets per tensor, then the raw data) is
the published safetensors format; tensors themselves are read with
safetensors' ``safe_open``.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import UserError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
CHUNK_BYTES = 64 << 20  # copies and zero counts read this much at a time


@dataclass(frozen=True)
class Entry:
    """Where one tensor's bytes lie: its file, safetensors dtype name, shape and absolute byte range."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return DTYPES.get(self.dtype)


def read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the offset where its data starts."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > os.path.getsize(path):
                raise ValueError("header longer than the file")
            return json.loads(handle.read(length)), 8 + length
    except (OSError, ValueError, struct.error) as exc:
        raise UserError(f"{path} is not a readable safetensors file ({exc}); re-download or re-save it") from None


class Checkpoint:
    """Every tensor of a folder's ``*.safetensors`` files by key; later files override earlier ones (``add_file``)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.entries: dict[str, Entry] = {}
        for path in sorted(self.folder.glob("*.safetensors")):
            self.add_file(path)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def add_file(self, path: Path) -> None:
        header, start = read_header(Path(path))
        for key, info in header.items():
            if key != "__metadata__":
                begin, end = info["data_offsets"]
                self.entries[key] = Entry(Path(path), info["dtype"], tuple(info["shape"]), start + begin, start + end)

    def key_for(self, name: str, prefix: str = "") -> str | None:
        """The key holding a model tensor, allowing for a checkpoint saved with or without the backbone's prefix."""
        candidates = [name]
        if prefix:
            candidates += [name.removeprefix(prefix + "."), f"{prefix}.{name}"]
        return next((key for key in candidates if key in self.entries), None)

    def dtype(self) -> torch.dtype | None:
        """The floating dtype holding most of the bytes (the checkpoint's own dtype)."""
        sizes: dict[torch.dtype, int] = {}
        for entry in self.entries.values():
            if entry.torch_dtype is not None and entry.torch_dtype.is_floating_point:
                sizes[entry.torch_dtype] = sizes.get(entry.torch_dtype, 0) + entry.end - entry.begin
        return max(sizes, key=sizes.get) if sizes else None

    def floating_numel(self) -> int:
        return sum(
            e.numel for e in self.entries.values() if e.torch_dtype is not None and e.torch_dtype.is_floating_point
        )

    def read(self, key: str, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """One tensor, in ``dtype`` on ``device``."""
        return self.read_many([key], dtype, device)[key]

    def read_many(
        self, keys: list[str], dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
    ) -> dict[str, torch.Tensor]:
        """Several tensors (a block's), opening each file once; it is mapped only while it is read."""
        by_file: dict[Path, list[str]] = {}
        for key in keys:
            by_file.setdefault(self.entries[key].file, []).append(key)
        tensors = {}
        for path, file_keys in by_file.items():
            try:
                with safe_open(str(path), framework="pt") as handle:
                    for key in file_keys:
                        tensor = handle.get_tensor(key)
                        tensors[key] = tensor.to(device=device, dtype=dtype or tensor.dtype)
            except (SafetensorError, OSError) as exc:
                raise UserError(f"cannot read {file_keys[0]} from {path} ({exc}): the checkpoint is damaged") from None
        return tensors

    def _chunks(self, key: str):
        entry = self.entries[key]
        with open(entry.file, "rb") as handle:
            handle.seek(entry.begin)
            left = entry.end - entry.begin
            while left:
                data = handle.read(min(CHUNK_BYTES, left))
                if not data:
                    raise UserError(f"{entry.file} ends inside {key}: the checkpoint is truncated; re-download it")
                left -= len(data)
                yield data

    def count_zeros(self, key: str) -> int:
        """Zeros of one tensor, counted chunk by chunk from the file (never the whole tensor in memory).

        Chunks hold whole elements: CHUNK_BYTES is a multiple of every element size.
        """
        entry, zeros = self.entries[key], 0
        for data in self._chunks(key):
            values = torch.frombuffer(bytearray(data), dtype=entry.torch_dtype)
            zeros += values.numel() - int(torch.count_nonzero(values))
        return zeros

    def copy_to(self, path: Path, names: dict[str, str]) -> None:
        """Write a safetensors file holding ``{new name: key}`` tensors, copied byte for byte in chunks."""
        header, offset = {}, 0
        for name, key in names.items():
            entry = self.entries[key]
            size = entry.end - entry.begin
            header[name] = {"dtype": entry.dtype, "shape": list(entry.shape), "data_offsets": [offset, offset + size]}
            offset += size
        header["__metadata__"] = {"format": "pt"}
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
        with open(path, "wb") as out:
            out.write(struct.pack("<Q", len(encoded)))
            out.write(encoded)
            for key in names.values():
                for data in self._chunks(key):
                    out.write(data)

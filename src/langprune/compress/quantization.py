"""Integer weight quantization: the spec a user writes, and pure kernels for its grid.

A spec reads ``w<bits>[g<group>]`` with optional comma-separated flags:
``w4g128`` (4 bits, one scale per 128 inputs of a row, symmetric),
``w8`` (one scale per output row), ``w4g128,asym`` (with a zero point),
``w4g128,actorder`` (GPTQ's static activation order: columns are visited
by decreasing Hessian diagonal, groups keep their place so the checkpoint
needs no index). The grid is the one GPTQ and the compressed-tensors format
share: a code q in [0, 2^bits - 1] and zero point z per group, the weight
being scale · (q - z); symmetric grids fix z = 2^(bits-1), i.e. signed codes
with a zero point of 0 in compressed-tensors' terms. Zero is always on the
grid (the range is widened to include it), so pruned weights stay zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import UserError

MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class QuantSpec:
    bits: int
    group_size: int | None = None  # None: one scale per output row (per channel)
    symmetric: bool = True
    act_order: bool = False

    def __str__(self) -> str:
        flags = ([] if self.symmetric else ["asym"]) + (["actorder"] if self.act_order else [])
        return ",".join([f"w{self.bits}" + (f"g{self.group_size}" if self.group_size else "")] + flags)

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def record(self) -> dict:
        """The JSON-ready description the report keeps per quantized layer."""
        return {
            "bits": self.bits,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
            "act_order": self.act_order,
            "spec": str(self),
        }

    @classmethod
    def parse(cls, text: str | QuantSpec | None) -> QuantSpec | None:
        if text is None or isinstance(text, QuantSpec):
            return text
        parts = [part.strip().lower() for part in str(text).split(",")]
        match = re.fullmatch(r"w(\d+)(?:g(\d+))?", parts[0])
        if not match:
            raise UserError(
                f"unknown quantization spec {text!r}: write w<bits>[g<group>] with optional ,asym and "
                ",actorder, e.g. w4g128 or w8"
            )
        bits = int(match.group(1))
        if not MIN_BITS <= bits <= MAX_BITS:
            raise UserError(f"quantization spec {text!r}: {bits} bits is outside {MIN_BITS}-{MAX_BITS}")
        group = int(match.group(2)) if match.group(2) else None
        if group is not None and group < 1:
            raise UserError(f"quantization spec {text!r}: the group size must be a positive number of inputs")
        unknown = [flag for flag in parts[1:] if flag not in ("asym", "sym", "actorder")]
        if unknown:
            raise UserError(f"quantization spec {text!r}: unknown flag {unknown[0]!r}; flags are asym and actorder")
        return cls(bits, group, symmetric="asym" not in parts[1:], act_order="actorder" in parts[1:])

    def check_width(self, layer: str, width: int) -> None:
        """Refuse a group size that does not divide a layer's inputs (from shapes, before any work)."""
        if self.group_size and width % self.group_size:
            raise UserError(
                f"quantization group size {self.group_size} does not divide the {width} inputs of "
                f"{layer}: choose a group that divides it (e.g. g{_divisor_near(width, self.group_size)}) "
                "or per-row scales (no g)"
            )


def _divisor_near(width: int, wanted: int) -> int:
    return min((d for d in range(1, width + 1) if width % d == 0), key=lambda d: (abs(d - wanted), d))


def grid_params(columns_t: torch.Tensor, spec: QuantSpec, scale_dtype: torch.dtype = torch.float32):
    """Scale and zero point per row for a group of columns held transposed, (columns, rows) → two (rows,) tensors.

    The range is [min(x, 0), max(x, 0)] (symmetric: ±max|x|); an all-zero row
    gets the range [-1, 1]. The scale is rounded to ``scale_dtype`` (what the
    checkpoint stores) before use, so the in-memory weights equal the saved
    ones.
    """
    zero = torch.zeros((), dtype=columns_t.dtype, device=columns_t.device)
    low = torch.minimum(columns_t.amin(0), zero)
    high = torch.maximum(columns_t.amax(0), zero)
    if spec.symmetric:
        high = torch.maximum(low.abs(), high)
        low = -high
    empty = (low == 0) & (high == 0)
    low, high = torch.where(empty, -1.0, low), torch.where(empty, 1.0, high)
    scale = ((high - low) / spec.maxq).to(scale_dtype).to(columns_t.dtype)
    if spec.symmetric:
        zero_point = torch.full_like(scale, float((spec.maxq + 1) // 2))
    else:
        zero_point = torch.round(-low / scale).clamp(0, spec.maxq)
    return scale, zero_point


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, maxq: int) -> torch.Tensor:
    """Round ``x`` to the grid and map it back: scale · (clamp(round(x / scale) + z, 0, maxq) - z)."""
    codes = torch.clamp(torch.round(x / scale) + zero_point, 0, maxq)
    return scale * (codes - zero_point)


def group_grid(weight: torch.Tensor, spec: QuantSpec, scale_dtype: torch.dtype = torch.float32):
    """Scale and zero point of every group of a weight, each (rows, groups), from the weight as it is."""
    size = spec.group_size or weight.shape[1]
    params = [
        grid_params(weight[:, start : start + size].T, spec, scale_dtype) for start in range(0, weight.shape[1], size)
    ]
    return torch.stack([p[0] for p in params], 1), torch.stack([p[1] for p in params], 1)


def snap_to_grid(weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, maxq: int) -> torch.Tensor:
    """Round a whole weight to its per-group grid (scale and zero point (rows, groups) expanded along the columns)."""
    size = weight.shape[1] // scale.shape[1]
    return fake_quantize(weight, scale.repeat_interleave(size, 1), zero_point.repeat_interleave(size, 1), maxq)

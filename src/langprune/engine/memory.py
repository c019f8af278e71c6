"""Memory: handing what a block freed back to the operating system, and checks and edits that allocate no copy of a
matrix."""

from __future__ import annotations

import ctypes
import sys

import torch


def _load_libc():
    try:
        return ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
    except OSError:  # not glibc (e.g. musl): nothing to trim
        return None


_LIBC = _load_libc()


def return_freed_memory() -> None:
    """Give memory freed by a block's statistics and solves back to the OS.

    glibc keeps freed chunks in its arenas; without this, the next block's
    forward pass allocates beside them and the peak RSS creeps up by the size
    of the Hessians and solve buffers. Costs about a millisecond.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def all_finite(tensor: torch.Tensor, elements: int = 1 << 22) -> bool:
    """``torch.isfinite(tensor).all()`` a slice of rows at a time.

    The one-shot form allocates a boolean and a float temporary the size of
    the tensor (1.76 times a float32 Hessian of 14336² is 1.4 GB); slices of
    about ``elements`` entries keep the check's memory small.
    """
    if tensor.dim() < 2:
        return bool(torch.isfinite(tensor).all())
    step = max(1, elements // max(1, tensor[0].numel()))
    return all(bool(torch.isfinite(tensor[i : i + step]).all()) for i in range(0, tensor.shape[0], step))


def mirror_upper_(matrix: torch.Tensor, block: int = 256) -> torch.Tensor:
    """Copy a square matrix's strict upper triangle onto its strict lower one, in place, a strip of rows at a time.

    The one-shot form (``triu`` and its transpose added to the diagonal)
    allocates a second matrix: 822 MB for a 14336-wide Hessian. Here the
    largest temporary is one ``block``-sized diagonal tile. Works on any
    strided view: on ``matrix.mT`` it mirrors the lower triangle upwards.
    """
    n = matrix.shape[0]
    for start in range(0, n, block):
        end = min(start + block, n)
        tile = matrix[start:end, start:end]
        tile.copy_(tile.triu() + tile.triu(1).T)
        matrix[end:, start:end].copy_(matrix[start:end, end:].T)
    return matrix

"""Handing memory freed between blocks back to the operating system."""

from __future__ import annotations

import ctypes
import sys


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

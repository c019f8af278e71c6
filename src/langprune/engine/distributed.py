"""Data parallelism on torch.distributed: each process (rank) runs its share of the batches; statistics are summed.

Launched with ``torchrun --nproc-per-node N -m langprune prune ...`` (or
across nodes with torchrun's rendezvous), every rank loads the model, builds
the same calibration set from the same seed, and keeps every ``size``-th
batch starting at its rank. Blocks run on each rank's own device; before a
statistic is read (squared norms, Hessians, OWL's norms), its sums and token
counts are all-reduced in float64 or float32, so every rank holds the same
statistic and computes the same masks and updates. Block outputs never leave
their rank: only statistics cross the wire. Rank 0 alone writes the run
folder. Without torchrun (no ``WORLD_SIZE`` above 1 in the environment) a run
is one process and nothing here does anything.

Every collective goes through ``collective``, which turns a lost peer (a rank
that died, was killed or ran out of memory) into one ``error:`` line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

from ..errors import UserError

BACKENDS = ("auto", "gloo", "nccl")
BACKEND_HELP = "torch.distributed backend when launched with torchrun: auto (nccl on GPUs, gloo on CPU), gloo or nccl."
TIMEOUT = timedelta(hours=2)  # a rank may wait this long for a peer (rank 0 writing a 70B checkpoint)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run: a single process is rank 0 of 1."""

    rank: int = 0
    size: int = 1

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def leader(self) -> bool:
        """Rank 0: the one that writes files and talks to the user."""
        return self.rank == 0

    def share(self, items: list) -> list:
        """This rank's items: every ``size``-th from its rank on, so shares differ by at most one item."""
        return items[self.rank :: self.size]


def world() -> World:
    """The current world: from torch.distributed when a process group is up, else a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def backend_name() -> str | None:
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def launched() -> bool:
    """Whether torchrun started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def leader_process() -> bool:
    """Whether this process speaks for the run: rank 0 of torchrun's ranks, or a process started alone."""
    return not launched() or int(os.environ.get("RANK", "0")) == 0


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UserError(f"unknown distributed backend {backend!r}: use {', '.join(BACKENDS)}")


def choose_backend(backend: str, device: torch.device) -> str:
    """``auto``: NCCL when the ranks run on GPUs, gloo on CPUs; an unavailable backend is a user error."""
    import torch.distributed as dist

    check_backend(backend)
    chosen = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    available = {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available() and torch.cuda.is_available()}
    if not available[chosen]:
        raise UserError(
            f"the {chosen} backend is not available in this torch build or on this machine: "
            f"use --dist-backend {'gloo' if chosen == 'nccl' else 'nccl'}"
        )
    if chosen == "nccl" and device.type != "cuda":
        raise UserError("the nccl backend needs GPUs: use --device cuda, or --dist-backend gloo on CPUs")
    return chosen


def rank_device(device: torch.device) -> torch.device:
    """A GPU rank runs on the GPU its local rank names (torchrun's ``LOCAL_RANK``); a CPU rank on the CPU."""
    if device.type != "cuda" or not launched():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise UserError(
            f"local rank {local} has no GPU: {torch.cuda.device_count()} visible; start at most that many "
            "processes per node (--nproc-per-node)"
        )
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


@contextmanager
def session(backend: str, device: torch.device):
    """The process group for a run started by torchrun (set up here, torn down at the end); else nothing.

    A group already set up by the caller (a test, a user's own script) is used as it is and left alone.
    """
    import torch.distributed as dist

    if not launched() or dist.is_initialized():
        yield world()
        return
    chosen = choose_backend(backend, device)
    try:
        dist.init_process_group(chosen, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"could not join the other ranks ({_first_line(exc)}): check torchrun's rendezvous") from None
    rank = dist.get_rank()

    def stopped(signum, frame):
        # torchrun sends SIGTERM to the other ranks when one fails: clean up (no partial folder) and say why.
        raise UserError(f"rank {rank}: stopped by the launcher because another rank failed; nothing was written")

    previous = signal.signal(signal.SIGTERM, stopped) if threading.current_thread() is threading.main_thread() else None
    try:
        yield world()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        dist.destroy_process_group()


def _first_line(exc: BaseException) -> str:
    """The gist of a backend's error: its first sentence, without the source location gloo puts in front."""
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else ""
    return text.split(". ")[0] or type(exc).__name__


@contextmanager
def collective(what: str):
    """Around a collective: a peer that stopped becomes one user error on this rank, not a hang or a traceback."""
    try:
        yield
    except RuntimeError as exc:  # gloo and NCCL report a lost peer as RuntimeError (DistBackendError)
        rank = world().rank
        raise UserError(
            f"rank {rank}: another rank stopped while {what} ({_first_line(exc)}); nothing was written, rerun "
            "the command"
        ) from None


def all_reduce_sum_(tensor: torch.Tensor, what: str = "summing statistics") -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (float32 or wider stays as it is; a single process is a no-op)."""
    if not world().active:
        return tensor
    import torch.distributed as dist

    with collective(what):
        dist.all_reduce(tensor)
    return tensor


def sum_count(count: int, device: torch.device, what: str = "summing statistics") -> int:
    """An integer summed over the ranks."""
    if not world().active:
        return count
    value = torch.tensor([count], dtype=torch.int64, device=device)
    return int(all_reduce_sum_(value, what).item())


def gather_objects(value, what: str = "gathering results") -> list:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    current = world()
    if not current.active:
        return [value]
    import torch.distributed as dist

    out = [None] * current.size
    with collective(what):
        dist.all_gather_object(out, value)
    return out


def barrier(what: str) -> None:
    if world().active:
        import torch.distributed as dist

        with collective(what):
            dist.barrier()


def check_agreement(record: dict, what: str = "settings") -> None:
    """Refuse, on every rank, a run whose ranks were given different settings (compared as one JSON digest each)."""
    current = world()
    if not current.active:
        return
    text = json.dumps(record, sort_keys=True, default=str)
    digests = gather_objects((hashlib.sha256(text.encode()).hexdigest(), record), f"comparing {what}")
    differing = [rank for rank, (digest, _) in enumerate(digests) if digest != digests[0][0]]
    if differing:
        other = digests[differing[0]][1]
        keys = sorted(k for k in set(record) | set(other) if digests[0][1].get(k) != other.get(k))
        raise UserError(
            f"the ranks were given different {what} (rank {differing[0]} differs from rank 0 in "
            f"{', '.join(keys) or 'its values'}): start every rank with the same command"
        )


def check_share(count: int, what: str = "calibration batches") -> None:
    """Refuse more ranks than items to share: a rank without a batch would have nothing to contribute."""
    current = world()
    if current.active and count < current.size:
        raise UserError(
            f"{current.size} ranks but only {count} {what}: start at most {count} processes "
            "(--nproc-per-node), or give more --nsamples or a smaller --batch-size"
        )


def run_shared(items: list, compute: Callable[[object], dict]) -> dict:
    """``compute`` on this rank's share of ``items`` (each gives ``{index: result}``); every rank gets all results.

    Used by evaluation: the items are the batches a single process would run, in the same order and with the same
    members, so every result is bit for bit what one process computes, whichever rank computed it. A user error on
    any rank (NaN scores) is raised on every rank, so the ranks never leave their collectives out of step.
    """
    current = world()
    results: dict = {}
    error = None
    try:
        for item in current.share(items):
            results.update(compute(item))
    except UserError as exc:
        if not current.active:
            raise
        error = str(exc)
    if not current.active:
        return results
    gathered = gather_objects((results, error), "gathering evaluation results")
    errors = [message for _, message in gathered if message]
    if errors:
        raise UserError(errors[0])
    merged: dict = {}
    for part, _ in gathered:
        merged.update(part)
    return merged

"""Where langprune keeps things on disk, and how it writes them so that nobody sees half a file.

Every writer here follows one rule: build under a temporary name that no
other process can pick (``<name>.partial-<pid>-<random>``), then rename into
place. Writers of shared caches (converted models, corpora) also hold an
exclusive lock on ``<name>.lock`` while they build, so two processes asking
for the same cache entry do the work once and never race on a fixed name.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


def cache_dir() -> Path:
    """Root of langprune's caches: ``$LANGPRUNE_CACHE`` or ``~/.cache/langprune``."""
    return Path(os.environ.get("LANGPRUNE_CACHE", Path.home() / ".cache" / "langprune"))


def partial_path(target: Path) -> Path:
    """A fresh, unique temporary name beside ``target`` (not created)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{target.name}.partial-{os.getpid()}-", dir=target.parent)
    os.close(handle)
    os.unlink(name)
    return Path(name)


@contextmanager
def locked(target: Path):
    """Hold an exclusive lock on ``<target>.lock`` (blocking): one builder of a cache entry at a time."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def replace_folder(partial: Path, target: Path) -> Path:
    """Move a finished ``partial`` folder to ``target``, replacing an old one only once the new one is in place.

    The old folder is first renamed aside (one atomic rename), the new one
    renamed in, and only then is the old one deleted: a kill at any moment
    leaves either the old or the new folder at ``target``, never nothing.
    Writers racing to install the same entry each get their rename in turn
    (the last one wins); none fails and none sees a half-written folder.
    """
    target = Path(target)
    asides = []
    for _ in range(100):
        if target.exists():
            aside = partial_path(target.with_name(target.name + ".old"))
            try:
                target.rename(aside)
                asides.append(aside)
            except FileNotFoundError:  # another writer moved it first
                pass
        try:
            Path(partial).rename(target)
            break
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    else:
        raise RuntimeError(f"could not move {partial} to {target}: other writers kept replacing it")
    for aside in asides:
        shutil.rmtree(aside, ignore_errors=True)
    return target


def write_json_atomic(path: Path, value) -> Path:
    """Write JSON to a unique temporary name beside ``path``, then rename: readers never see half a file.

    NaN and infinity are refused (``allow_nan=False``): the caller must turn
    an undefined number into ``None`` and say why.
    """
    path = Path(path)
    text = json.dumps(value, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    partial = partial_path(path)
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise disk_error(exc, path) from None
    return path


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object from ``path``; one clear line when the file is missing, unreadable, corrupt or not an object."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}): the {what} is corrupt; write it again") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} holds a JSON {type(value).__name__}, not the object a {what} is; write it again")
    return value


def disk_error(exc: OSError, where: Path) -> Exception:
    """A user-facing error for file-system failures a user can fix (full disk, read-only, no permission)."""
    reasons = {
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EDQUOT: "disk quota exceeded",
        errno.ENOTDIR: "a parent of it is a file, not a folder",
    }
    if exc.errno in reasons:
        return UserError(f"cannot write {where}: {reasons[exc.errno]}; free space or choose another location")
    return exc

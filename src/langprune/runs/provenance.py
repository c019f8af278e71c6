"""Provenance: what produced a run (package versions, interpreter, platform, git commit, command line)."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("langprune", "torch", "transformers", "safetensors", "accelerate", "compressed-tensors", "gguf", "numpy")


def provenance() -> dict:
    """Versions, interpreter, platform and the git commit of the langprune source, if any."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": commit,
        "command": sys.argv,
    }

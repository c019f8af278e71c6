"""Python source code: the standard library of the running interpreter.

The translation-feature paper pushes BLOOM away from programming-language
features with a code set (Z in Eq. 4); the interpreter's own standard library
is real, licensed (PSF) Python that every machine has. Tests, site-packages
and generated files are left out; a unit is one module, keyed by its path.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from .corpus import Corpus, Unit
from .sources import Interpreter

SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}
MAX_BYTES = 200_000  # very large generated modules (e.g. unicode tables) are not representative code


class PythonCode(Corpus):
    name = "python-code"
    description = "Python standard library of the running interpreter, one unit per module"
    kind = "code"
    languages = ("code",)
    source = Interpreter()
    licence = "PSF"

    def root(self) -> Path:
        return Path(sysconfig.get_paths()["stdlib"])

    def fetched(self) -> bool:
        return self.root().is_dir()

    def fetch(self, report=None, received=None) -> Path:
        return self.root()

    def present_languages(self) -> list[str]:
        return ["code"]

    def read_units(self, language: str) -> list[Unit]:
        root = self.root()
        units = []
        for path in sorted(root.rglob("*.py")):
            relative = path.relative_to(root)
            if SKIP_PARTS & set(relative.parts) or path.stat().st_size > MAX_BYTES:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                units.append(Unit(relative.as_posix(), text))
        return units

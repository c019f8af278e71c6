"""LibreOffice help pages from Debian, parallel English-to-X by paragraph id.

Every language package ships the same HTML files under
``usr/share/libreoffice/help/<lang>/text/``, and each heading or paragraph
carries an id (``hd_id...``, ``par_id...``) that is the same in every
language, so a unit's key is ``<file>#<id>``. Segments left untranslated
(identical to the English one) are dropped at extraction; pairs that look
stale (different numbers on the two sides, or wildly different lengths) are
dropped when pairs are read.
"""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

from .corpus import Corpus, Unit, write_json
from .sources import DebianPackages, deb_extract

# language code -> (Debian package suffix, folder under help/)
PACKAGES = {
    "en": ("en-us", "en-US"),
    "de": ("de", "de"),
    "es": ("es", "es"),
    "fr": ("fr", "fr"),
    "ru": ("ru", "ru"),
    "ja": ("ja", "ja"),
    "el": ("el", "el"),
    "tr": ("tr", "tr"),
    "vi": ("vi", "vi"),
    "zh": ("zh-cn", "zh-CN"),
    "hi": ("hi", "hi"),
}
SEGMENT_ID = re.compile(r"(par|hd)_id\d+")
DIGITS = re.compile(r"\d+")
MAX_LENGTH_RATIO = 4.0


class _Segments(HTMLParser):
    """Text of every element whose id is a help segment id, keyed by id (with a counter for repeats)."""

    def __init__(self):
        super().__init__()
        self.segments: list[tuple[str, str]] = []
        self.seen: dict[str, int] = {}
        self.open: tuple[str, str, int] | None = None  # (tag, id, nesting depth of that tag)
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if self.open is not None:
            if tag == self.open[0]:
                self.open = (tag, self.open[1], self.open[2] + 1)
            return
        seg = dict(attrs).get("id") or ""
        if SEGMENT_ID.fullmatch(seg):
            self.open, self.parts = (tag, seg, 0), []

    def handle_endtag(self, tag):
        if self.open is None or tag != self.open[0]:
            return
        if self.open[2]:
            self.open = (tag, self.open[1], self.open[2] - 1)
            return
        text = " ".join("".join(self.parts).split())
        seg = self.open[1]
        count = self.seen.get(seg, 0)
        self.seen[seg] = count + 1
        if text:
            self.segments.append((seg if not count else f"{seg}.{count}", text))
        self.open = None

    def handle_data(self, data):
        if self.open is not None:
            self.parts.append(data)


def read_help_tree(root: Path) -> list[Unit]:
    """Units of one language's ``text/`` tree, keyed by relative file path and segment id."""
    units = []
    for page in sorted(root.rglob("*.html")):
        parser = _Segments()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        relative = page.relative_to(root).as_posix()
        units += [Unit(f"{relative}#{seg}", text) for seg, text in parser.segments]
    return units


class LibreOfficeHelp(Corpus):
    name = "libreoffice-help"
    description = "LibreOffice help pages, English to X, aligned by paragraph id"
    kind = "parallel"
    languages = tuple(PACKAGES)
    source = DebianPackages(tuple(f"libreoffice-help-{deb}" for deb, _ in PACKAGES.values()))
    licence = "MPL-2.0"

    def extract(self, files: list[Path], into: Path) -> None:
        by_language = {}
        for language, (deb, folder) in PACKAGES.items():
            package = next((f for f in files if f.name.startswith(f"libreoffice-help-{deb}_")), None)
            if package is None:
                continue
            unpacked = deb_extract(package, into.parent / f"{into.name}-{language}")
            try:
                by_language[language] = read_help_tree(unpacked / "usr/share/libreoffice/help" / folder / "text")
            finally:
                shutil.rmtree(unpacked, ignore_errors=True)
        english = {u.key: u.text for u in by_language.get("en", [])}
        for language, units in by_language.items():
            if language != "en":
                units = [u for u in units if english.get(u.key) != u.text]  # untranslated segments
            write_json(into / f"{language}.json", [[u.key, u.text] for u in units])

    def keep_pair(self, source, target, s, t):
        if not super().keep_pair(source, target, s, t) or s == t:
            return False
        if sorted(DIGITS.findall(s)) != sorted(DIGITS.findall(t)):
            return False  # the translation describes another version of the text
        dense = {"zh", "ja"}  # CJK scripts need about a third of the characters
        ratio = len(s) / len(t) / 3.0 ** ((target in dense) - (source in dense))
        return 1 / MAX_LENGTH_RATIO <= ratio <= MAX_LENGTH_RATIO

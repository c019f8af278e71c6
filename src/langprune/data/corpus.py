"""The one interface behind every corpus: units of text per language, fetched once into a cache.

A corpus offers, per language, a list of ``Unit`` (a key and a text); units
with the same key in two languages are translations of each other, which is
how parallel pairs are read. Labelled corpora offer ``Example`` records
instead. Every corpus is split once, deterministically, into a calibration
and an evaluation part by a seeded hash of the keys, so no evaluation text
ever calibrates and parallel units fall on the same side in every language.
The calibration part is split once more for the advisor: a development part
(a fifth of it, by a second seeded hash) that scores its trial prunes, and the
fitting part (the rest) they calibrate on; neither touches the evaluation part.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..languages import check_language
from ..storage import cache_dir, locked, partial_path, replace_folder

EVAL_FRACTION = 0.25
SPLIT_SEED = 0
DEVELOPMENT_FRACTION = 0.2  # of the calibration part
DEVELOPMENT_SEED = 1
PARTS = ("calibration", "evaluation", "all", "development", "fitting")
MARKER = ".langprune-corpus"  # written last: its presence (with this format number) means a complete extraction
FORMAT = 1


@dataclass(frozen=True)
class Unit:
    """One piece of text; units with the same ``key`` are translations of each other."""

    key: str
    text: str


@dataclass(frozen=True)
class Example:
    """A labelled example: named text fields, a label, and the label set (or answer options)."""

    key: str
    fields: dict
    label: str
    choices: tuple[str, ...] = ()


def split_keys(keys, eval_fraction: float = EVAL_FRACTION, seed: int = SPLIT_SEED) -> tuple[set[str], set[str]]:
    """Disjoint (calibration, evaluation) key sets, decided by a seeded hash of each key.

    Hashing keys rather than shuffling a list keeps a unit on the same side
    whatever other units exist, and keeps parallel units on the same side in
    every language.
    """
    keys = set(keys)
    evaluation = {
        k for k in keys if int(hashlib.sha256(f"{seed}:{k}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < eval_fraction
    }
    return keys - evaluation, evaluation


def select_part(items, part: str):
    """The calibration or evaluation part (or all) of units or examples, in their original order."""
    if part not in PARTS:
        raise UserError(f"unknown corpus part {part!r}: use one of {', '.join(PARTS)}")
    if part == "all":
        return list(items)
    calibration, evaluation = split_keys(item.key for item in items)
    keep = {"calibration": calibration, "evaluation": evaluation}[part]  # development and fitting: Corpus.part_of
    return [item for item in items if item.key in keep]


def select_official_part(items, part: str, calibration_prefix: str, evaluation_prefix: str):
    """For corpora with their own splits (keys ``<split>/...``): calibrate on one, evaluate on the other."""
    if part == "all":
        return list(items)
    prefix = {"calibration": calibration_prefix, "evaluation": evaluation_prefix}[part]
    return [item for item in items if item.key.startswith(prefix + "/")]


class Corpus:
    """Base of all corpora. Subclasses set the class attributes and implement ``extract``.

    Extracted text is stored as ``<language>.json`` in the cache folder: a list
    of [key, text] for text corpora, of example records for labelled ones.
    """

    name = ""
    description = ""
    kind = "monolingual"  # monolingual | parallel | labelled | code
    languages: tuple[str, ...] = ()
    source = None
    licence = ""

    # -- cache ---------------------------------------------------------------
    def folder(self) -> Path:
        return cache_dir() / "corpora" / self.name

    def fetched(self) -> bool:
        marker = self.folder() / MARKER
        return marker.exists() and marker.read_text().strip() == str(FORMAT)

    def fetch(self, report=None, received=None) -> Path:
        """Download with the registry's client and extract, once.

        ``report(step)`` narrates the steps; ``received(bytes)`` is told how
        much the client has downloaded so far. Concurrent fetches of the same
        corpus wait for each other (a lock) and the later ones find it done.
        """
        if self.fetched():
            return self.folder()
        with locked(self.folder()):
            if self.fetched():  # another process fetched it while we waited
                return self.folder()
            with tempfile.TemporaryDirectory() as scratch:
                if report:
                    report(f"downloading: {self.source}")
                files = self.source.download(Path(scratch), received)
                if report:
                    report(f"extracting {self.name}")
                self.install(files)
        return self.folder()

    def install_from(self, folder: Path) -> Path:
        """Install from files a user already has: what the registry client would have downloaded, in ``folder``."""
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"--from {folder} is not a folder")
        files = self.source.files_in(folder)
        if not files:
            raise UserError(
                f"{folder} holds no files for {self.name}: put there what `{self.source}` downloads "
                f"({self.source.expected})"
            )
        with locked(self.folder()):
            try:
                return self.install(files)
            except (ValueError, KeyError, OSError, EOFError) as exc:
                raise UserError(f"could not read {self.name} from {folder}: {type(exc).__name__}: {exc}") from None

    def install(self, files: list[Path]) -> Path:
        """Extract from downloaded files into the cache, atomically: a uniquely named partial folder, then rename."""
        target = self.folder()
        partial = partial_path(target)
        partial.mkdir(parents=True)
        try:
            self.extract(list(files), partial)
            (partial / MARKER).write_text(str(FORMAT))
            return replace_folder(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise

    def extract(self, files: list[Path], into: Path) -> None:
        raise NotImplementedError

    # -- reading -------------------------------------------------------------
    def check(self, language: str) -> str:
        return check_language(language, self.languages, where=f"corpus {self.name}") if language != "code" else language

    def units(self, language: str, part: str = "all") -> list[Unit]:
        """Text units of one language (monolingual, parallel and code corpora)."""
        if self.kind == "labelled":
            return [Unit(e.key, " ".join(str(v) for v in e.fields.values())) for e in self.examples(language, part)]
        self.check(language)
        return self.part_of(self.read_units(language), part)

    def examples(self, language: str, part: str = "all") -> list[Example]:
        """Labelled examples of one language (labelled corpora only)."""
        if self.kind != "labelled":
            raise UserError(f"corpus {self.name} has no labelled examples; labelled corpora: see `langprune data list`")
        self.check(language)
        return self.part_of(self.read_examples(language), part)

    def part_of(self, items, part: str):
        """One part of ``items``; development and fitting divide this corpus' calibration part."""
        if part not in ("development", "fitting"):
            return self.select(items, part)
        calibration = self.select(items, "calibration")
        fitting, development = split_keys((i.key for i in calibration), DEVELOPMENT_FRACTION, DEVELOPMENT_SEED)
        keep = development if part == "development" else fitting
        return [item for item in calibration if item.key in keep]

    def pairs(self, source: str, target: str, part: str = "all") -> list[tuple[str, str]]:
        """Translation pairs (source text, target text) joined on unit keys, in the source's order."""
        if self.kind != "parallel":
            raise UserError(f"corpus {self.name} is not parallel; parallel corpora: see `langprune data list`")
        targets = {u.key: u.text for u in self.units(target, part)}
        pairs = [(u.text, targets[u.key]) for u in self.units(source, part) if u.key in targets]
        return [(s, t) for s, t in pairs if self.keep_pair(source, target, s, t)]

    def select(self, items, part: str):
        return select_part(items, part)

    def keep_pair(self, source: str, target: str, s: str, t: str) -> bool:
        return bool(s.strip() and t.strip())

    def read_units(self, language: str) -> list[Unit]:
        return [Unit(k, t) for k, t in self.read_json(f"{language}.json")]

    def read_examples(self, language: str) -> list[Example]:
        return [
            Example(e["key"], e["fields"], e["label"], tuple(e.get("choices", ())))
            for e in self.read_json(f"{language}.json")
        ]

    def read_json(self, name: str):
        path = self.fetch() / name
        if not path.exists():
            raise UserError(
                f"corpus {self.name} has no file {name} in {self.folder()}: refetch it with "
                f"`langprune data fetch {self.name} --force`"
            )
        return json.loads(path.read_text(encoding="utf-8"))

    def present_languages(self) -> list[str]:
        """Languages with extracted text in the cache (a source may lack some, e.g. a missing package)."""
        return [lang for lang in self.languages if (self.folder() / f"{lang}.json").exists()]

    def sizes(self) -> dict[str, int]:
        """Units (or examples) per language present; only for fetched corpora."""
        reader = self.read_examples if self.kind == "labelled" else self.read_units
        return {lang: len(reader(lang)) for lang in self.present_languages()}


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")

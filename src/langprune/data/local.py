"""The user's own text files: plain text, JSON lines or TSV, optionally tagged with a language.

- ``.txt``: documents separated by blank lines; the language is the one given.
- ``.jsonl``: one object per line with ``text`` and, optionally, ``language``
  (or ``lang``); with a language given, only lines of that language are read.
- ``.tsv``: with a header naming ``text`` (and optionally ``language``), or
  two columns ``language<TAB>text`` without header (every first column a
  language code), or one column of text. Other layouts are refused rather
  than guessed, so a file is never read from the wrong column.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import UserError
from ..languages import NAMES
from .corpus import Unit


def read_local(path: Path, language: str | None = None) -> list[Unit]:
    if not path.is_file():
        raise UserError(f"calibration file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"calibration file {path} is not UTF-8 text (byte {exc.start} is not valid UTF-8): "
            "give a .txt, .jsonl or .tsv file"
        ) from None
    if "\x00" in text:
        raise UserError(f"calibration file {path} looks binary (it holds NUL bytes): give a .txt, .jsonl or .tsv file")
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(
                        f"{path}:{number}: not valid JSON ({exc.msg}); each line must be an object"
                    ) from None
        for number, row in enumerate(rows, 1):
            if not (isinstance(row, dict) and isinstance(row.get("text"), str)):
                raise UserError(f'{path}: JSON object {number} needs a "text" field holding a string')
        items = [(r.get("language", r.get("lang")), r["text"]) for r in rows]
    elif suffix == ".tsv":
        lines = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
        header = [h.strip().lower() for h in lines[0]] if lines else []
        if "text" in header:
            lang_col = header.index("language") if "language" in header else None
            text_col = header.index("text")
            items = [
                (
                    row[lang_col] if lang_col is not None and lang_col < len(row) else None,
                    row[text_col] if text_col < len(row) else "",
                )
                for row in lines[1:]
            ]
        elif all(len(row) <= 1 for row in lines):
            items = [(None, row[0]) for row in lines if row]
        elif all(len(row) == 2 and row[0] in NAMES for row in lines if row):
            items = [(row[0], row[1]) for row in lines if row]
        else:
            raise UserError(
                f"{path} has several columns but no header naming a text column: add a first line "
                "with the column names text and, optionally, language"
            )
    else:
        items = [(None, t) for t in text.split("\n\n")]
    units = [
        Unit(f"{path.name}/{i}", t.strip())
        for i, (lang, t) in enumerate(items)
        if t and t.strip() and (language is None or lang in (None, language))
    ]
    if not units:
        tag = f" in language {language}" if language else ""
        raise UserError(f"calibration file {path} has no text{tag}")
    return units

"""Loaders for the Hugging Face datasets the papers used, in their published file formats.

Each reads a folder laid out as on the hub (a snapshot fetched with
``huggingface_hub``, or files the user already has, given with
``langprune data fetch NAME --from FOLDER``) and stores the languages it finds
in langprune's cache format. Without network the hub fetch fails with one
line naming the offline corpora that can stand in.

- FLORES-200 (``facebook/flores``): ``dev/<code>.dev`` and
  ``devtest/<code>.devtest``, one sentence per line, aligned by line;
  calibration uses dev, evaluation devtest.
- mC4 (``allenai/c4``, multilingual): JSON lines with a ``text`` field,
  ``multilingual/c4-<lang>*.json(.gz)``.
- XNLI (``facebook/xnli``): per language, JSON lines or TSV with premise,
  hypothesis and label 0/1/2 (entailment, neutral, contradiction).
- MARC (``SetFit/amazon_reviews_multi_<lang>``): ``<lang>/{train,validation,test}.jsonl``
  with text and a 0-4 star label; 0-1 become negative, 3-4 positive, 2 is dropped.
- Belebele (``facebook/belebele``): ``data/<code>.jsonl`` with a passage, a
  question, four answers and the number of the correct one.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

from .corpus import Corpus, select_official_part, write_json
from .sources import HubDataset

FLORES_CODES = {
    "en": "eng_Latn",
    "fr": "fra_Latn",
    "de": "deu_Latn",
    "es": "spa_Latn",
    "zh": "zho_Hans",
    "hi": "hin_Deva",
    "sw": "swh_Latn",
    "ar": "arb_Arab",
    "ru": "rus_Cyrl",
    "ja": "jpn_Jpan",
    "el": "ell_Grek",
    "bg": "bul_Cyrl",
    "tr": "tur_Latn",
    "vi": "vie_Latn",
    "th": "tha_Thai",
    "ur": "urd_Arab",
    "it": "ita_Latn",
    "pt": "por_Latn",
    "nl": "nld_Latn",
    "pl": "pol_Latn",
    "ko": "kor_Hang",
    "id": "ind_Latn",
    "cs": "ces_Latn",
    "uk": "ukr_Cyrl",
}
XNLI_LABELS = ("entailment", "neutral", "contradiction")
MAX_DOCUMENTS = 20_000  # per language from mC4: far more than any calibration set needs
OFFLINE = ("udhr", "libreoffice-help", "wikilingua", "wikipedia", "multiemo", "mmlu-dev")


def _lines(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        yield from handle


def _records(path: Path) -> list[dict]:
    """Rows of a JSON-lines or TSV (with header) file."""
    if ".tsv" in path.suffixes:
        with open(path, encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [json.loads(line) for line in _lines(path) if line.strip()]


class _HubCorpus(Corpus):
    """A corpus read from a folder in a hub dataset's layout, one language at a time.

    ``official_splits`` (calibration split, evaluation split) replaces the
    hashed split for datasets that publish their own.
    """

    official_splits: tuple[str, str] | None = None

    def extract(self, files, into: Path) -> None:
        root = Path(files[0])
        written = 0
        for language in self.languages:
            items = self.read_language(root, language)
            if items:
                write_json(into / f"{language}.json", items)
                written += 1
        if not written:
            raise ValueError(f"no {self.name} files for any known language under {root}; see `langprune data list`")

    def read_language(self, root: Path, language: str) -> list:
        """[key, text] pairs (text corpora) or example records (labelled corpora) of one language."""
        raise NotImplementedError

    def select(self, items, part):
        if self.official_splits is None:
            return super().select(items, part)
        return select_official_part(items, part, *self.official_splits)


class Flores(_HubCorpus):
    name = "flores"
    description = "FLORES-200 dev/devtest, parallel by line (Hugging Face facebook/flores)"
    kind = "parallel"
    languages = tuple(FLORES_CODES)
    source = HubDataset("facebook/flores", ("dev/*", "devtest/*"), OFFLINE)
    licence = "CC BY-SA 4.0"
    official_splits = ("dev", "devtest")

    def read_language(self, root, language):
        units = []
        for split in self.official_splits:
            path = next(iter(sorted(root.rglob(f"{split}/{FLORES_CODES[language]}.{split}"))), None)
            if path is not None:
                units += [[f"{split}/{i}", line.strip()] for i, line in enumerate(_lines(path))]
        return units


class MC4(_HubCorpus):
    name = "mc4"
    description = "mC4 web text, monolingual (Hugging Face allenai/c4, multilingual configs)"
    languages = tuple(FLORES_CODES)
    source = HubDataset(
        "allenai/c4", tuple(f"multilingual/c4-{lang}.tfrecord-00000-*" for lang in FLORES_CODES), OFFLINE
    )
    licence = "ODC-BY"

    def read_language(self, root, language):
        units = []
        for path in sorted(root.rglob(f"c4-{language}.*json*")) + sorted(root.rglob(f"c4-{language}-*json*")):
            for line in _lines(path):
                if len(units) >= MAX_DOCUMENTS:
                    break
                if line.strip():
                    units.append([f"{path.name}/{len(units)}", json.loads(line)["text"]])
        return units


class XNLI(_HubCorpus):
    name = "xnli"
    description = "XNLI premise/hypothesis pairs, 3 labels, parallel (Hugging Face facebook/xnli)"
    kind = "labelled"
    languages = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
    source = HubDataset("facebook/xnli", (), OFFLINE)
    licence = "CC BY-NC 4.0"
    labels = XNLI_LABELS
    official_splits = ("validation", "test")

    def read_language(self, root, language):
        records = []
        folder = root / language
        for split in self.official_splits:
            for path in sorted(folder.glob(f"{split}*")) if folder.is_dir() else []:
                for i, row in enumerate(_records(path)):
                    label = row["label"]
                    label = XNLI_LABELS[int(label)] if str(label).isdigit() else str(label)
                    records.append(
                        {
                            "key": f"{split}/{i}",
                            "label": label,
                            "choices": list(XNLI_LABELS),
                            "fields": {"premise": row["premise"], "hypothesis": row["hypothesis"]},
                        }
                    )
        return records


class MARC(_HubCorpus):
    name = "marc"
    description = "Amazon reviews, positive/negative from 1-5 stars (Hugging Face SetFit/amazon_reviews_multi_<lang>)"
    kind = "labelled"
    languages = ("de", "en", "es", "fr", "ja", "zh")
    source = HubDataset("SetFit/amazon_reviews_multi_{lang}", ("*.jsonl",), OFFLINE, languages)
    licence = "Amazon reviews multilingual licence (research use)"
    labels = ("negative", "positive")
    official_splits = ("validation", "test")

    def read_language(self, root, language):
        records = []
        for split in self.official_splits:
            path = root / language / f"{split}.jsonl"
            for row in _records(path) if path.exists() else []:
                stars = int(row["label"])
                if stars != 2:
                    records.append(
                        {
                            "key": f"{split}/{row.get('id', len(records))}",
                            "fields": {"review": row["text"]},
                            "label": "positive" if stars > 2 else "negative",
                            "choices": list(self.labels),
                        }
                    )
        return records


class Belebele(_HubCorpus):
    name = "belebele"
    description = "Belebele reading comprehension, four choices (Hugging Face facebook/belebele)"
    kind = "labelled"
    languages = tuple(FLORES_CODES)
    source = HubDataset("facebook/belebele", ("data/*.jsonl",), OFFLINE)
    licence = "CC BY-SA 4.0"
    labels = ("A", "B", "C", "D")

    def read_language(self, root, language):
        path = next(iter(sorted(root.rglob(f"{FLORES_CODES[language]}.jsonl"))), None)
        rows = _records(path) if path is not None else []
        return [
            {
                "key": f"{row['link']}#{row['question_number']}",
                "fields": {"passage": row["flores_passage"], "question": row["question"]},
                "label": "ABCD"[int(row["correct_answer_num"]) - 1],
                "choices": [row[f"mc_answer{k}"] for k in range(1, 5)],
            }
            for row in rows
        ]

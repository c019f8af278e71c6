"""Three corpora from the BIG-bench source archive on PyPI (``bigbench==1.0.0``, 358 MB).

Only the ``task.json`` files used are read out of the archive, then the
archive is dropped. One download fills all three corpora:

- ``wikilingua``: WikiHow articles (the task's inputs), 152 per language;
- ``wikipedia``: paragraphs of the ``paragraph_segmentation`` documents,
  1000 per language in index order (de en es fr it nl pl pt ru);
- ``multiemo``: reviews labelled positive / negative / neutral / ambivalent,
  machine-translated from Polish, parallel across languages by index.
"""

from __future__ import annotations

import ast
import json
import re
import tarfile
from pathlib import Path

from .corpus import Corpus, Unit, write_json
from .sources import PyPIPackage

SDIST = PyPIPackage("bigbench==1.0.0", binary=False)
TASKS = "bigbench/benchmark_tasks/"
WIKILINGUA_TASK = "gem/wikilingua_multilingual/task.json"
WIKILINGUA_LANGUAGE = re.compile(r"wiki_lingua_\w+?_(\w+)-\w+-(\d+)")
IMAGE_JSON = re.compile(r"\{[^{}]*\"(?:smallUrl|bigUrl|smallWidth)\"[^{}]*\}")  # tr articles carry image metadata
WIKIPEDIA_TASK = "paragraph_segmentation/task.json"
WIKIPEDIA_ORDER = ("de", "en", "es", "fr", "it", "nl", "pl", "pt", "ru")  # blocks of 1000 documents, in this order
MULTIEMO_LANGUAGES = ("en", "fr", "es", "de", "ru", "ja", "zh", "it", "nl", "pl", "pt")
MULTIEMO_LABELS = ("positive", "negative", "neutral", "ambivalent")


def _task_files(archive: Path, wanted: set[str]) -> dict[str, dict]:
    """Parse the wanted task files (paths relative to ``benchmark_tasks/``) in one pass over the archive."""
    found = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            _, sep, relative = member.name.partition(TASKS)
            if sep and relative in wanted:
                found[relative] = json.load(tar.extractfile(member))
    return found


def wikilingua_units(task: dict) -> dict[str, list[Unit]]:
    by_language: dict[str, list[Unit]] = {}
    for example in task["examples"]:
        match = WIKILINGUA_LANGUAGE.search(example.get("comment", ""))
        if match:
            text = " ".join(IMAGE_JSON.sub(" ", example["input"]).split())
            by_language.setdefault(match.group(1), []).append(Unit(f"article-{match.group(2)}", text))
    return by_language


def wikipedia_units(task: dict) -> dict[str, list[Unit]]:
    by_language: dict[str, list[Unit]] = {}
    for index, example in enumerate(task["examples"]):
        language = WIKIPEDIA_ORDER[index // 1000]
        sentences = example["input"].split("\n")
        ends = example["target"].split()
        paragraphs, current = [], []
        for sentence, end in zip(sentences, ends):
            current.append(sentence.strip())
            if end == "1":
                paragraphs.append(" ".join(current))
                current = []
        if current:
            paragraphs.append(" ".join(current))
        by_language.setdefault(language, []).append(Unit(f"doc-{index % 1000}", "\n\n".join(paragraphs)))
    return by_language


def multiemo_examples(task: dict) -> list[dict]:
    records = []
    for index, example in enumerate(task["examples"]):
        scores = example["target_scores"]
        scores = ast.literal_eval(scores) if isinstance(scores, str) else scores
        label = max(MULTIEMO_LABELS, key=lambda name: scores.get(name, 0))
        records.append(
            {
                "key": f"review-{index}",
                "fields": {"review": example["input"].strip()},
                "label": label,
                "choices": list(MULTIEMO_LABELS),
            }
        )
    return records


class _BigBenchCorpus(Corpus):
    source = SDIST
    licence = "Apache-2.0 (BIG-bench); each task keeps its data's licence"

    def install(self, files):
        """One archive feeds every BIG-bench corpus, so they are all extracted together."""
        tasks = _task_files(
            next(f for f in files if f.name.endswith(".tar.gz")),
            {WIKILINGUA_TASK, WIKIPEDIA_TASK, *(f"multiemo/all_text_{lang}/task.json" for lang in MULTIEMO_LANGUAGES)},
        )
        for corpus in BIGBENCH_CORPORA:
            if corpus.name != self.name:
                Corpus.install(corpus, [tasks])
        return Corpus.install(self, [tasks])

    def extract(self, files, into: Path) -> None:
        """Text corpora: one task file read into units per language (``task`` and ``reader`` set by subclasses)."""
        for language, units in self.reader(files[0][self.task]).items():
            write_json(into / f"{language}.json", [[u.key, u.text] for u in units])


class WikiLingua(_BigBenchCorpus):
    name = "wikilingua"
    description = "WikiHow articles (BIG-bench gem/wikilingua_multilingual), monolingual"
    languages = (
        "ar",
        "zh",
        "en",
        "fr",
        "de",
        "hi",
        "ja",
        "ru",
        "es",
        "th",
        "tr",
        "vi",
        "cs",
        "nl",
        "id",
        "it",
        "ko",
        "pt",
    )
    licence = "CC BY-NC-SA 3.0"
    task, reader = WIKILINGUA_TASK, staticmethod(wikilingua_units)


class Wikipedia(_BigBenchCorpus):
    name = "wikipedia"
    description = "Wikipedia documents split into paragraphs (BIG-bench paragraph_segmentation), monolingual"
    languages = WIKIPEDIA_ORDER
    licence = "CC BY-SA (Wikipedia)"
    task, reader = WIKIPEDIA_TASK, staticmethod(wikipedia_units)


class MultiEmo(_BigBenchCorpus):
    name = "multiemo"
    description = "Reviews labelled positive/negative/neutral/ambivalent (BIG-bench multiemo all_text), parallel"
    kind = "labelled"
    languages = MULTIEMO_LANGUAGES
    labels = MULTIEMO_LABELS
    licence = "CC BY 4.0 (MultiEmo)"

    def extract(self, files, into: Path) -> None:
        for language in self.languages:
            task = files[0].get(f"multiemo/all_text_{language}/task.json")
            if task is not None:
                write_json(into / f"{language}.json", multiemo_examples(task))


BIGBENCH_CORPORA = (WikiLingua(), Wikipedia(), MultiEmo())

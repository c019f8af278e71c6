"""MMLU dev questions (four choices, 57 subjects x 5) from the ``lm-eval`` wheel.

The translated questions sit in ``lm_eval/tasks/llama3/instruct/mmlu_<lang>/``
task files as few-shot samples; the English ones in the chain-of-thought
prompts of ``lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json``. Only
those files are read from the downloaded wheel. Keys are ``subject/index``.
"""

from __future__ import annotations

import html
import json
import re
import zipfile
from pathlib import Path

import yaml

from .corpus import Corpus, write_json
from .sources import PyPIPackage

WHEEL = "lm-eval==0.4.13"
TRANSLATED = ("fr", "es", "de", "hi", "th", "pt", "it")
LETTERS = ("A", "B", "C", "D")
TASK_FILE = re.compile(r"lm_eval/tasks/llama3/instruct/mmlu_(\w+?)/mmlu_\1_(\w+)\.yaml")
ENGLISH_FILE = "lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"
ENGLISH_QUESTION = re.compile(
    r"Q: (.*?)\n\(A\) (.*?) \(B\) (.*?) \(C\) (.*?) \(D\) (.*?)\nA: .*?answer is \(([ABCD])\)", re.S
)


class _TolerantLoader(yaml.SafeLoader):
    """Reads task YAML whose ``!function`` tags name Python code we never run."""


_TolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _record(key: str, subject: str, question: str, options: list[str], answer: str) -> dict:
    clean = [html.unescape(str(o)).strip() for o in options]
    return {
        "key": key,
        "fields": {"question": html.unescape(question).strip(), "subject": subject},
        "label": answer,
        "choices": clean,
    }


def translated_questions(text: str, subject: str) -> list[dict]:
    samples = (yaml.load(text, Loader=_TolerantLoader).get("fewshot_config") or {}).get("samples") or []
    return [
        _record(
            f"{subject}/{i}",
            subject,
            s["input_question"],
            [s["input_choice_list"][x] for x in LETTERS],
            s["input_correct_responses"][0],
        )
        for i, s in enumerate(samples)
    ]


def english_questions(prompts: dict) -> list[dict]:
    records = []
    for subject, text in sorted(prompts.items()):
        for i, match in enumerate(ENGLISH_QUESTION.finditer(text)):
            question, *options, answer = match.groups()
            records.append(_record(f"{subject}/{i}", subject, question, options, answer))
    return records


class MMLUDev(Corpus):
    name = "mmlu-dev"
    description = "MMLU dev questions, four choices, from the lm-eval wheel's task files"
    kind = "labelled"
    languages = ("en", *TRANSLATED)
    source = PyPIPackage(WHEEL)
    licence = "MIT (MMLU); lm-eval MIT"
    labels = LETTERS

    def extract(self, files: list[Path], into: Path) -> None:
        by_language: dict[str, list[dict]] = {lang: [] for lang in self.languages}
        with zipfile.ZipFile(next(f for f in files if f.suffix == ".whl")) as wheel:
            for member in sorted(wheel.namelist()):
                match = TASK_FILE.fullmatch(member)
                if match and match.group(1) in TRANSLATED:
                    text = wheel.read(member).decode("utf-8")
                    by_language[match.group(1)] += translated_questions(text, match.group(2))
            by_language["en"] = english_questions(json.loads(wheel.read(ENGLISH_FILE)))
        for language, records in by_language.items():
            write_json(into / f"{language}.json", records)

"""Headline numbers of an evaluation, as (task, metric, {language: text}) rows for tables."""

from __future__ import annotations

from .tasks import catalog

METRICS = {
    "perplexity": [("ppl", "ppl", ".2f"), ("bits/byte", "bits_per_byte", ".3f"), ("tokens", "tokens", "d")],
    "fidelity": [("SNR dB", "snr_db", ".2f"), ("pruning error", "pruning_error", ".4f")],
    "cloze": [("accuracy", "accuracy", ".3f"), ("n", "n", "d")],
    "choice": [("accuracy", "accuracy", ".3f"), ("n", "n", "d")],
    "translation": [("BLEU", "bleu", ".2f"), ("chrF", "chrf", ".2f"), ("n", "n", "d")],
}


def _text(result: dict, field: str, spec: str) -> str:
    """A metric as text. An SNR is undefined (None) only when the states are identical, and says so."""
    value = result.get(field)
    if value is None:
        return "identical" if field == "snr_db" else "-"
    return format(value, spec)


def metric_rows(results: dict) -> list[tuple[str, str, dict[str, str]]]:
    rows = []
    tasks = catalog()
    for name, per_key in results["tasks"].items():
        if name == "rankc":
            for cloze_task, per_language in per_key.items():
                rows.append(
                    (
                        f"rankc ({cloze_task})",
                        "RankC vs en",
                        {k: _text(v, "rankc", ".3f") for k, v in per_language.items()},
                    )
                )
            continue
        for label, field, spec in METRICS[tasks[name].type]:
            rows.append((name, label, {key: _text(result, field, spec) for key, result in per_key.items()}))
    return rows

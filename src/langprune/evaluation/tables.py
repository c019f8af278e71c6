"""Headline numbers of an evaluation, as (task, metric, {language: text}) rows for tables; metrics from ``types``."""

from __future__ import annotations

from .tasks import catalog
from .types import TASK_TYPES


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
        if name == "rankc":  # per cloze task, then per language
            (metric,) = TASK_TYPES["rankc"].metrics
            for cloze_task, per_language in per_key.items():
                rows.append(
                    (
                        f"rankc ({cloze_task})",
                        metric.label,
                        {k: _text(v, metric.field, metric.format) for k, v in per_language.items()},
                    )
                )
            continue
        for metric in TASK_TYPES[tasks[name].type].metrics:
            rows.append(
                (
                    name,
                    metric.label,
                    {key: _text(result, metric.field, metric.format) for key, result in per_key.items()},
                )
            )
    return rows

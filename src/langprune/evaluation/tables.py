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


def metric_values(results: dict) -> dict[str, float]:
    """Every declared metric of an evaluation as ``task/language/metric`` numbers (RankC per cloze task; lm-eval's
    tasks as ``lm-eval/task/metric``), for experiment trackers."""
    values = {}
    tasks = catalog()
    for name, per_key in results.get("tasks", {}).items():
        if name == "rankc":
            (metric,) = TASK_TYPES["rankc"].metrics
            for cloze_task, per_language in per_key.items():
                for key, result in per_language.items():
                    values[f"rankc/{cloze_task}/{key}"] = result.get(metric.field)
            continue
        for metric in TASK_TYPES[tasks[name].type].metrics:
            for key, result in per_key.items():
                values[f"{name}/{key}/{metric.name}"] = result.get(metric.field)
    for task, metrics in (results.get("harness") or {}).get("results", {}).items():
        for key, value in metrics.items():
            if key.endswith(",none") and "_stderr" not in key:
                values[f"lm-eval/{task}/{key.split(',')[0]}"] = value
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

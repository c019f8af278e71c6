"""The model card of a run folder: ``README.md`` with the hub's YAML metadata and what the run did.

The hub shows this page and indexes its metadata (base model, languages,
tags, library), so a pruned model pushed with ``langprune push`` is found
next to its base model and says how it was made. The card is rebuilt from
``report.json`` (and ``eval.json`` when the run folder has one), never
edited by hand: what it says is what was measured.
"""

from __future__ import annotations

from pathlib import Path

from ..models import hub_id_of
from ..storage import write_text_atomic

CARD_FILE = "README.md"


def write_card(folder: Path, report: dict, evaluation: dict | None = None) -> Path:
    """(Re)write ``folder/README.md`` from the run's report and, when given, its evaluation."""
    return write_text_atomic(Path(folder) / CARD_FILE, card_text(report, evaluation))


def card_metadata(report: dict) -> dict:
    """The YAML header: base model, languages, tags, library (the keys of huggingface_hub's ``ModelCardData``)."""
    settings = report.get("settings", {})
    calibration = report.get("calibration") or {}
    languages = list(dict.fromkeys([*calibration.get("languages", []), *settings.get("eval_langs", [])]))
    tags = ["langprune", "text-generation"]
    if report["method"] != "none":
        tags += ["pruned", "sparse", report["method"]]
    if report.get("quantization"):
        tags += ["quantized", "compressed-tensors", "gptq"]
    metadata = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": tags}
    base = hub_id_of(report.get("model", ""))
    if base:
        metadata["base_model"] = base
        if report.get("quantization"):  # the hub has no "pruned" relation: a pruned model leaves it to the hub
            metadata["base_model_relation"] = "quantized"
    if languages:
        metadata["language"] = languages
    return metadata


def card_text(report: dict, evaluation: dict | None = None) -> str:
    """The whole README.md: metadata, then method, sparsity, quantization, calibration and per-language tables."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(**card_metadata(report))
    body = "\n".join(_body(report, evaluation))
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n"))


def _body(report: dict, evaluation: dict | None) -> list[str]:
    method, quant = report["method"], report.get("quantization")
    what = "quantized" if method == "none" else f"pruned with {method}"
    source = report.get("model") or "a model"  # the Python API's reports may not name it
    base = hub_id_of(source) if "model" in report else None
    name = base or Path(source).name
    lines = [
        f"# {name.split('/')[-1]}, {what}",
        "",
        f"Made with langprune from `{source}`" + (f" ([{base}](https://huggingface.co/{base}))." if base else "."),
        "",
        "| setting | value |",
        "|---|---|",
        f"| method | {method} |",
    ]
    if method != "none":
        lines += [
            f"| sparsity (target) | {report['sparsity']} |",
            f"| zeros in pruned layers | {report['sparsity_pruned_layers']:.2%} |",
            f"| zeros in all parameters | {report['sparsity_all_parameters']:.2%} |",
            f"| profile | {report.get('profile', {}).get('name', 'uniform')} |",
        ]
    if quant:
        lines.append(f"| quantization | {quant['spec']} (GPTQ, compressed-tensors pack-quantized) |")
    calibration = report.get("calibration")
    if calibration:
        lines += [
            f"| calibration | `{calibration['recipe']}`: {calibration['sequences']} x {calibration['seqlen']} "
            f"tokens, seed {calibration['seed']} |",
        ]
    if report.get("contrast"):
        lines.append(f"| contrast set | `{report['contrast']['recipe']}` |")
    lines += [f"| layers compressed | {len(report['layers'])} |", ""]
    lines += _perplexity_table(report.get("perplexity"))
    lines += _evaluation_tables(evaluation)
    command = report.get("provenance", {}).get("command")
    lines += [
        "## Reproduce",
        "",
        "```",
        "langprune prune --replay <this folder> --out <new folder>"
        + (f"   # was: {' '.join(['langprune', *command[1:]])}" if command else ""),
        "```",
        "",
        "`report.json` holds every setting, the per-layer sparsity, the library versions and the git commit; "
        "`masks/` holds the pruning masks.",
    ]
    return lines


def _perplexity_table(perplexity: dict | None) -> list[str]:
    if not perplexity:
        return []
    lines = [
        f"## Held-out perplexity ({perplexity['corpus']})",
        "",
        "| language | dense | compressed | change |",
        "|---|---|---|---|",
    ]
    for lang, dense in perplexity["dense"].items():
        after = perplexity["pruned"][lang]["ppl"]
        lines.append(f"| {lang} | {dense['ppl']:.2f} | {after:.2f} | {after / dense['ppl'] - 1:+.1%} |")
    return [*lines, ""]


def _evaluation_tables(evaluation: dict | None) -> list[str]:
    """``eval.json``'s headline numbers (the rows ``langprune eval`` prints): a task metric per row, languages across."""
    if not evaluation or not evaluation.get("tasks"):
        return []
    from ..evaluation.tables import metric_rows

    rows = metric_rows(evaluation)
    languages = list(dict.fromkeys(lang for _, _, values in rows for lang in values))
    lines = ["## Evaluation", "", "| task | metric | " + " | ".join(languages) + " |"]
    lines.append("|---|---|" + "---|" * len(languages))
    for task, metric, values in rows:
        lines.append(f"| {task} | {metric} | " + " | ".join(values.get(lang, "–") for lang in languages) + " |")
    return [*lines, ""]

"""Bridge to lm-evaluation-harness: its tasks on the model in memory, from local task files, without network.

The language-specific calibration paper reports ARC, Belebele, MMLU,
HellaSwag and MKQA through the harness; users with those datasets on disk get
exactly the harness' prompts and metrics. The in-memory model is wrapped as
the harness' Hugging Face model (no reload, pruned weights as they are);
tasks come from the harness' own registry or from YAML task files in
``include`` (a task whose ``dataset_path: json`` points at local files needs
no network). The datasets and hub clients are put offline only while the
harness runs (their module-level switches, read at import, are patched and
restored; ``os.environ`` is never touched), so a task that would download
fails at once instead of hanging, and the rest of the process is unaffected.

Results are also written in lm-eval's own layout, by its own
``EvaluationTracker``: ``lm-eval/<model>/results_<date>.json`` (and with
``--log-samples`` ``samples_<task>_<date>.jsonl``) beside ``eval.json``, so
lm-eval's tools, leaderboards and notebooks read them as they read
``lm_eval --output_path``; ``compare`` tests harness tasks from those
per-sample logs with the same paired bootstrap as langprune's own tasks.
"""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from functools import cache
from pathlib import Path
from unittest import mock

from ..errors import UserError, did_you_mean

HARNESS_DIR = "lm-eval"  # inside the eval folder: lm-eval's --output_path layout

# (module, attribute) switches that the hub and datasets clients read when they decide to go online.
OFFLINE_SWITCHES = (
    ("huggingface_hub.constants", "HF_HUB_OFFLINE"),
    ("datasets.config", "HF_HUB_OFFLINE"),
    ("datasets.config", "HF_DATASETS_OFFLINE"),
)


@contextmanager
def offline():
    """The hub and datasets clients offline for the duration of the block only."""
    import importlib

    with ExitStack() as stack:
        for module_name, attribute in OFFLINE_SWITCHES:
            module = importlib.import_module(module_name)
            if hasattr(module, attribute):
                stack.enter_context(mock.patch.object(module, attribute, True))
        yield


def _data_unavailable_errors() -> tuple[type[BaseException], ...]:
    """What the datasets and hub clients raise when a dataset's files cannot be had offline."""
    from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    return (
        ConnectionError,
        DataFilesNotFoundError,
        DatasetNotFoundError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )


@cache
def _task_manager(include: str | None):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include)


def check_harness_tasks(tasks: list[str], include: Path | str | None = None):
    """Refuse, before any model loads, harness task names that lm-eval does not know; returns its task manager."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError("the harness bridge needs lm-eval: pip install 'langprune[harness]'") from None
    if include is not None and not Path(include).is_dir():
        raise UserError(f"--harness-include {include} is not a folder of harness task files")
    manager = _task_manager(str(Path(include).resolve()) if include else None)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        suggestion = did_you_mean(unknown[0], manager.all_tasks)
        raise UserError(
            f"lm-eval knows no task {', '.join(unknown)}{suggestion}: check the name or pass --harness-include FOLDER"
        )
    return manager


def model_arguments(text: str | None) -> dict:
    """``--harness-model-args`` (lm-eval's ``key=value,...``) checked against HFLM's parameters."""
    if not text:
        return {}
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import simple_parse_args_string

    try:
        values = simple_parse_args_string(text)
    except (ValueError, IndexError):
        raise UserError(f"--harness-model-args {text!r}: write key=value pairs separated by commas") from None
    known = [n for n, p in inspect.signature(HFLM.__init__).parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    fixed = {"self", "pretrained", "tokenizer", "batch_size", "device"}  # langprune passes its own model and these
    for key in values:
        if key in fixed or key not in known:
            allowed = sorted(set(known) - fixed)
            raise UserError(
                f"--harness-model-args: {key!r} is not an HFLM argument langprune passes on"
                f"{did_you_mean(key, allowed)} (e.g. max_length, add_bos_token, truncation)"
            )
    return values


def harness_evaluate(
    model,
    tokenizer,
    tasks: list[str],
    include: Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    seed: int = 0,
    model_args: str | None = None,
    log_samples: bool = False,
    folder: Path | None = None,
    model_name: str = "langprune-model",
) -> dict:
    """Harness metrics per task (``results`` of ``lm_eval.simple_evaluate``), with the sample counts and few-shot
    counts; with ``folder``, lm-eval's own results files (and per-sample logs) are written under
    ``folder/lm-eval`` and their paths, relative to ``folder``, recorded under ``files``."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.models.huggingface import HFLM

    manager = check_harness_tasks(tasks, include)
    extra = model_arguments(model_args)
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device), **extra)
    with ExitStack() as stack:
        staging = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lm-eval-"))) if folder else None
        tracker = EvaluationTracker(output_path=str(staging)) if folder else None
        with offline():
            try:
                out = simple_evaluate(
                    model=wrapped,
                    tasks=tasks,
                    task_manager=manager,
                    limit=limit,
                    num_fewshot=num_fewshot,
                    random_seed=seed,
                    numpy_random_seed=seed,
                    torch_random_seed=seed,
                    fewshot_random_seed=seed,
                    log_samples=log_samples,
                    evaluation_tracker=tracker,
                )
            except _data_unavailable_errors() as exc:
                raise UserError(
                    f"lm-eval could not load the data of {', '.join(tasks)} offline ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}): point the task's dataset at local "
                    "files"
                ) from None
        summary = {
            "results": out["results"],
            "n_samples": out.get("n-samples", {}),
            "n_shot": out.get("n-shot", {}),
            "higher_is_better": out.get("higher_is_better", {}),
            "versions": out.get("versions", {}),
        }
        if tracker is not None:
            summary["files"] = _save(tracker, out, staging, Path(folder), model_name, model_args)
    return summary


def _save(tracker, out: dict, staging: Path, folder: Path, model_name: str, model_args: str | None) -> dict:
    """lm-eval's files, written by its tracker into ``staging``, then moved (renamed) into ``folder/lm-eval``."""
    from lm_eval.utils import get_file_task_name, sanitize_model_name

    config = tracker.general_config_tracker  # the model is in memory: name it as the run folder is named
    config.model_source, config.model_name = "hf", model_name
    config.model_name_sanitized = sanitize_model_name(model_name)
    samples = out.pop("samples", None)
    tracker.save_results_aggregated(
        results=dict(out, config={**out["config"], "model_args": model_args}), samples=samples
    )
    for task in out.get("configs", {}) if samples else ():
        tracker.save_results_samples(task_name=task, samples=samples[task])
    written = sorted(staging.rglob("*.json*"))
    if not any(path.name.startswith("results_") for path in written):  # the tracker logs its errors and goes on
        raise UserError(f"lm-eval did not write its results file for {model_name} (see the log above)")
    target = folder / HARNESS_DIR / config.model_name_sanitized
    target.mkdir(parents=True, exist_ok=True)
    files: dict = {"results": None, "samples": {}}
    for path in written:
        final = target / path.name
        shutil.move(str(path), str(final))
        relative = str(final.relative_to(folder))
        if path.name.startswith("results_"):
            files["results"] = relative
        else:  # samples_<task>_<date>.jsonl
            files["samples"][get_file_task_name(path.name)] = relative
    return files


def sample_scores(folder: Path, relative: str, metric: str) -> dict:
    """{doc_id: value} of one metric from a per-sample log (filter ``none`` first, as lm-eval reports it)."""
    path = Path(folder) / relative
    if not path.is_file():
        raise UserError(f"{path} is missing: the per-sample log eval.json names is gone; evaluate again")
    scores = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        sample = json.loads(line)
        if metric in sample and sample.get("filter", "none") == "none":
            scores[sample["doc_id"]] = float(sample[metric])
    return scores

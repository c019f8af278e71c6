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
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from functools import cache
from pathlib import Path
from unittest import mock

from ..errors import UserError, did_you_mean

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


def harness_evaluate(
    model,
    tokenizer,
    tasks: list[str],
    include: Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    seed: int = 0,
) -> dict:
    """Harness metrics per task (``results`` of ``lm_eval.simple_evaluate``), with the sample counts."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager = check_harness_tasks(tasks, include)
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
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
                log_samples=False,
            )
        except _data_unavailable_errors() as exc:
            raise UserError(
                f"lm-eval could not load the data of {', '.join(tasks)} offline ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}): point the task's dataset at local "
                "files"
            ) from None
    return {"results": out["results"], "n_samples": out.get("n-samples", {}), "versions": out.get("versions", {})}

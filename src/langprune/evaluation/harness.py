"""Bridge to lm-evaluation-harness: its tasks on the model in memory, from local task files, without network.

The language-specific calibration paper reports ARC, Belebele, MMLU,
HellaSwag and MKQA through the harness; users with those datasets on disk get
exactly the harness' prompts and metrics. The in-memory model is wrapped as
the harness' Hugging Face model (no reload, pruned weights as they are);
tasks come from the harness' own registry or from YAML task files in
``include`` (a task whose ``dataset_path: json`` points at local files needs
no network). ``HF_DATASETS_OFFLINE`` and ``HF_HUB_OFFLINE`` are set while it
runs, so a task that would download fails at once instead of hanging.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError

OFFLINE = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


@contextmanager
def _offline():
    saved = {name: os.environ.get(name) for name in OFFLINE}
    os.environ.update({name: "1" for name in OFFLINE})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def harness_evaluate(model, tokenizer, tasks: list[str], include: Path | None = None, limit: int | None = None,
                     batch_size: int = 8, num_fewshot: int | None = None, seed: int = 0) -> dict:  # fmt: skip
    """Harness metrics per task (``results`` of ``lm_eval.simple_evaluate``), with the sample counts."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("the harness bridge needs lm-eval: pip install 'langprune[harness]'") from None
    if include is not None and not Path(include).is_dir():
        raise UserError(f"--harness-include {include} is not a folder of harness task files")
    manager = TaskManager(include_path=str(include) if include else None)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        raise UserError(f"lm-eval knows no task {', '.join(unknown)}: check the name or pass --harness-include FOLDER")
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    with _offline():
        try:
            out = simple_evaluate(model=wrapped, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                                  random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                  fewshot_random_seed=seed, log_samples=False)  # fmt: skip
        except (ConnectionError, OSError, FileNotFoundError, ValueError) as exc:
            raise UserError(f"lm-eval could not load the data of {', '.join(tasks)} offline ({type(exc).__name__}): "
                            "point the task's dataset at local files") from None  # fmt: skip
    return {"results": out["results"], "n_samples": out.get("n-samples", {}), "versions": out.get("versions", {})}

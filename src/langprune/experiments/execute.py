"""Running a grid's cells: one after another here, or as Ray tasks; resumable after any kill.

A cell is done when ``cell.json`` sits in its folder. It is written
(atomically) only after the pruning run folder was renamed into place and
its ``eval.json`` holds every task, so a grid killed at any moment (kill -9
too) loses at most the cells in flight: on the next ``grid run`` a cell
whose run folder is complete only evaluates, and ``run_eval`` keeps every
task it had finished. A failing cell writes ``failed/<key>.json`` with its
error and the others go on; the next run retries it. Cells take paths and
plain settings, never weights, so a Ray worker on another machine runs the
very same function.

Two ``grid run``s of one grid (two terminals, or a second Ray driver) share
the work instead of doing it twice: a cell runs only under an exclusive
advisory lock on ``cells/<key>.lock``, and a cell another process holds is
skipped as running. The operating system drops the lock when its holder
dies, kill -9 included, so a crash never leaves a cell claimed.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import UserError
from ..evaluation import EvalOptions
from ..evaluation.tables import metric_values
from ..runs import EvalSettings, PruneSettings, Reporter, run_eval, run_prune
from ..runs.folder import REPORT_FILE, load_eval, load_report
from ..storage import os_lock, write_json_atomic
from ..tracking import check_trackers, prune_metrics, tracking
from .grid import Cell, Grid

CELL_FILE = "cell.json"
EXECUTORS = ("local", "ray")
STATES = ("done", "failed", "running", "pending")


def cell_state(grid: Grid, cell: Cell) -> str:
    """done, running (in another process), failed or pending."""
    folder = grid.folder(cell)
    if (folder / CELL_FILE).is_file():
        return "done"
    if _held_elsewhere(folder):
        return "running"
    return "failed" if _failure(grid, cell).is_file() else "pending"


def _lock_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".lock")


@contextmanager
def _claim(folder: Path) -> Iterator[bool]:
    """Hold the cell's lock for the duration of the block; yields False, holding nothing, when another process has it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with os_lock(_lock_path(folder), wait=False) as free:
        yield free  # released at the end of the block, or when this process dies


def _held_elsewhere(folder: Path) -> bool:
    if not _lock_path(folder).is_file():
        return False
    with _claim(folder) as free:
        return not free


def _failure(grid: Grid, cell: Cell) -> Path:
    return grid.out / "failed" / f"{cell.key}.json"


def run_cell(
    cell: Cell,
    folder: Path,
    failure: Path,
    reporter: Reporter | None = None,
    report_to: tuple[str, ...] = (),
    group: str | None = None,
) -> dict:
    """Run the cell unless another process is running it or has finished it; its record, state included.

    With ``report_to``, the cell (its prune and its evaluation) is one tracker run in ``group``.
    """
    with _claim(folder) as mine:
        if not mine:
            return {"key": cell.key, "state": "running"}
        if (folder / CELL_FILE).is_file():  # finished by another process since this one listed its work
            return {**json.loads((folder / CELL_FILE).read_text()), "elsewhere": True}
        config = {**cell.axes, "prune": cell.prune, "evaluation": cell.evaluation}
        with tracking(report_to, "grid-cell", cell.key, config, group) as tracked:
            record = _run_claimed_cell(cell, folder, failure, reporter or Reporter())
            if record["state"] == "done":
                tracked.log(_cell_metrics(folder, cell))
                tracked.save(folder)
        return record


def _cell_metrics(folder: Path, cell: Cell) -> dict:
    metrics = {} if cell.dense else prune_metrics(load_report(folder))
    return {**metrics, **metric_values(load_eval(folder))}


def _run_claimed_cell(cell: Cell, folder: Path, failure: Path, reporter: Reporter) -> dict:
    """Prune (unless dense or already pruned), evaluate, mark done; a failure is recorded, not raised."""
    start = time.perf_counter()
    try:
        evaluation = cell.evaluation
        options = EvalOptions(**evaluation["options"])
        placement = {k: evaluation[k] for k in ("device", "dtype", "offload")}
        if cell.dense:
            folder.mkdir(parents=True, exist_ok=True)
            settings = EvalSettings(
                model=cell.axes["model"],
                out=folder,
                tasks=tuple(evaluation["tasks"]),
                langs=tuple(evaluation["langs"]),
                options=options,
                **placement,
            )
        else:
            if not (folder / REPORT_FILE).is_file():  # the run writer removes what a killed run left
                run_prune(PruneSettings.from_mapping(cell.prune, "a grid cell", out=folder, overwrite=True), reporter)
            settings = EvalSettings(
                run=folder,
                tasks=tuple(evaluation["tasks"]),
                langs=tuple(evaluation["langs"]),
                options=options,
                **placement,
            )
        run_eval(settings, reporter)
    except Exception as exc:  # noqa: BLE001 - a failing cell must not stop the grid; its error is kept
        failure.parent.mkdir(parents=True, exist_ok=True)
        detail = str(exc) if isinstance(exc, UserError) else "".join(traceback.format_exception(exc))
        write_json_atomic(
            failure, {"key": cell.key, "axes": cell.axes, "error": str(exc) or type(exc).__name__, "detail": detail}
        )
        return {"key": cell.key, "state": "failed", "error": str(exc) or type(exc).__name__}
    failure.unlink(missing_ok=True)
    record = {
        "key": cell.key,
        "axes": cell.axes,
        "prune": cell.prune,
        "evaluation": cell.evaluation,
        "seconds": time.perf_counter() - start,
        "state": "done",
    }
    write_json_atomic(folder / CELL_FILE, record)
    return record


def run_grid(
    grid: Grid,
    executor: str = "local",
    reporter: Reporter | None = None,
    on_cell=None,
    report_to: tuple[str, ...] = (),
) -> dict[str, int]:
    """Run every cell that is not done; returns how many cells are done, failed, pending afterwards.

    With ``report_to``, every cell run here is a tracker run grouped under the grid's name.
    """
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}: choose local or ray")
    check_trackers(report_to)
    todo = [cell for cell in grid.cells if cell_state(grid, cell) != "done"]
    grid.out.mkdir(parents=True, exist_ok=True)
    if executor == "local":
        for cell in todo:
            record = run_cell(cell, grid.folder(cell), _failure(grid, cell), reporter, report_to, grid.name)
            if on_cell:
                on_cell(cell, record)
    else:
        _run_on_ray(grid, todo, on_cell, report_to)
    return status_counts(grid)


def status_counts(grid: Grid) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for cell in grid.cells:
        counts[cell_state(grid, cell)] += 1
    return counts


def _run_on_ray(grid: Grid, todo: list[Cell], on_cell, report_to: tuple[str, ...] = ()) -> None:
    """Each cell a Ray task with its resources declared: this process' CPU threads, and a GPU when the grid computes on cuda."""
    try:
        import ray
    except ImportError:
        raise UserError(
            "the ray executor needs Ray: pip install 'langprune[ray]' (scripts/setup.sh installs it)"
        ) from None
    address = os.environ.get("RAY_ADDRESS")
    os.environ.setdefault(
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0"
    )  # keep GPUs visible as declared, silence the notice
    if not ray.is_initialized():
        ray.init(
            address=address or None,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("LANGPRUNE_", "WANDB_"))}},
        )
    task = ray.remote(_ray_cell)
    threads = torch.get_num_threads()  # as many as here: same reduction order, same numbers as the local executor
    pending = {}
    for cell in todo:
        gpu = str(cell.evaluation.get("device", "auto")).startswith("cuda")
        options = task.options(num_cpus=threads, num_gpus=1 if gpu else 0)
        ref = options.remote(cell, str(grid.folder(cell)), str(_failure(grid, cell)), threads, report_to, grid.name)
        pending[ref] = cell
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            cell = pending.pop(ref)
            record = ray.get(ref)
            if on_cell:
                on_cell(cell, record)


def _ray_cell(cell: Cell, folder: str, failure: str, threads: int, report_to: tuple, group: str) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    return run_cell(cell, Path(folder), Path(failure), report_to=report_to, group=group)

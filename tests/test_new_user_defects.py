"""Defects a new user met in grids, evaluation and analyses: each test failed before its fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from langprune.experiments import build_table, load_grid, render
from langprune.experiments.execute import CELL_FILE
from langprune.experiments.grid import Cell, Grid
from langprune.storage import WRITER_LOCK


def known_grid(tmp_path: Path, finished: set[str]) -> Grid:
    """A dense cell and two wanda cells evaluated on en and de; only the calibrations in ``finished`` are done."""
    evaluation = {"tasks": ["ppl"], "langs": ["en", "de"]}
    cells = [Cell({"model": "m", "method": "dense", "sparsity": None, "calib": None, "seed": None}, None, evaluation)]
    for calib in ("mono:en", "mono:de"):
        axes = {"model": "m", "method": "wanda", "sparsity": "0.5", "calib": calib, "seed": 0}
        cells.append(Cell(axes, {"calib": calib}, evaluation))
    grid = Grid(tmp_path / "g.yaml", "known", tmp_path / "out", cells)
    windows = [[10.0, 5], [12.0, 5]]
    for cell in cells:
        if (cell.axes["calib"] or "dense") in finished:
            folder = grid.folder(cell)
            folder.mkdir(parents=True)
            tasks = {"ppl": {lang: {"ppl": 20.0, "windows": windows} for lang in ("en", "de")}}
            (folder / "eval.json").write_text(json.dumps({"tasks": tasks}))
            (folder / CELL_FILE).write_text("{}")
    return grid


def test_grid_table_shows_unfinished_rows_as_dashes_and_counts_them(tmp_path):
    table = build_table(known_grid(tmp_path, {"dense", "mono:en"}), "ppl", "calib", "eval")
    text = render(table, "md")
    assert "| mono:de | – | – |" in text and "| mono:en | **20.00** | **20.00** |" in text
    assert "1 of 3 cells are not finished" in text
    png = tmp_path / "t.png"  # every finished value equal and one row missing: drawn, not a crash
    render(table, "png", png)
    assert png.read_bytes()[:4] == b"\x89PNG"
    nothing = render(build_table(known_grid(tmp_path / "empty", set()), "ppl", "calib", "eval"), "md")
    assert "| dense | – | – |" in nothing and "| mono:en | – | – |" in nothing
    assert "3 of 3 cells are not finished" in nothing


def test_grid_table_refuses_an_unknown_metric_or_one_the_grid_does_not_evaluate(
    checkpoint, tiny_corpora, tmp_path, cli
):
    from test_grid import write_grid

    path = write_grid(tmp_path, checkpoint)
    for metric, message in (("nosuch", "unknown metric 'nosuch'"), ("multiemo", "does not evaluate multiemo")):
        done = cli("grid", "table", path, "--metric", metric)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("model", ["missing-folder/model", "no-such-alias"])
def test_grid_run_checks_models_up_front(checkpoint, tiny_corpora, tmp_path, cli, monkeypatch, model):
    import huggingface_hub.constants
    from test_grid import write_grid

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    path = write_grid(tmp_path, checkpoint, models=[model], include=[])
    done = cli("grid", "run", path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert model in done.stderr
    assert not (tmp_path / "grid-out").exists()


@pytest.mark.slow  # lm-eval indexes its task registry (about 20 s)
def test_eval_checks_harness_task_names_before_loading_the_model(checkpoint, tiny_corpora, tmp_path, cli):
    pytest.importorskip("lm_eval")
    out = tmp_path / "eval"
    done = cli(
        "eval", "--model", checkpoint, "--tasks", "ppl", "--langs", "en", "--harness", "no_such_task", "--out", out
    )
    assert done.returncode == 2 and "lm-eval knows no task no_such_task" in done.stderr
    assert not (out / "eval.json").exists()


def test_lape_with_a_tap_that_names_no_module_is_one_line(checkpoint, tiny_corpora, tmp_path, cli):
    out = tmp_path / "lape"
    done = cli(
        "analyze", "lape", "--model", checkpoint, "--langs", "en,fr", "--seqlen", 16, "--tap", "mlp.nope", "--out", out
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--tap mlp.nope is not a module" in done.stderr and "mlp.act" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize("bad", ["NaN", "1e999", "1e308"])
def test_analyze_plot_refuses_nan_and_huge_values_in_one_line(checkpoint, tiny_corpora, tmp_path, cli, bad):
    out = tmp_path / "lsar-like"
    out.mkdir()
    (out / "analysis.json").write_text(
        '{"analysis": "lsar", "languages": ["en", "fr"], "blocks": 2, "models": ["a", "b"], '
        f'"delta": {{"b": {{"magnitude": {{"agnostic": {{"en": [{bad}, 1.0]}}}}}}}}}}'
    )
    done = cli("analyze", "plot", out)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "delta/b/magnitude/agnostic/en/0" in done.stderr
    assert not list(out.glob("*.png"))


def test_analyze_plot_on_an_incomplete_result_is_one_line(tmp_path, cli):
    out = tmp_path / "broken"
    out.mkdir()
    (out / "analysis.json").write_text('{"analysis": "lsar", "languages": ["en"]}')
    done = cli("analyze", "plot", out)
    assert done.returncode == 2 and "not a complete lsar result" in done.stderr


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_partial_folders_are_removed_by_the_next_run_and_live_ones_are_kept(checkpoint, tmp_path, cli):
    out = tmp_path / "run"
    stale_locked = tmp_path / f"run.partial-{dead_pid()}-abc"  # its writer's lock is free: the writer is gone
    stale_locked.mkdir()
    (stale_locked / WRITER_LOCK).touch()
    (stale_locked / "model-block-00000.safetensors").write_bytes(b"x" * 1000)
    stale_old = tmp_path / f"run.partial-{dead_pid()}-def"  # no lock file: its pid tells
    stale_old.mkdir()
    live = tmp_path / f"run.partial-{os.getpid()}-ghi"
    live.mkdir()
    lock = live / WRITER_LOCK
    code = (
        f"import fcntl, time; f = open({str(lock)!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = cli("prune", "--model", checkpoint, "--method", "magnitude", "--out", out)
        assert done.returncode == 0, done.stderr
        assert not stale_locked.exists() and not stale_old.exists()
        assert live.exists()  # still being written by a live process
        assert not (out / WRITER_LOCK).exists()
        other = tmp_path / f"other.partial-{dead_pid()}-x"
        other.mkdir()
        listed = cli("clean", tmp_path, "--dry-run")
        assert listed.returncode == 0 and "would remove" in listed.stdout and other.exists()
        cleaned = cli("clean", tmp_path)
        assert cleaned.returncode == 0 and not other.exists() and live.exists()
        assert "1 stale partial item(s)" in cleaned.stdout
    finally:
        holder.kill()
        holder.wait()
    assert cli("clean", tmp_path).returncode == 0 and not live.exists()  # its holder is dead now


@pytest.mark.slow  # starts a fresh interpreter and kills it
def test_a_prune_killed_with_sigkill_leaves_a_partial_folder_the_next_run_removes(checkpoint, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "langprune", "prune", "--model", str(checkpoint), "--method", "magnitude"]
    process = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("run.partial-*")):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    left = list(tmp_path.glob("run.partial-*"))
    assert left, "the run finished before it could be killed"
    again = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert not any(path.exists() for path in left) and (out / "report.json").is_file()


def test_run_and_analysis_files_get_the_umask_permissions(checkpoint, tmp_path, cli):
    previous = os.umask(0o022)
    try:
        out, second = tmp_path / "run", tmp_path / "run-seed1"
        assert cli("prune", "--model", checkpoint, "--method", "random", "--out", out).returncode == 0
        assert cli("prune", "--model", checkpoint, "--method", "random", "--seed", 1, "--out", second).returncode == 0
        analysis = tmp_path / "masks"
        assert cli("analyze", "masks", out, second, "--out", analysis).returncode == 0
    finally:
        os.umask(previous)
    files = [p for folder in (out, analysis) for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


def test_a_relative_out_in_a_grid_file_resolves_against_the_file_s_folder(
    checkpoint, tiny_corpora, tmp_path, monkeypatch
):
    folder = tmp_path / "grids"
    folder.mkdir()
    path = folder / "g.yaml"
    spec = {"models": [str(checkpoint)], "calibration": ["mono:en"], "out": "results/g"}
    path.write_text(yaml.safe_dump(spec))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_grid(path).out == folder / "results" / "g"
    assert load_grid(path, out=Path("mine")).out == Path("mine")  # --out on the command line: the current folder

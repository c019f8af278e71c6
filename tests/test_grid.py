"""Experiment grids: expansion and hashing, resuming after SIGKILL, Ray gives the same cells, tables, bad grid files."""

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
from conftest import require_real_corpus

from langprune import UserError
from langprune.experiments import build_table, load_grid, render, run_grid
from langprune.experiments.execute import CELL_FILE
from langprune.experiments.grid import Cell, Grid


def write_grid(folder: Path, model: Path, **changes) -> Path:
    spec = {
        "name": "tiny",
        "models": [str(model)],
        "methods": ["wanda"],
        "sparsities": [0.5],
        "calibration": ["mono:en", "mono:fr"],
        "seeds": [0, 1],
        "include": [{"model": str(model), "method": "magnitude", "sparsity": 0.3, "calib": "mono:en", "seed": 0}],
        "settings": {"nsamples": 4, "seqlen": 16, "batch_size": 2},
        "evaluation": {"tasks": ["ppl", "fidelity"], "langs": ["en", "fr"], "seqlen": 16},
        "out": str(folder / "grid-out"),
        "verdict": {"kind": "own-language-best", "metric": "ppl"},
        **changes,
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_axes_multiply_with_include_and_exclude_and_keys_do_not_depend_on_order(checkpoint, tiny_corpora, tmp_path):
    grid = load_grid(write_grid(tmp_path, checkpoint))
    assert len(grid.cells) == 6  # dense + 2 calib x 2 seeds + 1 included
    assert [c.axes["method"] for c in grid.cells].count("dense") == 1
    reordered = load_grid(write_grid(tmp_path, checkpoint, calibration=["mono:fr", "mono:en"], seeds=[1, 0]))
    assert {c.key for c in grid.cells} == {c.key for c in reordered.cells}
    cut = load_grid(write_grid(tmp_path, checkpoint, exclude=[{"calib": "mono:fr", "seed": 1}]))
    assert len(cut.cells) == 5 and not any(c.axes["calib"] == "mono:fr" and c.axes["seed"] == 1 for c in cut.cells)


def test_evaluation_may_compute_in_another_dtype_than_the_prune(checkpoint, tiny_corpora, tmp_path):
    evaluation = {"tasks": ["ppl"], "langs": ["en"], "seqlen": 16}
    plain = load_grid(write_grid(tmp_path, checkpoint, evaluation=evaluation))
    bf16 = load_grid(write_grid(tmp_path, checkpoint, evaluation={**evaluation, "dtype": "bfloat16"}))
    assert {c.evaluation["dtype"] for c in plain.cells} == {"auto"}
    assert {c.evaluation["dtype"] for c in bf16.cells} == {"bfloat16"}
    assert "dtype" not in bf16.cells[0].evaluation["options"]
    assert [c.prune for c in plain.cells] == [c.prune for c in bf16.cells]  # the prunes are the same
    assert not {c.key for c in plain.cells} & {c.key for c in bf16.cells}  # their evaluations are not


def grid_files(grid: Grid) -> dict[str, float]:
    return {str(p.relative_to(grid.out)): p.stat().st_mtime_ns for p in grid.out.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_grid_killed_mid_way_resumes_without_redoing_finished_cells(checkpoint, tiny_corpora, tmp_path):
    path = write_grid(tmp_path, checkpoint)
    grid = load_grid(path)
    env = {**os.environ, "LANGPRUNE_CACHE": str(tiny_corpora)}
    process = subprocess.Popen(
        [sys.executable, "-m", "langprune", "grid", "run", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list(grid.out.glob(f"cells/*/{CELL_FILE}"))) < 2:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = {p.parent.name for p in grid.out.glob(f"cells/*/{CELL_FILE}")}
    assert 2 <= len(done_before) < 6, "the grid finished before it could be killed"
    kept = {name: mtime for name, mtime in grid_files(grid).items() if name.split("/")[1] in done_before}
    done = subprocess.run(
        [sys.executable, "-m", "langprune", "grid", "run", str(path)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "6 done, 0 failed, 0 pending" in done.stdout
    assert "calibrating on the evaluated language gives the best ppl in" in done.stdout
    after = grid_files(grid)
    assert all(after[name] == mtime for name, mtime in kept.items())  # nothing finished was redone
    assert not list(grid.out.glob("cells/*.partial-*"))
    status = subprocess.run(
        [sys.executable, "-m", "langprune", "grid", "status", str(path), "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert {c["state"] for c in json.loads(status.stdout)} == {"done"}


def test_a_failing_cell_is_recorded_and_the_others_go_on(checkpoint, tiny_corpora, tmp_path, cli):
    path = write_grid(
        tmp_path, checkpoint, calibration=["mono:en"], seeds=[0], include=[], settings={"nsamples": 4, "seqlen": 5000}
    )  # longer than the model's positions: that cell fails
    done = cli("grid", "run", path)
    assert done.returncode == 1
    assert "1 done, 1 failed, 0 pending" in done.stdout
    status = cli("grid", "status", path)
    assert "failed: " in status.stdout and "seqlen" in status.stdout


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that takes the cell's lock, says so, then sleeps."""
    lock = folder.with_name(folder.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    code = (
        f"import fcntl, sys, time; f = open({str(lock)!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.skipif(sys.platform == "win32", reason="advisory file locks are POSIX only")
def test_a_cell_another_process_runs_is_skipped_and_a_killed_holder_frees_it(checkpoint, tiny_corpora, tmp_path, cli):
    path = write_grid(tmp_path, checkpoint, calibration=["mono:en"], seeds=[0], include=[])
    grid = load_grid(path)
    pruned = next(c for c in grid.cells if not c.dense)
    holder = hold_lock(grid.folder(pruned))
    try:
        run = cli("grid", "run", path)
        assert run.returncode == 0, run.stdout
        assert "running in another process, skipped" in run.stdout
        assert "1 done, 0 failed, 0 pending, 1 running in another process" in run.stdout
        assert "calibrating on" not in run.stdout  # no verdict on an unfinished grid
        assert not (grid.folder(pruned) / CELL_FILE).exists() and not grid.folder(pruned).exists()
        states = {c["key"]: c["state"] for c in json.loads(cli("grid", "status", path, "--json").stdout)}
        assert states[pruned.key] == "running"
    finally:
        holder.kill()  # SIGKILL: the holder cannot clean up, the operating system drops its lock
        holder.wait()
    states = {c["key"]: c["state"] for c in json.loads(cli("grid", "status", path, "--json").stdout)}
    assert states[pruned.key] == "pending"
    run = cli("grid", "run", path)
    assert run.returncode == 0 and "2 done, 0 failed, 0 pending" in run.stdout


def test_a_cell_finished_elsewhere_after_listing_is_not_run_again(checkpoint, tiny_corpora, tmp_path):
    from langprune.experiments import run_cell
    from langprune.experiments.execute import _failure

    grid = load_grid(write_grid(tmp_path, checkpoint, calibration=["mono:en"], seeds=[0], include=[]))
    run_grid(grid)
    pruned = next(c for c in grid.cells if not c.dense)
    before = grid_files(grid)
    record = run_cell(pruned, grid.folder(pruned), _failure(grid, pruned))  # as a second runner that listed it earlier
    assert record["state"] == "done" and record["elsewhere"] and record["key"] == pruned.key
    assert grid_files(grid) == before


@pytest.mark.slow
def test_the_ray_executor_gives_the_same_cells_as_the_local_one(checkpoint, tiny_corpora, tmp_path):
    pytest.importorskip("ray")
    from safetensors.torch import load_file

    local = load_grid(write_grid(tmp_path, checkpoint), out=tmp_path / "local")
    remote = load_grid(write_grid(tmp_path, checkpoint), out=tmp_path / "ray")
    assert run_grid(local)["done"] == 6
    assert run_grid(remote, executor="ray")["done"] == 6
    for cell in local.cells:
        a, b = local.folder(cell), remote.folder(cell)
        assert a.name == b.name
        for shard in a.glob("masks/*.safetensors"):
            left, right = load_file(shard), load_file(b / "masks" / shard.name)
            assert left.keys() == right.keys() and all((left[k] == right[k]).all() for k in left)
        tasks_a = json.loads((a / "eval.json").read_text())["tasks"]
        tasks_b = json.loads((b / "eval.json").read_text())["tasks"]
        assert tasks_a == tasks_b


def test_include_entries_add_calibration_free_and_differently_evaluated_rows(checkpoint, tiny_corpora, tmp_path):
    """random needs no calib; a dense entry with evaluation options is its own row (LRP2's); so is a pruned one."""
    from langprune.experiments.tables import row_label

    include = [
        {"model": str(checkpoint), "method": "random", "sparsity": 0.3, "seed": 0},
        {"model": str(checkpoint), "method": "dense", "evaluation": {"lrp2": True}},
        {"model": str(checkpoint), "method": "wanda", "sparsity": 0.5, "calib": "mono:en", "seed": 0,
         "evaluation": {"lrp2": True, "lrp2_stride": 2}},
    ]  # fmt: skip
    grid = load_grid(write_grid(tmp_path, checkpoint, include=include, seeds=[0]))
    labels = [row_label(cell.axes, "method+calib") for cell in grid.cells]
    assert labels == [
        "dense",
        "dense lrp2",
        "wanda mono:en",
        "wanda mono:fr",
        "random",
        "wanda mono:en lrp2 lrp2_stride=2",
    ]
    variants = {label: cell for label, cell in zip(labels, grid.cells)}
    assert variants["dense lrp2"].dense and variants["dense lrp2"].evaluation["options"]["lrp2"] is True
    assert variants["dense lrp2"].evaluation["options"]["seqlen"] == 16  # the grid's evaluation, plus its own
    assert variants["random"].prune["calib"] is None and "lrp2" not in variants["wanda mono:en"].evaluation["options"]
    assert len({cell.key for cell in grid.cells}) == len(grid.cells)


def test_two_models_get_two_dense_cells(checkpoint, tiny_corpora, tmp_path):
    from conftest import save_checkpoint, tiny_model

    other = save_checkpoint(tiny_model("llama", seed=1), tmp_path / "other")
    grid = load_grid(write_grid(tmp_path, checkpoint, models=[str(checkpoint), str(other)], include=[]))
    dense = [cell for cell in grid.cells if cell.dense]
    assert [cell.axes["model"] for cell in dense] == [str(checkpoint), str(other)]
    assert dense[0].key != dense[1].key


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"method": "dense"}, "a dense include entry changes the evaluation"),
        ({"method": "dense", "seed": 1, "evaluation": {"lrp2": True}}, "unknown key 'seed' in a dense include entry"),
        ({"method": "dense", "evaluation": {"lrp3": True}}, "unknown key 'lrp3'"),
        ({"method": "wanda", "sparsity": 0.5, "seed": 0}, "missing: calib"),
    ],
)
def test_bad_include_entries_are_one_line(checkpoint, tiny_corpora, tmp_path, entry, message):
    with pytest.raises(UserError, match=message):
        load_grid(write_grid(tmp_path, checkpoint, include=[{"model": str(checkpoint), **entry}]))


def fake_grid(tmp_path: Path, values: dict) -> Grid:
    """A grid whose finished cells hold known perplexities: {(calib, seed): {lang: (ppl, windows)}}."""
    cells = []
    for calib, seed in values:
        method = "dense" if calib is None else "wanda"
        cell = Cell(
            {
                "model": "m",
                "method": method,
                "sparsity": None if calib is None else "0.5",
                "calib": calib,
                "seed": seed,
            },
            None if calib is None else {"calib": calib, "seed": seed},
            {"tasks": ["ppl"]},
        )
        cells.append(cell)
    grid = Grid(tmp_path / "g.yaml", "known", tmp_path / "out", cells)
    for cell, per_language in zip(cells, values.values()):
        folder = grid.folder(cell)
        folder.mkdir(parents=True)
        tasks = {"ppl": {lang: {"ppl": ppl, "windows": windows} for lang, (ppl, windows) in per_language.items()}}
        (folder / "eval.json").write_text(json.dumps({"tasks": tasks}))
        (folder / CELL_FILE).write_text("{}")
    return grid


def test_tables_match_hand_computed_means_stds_and_marks(tmp_path):
    w = [[10.0, 5], [12.0, 5], [9.0, 5], [11.0, 5]]
    grid = fake_grid(
        tmp_path,
        {
            (None, None): {"en": (10.0, w), "de": (20.0, w)},
            ("mono:en", 0): {"en": (12.0, w), "de": (30.0, w)},
            ("mono:en", 1): {"en": (14.0, w), "de": (34.0, w)},
            ("mono:de", 0): {"en": (16.0, w)},
        },
    )
    table = build_table(grid, "ppl", "calib", "eval", baseline="dense")
    (section,) = table["sections"]
    assert section["row_labels"] == ["dense", "mono:de", "mono:en"] and section["col_labels"] == ["de", "en"]
    en = section["cells"]["mono:en|en"]
    assert en["mean"] == 13.0 and en["std"] == pytest.approx(2**0.5) and en["n"] == 2 and en["best"]
    assert section["cells"]["mono:de|de"] is None  # missing: marked, not an error
    assert not section["cells"]["mono:de|en"]["best"] and section["cells"]["mono:en|de"]["best"]
    markdown = render(table, "md")
    assert "| mono:en | **32.00 ± 2.83** | **13.00 ± 1.41** |" in markdown
    assert "| mono:de | – | 16.00 |" in markdown
    assert "| dense | 20.00 | 10.00 |" in markdown  # the dense row is never marked best
    assert "mono:en,32.00 ± 2.83,13.00 ± 1.41" in render(table, "csv")
    assert r"\textbf{13.00 $\pm$ 1.41}" in render(table, "tex")
    png = tmp_path / "t.png"
    render(table, "png", png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_table_intervals_are_the_paired_tests_interval_against_the_baseline(tmp_path):
    from langprune.evaluation.significance import perplexity_test

    dense = [[10.0, 5], [12.0, 5], [9.0, 5], [11.0, 5]]
    pruned = [[11.0, 5], [12.5, 5], [10.0, 5], [11.2, 5]]
    grid = fake_grid(tmp_path, {(None, None): {"en": (10.0, dense)}, ("mono:en", 0): {"en": (11.0, pruned)}})
    table = build_table(grid, "ppl", "calib", "eval", baseline="dense", ci=True)
    cell = table["sections"][0]["cells"]["mono:en|en"]
    expected = perplexity_test(dense, pruned)
    assert cell["ci"] == expected["ci"] and cell["p_value"] == expected["p_value"] and cell["ci"][0] > 0
    low, high = cell["ci"]
    assert f"[{low:+.3g}, {high:+.3g}]" in render(table, "md") and "95% interval" in render(table, "md")
    assert "[" not in render(build_table(grid, "ppl", "calib", "eval", baseline="dense"), "md").split("\n")[2]
    with pytest.raises(UserError, match="add --baseline ROW"):
        build_table(grid, "ppl", "calib", "eval", ci=True)


def _windows(shift: float, n: int = 12) -> list:
    return [[10.0 + (i % 3) * 0.5 + shift, 5] for i in range(n)]


def _ppl(windows) -> float:
    import math

    return math.exp(sum(w[0] for w in windows) / sum(w[1] for w in windows))


def test_significance_verdicts_count_the_table_as_computed_by_hand(tmp_path):
    from langprune.experiments import verdict

    cells = {
        (None, None): {"en": _windows(0), "de": _windows(0)},
        ("mono:en", 0): {"en": _windows(-2), "de": _windows(2)},  # better in en, worse in de
        ("mono:de", 0): {"en": _windows(0), "de": _windows(-2)},  # as dense in en, better in de
    }
    grid = fake_grid(tmp_path, {k: {lang: (_ppl(w), w) for lang, w in v.items()} for k, v in cells.items()})
    grid.verdicts = [
        {"kind": "significant", "baseline": "dense", "claim": "beats dense"},
        {"kind": "significant", "baseline": "dense", "only": ["mono:e*"], "columns": ["de"]},
        {"kind": "pairs", "pairs": [["mono:en", "mono:de"]]},
        {"kind": "group-gain", "baseline": "dense", "groups": {"english": ["mono:en"], "german": ["mono:de"]}},
    ]
    lines = verdict(grid).splitlines()
    assert lines == [
        "beats dense: mono:de: significantly better ppl than dense in 1 of 2 columns (de), worse in 0",
        "beats dense: mono:en: significantly better ppl than dense in 1 of 2 columns (en), worse in 1 (de)",
        "mono:en: significantly better ppl than dense in 0 of 1 columns, worse in 1 (de)",
        "mono:de: significantly better ppl than mono:en in 1 of 2 columns (de), worse in 1 (en)",
        "model=m method=wanda sparsity=0.5: english rows gain more ppl over dense than german rows in 1 of 2 columns",
    ]


def _cloze(scores: list[tuple[float, float]], labels=("negative", "positive")) -> dict:
    """A cloze result from per-review (negative, positive) scores; the gold label is always positive."""
    items = [
        {"key": f"r{i}", "options": list(labels), "scores": list(pair), "correct": int(pair[1] > pair[0])}
        for i, pair in enumerate(scores)
    ]
    return {"accuracy": sum(i["correct"] for i in items) / len(items), "items": items}


def test_rankc_table_is_the_per_review_consistency_with_english_tested_item_by_item(tmp_path):
    """Two labels: consist = w1 * [same top] + w2 * 1, with w = softmax(1, 0); computed here by hand."""
    import math

    from langprune.evaluation.significance import mean_test

    w1 = math.e / (math.e + 1)
    same, differ = w1 + (1 - w1), 1 - w1  # top-1 agrees / disagrees (top-2 always overlaps fully)
    english = [(0.0, 1.0)] * 8
    german_dense = [(0.0, 1.0)] * 6 + [(1.0, 0.0)] * 2  # 6 of 8 reviews ranked as in English
    german_pruned = [(0.0, 1.0)] * 8
    cells = [(None, None, german_dense), ("mt:de-en", 0, german_pruned)]
    grid_cells = []
    for calib, seed, _ in cells:
        axes = {"model": "m", "method": "dense" if calib is None else "wanda", "sparsity": None, "calib": calib,
                "seed": seed}  # fmt: skip
        grid_cells.append(Cell(axes, None if calib is None else {"calib": calib}, {"tasks": ["multiemo", "rankc"],
                                                                                    "langs": ["en", "de"]}))  # fmt: skip
    grid = Grid(tmp_path / "g.yaml", "rankc", tmp_path / "out", grid_cells)
    for cell, (_, _, german) in zip(grid_cells, cells):
        folder = grid.folder(cell)
        folder.mkdir(parents=True)
        tasks = {"multiemo": {"en": _cloze(english), "de": _cloze(german)}}
        (folder / "eval.json").write_text(json.dumps({"tasks": tasks}))
        (folder / CELL_FILE).write_text("{}")
    for metric in ("rankc", "multiemo:rankc"):
        table = build_table(grid, metric, "calib", "eval", baseline="dense", ci=True)
        (section,) = table["sections"]
        assert section["col_labels"] == ["de"]  # English is the reference, not a column
        dense, pruned = section["cells"]["dense|de"], section["cells"]["mt:de-en|de"]
        assert dense["mean"] == pytest.approx((6 * same + 2 * differ) / 8) and pruned["mean"] == pytest.approx(same)
        expected = mean_test([same] * 6 + [differ] * 2, [same] * 8, "rankc")
        assert pruned["p_value"] == expected["p_value"] and pruned["mde"] == pytest.approx(expected["mde"])
    text = render(table, "md")
    assert "minimum detectable effect against dense" in text and f"rows): de {expected['mde']:.3g}" in text


def test_rankc_of_a_grid_with_several_cloze_tasks_names_one(tmp_path):
    cell = Cell({"model": "m", "method": "dense", "sparsity": None, "calib": None, "seed": None}, None,
                {"tasks": ["multiemo", "marc"], "langs": ["en"]})  # fmt: skip
    grid = Grid(tmp_path / "g.yaml", "two", tmp_path / "out", [cell])
    with pytest.raises(UserError, match="write TASK:rankc, e.g. marc:rankc"):
        build_table(grid, "rankc", "calib", "eval")


def test_table_ci_on_a_metric_without_items_is_refused(tmp_path):
    grid = fake_grid(tmp_path, {(None, None): {"en": (10.0, [[1.0, 1], [2.0, 1]])}})
    with pytest.raises(UserError, match="--ci needs per-item results"):
        build_table(grid, "snr", "calib", "eval", baseline="dense", ci=True)


def test_translation_tables_test_chrf_sentence_by_sentence_against_the_baseline(tmp_path):
    from langprune.evaluation.significance import translation_tests

    references = ["the cat sat on the mat", "a dog ran in the park", "it is raining today", "we eat bread"]
    outputs = {None: ["the cat sat on a mat", "a dog ran", "it rains today", "we eat"], "mt:fr-en": references}
    cells = []
    for calib in outputs:
        axes = {"model": "m", "method": "dense" if calib is None else "wanda", "sparsity": None, "calib": calib,
                "seed": None if calib is None else 0}  # fmt: skip
        cells.append(
            Cell(axes, None if calib is None else {"calib": calib}, {"tasks": ["translation"], "langs": ["fr"]})
        )
    grid = Grid(tmp_path / "g.yaml", "mt", tmp_path / "out", cells)
    for cell, hypotheses in zip(cells, outputs.values()):
        folder = grid.folder(cell)
        folder.mkdir(parents=True)
        chrf = translation_tests(hypotheses, hypotheses, references, "en")[1]["a"]
        result = {"chrf": chrf, "bleu": 0.0, "hypotheses": hypotheses, "references": references}
        (folder / "eval.json").write_text(json.dumps({"tasks": {"translation": {"fr-en": result}}}))
        (folder / CELL_FILE).write_text("{}")
    table = build_table(grid, "translation:chrf", "calib", "eval", baseline="dense", ci=True)
    cell = table["sections"][0]["cells"]["mt:fr-en|fr-en"]
    expected = translation_tests(outputs[None], references, references, "en")[1]
    assert cell["p_value"] == expected["p_value"] and cell["ci"] == expected["ci"] and cell["mde"] == expected["mde"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"methods": ["wandaa"]}, "wandaa"),
        ({"calibration": ["mono:xx"]}, "xx"),
        ({"evaluation": {"tasks": ["nosuchtask"], "langs": ["en"]}}, "nosuchtask"),
        ({"evaluation": {"tasks": ["ppl"], "langs": ["qq"]}}, "qq"),
        ({"exclude": [{"method": "wanda"}], "include": []}, "empty"),
        ({"seeds": []}, "empty"),
        ({"settings": {"nsample": 3}}, "unknown key 'nsample'"),
        ({"verdict": {"kind": "significant", "baseline": "mono:xx"}}, "names row 'mono:xx'"),
        ({"verdict": [{"kind": "significant", "baseline": "dense", "metric": "nosuch"}]}, "unknown metric 'nosuch'"),
        ({"verdict": {"kind": "wins"}}, "one of own-language-best"),
        ({"verdict": {"kind": "significant", "baseline": "dense", "columns": ["zh"]}}, "names column 'zh'"),
        ({"verdict": {"kind": "pairs"}}, "needs pairs"),
        ({"evaluation": {"tasks": ["ppl"], "langs": ["en"], "dtype": "float8"}}, "evaluation: unknown dtype 'float8'"),
    ],
)
def test_bad_grid_files_give_one_line_and_exit_2(checkpoint, tiny_corpora, tmp_path, cli, change, message):
    path = write_grid(tmp_path, checkpoint, **change)
    done = cli("grid", "run", path)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "grid-out").exists()


SHIPPED = sorted(p.stem for p in (Path(__file__).parents[1] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_grids_validate_in_every_profile(name):
    """Each shipped grid and each of its profiles loads: axes, recipes, tasks, rows its verdicts name."""
    path = Path(__file__).parents[1] / "experiments" / f"{name}.yaml"
    profiles = yaml.safe_load(path.read_text()).get("profiles") or {}
    for profile in [None, *profiles]:
        grid = load_grid(path, profile)
        assert grid.cells and any(cell.dense for cell in grid.cells)


def test_the_zero_shot_grid_has_the_papers_rows():
    """Section 5's design: dense, LRP2, five translation pairs (two seeds for fr and zh), contrastive twins; the
    random and monolingual controls in `paper`; multiemo in the paper's MARC languages with RankC."""
    from langprune.experiments.tables import row_label

    path = Path(__file__).parents[1] / "experiments" / "zero-shot-gains.yaml"
    for profile, seeded_twice in (
        (None, {"mt:fr-en", "mt:zh-en"}),
        ("paper", {f"mt:{x}-en" for x in "fr es zh hi sw".split()}),
    ):
        grid = load_grid(path, profile)
        rows = {row_label(cell.axes, "method+calib") for cell in grid.cells}
        assert {"dense", "dense lrp2", "wanda-contrastive mt:fr-en"} <= rows
        assert profile is None or {"random", "wanda demo:fr", "wanda demo:zh"} <= rows  # controls: paper only
        assert {f"wanda mt:{x}-en" for x in ("fr", "es", "zh", "hi", "sw")} <= rows
        twice = {c.axes["calib"] for c in grid.cells if c.axes.get("seed") == 1}
        assert twice == seeded_twice
        assert {"multiemo", "rankc"} <= set(grid.cells[0].evaluation["tasks"])
    paper = load_grid(path, "paper")
    assert set(paper.cells[0].evaluation["langs"]) == {"en", "de", "es", "fr", "ja", "zh"}
    assert paper.cells[0].evaluation["options"]["limit"] == 1000


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_experiments_run_quick_on_gemma_and_print_a_verdict(name, tmp_path):
    """Each shipped grid's --quick profile on the real model and real text, then its table."""
    if name == "zero-shot-gains":
        require_real_corpus("multiemo")
    path = Path(__file__).parents[1] / "experiments" / f"{name}.yaml"
    run = subprocess.run(
        [sys.executable, "-m", "langprune", "grid", "run", str(path), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    verdict = {"zero-shot-gains": "RankC with English rises: wanda mt:fr-en: significantly better rankc than dense"}
    assert "0 failed, 0 pending" in run.stdout
    assert verdict.get(name, "calibrating on the evaluated language gives the best") in run.stdout
    metric = {"calibration-language": "ppl", "translation-features": "translation:chrf"}.get(name, "multiemo")
    table = subprocess.run(
        [
            sys.executable,
            "-m",
            "langprune",
            "grid",
            "table",
            str(path),
            "--quick",
            "--grid-out",
            str(tmp_path),
            "--metric",
            metric,
            "--rows",
            "method+calib",
            "--baseline",
            "dense",
        ],
        capture_output=True,
        text=True,
    )
    assert table.returncode == 0, table.stderr
    assert "| dense |" in table.stdout and "–" not in table.stdout

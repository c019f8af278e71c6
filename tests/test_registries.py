"""One place per concept: a toy method with an option and a toy analysis, registered from this module alone (nothing
else edited), run through the CLI and a grid; the metric registry; settings declared once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml

from langprune.analysis import ANALYSES, Analysis, register
from langprune.compress import methods
from langprune.compress.methods import METHODS, Method, option
from langprune.errors import UserError
from langprune.runs import load_masks, load_report
from langprune.settings import setting


@dataclass
class Rotated(Method):
    """Keeps the columns whose index, rotated by ``shift``, is largest: a mask anyone can work out by hand."""

    name = "toy-rotated"
    shift: int = option(0, "toy-shift", "toy-rotated: rotate the column ranking by this many places.")

    def scores(self, layer_name, weight, statistic, seed):
        columns = weight.shape[1]
        return ((torch.arange(columns) + self.shift) % columns).float().expand_as(weight).to(weight.device)


@dataclass(kw_only=True)
class LayerCount(Analysis):
    """How many layers of each run are at least --min-sparsity sparse (a toy analysis)."""

    name: ClassVar[str] = "toy-layers"
    runs: tuple[Path, ...] = setting((), "Run folders.", argument=True, required=True)
    min_sparsity: float = setting(0.0, "Count layers at least this sparse.")

    def validate(self) -> None:
        if not 0 <= self.min_sparsity <= 1:
            raise UserError(f"--min-sparsity {self.min_sparsity} is outside [0, 1]")
        for run in self.runs:
            load_report(run)
        super().validate()

    def compute(self, reporter) -> dict:
        counts = {}
        for run in self.runs:
            layers = load_report(run)["layers"].values()
            counts[Path(run).name] = sum(info["sparsity"] >= self.min_sparsity for info in layers)
        return {"counts": counts}

    @staticmethod
    def draw(result: dict, folder: Path) -> list[Path]:
        from langprune.analysis.figures import subplots

        figure, axis = subplots()
        axis.bar(list(result["counts"]), list(result["counts"].values()))
        path = folder / "toy-layers.png"
        figure.savefig(path)
        return [path]

    @staticmethod
    def summary(result: dict) -> list[str]:
        return [f"{run}: {count} layers" for run, count in result["counts"].items()]


@pytest.fixture
def toy_method():
    methods.register(Rotated)
    yield Rotated
    METHODS.pop(Rotated.name)


@pytest.fixture
def toy_analysis():
    register(LayerCount)
    yield LayerCount
    ANALYSES.pop(LayerCount.name)


def expected_keep(shape, shift: int) -> torch.Tensor:
    """Brute force: per row, keep the half of the columns whose rotated index is largest."""
    rows, columns = shape
    keep = torch.zeros(rows, columns, dtype=torch.bool)
    for column in range(columns):
        keep[:, column] = (column + shift) % columns >= columns // 2
    return keep


def test_a_toy_method_with_an_option_runs_from_the_cli_with_its_own_flag(toy_method, checkpoint, cli, tmp_path):
    out = tmp_path / "toy"
    done = cli("prune", "--model", checkpoint, "--method", "toy-rotated", "--toy-shift", 3, "--out", out)
    assert done.returncode == 0, done.stderr
    report = load_report(out)
    assert report["method"] == "toy-rotated" and report["settings"]["toy_shift"] == 3
    for name, keep in load_masks(out).items():
        layout = keep.T if "c_" in name else keep  # GPT-2 Conv1D masks are stored in the weight's (in, out) layout
        assert torch.equal(layout, expected_keep(tuple(layout.shape), 3)), name
    wrong = cli("prune", "--model", checkpoint, "--method", "wanda", "--toy-shift", 3, "--out", tmp_path / "w")
    assert wrong.returncode == 2 and "--toy-shift applies to toy-rotated, not wanda" in wrong.stderr


def test_a_toy_method_with_an_option_runs_in_a_grid(toy_method, checkpoint, tiny_corpora, cli, tmp_path):
    spec = {
        "models": [str(checkpoint)],
        "methods": ["toy-rotated"],
        "sparsities": [0.5],
        "calibration": ["mono:en"],
        "settings": {"toy_shift": 5, "include": ["*mlp*"], "nsamples": 2, "seqlen": 16},
        "evaluation": {"tasks": ["ppl"], "langs": ["en"], "seqlen": 16},
        "out": "grid-out",
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = cli("grid", "run", path)
    assert done.returncode == 0, done.stderr
    (run,) = [p.parent for p in (tmp_path / "grid-out" / "cells").glob("*/report.json")]
    report = load_report(run)
    assert report["settings"]["toy_shift"] == 5 and report["include"] == ["*mlp*"]
    assert report["layers"] and all("mlp" in name for name in report["layers"])
    for name, keep in load_masks(run).items():
        layout = keep.T if "c_" in name else keep
        assert torch.equal(layout, expected_keep(tuple(layout.shape), 5)), name


def test_a_toy_analysis_runs_from_the_cli_and_redraws(toy_analysis, checkpoint, cli, tmp_path):
    run = tmp_path / "run"
    assert cli("prune", "--model", checkpoint, "--method", "magnitude", "--out", run).returncode == 0
    out = tmp_path / "toy-analysis"
    done = cli("analyze", "toy-layers", run, "--min-sparsity", 0.4, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "run: 12 layers" in done.stdout  # 3 GPT-2 blocks x 4 prunable layers, each half pruned
    result = json.loads((out / "analysis.json").read_text())
    assert result["analysis"] == "toy-layers" and result["settings"]["min_sparsity"] == 0.4
    (out / "toy-layers.png").unlink()
    assert cli("analyze", "plot", out).returncode == 0 and (out / "toy-layers.png").is_file()
    bad = cli("analyze", "toy-layers", run, "--min-sparsity", 2, "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "--min-sparsity 2.0 is outside" in bad.stderr


def test_every_task_type_declares_directed_metrics_and_tables_read_them():
    from langprune.evaluation.tasks import catalog
    from langprune.evaluation.types import TASK_TYPES
    from langprune.experiments.tables import metric_spec

    for task in catalog().values():
        assert TASK_TYPES[task.type].headline.better in ("higher", "lower")
    assert metric_spec("ppl")[1].lower_is_better and metric_spec("bpb")[1].field == "bits_per_byte"
    assert not metric_spec("snr")[1].lower_is_better and metric_spec("error")[1].lower_is_better
    assert metric_spec("multiemo")[1].field == "accuracy" and metric_spec("translation:chrf")[1].field == "chrf"
    for wrong, message in (
        ("nosuch", "unknown metric 'nosuch'"),
        ("accuracy", "belongs to several tasks"),
        ("ppl:accuracy", "perplexity tasks have no metric 'accuracy'"),
        ("multiemo:n", "is a count"),
    ):
        with pytest.raises(UserError, match=message):
            metric_spec(wrong)


def test_the_prune_command_and_grid_keys_come_from_the_one_settings_list():
    import dataclasses

    from typer.testing import CliRunner

    from langprune.cli import app
    from langprune.experiments.grid import setting_keys
    from langprune.runs import PruneSettings

    help_text = CliRunner().invoke(app, ["prune", "--help"], env={"COLUMNS": "200"}).output
    for field in dataclasses.fields(PruneSettings):
        if field.metadata.get("cli", True):
            assert "--" + field.name.replace("_", "-") in help_text, field.name
    assert "--ria-alpha" in help_text and "--mask-selection" in help_text
    from langprune.evaluation import EvalOptions
    from langprune.runs import EvalSettings

    eval_help = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "200"}).output
    for cls in (EvalSettings, EvalOptions):
        for field in dataclasses.fields(cls):
            if field.name != "options":
                flag = field.metadata.get("flag") or field.name.replace("_", "-")
                assert f"--{flag}" in eval_help or field.metadata.get("argument"), field.name
    assert {"include", "exclude", "tokens", "ria_alpha", "mask_selection"} <= setting_keys()
    assert not {"out", "overwrite", "model", "method"} & setting_keys()


def test_prune_replay_reproduces_a_run_bit_for_bit(checkpoint, cli, tmp_path):
    from safetensors.torch import load_file

    first, again = tmp_path / "first", tmp_path / "again"
    calib = f"file:{checkpoint / 'calib.txt'}"
    common = ("--calib", calib, "--nsamples", 4, "--seqlen", 16)
    done = cli(
        "prune", "--model", checkpoint, "--method", "sparsegpt", "--mask-selection", "block", *common, "--out", first
    )
    assert done.returncode == 0, done.stderr
    done = cli("prune", "--replay", first, "--out", again)
    assert done.returncode == 0, done.stderr
    recorded = [{k: v for k, v in load_report(run)["settings"].items() if k != "out"} for run in (first, again)]
    assert recorded[0] == recorded[1] and recorded[0]["mask_selection"] == "block"
    for shard in sorted(first.glob("*.safetensors")) + sorted((first / "masks").glob("*.safetensors")):
        left, right = load_file(shard), load_file(again / shard.relative_to(first))
        assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left), shard.name


def test_prune_config_file_takes_grid_keys_and_the_command_line_overrides_it(checkpoint, cli, tmp_path):
    config = tmp_path / "prune.yaml"
    config.write_text(
        yaml.safe_dump({"model": str(checkpoint), "method": "magnitude", "sparsity": 0.3, "include": ["*mlp*"]})
    )
    out = tmp_path / "run"
    done = cli("prune", "--config", config, "--sparsity", "0.5", "--out", out)
    assert done.returncode == 0, done.stderr
    report = load_report(out)
    assert report["method"] == "magnitude" and report["sparsity"] == "0.5" and report["include"] == ["*mlp*"]
    assert all("mlp" in name for name in report["layers"])


@pytest.mark.parametrize(
    "content, message",
    [
        ({"nsample": 3}, "unknown key 'nsample'"),
        ({"nsamples": "many"}, "nsamples in config file"),
        ({"include": "*mlp*"}, "must be a list"),
        ({"ria_alpha": "high", "method": "ria"}, "ria_alpha in config file"),
        ({"out": "x"}, "give --out on the command line"),
        ("- a list", "must be a mapping"),
    ],
)
def test_bad_config_files_are_one_line(checkpoint, cli, tmp_path, content, message):
    config = tmp_path / "prune.yaml"
    config.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    done = cli("prune", "--model", checkpoint, "--config", config, "--out", tmp_path / "run")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr and not (tmp_path / "run").exists()


def test_replay_of_a_folder_that_is_not_a_run_and_config_with_replay_are_one_line(checkpoint, cli, tmp_path):
    done = cli("prune", "--replay", tmp_path, "--out", tmp_path / "run")
    assert done.returncode == 2 and "not a langprune run folder" in done.stderr
    config = tmp_path / "c.yaml"
    config.write_text("method: magnitude\n")
    both = cli("prune", "--config", config, "--replay", tmp_path, "--out", tmp_path / "run")
    assert both.returncode == 2 and "without --config or --recipe" in both.stderr
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("langprune ")


def test_placement_options_read_the_environment_and_the_cache_honours_xdg(checkpoint, cli, tmp_path, monkeypatch):
    from langprune.storage import cache_dir

    monkeypatch.setenv("LANGPRUNE_DTYPE", "float64")
    done = cli("prune", "--model", checkpoint, "--method", "magnitude", "--out", tmp_path / "run")
    assert done.returncode == 2 and "float64" in done.stderr and not (tmp_path / "run").exists()
    given = cli(
        "prune", "--model", checkpoint, "--method", "magnitude", "--dtype", "float32", "--out", tmp_path / "run"
    )
    assert given.returncode == 0, given.stderr  # the command line wins over the environment
    monkeypatch.delenv("LANGPRUNE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "langprune"
    monkeypatch.setenv("LANGPRUNE_CACHE", str(tmp_path / "own"))
    assert cache_dir() == tmp_path / "own"

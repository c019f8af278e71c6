"""The borders with other tools: compressed-tensors' sparsity_config, the hub's model card, and ``push``."""

import json
from pathlib import Path

import pytest
import torch
from conftest import save_checkpoint, tiny_model
from hub_standin import HubStandIn
from transformers import AutoModelForCausalLM


@pytest.fixture(scope="module")
def pruned_run(checkpoint, tmp_path_factory):
    """A 2:4 SparseGPT run with w4g16 quantization and held-out perplexity, on the tiny GPT-2."""
    from langprune.runs import PruneSettings, run_prune

    out = tmp_path_factory.mktemp("ecosystem") / "run"
    calib = f"file:{checkpoint / 'calib.txt'}"
    settings = PruneSettings(model=str(checkpoint), method="sparsegpt", sparsity="2:4", calib=calib, out=out)
    settings.nsamples, settings.seqlen = 4, 16
    run_prune(settings)
    return out


def test_a_pruned_checkpoint_declares_its_sparsity_as_compressed_tensors_does(checkpoint, tmp_path, cli):
    from compressed_tensors.config import SparsityCompressionConfig

    out = tmp_path / "wanda"
    done = cli("prune", "--model", checkpoint, "--method", "wanda", "--calib", f"file:{checkpoint / 'calib.txt'}",
               "--nsamples", "2", "--seqlen", "8", "--exclude", "*mlp*", "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    report = json.loads((out / "report.json").read_text())
    assert config["quant_method"] == "compressed-tensors" and "config_groups" not in config
    sparsity = SparsityCompressionConfig.load_from_registry(
        config["sparsity_config"]["format"], **config["sparsity_config"]
    )
    assert sparsity.format == "dense" and sparsity.sparsity_structure == "unstructured"
    assert sparsity.global_sparsity == pytest.approx(report["sparsity_all_parameters"], abs=1e-6)
    assert sparsity.targets == ["Conv1D"]  # GPT-2's layers; the excluded MLPs and the head are not pruned
    assert "transformer.h.0.mlp.c_fc" in sparsity.ignore and "transformer.h.0.attn.c_attn" not in sparsity.ignore
    # Other readers still see a plain checkpoint: same weights, no quantizer in the way.
    model = AutoModelForCausalLM.from_pretrained(out)
    zeros = (model.transformer.h[0].attn.c_attn.weight == 0).float().mean().item()
    assert zeros == pytest.approx(0.5, abs=0.01)
    from langprune import load_model
    from langprune.engine.placement import placement_of

    loaded, _ = load_model(str(out), offload="disk")  # refused for a quantized checkpoint: this one is plain
    assert placement_of(loaded).describe()["offload"] == "disk"


def test_quantized_and_sparse_checkpoint_carries_both_configs(tmp_path, cli):
    checkpoint = save_checkpoint(tiny_model("llama"), tmp_path / "llama")  # Linear layers: quantizable
    out = tmp_path / "sq"
    done = cli("prune", "--model", checkpoint, "--method", "sparsegpt", "--sparsity", "2:4", "--quantize", "w4g16",
               "--calib", f"file:{checkpoint / 'calib.txt'}", "--nsamples", "2", "--seqlen", "8", "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized" and config["config_groups"]["group_0"]["weights"]["num_bits"] == 4
    assert config["sparsity_config"]["sparsity_structure"] == "2:4"


def test_model_card_metadata_parses_with_huggingface_hub(pruned_run, tiny_corpora, cli):
    from huggingface_hub import ModelCard

    card = ModelCard.load(pruned_run / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"langprune", "sparsegpt", "pruned"} <= set(card.data.tags)
    assert "| sparsity (target) | 2:4 |" in card.text and "langprune prune --replay" in card.text
    assert card.data.base_model is None  # a local folder is not a hub model
    done = cli("eval", pruned_run, "--tasks", "ppl", "--langs", "en,de", "--limit", "4")
    assert done.returncode == 0, done.stderr
    card = ModelCard.load(pruned_run / "README.md")  # rewritten with the evaluation
    assert "## Evaluation" in card.text and "| ppl | ppl |" in card.text


def test_card_names_the_base_model_and_languages_of_an_alias_run():
    from huggingface_hub import ModelCard, ModelCardData

    from langprune.runs.card import card_text

    report = {
        "model": "gemma-3-270m",
        "method": "wanda",
        "sparsity": "0.5",
        "sparsity_pruned_layers": 0.5,
        "sparsity_all_parameters": 0.3,
        "layers": {"a": {}},
        "quantization": None,
        "calibration": {"recipe": "mt:fr-en", "sequences": 8, "seqlen": 64, "seed": 0, "languages": ["fr", "en"]},
        "settings": {"eval_langs": ["en", "de"]},
        "perplexity": {"corpus": "udhr", "dense": {"en": {"ppl": 10.0}}, "pruned": {"en": {"ppl": 11.0}}},
    }
    card = ModelCard(card_text(report))
    assert isinstance(card.data, ModelCardData) and card.data.base_model == "google/gemma-3-270m"
    assert card.data.language == ["fr", "en", "de"] and "| en | 10.00 | 11.00 | +10.0% |" in card.text


def test_push_uploads_the_run_to_a_local_hub_standin(pruned_run):
    """Runs huggingface_hub's real client against tests/hub_standin.py (a local stand-in for the hub endpoint)."""
    from huggingface_hub import HfApi

    from langprune.runs.hub import push_run

    with HubStandIn() as hub:
        url = push_run(pruned_run, "me/tiny-sparse", private=True, api=HfApi(endpoint=hub.url, token=hub.token))
        assert hub.unknown == [] and url.startswith(hub.url)
        repo = hub.repos["me/tiny-sparse"]
        assert repo["private"] and repo["files"]["report.json"] == (pruned_run / "report.json").read_bytes()
        assert {"README.md", "config.json", "model.safetensors.index.json", "masks/index.json"} <= set(repo["files"])
        assert len(hub.validated) == 1 and "library_name: transformers" in hub.validated[0]
        with pytest.raises(Exception, match="HTTP 401"):
            push_run(pruned_run, "me/x", api=HfApi(endpoint=hub.url, token="wrong"))


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--repo-id", "no-owner"], {}, "has no owner"),
        (["--repo-id", "a/b c"], {}, "is not a hub repository id"),
        (["--repo-id", "a/b"], {"HF_HUB_OFFLINE": "1"}, "offline"),
    ],
)
def test_push_bad_input_is_one_line_exit_2(pruned_run, cli, monkeypatch, args, env, message):
    import huggingface_hub.constants

    for key, value in env.items():
        monkeypatch.setenv(key, value)
        monkeypatch.setattr(huggingface_hub.constants, key, True)
    done = cli("push", pruned_run, *args)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr


def test_push_of_a_folder_that_is_not_a_run_is_refused(tmp_path, cli):
    done = cli("push", tmp_path, "--repo-id", "a/b")
    assert done.returncode == 2 and "not a run folder" in done.stderr


def _prune(cli, checkpoint, out, *args):
    calib = ["--calib", f"file:{checkpoint / 'calib.txt'}", "--nsamples", "4", "--seqlen", "12"]
    done = cli("prune", "--model", checkpoint, *calib, *args, "--out", out)
    assert done.returncode == 0, done.stderr
    return json.loads((out / "report.json").read_text())["settings"]


@pytest.mark.parametrize(
    "args",
    [
        ["--method", "wanda", "--sparsity", "0.5", "--profile", "owl", "--owl-m", "3", "--owl-lambda", "0.05"],
        ["--method", "sparsegpt", "--sparsity", "1:4", "--quantize", "w4g16,asym"],
        ["--method", "none", "--quantize", "w8g16,actorder", "--exclude", "*.1.mlp.*"],
    ],
    ids=["wanda-owl", "sparsegpt-1:4-w4asym", "gptq-actorder-exclude"],
)
def test_a_runs_recipe_read_back_gives_the_same_settings_and_masks(tmp_path, cli, args):
    from langprune.runs import load_masks
    from langprune.runs.recipe import settings_from_recipe

    checkpoint = save_checkpoint(tiny_model("llama"), tmp_path / "llama")
    first = _prune(cli, checkpoint, tmp_path / "first", *args)
    recipe = tmp_path / "first" / "recipe.yaml"
    read = settings_from_recipe(recipe)
    for key in ("method", "sparsity", "quantize", "profile", "owl_m", "owl_lambda"):
        if key in read:
            assert read[key] == first[key], key
    assert read.get("quantize") == first["quantize"] and read["method"] == first["method"]
    again = _prune(cli, checkpoint, tmp_path / "again", "--recipe", recipe)
    ours, theirs = load_masks(tmp_path / "first"), load_masks(tmp_path / "again")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert again["quantize"] == first["quantize"] and again["profile"] == first["profile"]
    layers = [json.loads((tmp_path / run / "report.json").read_text())["layers"] for run in ("first", "again")]
    assert layers[0] == layers[1]  # per layer: sparsity, and the quantization error of the same GPTQ sweep


def test_recipe_yaml_follows_llm_compressors_schema_and_conventions(tmp_path, cli):
    import yaml

    checkpoint = save_checkpoint(tiny_model("llama"), tmp_path / "llama")
    _prune(cli, checkpoint, tmp_path / "run", "--method", "sparsegpt", "--sparsity", "1:4")
    text = (tmp_path / "run" / "recipe.yaml").read_text()
    recipe = yaml.safe_load(text)
    modifier = recipe["sparsity_stage"]["sparsity_modifiers"]["SparseGPTModifier"]
    assert modifier["mask_structure"] == "3:4"  # llm-compressor prunes N of M; langprune's 1:4 keeps 1
    # llm-compressor 0.14 names a Linear target "lm_head." in its Wanda/SparseGPT modifiers: an anchored pattern
    # matches both spellings, an exact name would not (and the tied head and embedding would be pruned)
    assert modifier["targets"] == ["Linear"] and modifier["ignore"] == ["re:^lm_head\\.?$"]
    assert modifier["block_size"] == 128 and modifier["dampening_frac"] == 0.01
    assert "# beyond this recipe, calibration" in text and "mask selection: row" in text


def test_a_run_no_modifier_expresses_writes_no_recipe(checkpoint, tmp_path, cli):
    _prune(cli, checkpoint, tmp_path / "ria", "--method", "ria")
    assert not (tmp_path / "ria" / "recipe.yaml").exists()


@pytest.mark.parametrize(
    "recipe, message",
    [
        ({"s_stage": {"q_modifiers": {"SmoothQuantModifier": {"smoothing_strength": 0.8}}}}, "SmoothQuantModifier"),
        ({"s_stage": {"p_modifiers": {"WandaPruningModifier": {"sparsity": 0.5, "foo": 1}}}}, "field 'foo'"),
        ({"s_stage": {"p_modifiers": {"SparseGPTModifier": {"sparsity": 0.5, "dampening_frac": 0.1}}}}, "dampening"),
        ({"s_stage": {"p_modifiers": {"WandaPruningModifier": {"sparsity": [0.5, 0.4]}}}}, "per-layer lists"),
        ({"s_stage": {"q_modifiers": {"GPTQModifier": {"scheme": "FP8"}}}}, "scheme 'FP8'"),
        ({"sparsity": 0.5}, "not a recipe stage"),
        ({"s_stage": {"p_modifiers": {"WandaPruningModifier": {"sparsity": 0.5, "ignore": ["re:.*mlp.*"]}}}}, "re:"),
    ],
)
def test_recipe_bad_input_is_one_line_exit_2_and_nothing_written(checkpoint, tmp_path, cli, recipe, message):
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = cli("prune", "--model", checkpoint, "--recipe", path, "--out", tmp_path / "out")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_recipe_with_replay_or_a_disagreeing_config_is_refused(checkpoint, tmp_path, cli):
    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"s_stage": {"p_modifiers": {"WandaPruningModifier": {"sparsity": 0.5}}}}))
    config = tmp_path / "config.yaml"
    config.write_text("method: sparsegpt\n")
    done = cli("prune", "--model", checkpoint, "--recipe", recipe, "--config", config, "--out", tmp_path / "o")
    assert done.returncode == 2 and "disagree on method" in done.stderr
    done = cli("prune", "--replay", tmp_path, "--recipe", recipe, "--out", tmp_path / "o")
    assert done.returncode == 2 and "without --config or --recipe" in done.stderr


@pytest.mark.slow  # lm-eval indexes its task registry (about 20 s)
def test_harness_results_in_lm_evals_layout_and_compare_on_logged_samples(checkpoint, pruned_run, tmp_path, cli):
    pytest.importorskip("lm_eval")
    from helpers import harness_task_folder
    from lm_eval.utils import get_file_task_name, get_latest_filename, get_results_filenames

    rows = harness_task_folder(tmp_path / "tasks", 12)
    harness = ["--tasks", "ppl", "--langs", "en", "--limit", "12", "--harness", "tiny_choice"]
    harness += ["--harness-include", tmp_path / "tasks", "--log-samples", "--num-fewshot", "1"]
    dense = cli("eval", "--model", checkpoint, *harness, "--out", tmp_path / "dense")
    assert dense.returncode == 0, dense.stderr
    pruned = cli("eval", pruned_run, *harness, "--harness-model-args", "max_length=64")
    assert pruned.returncode == 0, pruned.stderr
    for folder in (tmp_path / "dense", pruned_run):
        recorded = json.loads((folder / "eval.json").read_text())["harness"]
        assert recorded["n_shot"]["tiny_choice"] == 1
        found = [str(p) for p in (folder / "lm-eval").rglob("*.json*")]
        results_file = get_latest_filename(get_results_filenames(found))  # lm-eval's own file helpers
        assert results_file == str(folder / recorded["files"]["results"])
        results = json.loads(Path(results_file).read_text())
        assert results["results"]["tiny_choice"]["acc,none"] == recorded["results"]["tiny_choice"]["acc,none"]
        named = checkpoint.name if folder.name == "dense" else pruned_run.name  # the model (or run) folder's name
        assert results["n-shot"]["tiny_choice"] == 1 and results["model_name"] == named
        samples_file = folder / recorded["files"]["samples"]["tiny_choice"]
        assert get_file_task_name(samples_file.name) == "tiny_choice"
        samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
        assert sorted(s["doc_id"] for s in samples) == list(range(len(rows)))
        # Independent: the per-sample scores average to the task's accuracy.
        assert sum(s["acc"] for s in samples) / len(samples) == pytest.approx(
            results["results"]["tiny_choice"]["acc,none"]
        )
    compared = cli("compare", tmp_path / "dense", pruned_run, "--json")
    assert compared.returncode == 0, compared.stderr
    row = next(r for r in json.loads(compared.stdout)["rows"] if r["task"] == "lm-eval tiny_choice")
    assert row["metric"] == "acc" and row["n"] == len(rows) and 0 < row["p_value"] <= 1


def test_harness_only_options_without_harness_are_refused(checkpoint, cli):
    done = cli("eval", "--model", checkpoint, "--tasks", "ppl", "--langs", "en", "--log-samples")
    assert done.returncode == 2 and "--log-samples applies to lm-eval tasks" in done.stderr


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """wandb in offline mode, writing under this test's folder; its process-wide state torn down afterwards (it
    keeps the directory it read at the first init)."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "tracking"))
    monkeypatch.setenv("WANDB_PROJECT", "langprune-test")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield tmp_path / "tracking" / "wandb"
    wandb.teardown()


def _offline_runs(root: Path) -> list[Path]:
    return sorted(root.glob("offline-run-*"))


@pytest.mark.slow  # wandb's service starts twice (about 5 s); the grid test below covers tracking in the quick subset
def test_report_to_wandb_logs_settings_metrics_and_files_offline(
    checkpoint, tiny_corpora, tmp_path, cli, offline_wandb
):
    """wandb's offline mode: each run file holds the config and metrics (read with wandb's own Record message),
    and the run directory the run folder's small files."""
    from helpers import wandb_logged

    root = offline_wandb
    out = tmp_path / "run"
    calib = ["--calib", f"file:{checkpoint / 'calib.txt'}", "--nsamples", "2", "--seqlen", "12"]
    done = cli("prune", "--model", checkpoint, "--method", "wanda", *calib, "--eval-langs", "en,de",
               "--report-to", "wandb", "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = cli("eval", out, "--tasks", "ppl,cloze", "--langs", "en", "--limit", "6", "--report-to", "wandb")
    assert done.returncode == 0, done.stderr
    # by job type: both runs may start within one second, and wandb's folder names then sort by their random ids
    runs = {wandb_logged(run)["job_type"]: run for run in _offline_runs(root)}
    assert sorted(runs) == ["eval", "prune"]
    prune_run, eval_run = runs["prune"], runs["eval"]
    report = json.loads((out / "report.json").read_text())
    logged = wandb_logged(prune_run)
    assert logged["job_type"] == "prune" and logged["config"]["method"] == "wanda"
    assert logged["metrics"]["sparsity/all_parameters"] == pytest.approx(report["sparsity_all_parameters"])
    assert logged["metrics"]["ppl/de/pruned"] == pytest.approx(report["perplexity"]["pruned"]["de"]["ppl"])
    assert (prune_run / "files" / "report.json").is_file() and (prune_run / "files" / "README.md").is_file()
    evaluation = json.loads((out / "eval.json").read_text())
    logged = wandb_logged(eval_run)
    assert logged["job_type"] == "eval" and logged["config"]["tasks"] == ["ppl", "cloze"]
    assert logged["metrics"]["ppl/en/ppl"] == pytest.approx(evaluation["tasks"]["ppl"]["en"]["ppl"])
    assert logged["metrics"]["multiemo/en/accuracy"] == pytest.approx(evaluation["tasks"]["multiemo"]["en"]["accuracy"])
    assert (eval_run / "files" / "eval.json").is_file()


def test_grid_run_reports_each_cell_grouped_by_grid(checkpoint, tiny_corpora, tmp_path, cli, offline_wandb):
    import yaml
    from helpers import wandb_logged

    root = offline_wandb
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        yaml.safe_dump(
            {
                "name": "tracked",
                "out": str(tmp_path / "cells"),
                "models": [str(checkpoint)],
                "methods": ["magnitude"],
                "sparsities": [0.5],
                "calibration": ["mono:en"],
                "seeds": [0],
                "settings": {"nsamples": 2, "seqlen": 16},
                "evaluation": {"tasks": ["ppl"], "langs": ["en"], "seqlen": 16},
            }
        )
    )
    done = cli("grid", "run", grid, "--report-to", "wandb")
    assert done.returncode == 0, done.stdout + done.stderr
    logged = [wandb_logged(run) for run in _offline_runs(root)]
    assert len(logged) == 2 and {run["group"] for run in logged} == {"tracked"}
    assert all("ppl/en/ppl" in run["metrics"] and run["job_type"] == "grid-cell" for run in logged)
    assert sorted("sparsity/all_parameters" in run["metrics"] for run in logged) == [False, True]  # dense, pruned
    assert all((run / "files" / "cell.json").is_file() for run in _offline_runs(root))


@pytest.mark.parametrize(
    "args, message",
    [(["--report-to", "wandbx"], "unknown tracker 'wandbx'"), (["--report-to", "mlflow"], "unknown tracker")],
)
def test_report_to_bad_input_is_one_line_exit_2_and_nothing_written(checkpoint, tmp_path, cli, args, message):
    done = cli("prune", "--model", checkpoint, *args, "--out", tmp_path / "out")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_report_to_a_tracker_not_installed_is_refused(checkpoint, tmp_path, cli, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    done = cli("prune", "--model", checkpoint, "--report-to", "wandb", "--out", tmp_path / "out")
    assert done.returncode == 2 and "pip install 'langprune[tracking]'" in done.stderr


@pytest.mark.slow  # a fresh interpreter imports torch and transformers (about 10 s)
def test_a_plain_prune_imports_no_heavy_optional_library(checkpoint, tmp_path):
    """matplotlib only when drawing, compressed-tensors only when quantizing, trackers and lm-eval only when asked."""
    import subprocess
    import sys

    script = f"""
import sys
from langprune.runs import PruneSettings, run_prune
settings = PruneSettings(model={str(checkpoint)!r}, method="wanda", calib="file:{checkpoint / "calib.txt"}",
                         nsamples=2, seqlen=8, out={str(tmp_path / "run")!r})
run_prune(settings)
print(sorted(m for m in ("compressed_tensors", "matplotlib", "wandb", "lm_eval", "ray") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["quantization_config"]["sparsity_config"]


def test_a_recipe_or_config_that_is_a_folder_is_one_line(checkpoint, tmp_path, cli):
    for option in ("--recipe", "--config"):
        done = cli("prune", "--model", checkpoint, option, tmp_path, "--out", tmp_path / "out")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and "is a folder" in lines[0], done.stderr

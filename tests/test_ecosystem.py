"""The borders with other tools: compressed-tensors' sparsity_config, the hub's model card, and ``push``."""

import json

import pytest
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

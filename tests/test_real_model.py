"""Integration tests on the real default model, gemma-3-270m (marked slow)."""

import math

import pytest
import torch
from conftest import real_corpus_missing, require_real_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    from langprune import load_model

    return load_model("gemma-3-270m")


def test_alias_loads_a_real_multilingual_model(gemma):
    from langprune.evaluation import text_nll

    model, tokenizer = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.dtype == torch.float32
    real = text_nll(model, tokenizer, ["Alle Menschen sind frei und gleich an Würde und Rechten geboren."])
    shuffled = text_nll(model, tokenizer, ["Würde sind Rechten Menschen an frei geboren und gleich Alle und."])
    assert real["nll"] / real["tokens"] < shuffled["nll"] / shuffled["tokens"]


def test_wanda_on_udhr_prunes_gemma_and_keeps_it_a_language_model(gemma, tmp_path):
    from helpers import save_run
    from transformers import AutoModelForCausalLM

    from langprune import calibration, prune
    from langprune.evaluation import perplexity

    model, tokenizer = gemma
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        calib = calibration.build("mix:en+de+sw", tokenizer, nsamples=6, seqlen=128, seed=0)
        dense = perplexity(model, tokenizer, ["en", "sw"], seqlen=256)
        model, result = prune(model, tokenizer, calib, "wanda", "0.3", batch_size=3)
        pruned = perplexity(model, tokenizer, ["en", "sw"], seqlen=256)
        assert result.summary["sparsity_pruned_layers"] == pytest.approx(0.3, abs=0.002)
        assert len(result.masks) == 18 * 7
        for lang in ("en", "sw"):
            assert (
                math.isfinite(pruned[lang]["ppl"])
                and dense[lang]["ppl"] < pruned[lang]["ppl"] < 20 * dense[lang]["ppl"]
            )
        save_run(tmp_path / "run", model, tokenizer, result.changes, {"model": "gemma-3-270m", **result.summary})
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
        q = reloaded.model.layers[3].self_attn.q_proj.weight
        assert (q == 0).float().mean().item() == pytest.approx(0.3, abs=0.002)
    finally:
        model.load_state_dict(state)


def test_gemma_evaluation_on_real_data(gemma):
    """Every task kind on real corpora: numbers in plausible ranges, fidelity against a magnitude-pruned copy."""
    from langprune import load_model, prune_model
    from langprune.evaluation import EvalOptions, evaluate

    model, tokenizer = gemma
    settings = EvalOptions(seqlen=256, batch_size=4, limit=8, translation_corpus="udhr")
    reviews = real_corpus_missing("multiemo") is None  # MultiEmo feeds cloze and RankC; the rest runs regardless
    tasks = ["ppl", "mcq", "translation", *(["cloze", "rankc"] if reviews else [])]
    dense = evaluate(model, tokenizer, tasks, ["fr"], settings)["tasks"]
    assert 3 < dense["ppl"]["fr"]["ppl"] < 40 and 0.3 < dense["ppl"]["fr"]["bits_per_byte"] < 2
    assert dense["mmlu"]["fr"]["n"] == 8
    assert dense["translation"]["fr-en"]["chrf"] > 25  # 4-shot UDHR French to English is well within a 270M model
    pruned, _ = load_model("gemma-3-270m")
    prune_model(pruned, None, "magnitude", "0.3")
    fidelity = evaluate(pruned, tokenizer, ["fidelity"], ["en"], settings, dense=model)["tasks"]["fidelity"]["en"]
    assert len(fidelity["layers"]) == 18 and fidelity["identical_layers"] == 0
    assert 0 < fidelity["snr_db"] < 60 and fidelity["pruning_error"] > 0
    require_real_corpus("multiemo")  # everything above held; say that cloze and RankC could not run
    assert dense["multiemo"]["fr"]["n"] == 8
    assert 0 < dense["rankc"]["multiemo"]["fr"]["rankc"] <= 1


def test_smollm2_alias_loads_and_prunes_as_a_llama():
    """The second alias goes through the same loader and engine (Llama architecture, GQA)."""
    from langprune import calibration, load_model, prune
    from langprune.evaluation import text_nll

    model, tokenizer = load_model("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM"
    text = ["All human beings are born free and equal in dignity and rights. They are endowed with reason."]
    dense = text_nll(model, tokenizer, text)
    calib = calibration.build("mono:en", tokenizer, nsamples=4, seqlen=128, seed=0)
    model, result = prune(model, tokenizer, calib, "sparsegpt", "2:4", batch_size=2)
    pruned = text_nll(model, tokenizer, text)
    assert result.summary["sparsity_pruned_layers"] == pytest.approx(0.5)
    assert len(result.masks) == model.config.num_hidden_layers * 7
    assert dense["nll"] < pruned["nll"] < 10 * dense["nll"]


def test_every_analysis_on_gemma_with_real_text(tmp_path):
    """Two small wanda runs (de, en), then features, masks, lape and lsar on real UDHR text in five languages."""
    from langprune.analysis import FeatureOverlap, Lape, Lsar, MaskOverlap, run_analysis
    from langprune.runs import PruneSettings, run_prune

    runs = []
    for language in ("de", "en"):
        runs.append(tmp_path / f"wanda-{language}")
        run_prune(PruneSettings(out=runs[-1], calib=f"mono:{language}", nsamples=2, seqlen=64, batch_size=2))
    langs = ("en", "de", "fr", "zh", "sw")
    features = run_analysis(
        FeatureOverlap(out=tmp_path / "features", sets=("demo:en", "demo:fr", "mt:fr-en"), nsamples=3, seqlen=256)
    )
    assert len(features["overlap"]) == 18 and all(
        features["overlap"][k][i][i] == 0 for k in range(18) for i in range(3)
    )
    assert features["unique_top"] and all(0 <= e["share"]["20"] <= 1 for e in features["unique_top"])
    masks = run_analysis(MaskOverlap(out=tmp_path / "masks", runs=tuple(runs)))
    iou = [v for per in masks["iou"]["de|en"].values() for v in per]
    assert len(iou) == 18 * 7 and all(0.3 < v < 1 for v in iou)  # related masks: far above random (1/3), not identical
    lape = run_analysis(Lape(out=tmp_path / "lape", pruned=(runs[0],), langs=langs, limit=4))
    dense, pruned = (lape["per_model"][label] for label in lape["models"])
    assert lape["focus_language"] == "de" and lape["neurons_per_block"] == 2048
    assert dense["lape_box"][0]["med"] < dense["lape_box"][-1]["med"] <= math.log(5) + 1e-9
    assert sum(dense["specific_counts"].values()) > 0 and 0 <= pruned["specific_kept"] <= 1
    lsar = run_analysis(Lsar(out=tmp_path / "lsar", pruned=tuple(runs), langs=langs, limit=4))
    for label in lsar["models"][1:]:
        for part in ("agnostic", "specific"):
            values = [v for per in lsar["delta"][label]["magnitude"][part].values() for v in per]
            assert len(values) == 18 * 5 and all(math.isfinite(v) and v > 0 for v in values)
    for name in ("features", "masks", "lape", "lsar"):
        assert list((tmp_path / name).glob("figure*.png"))


def test_gptq_on_gemma_beats_round_to_nearest_and_its_checkpoint_loads(tmp_path):
    """Joint sparsegpt + GPTQ w4g128 through the run cell; the compressed-tensors folder loads in transformers and langprune."""
    from helpers import round_to_nearest
    from transformers import AutoModelForCausalLM

    from langprune import PruneSettings, load_model, run_prune
    from langprune.compress.quantization import QuantSpec
    from langprune.engine import LayerFilter, find_blocks, prunable_layers, weight_matrix
    from langprune.evaluation import perplexity

    report = run_prune(
        PruneSettings(
            out=tmp_path / "gptq",
            calib="mix:en+de",
            method="none",
            quantize="w4g128",
            nsamples=6,
            seqlen=256,
            batch_size=3,
        )
    )
    assert report["quantization"]["spec"] == "w4g128" and len(report["layers"]) == 126
    quantized, tokenizer = load_model(str(tmp_path / "gptq"))
    rtn, _ = load_model("gemma-3-270m")
    blocks_name, blocks = find_blocks(rtn)
    with torch.no_grad():
        for index, block in enumerate(blocks):
            for layer in prunable_layers(block, f"{blocks_name}.{index}", LayerFilter((), ())).values():
                weight_matrix(layer).copy_(round_to_nearest(weight_matrix(layer), QuantSpec.parse("w4g128"))[0])
    ppl_gptq = perplexity(quantized, tokenizer, ["en", "de"], seqlen=256)
    ppl_rtn = perplexity(rtn, tokenizer, ["en", "de"], seqlen=256)
    for lang in ("en", "de"):
        assert math.isfinite(ppl_gptq[lang]["ppl"]) and ppl_gptq[lang]["ppl"] < ppl_rtn[lang]["ppl"]
    ids = tokenizer(["Alle Menschen sind frei und gleich an Würde und Rechten geboren."], return_tensors="pt").input_ids
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "gptq")(ids).logits
        assert torch.allclose(plain, quantized(ids).logits, atol=1e-4)

"""Serving languages: weighted mixes (``mix:de=1+hi=2``) and ``--serve LANG[=WEIGHT],...`` on prune, the API and grids."""

import json
from fractions import Fraction

import pytest
import torch
import yaml
from conftest import tiny_model

from langprune import UserError
from langprune.calibration import build, parse_recipe, serve_recipe, shares
from langprune.compress.methods import METHODS


@pytest.mark.parametrize("total", [1, 7, 10, 33, 100])
@pytest.mark.parametrize("weights", [[1, 1], [1, 2, 1], [0.5, 3, 1.25, 1], [5, 1]])
def test_shares_follow_the_weights_within_one_sequence(total, weights):
    counts = shares(total, weights)
    assert sum(counts) == total
    exact = [Fraction(total) * Fraction(w) / sum(map(Fraction, weights)) for w in weights]
    assert all(abs(c - e) < 1 for c, e in zip(counts, exact))


@pytest.mark.parametrize("total", range(1, 40))
@pytest.mark.parametrize("k", [2, 3, 6])
def test_equal_weights_split_as_before(total, k):
    """Unweighted mixes keep their split (the first total % k languages get one more): old runs repeat."""
    assert shares(total, [1.0] * k) == [total // k + (i < total % k) for i in range(k)]


def test_weighted_mix_recipes_parse_and_keep_the_old_forms():
    assert parse_recipe("mix:de+hi@wikilingua").corpus == "wikilingua"  # the whole mix, as before
    weighted = parse_recipe("mix:de=1+hi@wikilingua=2+sw=0.5")
    assert weighted.weights == (1.0, 2.0, 0.5) and weighted.corpora == ("udhr", "wikilingua", "udhr")
    assert parse_recipe("mix:en=1+de=3@wikilingua").corpus == "wikilingua"  # after the last weight: default
    assert serve_recipe("de,hi=2,sw") == serve_recipe({"de": 1, "hi": 2, "sw": 1}) == "mix:de=1+hi=2+sw=1"


def test_weighted_token_shares_match_the_weights(tiny_corpora, tok):
    built = build("mix:en=1+fr=2+de=1", tok, nsamples=8, seqlen=8)
    per_language = {s["language"]: s["sequences"] for s in built.sources}
    assert per_language == {"en": 2, "fr": 4, "de": 2} and built.input_ids.shape == (8, 8)
    assert [s["weight"] for s in built.sources] == [1.0, 2.0, 1.0]
    unweighted = build("mix:en+fr+de", tok, nsamples=8, seqlen=8)
    assert [s["sequences"] for s in unweighted.sources] == [3, 3, 2] and "weight" not in unweighted.sources[0]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from conftest import tiny_tokenizer

    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize(
    "method, extra",
    [(m, []) for m in sorted(METHODS) if m not in ("none", "wanda-contrastive")]
    + [("none", ["--quantize", "w4g16"]), ("wanda-contrastive", ["--contrast", "mono:de"])],
)
def test_serve_runs_with_every_method_and_records_its_plan(tiny_corpora, tmp_path, cli, method, extra):
    from conftest import save_checkpoint

    checkpoint = save_checkpoint(tiny_model("llama"), tmp_path / "llama")
    out = tmp_path / "run"
    done = cli("prune", "--model", checkpoint, "--serve", "en,fr=2,de", "--method", method, *extra,
               "--nsamples", "8", "--seqlen", "12", "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    plan = report["serve"]
    assert plan["recipe"] == "mix:en=1+fr=2+de=1"
    if method not in ("magnitude", "random"):  # those two read no calibration
        assert report["calibration"]["recipe"] == plan["recipe"]
    assert {lang: p["sequences"] for lang, p in plan["languages"].items()} == {"en": 2, "fr": 4, "de": 2}
    assert plan["languages"]["fr"]["token_share"] == 0.5 and plan["languages"]["de"]["corpus"] == "udhr"
    assert report["settings"]["serve"] == "en,fr=2,de"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--serve", "en,xx"], "unknown language code 'xx'"),
        (["--serve", "en=0,fr"], "above 0"),
        (["--serve", "en=-1"], "above 0"),
        (["--serve", "en=nan"], "above 0"),
        (["--serve", "en=abc"], "is not a number"),
        (["--serve", "en,fr,en"], "names en twice"),
        (["--serve", "en", "--calib", "mono:en"], "not --calib and --serve"),
    ],
)
def test_serve_bad_input_is_one_line_exit_2_and_nothing_written(checkpoint, tiny_corpora, tmp_path, cli, args, message):
    done = cli("prune", "--model", checkpoint, *args, "--out", tmp_path / "out")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_python_api_serves_a_dict_of_weights(tiny_corpora, tok):
    from langprune import prune

    model, result = prune(tiny_model("llama"), tok, None, "wanda", 0.5, serve={"en": 1, "de": 3}, nsamples=4, seqlen=8)
    assert result.summary["calibration"]["recipe"] == "mix:en=1+de=3"
    assert [s["sequences"] for s in result.summary["calibration"]["sources"]] == [1, 3]
    with pytest.raises(UserError, match="not both"):
        prune(tiny_model("llama"), tok, "mono:en", serve={"en": 1})


def test_a_grid_serves_from_its_settings(checkpoint, tiny_corpora, tmp_path):
    from langprune.experiments import load_grid

    spec = {"name": "served", "models": [str(checkpoint)], "methods": ["wanda"], "settings": {"serve": "en,de=2"},
            "evaluation": {"tasks": ["ppl"], "langs": ["en"]}, "out": str(tmp_path / "cells")}  # fmt: skip
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    cells = [c for c in load_grid(path).cells if not c.dense]
    assert len(cells) == 1 and cells[0].prune["serve"] == "en,de=2" and cells[0].prune["calib"] is None
    path.write_text(yaml.safe_dump({**spec, "calibration": ["mono:en"]}))
    with pytest.raises(UserError, match="leave out the calibration axis"):
        load_grid(path)


def test_serving_weights_shift_the_statistics_towards_the_heavier_language(tiny_corpora, tok):
    """The weights reach pruning: a 1:3 serve gives the calibration rows of a 1:3 mix, language by language."""
    weighted = build(serve_recipe({"en": 1, "de": 3}), tok, nsamples=8, seqlen=8)
    assert weighted.row_languages.count("de") == 6 and weighted.row_languages.count("en") == 2
    assert torch.equal(weighted.input_ids, build("mix:en=1+de=3", tok, nsamples=8, seqlen=8).input_ids)


def _tagged_batches(seed: int = 0):
    from langprune.engine import Tag

    g = torch.Generator().manual_seed(seed)
    scales = {"en": 1.0, "de": 4.0}  # de's activations are larger: they dominate a plain mixed statistic
    batches = [(torch.randn(n, 16, generator=g) * scales[lang], Tag("calibration", lang)) for lang, n in
               [("en", 5), ("en", 7), ("de", 3), ("de", 2), ("de", 6)]]  # fmt: skip
    tokens = {"en": 12, "de": 11}
    return batches, tokens


def test_default_aggregation_is_todays_mixed_statistic_bit_for_bit():
    from langprune.engine.statistics import Hessian, LanguageAggregation, SquaredNorms

    batches, tokens = _tagged_batches()
    default = LanguageAggregation("tokens", 1.0, {"en": 1.0, "de": 2.0}, tokens)
    for kind in (SquaredNorms, Hessian):
        plain, aggregated = kind(16, "layer"), kind(16, "layer", aggregation=default)
        for x, tag in batches:
            plain.add_batch(x, tag)
            aggregated.add_batch(x, tag)
        assert torch.equal(plain.value, aggregated.value)


@pytest.mark.parametrize("mode, power", [("max", None), ("mean", 1.0), ("power", 3.0)])
def test_aggregated_norms_equal_a_brute_force_power_mean_of_per_language_norms(mode, power):
    from langprune.engine.statistics import LanguageAggregation, SquaredNorms

    batches, tokens = _tagged_batches()
    weights = {"en": 2.0, "de": 1.0}
    aggregation = LanguageAggregation(mode, power or float("inf"), weights, tokens)
    norms = SquaredNorms(16, "layer", aggregation=aggregation)
    for x, tag in batches:
        norms.add_batch(x, tag)
    per_token = {}
    for lang in weights:
        xs = torch.cat([x.double() for x, tag in batches if tag.language == lang])
        per_token[lang] = (xs**2).sum(0) / xs.shape[0]
    if mode == "max":
        expected = torch.maximum(per_token["en"], per_token["de"])
    else:
        p = power
        expected = ((weights["en"] * per_token["en"] ** p + weights["de"] * per_token["de"] ** p) / 3.0) ** (1 / p)
    assert torch.allclose(norms.value, expected, rtol=1e-6)


def test_mean_aggregated_hessian_is_the_weighted_mean_of_per_language_hessians():
    from langprune.engine.statistics import Hessian, LanguageAggregation

    batches, tokens = _tagged_batches(1)
    weights = {"en": 1.0, "de": 3.0}
    hessian = Hessian(16, "layer", aggregation=LanguageAggregation("mean", 1.0, weights, tokens))
    for x, tag in batches:
        hessian.add_batch(x, tag)
    per_language = {}
    for lang in weights:
        xs = torch.cat([x.double() for x, tag in batches if tag.language == lang])
        per_language[lang] = 2.0 / xs.shape[0] * xs.T @ xs
    expected = (weights["en"] * per_language["en"] + weights["de"] * per_language["de"]) / 4.0
    assert torch.allclose(hessian.value.double(), expected, rtol=1e-5, atol=1e-6)


def _owl_ratios(rows: torch.Tensor, languages: list[str], aggregate: str) -> list[float]:
    from langprune.calibration import CalibrationSet
    from langprune.compress import prune_model

    sources = [{"language": "en", "weight": 1.0}, {"language": "de", "weight": 1.0}]
    calibration = CalibrationSet(rows, torch.ones_like(rows), sources, "mix:en+de", row_languages=languages)
    result = prune_model(tiny_model("llama"), calibration, "magnitude", 0.5, profile="owl", lang_aggregate=aggregate)
    return result.summary["profile"]["outlier_ratios"]


def test_owl_outlier_ratios_follow_the_language_aggregation():
    """A language repeated three times weighs three times as much in today's mixed norms, and the same in a
    mean of per-language norms: OWL's ratios read the run's aggregation."""
    from conftest import token_ids

    en, de = token_ids(2, 12, seed=1), token_ids(2, 12, seed=2) % 7 + 3  # de: a few frequent tokens
    once, thrice = torch.cat([en, de]), torch.cat([en, de, de, de])
    languages_once, languages_thrice = ["en"] * 2 + ["de"] * 2, ["en"] * 2 + ["de"] * 6
    assert _owl_ratios(once, languages_once, "mean") == _owl_ratios(thrice, languages_thrice, "mean")
    assert _owl_ratios(once, languages_once, "tokens") != _owl_ratios(thrice, languages_thrice, "tokens")
    assert _owl_ratios(once, languages_once, "max") != _owl_ratios(once, languages_once, "mean")


@pytest.mark.parametrize(
    "method, aggregate", [("wanda", "max"), ("wanda", "power:2"), ("ria", "mean"), ("sparsegpt", "mean")]
)
def test_lang_aggregate_runs_and_is_recorded(tiny_corpora, tmp_path, cli, method, aggregate):
    from conftest import save_checkpoint

    checkpoint = save_checkpoint(tiny_model("llama"), tmp_path / "llama")
    out = tmp_path / "run"
    done = cli("prune", "--model", checkpoint, "--serve", "en,de=3", "--method", method, "--lang-aggregate",
               aggregate, "--nsamples", "8", "--seqlen", "12", "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "report.json").read_text())["lang_aggregate"]
    assert record["mode"] == aggregate.split(":")[0] and record["weights"] == {"en": 1.0, "de": 3.0}
    assert record["tokens"] == {"en": 24, "de": 72}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--serve", "en,de", "--method", "sparsegpt", "--lang-aggregate", "max"], "takes tokens or mean"),
        (["--serve", "en,de", "--method", "none", "--quantize", "w4", "--lang-aggregate", "power:2"], "GPTQ"),
        (["--serve", "en,de", "--lang-aggregate", "median"], "choose tokens, mean, max, power:P"),
        (["--serve", "en,de", "--lang-aggregate", "power:-1"], "choose tokens"),
        (["--serve", "en,de", "--method", "magnitude", "--lang-aggregate", "max"], "reads no calibration statistic"),
    ],
)
def test_lang_aggregate_bad_input_is_one_line(checkpoint, tiny_corpora, tmp_path, cli, args, message):
    done = cli("prune", "--model", checkpoint, *args, "--out", tmp_path / "out")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_lang_aggregate_needs_rows_with_languages(checkpoint, tmp_path, cli):
    done = cli("prune", "--model", checkpoint, "--calib", f"file:{checkpoint / 'calib.txt'}", "--lang-aggregate",
               "max", "--nsamples", "2", "--seqlen", "8", "--out", tmp_path / "out")  # fmt: skip
    assert done.returncode == 2 and "rows have none" in done.stderr and not (tmp_path / "out").exists()

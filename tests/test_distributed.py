"""Data-parallel calibration and evaluation on torch.distributed (gloo, two CPU processes under torchrun).

Each two-rank run is compared with the same command run in one process: masks identical, SparseGPT weights within
float rounding, eval.json identical. The faults a user meets (more ranks than batches, ranks started with
different settings, a rank killed mid-run) each end in one ``error:`` line per process and no output folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_checkpoint, tiny_model

from langprune.engine import distributed
from langprune.errors import UserError

HERE = Path(__file__).parent


def torchrun(*args, env=None, script: Path | None = None, ranks: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node RANKS -m langprune ARGS`` (or ``script ARGS``) in a fresh process."""
    target = [str(script)] if script else ["-m", "langprune"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    return subprocess.run(
        [*command, *target, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=300,
    )


def worker_tracebacks(result: subprocess.CompletedProcess) -> int:
    """Tracebacks the ranks printed: torchrun adds one of its own (ChildFailedError) whenever a worker exits
    non-zero, and its lines may come before or after the workers' own."""
    own = 1 if "ChildFailedError" in result.stderr else 0
    return result.stderr.count("Traceback (most recent call last)") - own


def errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return save_checkpoint(tiny_model("llama", seed=3), tmp_path_factory.mktemp("tiny-llama"))


def prune_args(model: Path, out: Path, *extra) -> list:
    calib = f"file:{model / 'calib.txt'}"
    return ["prune", "--model", model, "--calib", calib, "--nsamples", 8, "--seqlen", 16, "--batch-size", 2,
            "--device", "cpu", "--out", out, *extra]  # fmt: skip


def block_tensors(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for shard in sorted(run.glob("model-block-*.safetensors")):
        out.update(load_file(shard))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "method", [["--method", "wanda", "--profile", "owl"], ["--method", "sparsegpt"], ["--method", "ria"]]
)
def test_two_ranks_prune_as_one_process_does(llama, tmp_path, cli, method):
    from langprune.runs.folder import load_masks, load_report

    one, two = tmp_path / "one", tmp_path / "two"
    assert cli(*prune_args(llama, one, *method)).returncode == 0
    result = torchrun(*prune_args(llama, two, *method))
    assert result.returncode == 0, result.stderr[-2000:]
    masks_one, masks_two = load_masks(one), load_masks(two)
    assert masks_one.keys() == masks_two.keys() and len(masks_one) == 21
    assert all(torch.equal(masks_one[k], masks_two[k]) for k in masks_one)
    weights_one, weights_two = block_tensors(one), block_tensors(two)
    for name, tensor in weights_one.items():
        if method[1] == "sparsegpt":  # Hessians summed in another order: float32 rounding, no more
            torch.testing.assert_close(weights_two[name], tensor, rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(weights_two[name], tensor), name
    report = load_report(two)
    assert report["distributed"] == {"ranks": 2, "backend": "gloo"}
    assert report["calibration"] == load_report(one)["calibration"]  # every rank built the whole set
    assert result.stdout.count("pruned 21 layers") == 1  # rank 0 speaks for the run
    assert not list(tmp_path.glob(".*partial*"))


def four_bit_codes(packed: torch.Tensor) -> torch.Tensor:
    """The eight 4-bit codes in each int32 of a compressed-tensors ``weight_packed``, low bits first."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    return ((packed.to(torch.int32).unsqueeze(-1) >> shifts) & 0xF).reshape(-1)


@pytest.mark.slow
def test_two_ranks_quantize_with_gptq_as_one_process_does(llama, tmp_path, cli):
    """GPTQ's Hessians are all-reduced like SparseGPT's (whose pruned weights the test above holds to 1e-4). Summed
    in another order, a Hessian differs by float32 rounding, which moves a few weights across a rounding boundary;
    GPTQ's error feedback then carries the flip along the row, and a dynamic group's scale follows, so how many codes
    move depends on the CPU's BLAS (17 of 27648 on an AMD EPYC, 4.1% by up to 8 steps on an Intel Xeon with AMX).
    What must not move is the quality: each layer's output error within 15% of the one-process run's (6.5% at most
    measured), nearly every code the same, the tensors quantization does not touch identical."""
    from langprune.runs.folder import load_report

    args = ["--method", "sparsegpt", "--sparsity", "0.5", "--quantize", "w4g16"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli(*prune_args(llama, one, *args)).returncode == 0
    result = torchrun(*prune_args(llama, two, *args))
    assert result.returncode == 0, result.stderr[-2000:]
    tensors_one, tensors_two = block_tensors(one), block_tensors(two)
    assert tensors_one.keys() == tensors_two.keys()
    packed = [name for name in tensors_one if name.endswith("weight_packed")]
    assert len(packed) == 21
    codes_one = torch.cat([four_bit_codes(tensors_one[n]) for n in packed])
    codes_two = torch.cat([four_bit_codes(tensors_two[n]) for n in packed])
    assert (codes_one != codes_two).float().mean() < 0.1
    reports = load_report(one)["layers"], load_report(two)["layers"]
    for name, info in reports[0].items():  # a flipped code is compensated along its row: the same output error
        error_one, error_two = info["quantization"]["output_error"], reports[1][name]["quantization"]["output_error"]
        assert abs(error_one - error_two) <= 0.15 * error_one + 1e-6, name
    for name, tensor in tensors_one.items():
        if tensor.is_floating_point() and not name.endswith("weight_scale"):
            assert torch.equal(tensors_two[name], tensor), name
    assert result.stdout.count("quantized 21 layers") == 1


@pytest.mark.slow
def test_two_ranks_evaluate_as_one_process_does(llama, tmp_path, cli, tiny_corpora):
    env = {"LANGPRUNE_CACHE": str(tiny_corpora)}
    args = ["eval", "--model", llama, "--tasks", "ppl,multiemo,rankc", "--langs", "en,fr", "--limit", 13,
            "--batch-size", 3, "--device", "cpu"]  # fmt: skip
    assert cli(*args, "--out", tmp_path / "one").returncode == 0
    result = torchrun(*args, "--out", tmp_path / "two", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = (json.loads((tmp_path / side / "eval.json").read_text()) for side in ("one", "two"))
    one.pop("provenance"), two.pop("provenance")
    assert one == two
    assert len(one["tasks"]["multiemo"]["fr"]["items"]) == 13


def close(a, b, rel: float = 1e-9) -> bool:
    """Equal JSON values, floats within ``rel`` (sums taken in another order)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=1e-12)
    return a == b


@pytest.mark.slow
def test_two_ranks_count_lape_neurons_as_one_process_does(llama, tmp_path, cli, tiny_corpora):
    env = {"LANGPRUNE_CACHE": str(tiny_corpora)}
    args = ["analyze", "lape", "--model", llama, "--langs", "en,fr,de", "--seqlen", 24, "--batch-size", 16,
            "--device", "cpu"]  # fmt: skip
    assert cli(*args, "--out", tmp_path / "one").returncode == 0
    result = torchrun(*args, "--out", tmp_path / "two", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("wrote ") == 1
    one, two = (json.loads((tmp_path / side / "analysis.json").read_text()) for side in ("one", "two"))
    for side in (one, two):
        for key in ("provenance", "seconds", "settings"):
            side.pop(key)
    assert close(one, two)


@pytest.mark.slow
def test_more_ranks_than_batches_is_one_error_per_rank(llama, tmp_path):
    out = tmp_path / "run"
    result = torchrun(*prune_args(llama, out, "--nsamples", 2, "--batch-size", 2))
    assert result.returncode != 0
    assert errors(result) == ["error: 2 ranks but only 1 calibration batches: start at most 1 processes "
                              "(--nproc-per-node), or give more --nsamples or a smaller --batch-size"] * 2  # fmt: skip
    assert worker_tracebacks(result) == 0 and not out.exists()


@pytest.mark.slow
def test_ranks_with_different_settings_are_refused(llama, tmp_path):
    out = tmp_path / "run"
    result = torchrun("--seed-on-rank1", 7, *prune_args(llama, out), script=HERE / "rank_faults.py")
    assert result.returncode != 0
    lines = errors(result)
    assert len(lines) == 2 and all("rank 1 differs from rank 0 in seed" in line for line in lines), result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_a_rank_killed_mid_run_leaves_no_folder_and_a_rerun_works(llama, tmp_path):
    out = tmp_path / "run"
    result = torchrun("--rank1-dies-at-block", 1, *prune_args(llama, out), script=HERE / "rank_faults.py")
    assert result.returncode != 0
    assert worker_tracebacks(result) == 0, result.stderr[-3000:]
    assert errors(result) and all("another rank" in line for line in errors(result)), result.stderr
    assert not out.exists()
    again = torchrun(*prune_args(llama, out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "report.json").is_file() and not list(tmp_path.glob(".*partial*"))


def test_shares_cover_every_item_once_and_differ_by_at_most_one():
    items = list(range(11))
    shares = [distributed.World(rank, 3).share(items) for rank in range(3)]
    assert sorted(sum(shares, [])) == items
    assert {len(s) for s in shares} <= {3, 4}


def test_a_single_process_needs_no_process_group():
    assert distributed.world() == distributed.World()
    assert distributed.run_shared([[0, 1], [2]], lambda chunk: {i: i * i for i in chunk}) == {0: 0, 1: 1, 2: 4}
    distributed.check_agreement({"seed": 0})  # nothing to compare with
    distributed.check_share(1)


def test_an_unknown_backend_is_refused_before_anything_loads(cli, llama, tmp_path):
    result = cli(*prune_args(llama, tmp_path / "run", "--dist-backend", "mpi"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: unknown distributed backend 'mpi': use auto, gloo, nccl"]


def test_nccl_without_gpus_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: NCCL is available here")
    with pytest.raises(UserError, match="nccl backend is not available"):
        distributed.choose_backend("nccl", torch.device("cpu"))

"""benchmarks/gpu_check.py: the script a session lent a GPU runs; here it must say there is none and exit 0."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: gpu_check.py runs in full here")
def test_without_a_gpu_it_says_so_and_exits_0(capsys):
    assert gpu_check().main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [
        "gpu_check: this torch is a CPU-only build; nothing to check here (run it on a machine with a CUDA GPU)"
    ]


@pytest.mark.slow
def test_its_steps_run_on_the_cpu_with_a_tiny_shape(capsys, tmp_path):
    """Every step of the check (build, six timed prunes from the same weights, the float32 mask comparison) on a
    tiny shape, so the script cannot rot while no GPU is lent; on the CPU both sides of the comparison agree."""
    summary_file = tmp_path / "gpu_check.json"
    args = ["--cpu-dry-run", "--skip-tests", "--nsamples", "2", "--seqlen", "16", "--json", str(summary_file)]
    assert gpu_check().main(args) == 0
    summary = json.loads(summary_file.read_text())
    runs = {(r["offload"], r["method"]): r for r in summary["runs"]}
    assert set(runs) == {(o, m) for o in ("none", "cpu") for m in ("wanda", "sparsegpt", "gptq w4g128")}
    assert runs["none", "wanda"]["zeros_in_layers"] == pytest.approx(0.5) == runs["cpu", "sparsegpt"]["zeros_in_layers"]
    assert all(r["seconds_per_block"] > 0 for r in runs.values())
    assert [r["mask_agreement"] for r in summary["cpu_reference"]] == [1.0, 1.0]

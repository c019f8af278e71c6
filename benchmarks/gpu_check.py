"""A ready GPU check: the Llama-3-8B-shaped model built on the GPU, pruned and quantized there, checked against the CPU.

    PYTHONPATH=src python3 benchmarks/gpu_check.py [--json gpu_check.json] [--skip-tests]

For a session that is lent a CUDA machine: nothing to copy over but the
repository (no weights; the model is drawn on the device from a seed), and
about 5 minutes on one H200. It

1. builds a random bfloat16 model with Llama-3-8B's shapes (32 blocks, hidden
   4096, FFN 14336, GQA 32/8, vocabulary 128256) on the GPU;
2. prunes it with wanda and sparsegpt at 50% and quantizes it with GPTQ
   w4g128, each from the same weights, with ``--offload none`` (the model on
   the GPU) and ``cpu`` (weights in host memory, one block on the GPU at a
   time), printing wall time, time per block and peak GPU memory;
3. runs wanda and sparsegpt on the first two blocks in float32 on the GPU and
   on the CPU and prints how many mask entries agree (the CPU run is the
   reference every CPU test checks);
4. runs the tests marked ``cuda`` (``pytest -m cuda``).

With no CUDA GPU it says so and exits 0. Nothing is written but the optional
``--json`` summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from llama8b import LLAMA_3_8B  # noqa: E402

RUNS = [("wanda", None), ("sparsegpt", None), ("none", "w4g128")]  # (method, quantize): GPTQ alone is "none"
CHECKED_BLOCKS = 2
TINY = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512}  # fmt: skip


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def build(shape: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A random Llama of ``shape`` drawn directly on ``device`` in ``dtype`` (the model's own initialisation)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, torch_dtype=dtype)
    return model.eval()


def prune_timed(model, tokens: torch.Tensor, method: str, quantize: str | None, batch_size: int) -> dict:
    """One prune of ``model`` in place: wall time, time per block (from the loop's progress calls), peak GPU memory."""
    from langprune.compress import prune_model

    stamps: list[float] = []
    device = tokens.device
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = prune_model(
        model,
        tokens,
        method,
        0.5,
        quantize=quantize,
        batch_size=batch_size,
        progress=lambda done, total: stamps.append(time.perf_counter()),
    )
    synchronize(device)
    seconds = time.perf_counter() - start
    per_block = [b - a for a, b in zip([start, *stamps], stamps)]
    return {
        "method": method if quantize is None else f"gptq {quantize}",
        "seconds": round(seconds, 2),
        "seconds_per_block": round(sum(per_block) / len(per_block), 3),
        "slowest_block_seconds": round(max(per_block), 3),
        "peak_gpu_gib": peak_gib(device),
        "zeros_in_layers": result.summary.get("sparsity_pruned_layers"),
    }


def offloaded_to_cpu(model, device: torch.device):
    """The same model with its blocks in host memory and a placement that moves one block at a time to the GPU."""
    from langprune.engine.placement import Placement, move_outside_blocks

    model.to("cpu")
    move_outside_blocks(model, device)
    Placement(model, device, next(model.parameters()).dtype, offload="cpu")
    return model


def timed_runs(shape: dict, device: torch.device, nsamples: int, seqlen: int) -> list[dict]:
    """Every (method, offload) prune of the 8B shape, each from the same drawn weights."""
    model = build(shape, device, torch.bfloat16)
    pristine = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
    tokens = torch.randint(3, shape["vocab_size"], (nsamples, seqlen), generator=torch.Generator().manual_seed(0))
    rows = []
    for offload in ("none", "cpu"):
        if offload == "cpu":
            model = offloaded_to_cpu(model, device)
        for method, quantize in RUNS:
            model.load_state_dict(pristine)
            row = {"offload": offload, **prune_timed(model, tokens.to(device), method, quantize, batch_size=4)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    del model, pristine
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def mask_agreement(shape: dict, device: torch.device) -> list[dict]:
    """Wanda and SparseGPT masks of the first blocks in float32, on the GPU against the CPU: the share that agree."""
    from langprune.compress import prune_model

    small = {**shape, "num_hidden_layers": CHECKED_BLOCKS}
    tokens = torch.randint(3, shape["vocab_size"], (4, 256), generator=torch.Generator().manual_seed(1))
    rows = []
    for method in ("wanda", "sparsegpt"):
        masks = {}
        for where in (torch.device("cpu"), device):
            model = build(small, torch.device("cpu"), torch.float32, seed=0).to(where)  # the same draw on both
            start = time.perf_counter()
            masks[where.type] = {
                n: c.keep.cpu() for n, c in prune_model(model, tokens.to(where), method, 0.5).changes.items()
            }
            print(
                f"{method} float32 on {where}: {CHECKED_BLOCKS} blocks in {time.perf_counter() - start:.1f} s",
                flush=True,
            )
            del model
        cpu, gpu = masks["cpu"], masks[device.type]
        agree = sum(int((cpu[n] == gpu[n]).sum()) for n in cpu) / sum(cpu[n].numel() for n in cpu)
        rows.append({"method": method, "blocks": CHECKED_BLOCKS, "mask_agreement": agree})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the pytest -m cuda run")
    parser.add_argument("--cpu-dry-run", action="store_true", help="every step on the CPU with a tiny shape (tests)")
    args = parser.parse_args(argv)
    if args.cpu_dry_run:
        return report(torch.device("cpu"), TINY, args)
    if not torch.cuda.is_available():
        build_kind = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
        print(f"gpu_check: {build_kind}; nothing to check here (run it on a machine with a CUDA GPU)")
        return 0
    return report(torch.device("cuda", 0), LLAMA_3_8B, args)


def report(device: torch.device, shape: dict, args) -> int:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    print(f"gpu_check: {name}, torch {torch.__version__}", flush=True)
    summary = {
        "device": name,
        "torch": torch.__version__,
        "shape": shape,
        "calibration": [args.nsamples, args.seqlen],
        "runs": timed_runs(shape, device, args.nsamples, args.seqlen),
        "cpu_reference": mask_agreement(shape, device),
    }
    if not args.skip_tests:
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "cuda", str(HERE.parent / "tests")],
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]),
            },
        )
        summary["cuda_tests_exit_code"] = tests.returncode
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 1 if summary.get("cuda_tests_exit_code") else 0


if __name__ == "__main__":
    sys.exit(main())

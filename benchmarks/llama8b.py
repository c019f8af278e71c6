"""A Llama-3-8B-shaped run on this machine: peak RSS, wall time and time per block of pruning with --offload disk.

    python benchmarks/llama8b.py [--methods wanda,sparsegpt] [--nsamples 4] [--seqlen 128] [--blocks 32] [--build-only]
    python benchmarks/llama8b.py --blocks 2 --timeline DIR    # where the peak goes: DIR/<method>.json and .png
    python benchmarks/llama8b.py --blocks 2 --dtype float32     # computing in float32 (the default: the checkpoint's)

The checkpoint has Llama-3-8B's shapes (32 blocks, hidden 4096, FFN 14336,
GQA 32/8 heads, vocabulary 128256) with random bfloat16 weights: about
16 GB, built once under ``$LANGPRUNE_CACHE/bench/llama-3-8b-shaped`` by
``write_shaped_checkpoint``, which writes one safetensors shard per block and
never holds more than one block (or a slice of the embeddings) in memory.
Each method then prunes it in a fresh process through ``run_prune`` (the
``prune`` command's cell) with ``--offload disk`` on random token ids, with
peak RSS sampled every 5 ms; the pruned run folder is deleted afterwards.
The aim: peak RSS below 4 GB, whatever the model's 16 GB. ``--blocks N``
builds and prunes the same widths with N blocks instead of 32 (its own cache
folder): offloading keeps at most two blocks resident, so the peak RSS of a
short model is the full model's, in minutes instead of an hour.
``--timeline DIR`` also records RSS against the run's phases and prints
the measured components of the peak (see ``rss_timeline.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

LLAMA_3_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
}
CHUNK_ROWS = 8192  # rows of a large matrix drawn at a time: the float32 draw stays small


def _fill(shape: torch.Size, name: str, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Norm weights are ones; every matrix is N(0, 0.02), drawn in float32 a slice of rows at a time."""
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    out = torch.empty(shape, dtype=dtype)
    for start in range(0, shape[0], CHUNK_ROWS):
        rows = out[start : start + CHUNK_ROWS]
        rows.copy_(torch.randn(rows.shape, generator=generator) * 0.02)
    return out


def write_shaped_checkpoint(folder: Path, shape: dict, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """A random Llama checkpoint of ``shape`` (LlamaConfig fields), one shard per block, written block by block.

    The tensor names and shapes come from the model built on the meta device (no memory); each shard is written
    under a temporary name and renamed, and the index (which names every tensor) is written last, so a folder
    with ``model.safetensors.index.json`` is complete. Seeded: the same shape and seed give the same bytes.
    """
    from conftest import tiny_tokenizer
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**shape, tie_word_embeddings=False, torch_dtype=str(dtype).removeprefix("torch."))
    with torch.device("meta"):
        layout = {name: tensor.shape for name, tensor in LlamaForCausalLM(config).state_dict().items()}
    groups: dict[str, list[str]] = {}
    for name in layout:
        parts = name.split(".")
        block = f"block-{int(parts[2]):05d}" if parts[:2] == ["model", "layers"] else "outside-blocks"
        groups.setdefault(block, []).append(name)
    generator = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for group, names in groups.items():
        file = f"model-{group}.safetensors"
        tensors = {name: _fill(layout[name], name, generator, dtype) for name in names}
        partial = folder / f"{file}.partial"
        save_file(tensors, str(partial), metadata={"format": "pt"})
        partial.rename(folder / file)
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(names, file))
        del tensors
    config.save_pretrained(folder)
    tiny_tokenizer(folder)
    partial = index_path.with_name(index_path.name + ".partial")
    partial.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    partial.rename(index_path)
    return folder


def run_one(
    folder: str, method: str, nsamples: int, seqlen: int, timeline: Path | None = None, dtype: str = "auto"
) -> dict:
    """One offloaded prune in this process: wall time, pruning time, time per block, peak RSS; with ``timeline`` (a
    folder), also the RSS timeline and its breakdown, written to ``<timeline>/<method>.json`` and ``.png``."""
    from contextlib import nullcontext

    from prune_speed import PeakRSS
    from rss_timeline import Timeline, breakdown, draw, probed

    from langprune import PruneSettings, run_prune

    vocab = json.loads((Path(folder) / "config.json").read_text())["vocab_size"]
    tokens = torch.randint(3, vocab, (nsamples, seqlen), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(dir=Path(folder).parent) as scratch:
        torch.save(tokens, Path(scratch) / "tokens.pt")
        settings = PruneSettings(
            out=Path(scratch) / "run",
            model=folder,
            tokens=Path(scratch) / "tokens.pt",
            method=method,
            seqlen=seqlen,
            batch_size=nsamples,
            offload="disk",
            dtype=dtype,
        )
        recorder = Timeline() if timeline else None
        with recorder or PeakRSS() as rss, probed(recorder) if recorder else nullcontext():
            start = time.perf_counter()
            report = run_prune(settings)
            seconds = time.perf_counter() - start
    blocks = json.loads((Path(folder) / "config.json").read_text())["num_hidden_layers"]
    parts = None
    if recorder:
        record = {"title": f"{method}, {Path(folder).name}, --offload disk", **recorder.to_json()}
        parts = breakdown(record)
        timeline.mkdir(parents=True, exist_ok=True)
        partial = timeline / f"{method}.json.partial"
        partial.write_text(json.dumps({**record, "breakdown": parts}))
        partial.rename(timeline / f"{method}.json")
        draw(record, timeline / f"{method}.png")
    return {
        "method": method,
        "seconds": seconds,
        "prune_seconds": report["seconds"],
        "seconds_per_block": report["seconds"] / blocks,
        "rss_peak_mb": rss.peak / 2**20,
        "placement": report["placement"],
        "breakdown": parts,
    }


def main():
    from rss_timeline import describe

    from langprune.storage import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--nsamples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=LLAMA_3_8B["num_hidden_layers"], help="decoder blocks")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--timeline", type=Path, help="folder for each method's RSS timeline (JSON, PNG)")
    parser.add_argument("--dtype", default="auto", help="compute dtype (auto: the checkpoint's bfloat16)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.nsamples, args.seqlen, args.timeline, args.dtype)))
        return
    shape = {**LLAMA_3_8B, "num_hidden_layers": args.blocks}
    full = args.blocks == LLAMA_3_8B["num_hidden_layers"]
    folder = cache_dir() / "bench" / ("llama-3-8b-shaped" if full else f"llama-3-8b-shaped-{args.blocks}-blocks")
    start = time.perf_counter()
    write_shaped_checkpoint(folder, shape)
    on_disk = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    print(f"checkpoint: {on_disk / 2**30:.1f} GB in {folder} (built or found in {time.perf_counter() - start:.0f} s)")
    if args.build_only:
        return
    for method in args.methods.split(","):
        command = [sys.executable, __file__, "--one", str(folder), method, "--nsamples", str(args.nsamples),
                   "--seqlen", str(args.seqlen), "--dtype", args.dtype]  # fmt: skip
        if args.timeline:
            command += ["--timeline", str(args.timeline.resolve())]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{method}: {r['seconds']:.0f} s ({r['prune_seconds']:.0f} s pruning, {r['seconds_per_block']:.1f} s per "
            f"block), peak RSS {r['rss_peak_mb']:.0f} MB ({r['rss_peak_mb'] / 1024:.2f} GB; aim below 4 GB; "
            f"the model is {on_disk / 2**30:.1f} GB), {args.nsamples} x {args.seqlen} calibration tokens, dtype {args.dtype}",
            flush=True,
        )
        if r["breakdown"]:
            print(describe(r["breakdown"]), flush=True)
        if not math.isfinite(r["rss_peak_mb"]):
            raise SystemExit("no peak RSS was sampled")


if __name__ == "__main__":
    main()

"""Peak memory and wall time of pruning with ``--offload disk`` against the in-memory run, on models of 2 and 4 GB.

    python benchmarks/offload.py [--sizes 2,4] [--method wanda] [--nsamples 4] [--seqlen 256]

The models are random Llama-shaped ones (hidden 2048, FFN 5632, GQA 16/4
heads, vocabulary 8000, float32) with as many blocks as make the size, built
in code and saved once under ``$LANGPRUNE_CACHE/bench``. Each run is the
whole ``run_prune`` cell (load, prune, write the run folder) in a fresh
process, with peak RSS sampled every 5 ms. Offloaded to disk, the peak
should follow one block plus the activations and the embeddings, not the
model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 2048, 5632, 16, 4, 8000


def block_bytes() -> int:
    head = HIDDEN // HEADS
    attention = 2 * HIDDEN * HIDDEN + 2 * HIDDEN * KV_HEADS * head
    return 4 * (attention + 3 * HIDDEN * FFN + 2 * HIDDEN)


def model_folder(gigabytes: float) -> Path:
    """A random Llama-shaped float32 checkpoint of about ``gigabytes``, built once."""
    from conftest import tiny_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from langprune.storage import cache_dir

    folder = cache_dir() / "bench" / f"llama-{gigabytes:g}gb"
    if (folder / "config.json").exists():
        return folder
    outside = 2 * 4 * VOCAB * HIDDEN
    layers = max(1, round((gigabytes * 2**30 - outside) / block_bytes()))
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial)
    tiny_tokenizer(partial)
    partial.rename(folder)
    return folder


def run_one(folder: str, offload: str, args) -> dict:
    from prune_speed import PeakRSS

    from langprune import PruneSettings, run_prune

    tokens = torch.randint(3, VOCAB, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as scratch:
        torch.save(tokens, Path(scratch) / "tokens.pt")
        settings = PruneSettings(
            out=Path(scratch) / "run",
            model=folder,
            tokens=Path(scratch) / "tokens.pt",
            method=args.method,
            seqlen=args.seqlen,
            batch_size=args.nsamples,
            offload=offload,
        )
        with PeakRSS() as rss:
            start = time.perf_counter()
            report = run_prune(settings)
            seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rss_peak_mb": rss.peak / 2**20,
        "prune_seconds": report["seconds"],
        "placement": report["placement"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2,4", help="model sizes in GB")
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--nsamples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args)))
        return
    for size in [float(s) for s in args.sizes.split(",")]:
        folder = model_folder(size)
        on_disk = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20
        times = {}
        for offload in ("disk", "none"):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                str(folder),
                offload,
                "--method",
                args.method,
                "--nsamples",
                str(args.nsamples),
                "--seqlen",
                str(args.seqlen),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            times[offload] = r["seconds"]
            print(
                f"{size:g} GB model ({on_disk:.0f} MB on disk, one block {block_bytes() / 2**20:.0f} MB), "
                f"offload {offload:4s}: {r['seconds']:6.1f} s (pruning {r['prune_seconds']:.1f} s), "
                f"peak RSS {r['rss_peak_mb']:6.0f} MB",
                flush=True,
            )
        print(f"{size:g} GB model: offload disk takes {times['disk'] / times['none']:.2f}x the in-memory run's time")


if __name__ == "__main__":
    main()

"""Wall time and peak RSS of wanda, sparsegpt and gptq against the floor of two dense passes.

    python benchmarks/prune_speed.py [--model gemma-3-270m] [--nsamples 32] [--seqlen 512] [--repeat 3]
    python benchmarks/prune_speed.py --dtype bfloat16     # adds bfloat16 cases and checks their quality
    python benchmarks/prune_speed.py --cases floor,gptq --quantize w4g128 --save-tokens calib.pt

The ``gptq`` case is ``--method none --quantize`` (w4g128 by default);
``--save-tokens`` writes the exact calibration ids, which
``benchmarks/llmcompressor_gptq.py`` feeds to llm-compressor's GPTQModifier
for a side-by-side on the same tokens.

The floor is the work no implementation of these methods avoids: the
calibration set passed densely through every decoder block twice (collect,
then propagate), run by the same engine without hooks. Each case runs in a
fresh process, so peaks do not leak between cases; peak RSS is sampled every
5 ms and reported against the RSS right after loading the model. The
calibration set is real multilingual text (all 16 UDHR languages, equal
shares) or, with --tokens FILE, a saved (n x seqlen) tensor of input ids.

With ``--dtype bfloat16`` every case also runs in bfloat16 (``wanda@bfloat16``)
in the same sitting, ratios stay against the float32 floor, and after the
timing each pruning case saves its masks and measures held-out perplexity
(UDHR evaluation part, six languages): the bfloat16 masks' agreement with
the float32 ones and the perplexity change are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch


class PeakRSS:
    def __init__(self):
        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def calibration_set(tokenizer, args):
    from langprune import calibration
    from langprune.data import get_corpus

    if args.tokens:
        return calibration.load_tokens(args.tokens)
    recipe = "mix:" + "+".join(get_corpus("udhr").languages)
    return calibration.build(recipe, tokenizer, nsamples=args.nsamples, seqlen=args.seqlen, seed=0)


QUALITY_LANGUAGES = ["en", "de", "fr", "zh", "hi", "sw"]


def run_case(case: str, args) -> dict:
    from langprune import load_model, prune_model
    from langprune.engine import BlockEngine
    from langprune.runs.folder import RunWriter, pack_bits

    method, _, dtype = case.partition("@")
    model, tokenizer = load_model(args.model, dtype=dtype or "float32")
    with torch.no_grad():
        # Weights load memory-mapped; write them once so every case starts fully resident and
        # neither page faults nor copy-on-write of the pruned weights are charged to one case only.
        for parameter in model.parameters():
            parameter.mul_(1)
    calib = calibration_set(tokenizer, args)
    loaded = psutil.Process().memory_info().rss
    with PeakRSS() as rss:
        start = time.perf_counter()
        if method == "floor":
            with torch.no_grad():
                engine = BlockEngine(model, calib.batches(args.batch_size))
                engine.capture()
                for index in range(len(engine.blocks)):
                    engine.run_block(index, write_outputs=False)
                    engine.run_block(index)
        else:
            kept = {}  # bit-packed masks for the quality check (12 MB for gemma-3-270m)

            def on_block(index, changes):
                run.add_block(model, index, changes)
                if args.quality:
                    kept.update(
                        {
                            name: (pack_bits(c.keep).cpu(), list(c.keep.shape))
                            for name, c in changes.items()
                            if c.keep is not None
                        }
                    )

            pruning, quantize = ("none", args.quantize) if method == "gptq" else (method, None)
            with tempfile.TemporaryDirectory() as scratch, RunWriter(Path(scratch) / "run") as run:
                # As the CLI does: each block's masks and weights go to disk at once instead of piling up in memory.
                prune_model(
                    model,
                    calib,
                    pruning,
                    args.sparsity,
                    batch_size=args.batch_size,
                    on_block=on_block,
                    quantize=quantize,
                )
        seconds = time.perf_counter() - start
    found = {
        "case": case,
        "seconds": seconds,
        "rss_loaded_mb": loaded / 2**20,
        "rss_peak_mb": rss.peak / 2**20,
        "sequences": int(calib.input_ids.shape[0]),
        "seqlen": int(calib.input_ids.shape[1]),
    }
    if args.quality and method != "floor":
        from langprune.evaluation import perplexity

        torch.save(kept, Path(args.quality) / f"{case}.pt")
        found["ppl"] = {lang: r["ppl"] for lang, r in perplexity(model, tokenizer, QUALITY_LANGUAGES).items()}
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sparsity", default="0.5")
    parser.add_argument("--tokens", help="a torch-saved (n x seqlen) tensor of input ids to use instead of UDHR")
    parser.add_argument("--cases", default="floor,wanda,sparsegpt,gptq")
    parser.add_argument("--quantize", default="w4g128", help="the gptq case's spec")
    parser.add_argument("--save-tokens", help="write the calibration ids here (for benchmarks/llmcompressor_gptq.py)")
    parser.add_argument("--repeat", type=int, default=1, help="run every case this many times; report medians")
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], help="also run every case in this dtype")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--quality", help=argparse.SUPPRESS)  # folder where a case leaves its masks
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one, args)))
        return
    if args.save_tokens:
        from langprune.models import load_tokenizer

        saved = calibration_set(load_tokenizer(args.model), args)
        torch.save({"input_ids": saved.input_ids, "attention_mask": saved.attention_mask}, args.save_tokens)
    cases = args.cases.split(",")
    if args.dtype:
        cases += [f"{case}@{args.dtype}" for case in cases]
    runs: dict[str, list[dict]] = {case: [] for case in cases}
    quality = tempfile.mkdtemp(prefix="prune-speed-") if args.dtype else None
    for repeat in range(args.repeat):
        # Cases interleave, so slow drifts of the machine hit every case alike.
        for case in runs:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                case,
                "--model",
                args.model,
                "--nsamples",
                str(args.nsamples),
                "--seqlen",
                str(args.seqlen),
                "--batch-size",
                str(args.batch_size),
                "--sparsity",
                args.sparsity,
                "--quantize",
                args.quantize,
            ]
            cmd += ["--tokens", args.tokens] if args.tokens else []
            cmd += ["--quality", quality] if quality else []
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            runs[case].append(r)
            print(
                f"[{repeat + 1}/{args.repeat}] {case:10s} {r['seconds']:8.1f} s   peak RSS {r['rss_peak_mb']:7.0f} MB "
                f"({r['rss_peak_mb'] / r['rss_loaded_mb']:.3f}x of {r['rss_loaded_mb']:.0f} MB after loading)"
                f"   {r['sequences']} x {r['seqlen']} tokens",
                flush=True,
            )
    print(f"median of {args.repeat} run(s):")
    median = {case: statistics.median(r["seconds"] for r in rs) for case, rs in runs.items()}
    for case, rs in runs.items():
        peak = max(r["rss_peak_mb"] / r["rss_loaded_mb"] for r in rs)
        ratio = f"   {median[case] / median['floor']:.3f}x of the two-pass floor" if "floor" in median else ""
        print(f"{case:18s} {median[case]:8.1f} s   worst peak RSS {peak:.3f}x of loaded{ratio}")
    if quality:
        report_quality(runs, quality, args.dtype)


def report_quality(runs: dict[str, list[dict]], folder: str, dtype: str) -> None:
    """Mask agreement and held-out perplexity of each reduced-precision case against its float32 twin."""
    from langprune.runs.folder import unpack_bits

    for case in [c for c in runs if "@" in c and not c.startswith(("floor", "gptq"))]:
        base = case.partition("@")[0]
        a, b = torch.load(Path(folder) / f"{base}.pt"), torch.load(Path(folder) / f"{case}.pt")
        same = total = 0
        for name, (packed, shape) in a.items():
            keep_a, keep_b = unpack_bits(packed, shape), unpack_bits(*b[name])
            same, total = same + int((keep_a == keep_b).sum()), total + keep_a.numel()
        ppl_a, ppl_b = runs[base][-1]["ppl"], runs[case][-1]["ppl"]
        changes = {lang: ppl_b[lang] / ppl_a[lang] - 1 for lang in ppl_a}
        worst = max(changes, key=lambda lang: abs(changes[lang]))
        print(
            f"{case}: masks agree with float32 on {same / total:.4%} of weights; held-out perplexity change "
            + ", ".join(f"{lang} {change:+.2%}" for lang, change in changes.items())
            + f" (worst {worst} {changes[worst]:+.2%})"
        )


if __name__ == "__main__":
    main()

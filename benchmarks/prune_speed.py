"""Wall time and peak RSS of wanda and sparsegpt against the floor of two dense passes.

    python benchmarks/prune_speed.py [--model gemma-3-270m] [--nsamples 32] [--seqlen 512] [--repeat 3]

The floor is the work no implementation of these methods avoids: the
calibration set passed densely through every decoder block twice (collect,
then propagate), run by the same engine without hooks. Each case runs in a
fresh process, so peaks do not leak between cases; peak RSS is sampled every
5 ms and reported against the RSS right after loading the model. The
calibration set is real multilingual text (all 16 UDHR languages, equal
shares) or, with --tokens FILE, a saved (n x seqlen) tensor of input ids.
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


def run_case(case: str, args) -> dict:
    from langprune import load_model, prune_model
    from langprune.engine import BlockEngine
    from langprune.runs.folder import RunWriter

    model, tokenizer = load_model(args.model)
    with torch.no_grad():
        # Weights load memory-mapped; write them once so every case starts fully resident and
        # neither page faults nor copy-on-write of the pruned weights are charged to one case only.
        for parameter in model.parameters():
            parameter.mul_(1)
    calib = calibration_set(tokenizer, args)
    loaded = psutil.Process().memory_info().rss
    with PeakRSS() as rss:
        start = time.perf_counter()
        if case == "floor":
            with torch.no_grad():
                engine = BlockEngine(model, calib.batches(args.batch_size))
                engine.capture()
                for index in range(len(engine.blocks)):
                    engine.run_block(index, write_outputs=False)
                    engine.run_block(index)
        else:
            with tempfile.TemporaryDirectory() as scratch, RunWriter(Path(scratch) / "run") as run:
                # As the CLI does: each block's masks go to disk at once instead of piling up in memory.
                prune_model(model, calib, case, args.sparsity, batch_size=args.batch_size,
                            on_block=lambda index, changes: run.add_block(model, index, changes))  # fmt: skip
        seconds = time.perf_counter() - start
    return {"case": case, "seconds": seconds, "rss_loaded_mb": loaded / 2**20, "rss_peak_mb": rss.peak / 2**20,
            "sequences": int(calib.input_ids.shape[0]), "seqlen": int(calib.input_ids.shape[1])}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sparsity", default="0.5")
    parser.add_argument("--tokens", help="a torch-saved (n x seqlen) tensor of input ids to use instead of UDHR")
    parser.add_argument("--cases", default="floor,wanda,sparsegpt")
    parser.add_argument("--repeat", type=int, default=1, help="run every case this many times; report medians")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one, args)))
        return
    runs: dict[str, list[dict]] = {case: [] for case in args.cases.split(",")}
    for repeat in range(args.repeat):
        # Cases interleave, so slow drifts of the machine hit every case alike.
        for case in runs:
            cmd = [sys.executable, __file__, "--one", case, "--model", args.model, "--nsamples", str(args.nsamples),
                   "--seqlen", str(args.seqlen), "--batch-size", str(args.batch_size), "--sparsity", args.sparsity]
            cmd += ["--tokens", args.tokens] if args.tokens else []
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            runs[case].append(r)
            print(f"[{repeat + 1}/{args.repeat}] {case:10s} {r['seconds']:8.1f} s   peak RSS {r['rss_peak_mb']:7.0f} MB "
                  f"({r['rss_peak_mb'] / r['rss_loaded_mb']:.3f}x of {r['rss_loaded_mb']:.0f} MB after loading)"
                  f"   {r['sequences']} x {r['seqlen']} tokens", flush=True)  # fmt: skip
    print(f"median of {args.repeat} run(s):")
    median = {case: statistics.median(r["seconds"] for r in rs) for case, rs in runs.items()}
    for case, rs in runs.items():
        peak = max(r["rss_peak_mb"] / r["rss_loaded_mb"] for r in rs)
        ratio = f"   {median[case] / median['floor']:.3f}x of the two-pass floor" if "floor" in median else ""
        print(f"{case:10s} {median[case]:8.1f} s   worst peak RSS {peak:.3f}x of loaded{ratio}")

if __name__ == "__main__":
    main()

"""A grid of 8 tiny cells against the same 8 runs as separate `langprune prune` and `langprune eval` commands.

    python benchmarks/grid_overhead.py [--ray]

The cells are wanda runs of a tiny GPT-2 (built in code, saved once) on
tiny texts, 4 calibration recipes x 2 seeds, each evaluated on ppl. The
local executor runs them in one process; the commands pay a Python start
and the imports 16 times. With ``--ray`` the same grid also runs through
the Ray executor on a local Ray instance (its start included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ray", action="store_true", help="also time the Ray executor")
    args = parser.parse_args()
    from conftest import install_corpus, tiny_model, tiny_tokenizer, word_text

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        os.environ["LANGPRUNE_CACHE"] = str(scratch / "cache")
        languages = ("en", "fr", "de", "es")
        install_corpus(
            "udhr", {lang: [[f"u{i}", word_text(100 * k + i)] for i in range(80)] for k, lang in enumerate(languages)}
        )
        model = scratch / "tiny"
        tiny_model("gpt2").save_pretrained(model)
        tiny_tokenizer(model)
        spec = {
            "name": "bench",
            "models": [str(model)],
            "methods": ["wanda"],
            "calibration": [f"mono:{lang}" for lang in languages],
            "seeds": [0, 1],
            "settings": {"nsamples": 4, "seqlen": 16},
            "evaluation": {"tasks": ["ppl"], "langs": ["en", "fr"], "seqlen": 16},
        }
        grid_file = scratch / "bench.yaml"
        grid_file.write_text(yaml.safe_dump(spec))
        cli = [sys.executable, "-m", "langprune"]

        start = time.perf_counter()
        for language in languages:
            for seed in (0, 1):
                out = scratch / "separate" / f"{language}-{seed}"
                subprocess.run(
                    cli
                    + [
                        "prune",
                        "--model",
                        str(model),
                        "--calib",
                        f"mono:{language}",
                        "--nsamples",
                        "4",
                        "--seqlen",
                        "16",
                        "--seed",
                        str(seed),
                        "--out",
                        str(out),
                    ],
                    check=True,
                    capture_output=True,
                )
                subprocess.run(
                    cli + ["eval", str(out), "--tasks", "ppl", "--langs", "en,fr", "--seqlen", "16"],
                    check=True,
                    capture_output=True,
                )
        separate = time.perf_counter() - start
        print(f"16 separate commands      {separate:7.1f} s")

        executors = ["local"] + (["ray"] if args.ray else [])
        for executor in executors:
            shutil.rmtree(scratch / "grid", ignore_errors=True)
            start = time.perf_counter()
            subprocess.run(
                cli + ["grid", "run", str(grid_file), "--executor", executor, "--out", str(scratch / "grid")],
                check=True,
                capture_output=True,
            )
            seconds = time.perf_counter() - start
            print(
                f"grid run --executor {executor:5s} {seconds:7.1f} s   {seconds / separate:.2f}x of the separate commands "
                "(8 cells + the dense cell)"
            )


if __name__ == "__main__":
    main()

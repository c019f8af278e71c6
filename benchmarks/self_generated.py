"""Self-generated calibration against real text, on languages that have a corpus (so the answer can be checked).

    python benchmarks/self_generated.py [--langs sw,hi] [--method wanda] [--sparsity 0.5] [--seeds 0]
                                        [--nsamples 32] [--seqlen 256] [--out self_generated.json]

For each language L it prunes gemma-3-270m with ``gen:L`` (the model's own text, started from the hand-written seed
phrases of ``languages.SEED_PHRASES``, as a language without a corpus would get), with ``mono:L`` (real UDHR text)
and with ``mono:en@wikipedia`` (English, peers' default), and prints held-out UDHR perplexity in L relative to
dense, the seconds the calibration took to build, and the generated text's own perplexity after filtering.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CONFIGS = {"gen": "gen:{lang}", "real": "mono:{lang}", "english": "mono:en@wikipedia"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--langs", default="sw,hi")
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--sparsity", default="0.5")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--out", default="self_generated.json")
    args = parser.parse_args()

    import langprune
    from langprune.api import as_calibration
    from langprune.evaluation import perplexity
    from langprune.models import load_model

    rows = []
    for lang in args.langs.split(","):
        model, tokenizer = load_model(args.model)
        dense = perplexity(model, tokenizer, [lang])[lang]["ppl"]
        for seed in map(int, args.seeds.split(",")):
            for config in args.configs.split(","):
                model, tokenizer = load_model(args.model)
                started = time.perf_counter()
                recipe = CONFIGS[config].format(lang=lang)
                calibration = as_calibration(recipe, tokenizer, args.nsamples, args.seqlen, seed, model)
                built = time.perf_counter() - started
                langprune.prune(model, tokenizer, calibration, args.method, args.sparsity, seed=seed)
                ppl = perplexity(model, tokenizer, [lang])[lang]["ppl"]
                generated = next((s for s in calibration.sources if "generated" in s), None)
                row = {
                    "lang": lang,
                    "seed": seed,
                    "config": config,
                    "recipe": recipe,
                    "dense_ppl": dense,
                    "ppl": ppl,
                    "ratio_to_dense": ppl / dense,
                    "calibration_tokens": calibration.tokens,
                    "calibration_seconds": round(built, 1),
                    "generated": generated and {k: generated[k] for k in ("generated", "kept", "perplexity_kept")},
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                partial = Path(f"{args.out}.partial")
                partial.write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=1), encoding="utf-8")
                partial.replace(args.out)


if __name__ == "__main__":
    main()

"""Held-out perplexity per language of every compression langprune offers, each calibrated on the same language mix.

    python benchmarks/quality.py [--model gemma-3-270m] [--nsamples 32] [--out docs/quality.json]
    python benchmarks/quality.py --only-eval FOLDER      # one checkpoint (e.g. llm-compressor's), same evaluator
    python benchmarks/quality.py --mask-selection        # sparsegpt 50%: per-row masks against the reference's

Rows: dense; wanda, sparsegpt, ria, wanda+owl and sparsegpt+owl at 50% and
70%; gptq w4g128 and w8g128 (no pruning). Each row loads the model afresh,
compresses it in memory through ``langprune.prune`` (the function the CLI's
run cell calls), and measures perplexity on the UDHR evaluation part, which
calibration never reads. The JSON keeps every number and the seconds each
row took; the Markdown table is printed and written next to it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

LANGUAGES = ["en", "de", "fr", "zh", "hi", "sw"]
ROWS = [("dense", None, None, None, None)]
for _sparsity in ("0.5", "0.7"):
    for _method, _profile in (
        ("wanda", "uniform"),
        ("sparsegpt", "uniform"),
        ("ria", "uniform"),
        ("wanda", "owl"),
        ("sparsegpt", "owl"),
    ):
        _name = _method + ("+owl" if _profile == "owl" else "")
        ROWS.append((f"{_name} {float(_sparsity):.0%}", _method, _sparsity, _profile, None))
ROWS += [(f"gptq {spec}", "none", "0", "uniform", spec) for spec in ("w4g128", "w8g128")]


def evaluate_folder(folder: str) -> dict:
    from langprune.evaluation import perplexity
    from langprune.models import load_model

    model, tokenizer = load_model(folder)
    return {lang: r["ppl"] for lang, r in perplexity(model, tokenizer, LANGUAGES).items()}


def compare_mask_selection(args) -> None:
    """SparseGPT at 50% with langprune's per-row selection and the reference's per-block threshold, same tokens."""
    import langprune
    from langprune.compress.methods import SparseGPT
    from langprune.evaluation import perplexity
    from langprune.models import load_model

    recipe = "mix:" + "+".join(LANGUAGES)
    masks, found = {}, {}
    for selection in ("row", "block"):
        model, tokenizer = load_model(args.model)
        _, result = langprune.prune(
            model,
            tokenizer,
            recipe,
            SparseGPT(selection=selection),
            "0.5",
            nsamples=args.nsamples,
            seqlen=args.seqlen,
            seed=0,
        )
        masks[selection] = result.masks
        rows = [(~keep).float().mean(1) for keep in result.masks.values()]
        found[selection] = {
            "ppl": {lang: r["ppl"] for lang, r in perplexity(model, tokenizer, LANGUAGES).items()},
            "row_sparsity_min": min(float(r.min()) for r in rows),
            "row_sparsity_max": max(float(r.max()) for r in rows),
        }
        print(selection, json.dumps(found[selection]), flush=True)
    same = sum(int((masks["row"][n] == masks["block"][n]).sum()) for n in masks["row"])
    total = sum(m.numel() for m in masks["row"].values())
    print(f"masks agree on {same / total:.2%} of weights")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--rows", help="comma-separated row names to run (default: all)")
    parser.add_argument("--out", default="docs/quality.json")
    parser.add_argument("--only-eval", help="measure one checkpoint folder and stop")
    parser.add_argument("--mask-selection", action="store_true", help="compare sparsegpt's row and block selection")
    args = parser.parse_args()
    if args.only_eval:
        print(json.dumps({"model": args.only_eval, "ppl": evaluate_folder(args.only_eval)}))
        return
    if args.mask_selection:
        compare_mask_selection(args)
        return

    import torch

    import langprune
    from langprune.evaluation import perplexity
    from langprune.models import load_model

    recipe = "mix:" + "+".join(LANGUAGES)
    wanted = set(args.rows.split(",")) if args.rows else None
    results = []
    for name, method, sparsity, profile, quantize in ROWS:
        if wanted and name not in wanted:
            continue
        model, tokenizer = load_model(args.model)
        started = time.perf_counter()
        if method is not None:
            langprune.prune(
                model,
                tokenizer,
                recipe,
                method,
                sparsity,
                nsamples=args.nsamples,
                seqlen=args.seqlen,
                seed=0,
                profile=profile,
                quantize=quantize,
            )
        seconds = time.perf_counter() - started
        with torch.no_grad():
            ppl = {lang: r["ppl"] for lang, r in perplexity(model, tokenizer, LANGUAGES).items()}
        results.append(
            {
                "row": name,
                "method": method,
                "sparsity": sparsity,
                "profile": profile,
                "quantize": quantize,
                "seconds": round(seconds, 1),
                "ppl": ppl,
            }
        )
        print(
            f"{name:18s} {seconds:6.1f} s  " + "  ".join(f"{lang} {value:8.2f}" for lang, value in ppl.items()),
            flush=True,
        )
        del model
    table = ["| compression | " + " | ".join(LANGUAGES) + " |", "|---|" + "---:|" * len(LANGUAGES)]
    table += [f"| {r['row']} | " + " | ".join(f"{r['ppl'][lang]:.2f}" for lang in LANGUAGES) + " |" for r in results]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "model": args.model,
        "calibration": f"{recipe}, {args.nsamples} x {args.seqlen}, seed 0",
        "evaluation": "udhr evaluation part",
        "rows": results,
    }
    out.write_text(json.dumps(record, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()

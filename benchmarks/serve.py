"""Serving languages against what users get today: held-out perplexity per served language, relative to dense.

    python benchmarks/serve.py [--sets hi+sw,de+fr,zh+hi+sw+ar] [--methods wanda,sparsegpt,gptq] [--seeds 0,1]
                               [--nsamples 32] [--seqlen 256] [--out serve.json]

For every served set, method and seed it prunes gemma-3-270m (in memory, through ``langprune.prune``, the function
the CLI's run cell calls) with each calibration:

- ``english``: ``mono:en@wikipedia``, English as peer tools calibrate by default (a full set: UDHR's English
  calibration part holds only five sequences of 256 tokens; ``english-udhr`` is that smaller set);
- ``equal-mix``: ``mix:`` of the served languages, equal shares;
- ``serve-mean`` and ``serve-max``: ``serve=`` the served languages with ``--lang-aggregate mean`` / ``max``
  (GPTQ and SparseGPT take ``mean`` only);
- ``advisor``: ``langprune.advise`` (``--budget`` trial prunes on the development split), then the prune it
  recommends; its row also records the pick and the advisor's cost against one prune;

and measures held-out UDHR perplexity in the served languages (the evaluation part, which calibration never reads).
It prints, per row, the perplexity ratio to dense per language and the worst language's excess (ratio - 1), and
writes everything as JSON (rewritten after every row).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CONFIGS = ("english", "equal-mix", "serve-mean", "serve-max", "advisor")
ENGLISH = {"english": "mono:en@wikipedia", "english-udhr": "mono:en"}
METHODS = {"wanda": ("wanda", "0.5", None), "sparsegpt": ("sparsegpt", "0.5", None), "gptq": ("none", "0", "w4g128")}


def calibration_of(config: str, languages: list[str]) -> tuple[dict, str]:
    """The prune keyword arguments of one calibration row, and its aggregation."""
    if config in ENGLISH:
        return {"calibration": ENGLISH[config]}, "tokens"
    if config == "equal-mix":
        return {"calibration": "mix:" + "+".join(languages) if len(languages) > 1 else f"mono:{languages[0]}"}, "tokens"
    return {"calibration": None, "serve": ",".join(languages)}, config.removeprefix("serve-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--sets", default="hi+sw,de+fr,zh+hi+sw+ar")
    parser.add_argument("--methods", default="wanda,sparsegpt,gptq")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--budget", type=int, default=4, help="the advisor's trial prunes")
    parser.add_argument("--out", default="serve.json")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print the Markdown table of these outputs and stop")
    args = parser.parse_args()
    if args.table:
        rows = [row for path in args.table for row in json.loads(Path(path).read_text())["rows"]]
        sets = args.sets.split(",")
        order = lambda r: (list(METHODS).index(r["method"]), sets.index(r["served"]) if r["served"] in sets else 99)
        rows.sort(key=order)  # stable: seeds and configs keep their order
        print(table(rows) + "\n\n" + "\n".join(targets(rows)))
        return

    import langprune
    from langprune.evaluation import perplexity
    from langprune.models import load_model

    rows = []
    dense_cache: dict[str, float] = {}
    for served in args.sets.split(","):
        languages = served.split("+")
        missing = [lang for lang in languages if lang not in dense_cache]
        if missing:
            model, tokenizer = load_model(args.model)
            dense_cache.update({lang: r["ppl"] for lang, r in perplexity(model, tokenizer, missing).items()})
        for method_name in args.methods.split(","):
            method, sparsity, quantize = METHODS[method_name]
            for seed in map(int, args.seeds.split(",")):
                for config in args.configs.split(","):
                    started, advice, profile = time.perf_counter(), None, "uniform"
                    if config == "advisor":
                        advice = langprune.advise(
                            ",".join(languages), method, sparsity, model=args.model, quantize=quantize,
                            nsamples=args.nsamples, seqlen=args.seqlen, seed=seed, budget=args.budget,
                        )  # fmt: skip
                        pick = advice["pick"]
                        kwargs = {"calibration": None, "serve": pick["serve"]}
                        aggregate, profile = pick["lang_aggregate"], pick["profile"]
                    else:
                        kwargs, aggregate = calibration_of(config, languages)
                    if aggregate == "max" and method_name != "wanda":
                        continue  # a Hessian takes tokens or mean only
                    model, tokenizer = load_model(args.model)
                    _, result = langprune.prune(
                        model, tokenizer, method=method, sparsity=sparsity, nsamples=args.nsamples,
                        seqlen=args.seqlen, seed=seed, quantize=quantize, lang_aggregate=aggregate, profile=profile,
                        **kwargs,
                    )  # fmt: skip
                    ppl = {lang: r["ppl"] for lang, r in perplexity(model, tokenizer, languages).items()}
                    ratio = {lang: ppl[lang] / dense_cache[lang] for lang in languages}
                    row = {
                        "served": served,
                        "method": method_name,
                        "seed": seed,
                        "config": config,
                        "ppl": ppl,
                        "ratio_to_dense": ratio,
                        "worst_excess": max(ratio.values()) - 1,
                        "calibration_tokens": (result.summary["calibration"] or {}).get("tokens"),
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                    if advice is not None:
                        row["advice"] = {key: advice[key] for key in ("pick", "expected_change", "cost")}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    write_json(args.out, {"dense": dense_cache, "rows": rows, "args": vars(args)})


def table(rows: list[dict]) -> str:
    """Worst served language's excess (perplexity ratio to dense minus 1) per set, method and calibration, seeds
    side by side, and in brackets its change against English calibration's (means over seeds)."""
    configs = [c for c in (*CONFIGS, "english-udhr") if any(r["config"] == c for r in rows)]
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["served"], r["method"]), {}).setdefault(r["config"], {})[r["seed"]] = r["worst_excess"]
    lines = ["| served | method | " + " | ".join(configs) + " |", "|---|---|" + "---:|" * len(configs)]
    for (served, method), found in cells.items():
        english = found.get("english")
        english_mean = sum(english.values()) / len(english) if english else None
        texts = []
        for config in configs:
            seeds = found.get(config)
            if not seeds:
                texts.append("")
                continue
            text = " / ".join(f"{seeds[s]:.3g}" for s in sorted(seeds))
            mean = sum(seeds.values()) / len(seeds)
            if english_mean and config != "english":
                text += f" ({mean / english_mean - 1:+.0%})"
            texts.append(text)
        lines.append(f"| {served} | {method} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets per set and method, for the 50% prunes (GPTQ reported the same way):
    ``--serve`` at its best aggregation (the lower mean over seeds of serve-mean and serve-max) is not worse than the
    equal mix on the worst served language beyond the seed spread (the larger range over seeds of the two rows), and
    its worst-language excess is at least 30% below English calibration's."""
    found: dict = {}
    for r in rows:
        found.setdefault((r["served"], r["method"]), {}).setdefault(r["config"], []).append(r["worst_excess"])
    lines = []
    mean = lambda values: sum(values) / len(values)
    for (served, method), configs in found.items():
        serve = [configs[c] for c in ("serve-mean", "serve-max") if c in configs]
        if not serve or "equal-mix" not in configs or "english" not in configs:
            continue
        best = min(serve, key=mean)
        spread = max(max(v) - min(v) for v in (best, configs["equal-mix"]))
        excess = mean(best) - mean(configs["equal-mix"])
        cut = 1 - mean(best) / mean(configs["english"])
        lines.append(
            f"{served} {method}: --serve {'within' if excess <= spread else 'BEYOND'} the seed spread of the equal mix "
            f"({excess:+.3f}, spread {spread:.3f}); worst-language excess {cut:.0%} below English "
            f"({'met' if cut >= 0.3 else 'MISSED'}: at least 30%); seeds {len(best)}"
        )
    return lines


def write_json(path: str, value: dict) -> None:
    """Rewritten after every row, atomically, so that an interrupted run keeps what it measured."""
    partial = Path(f"{path}.partial")
    partial.write_text(json.dumps(value, indent=1), encoding="utf-8")
    partial.replace(path)


if __name__ == "__main__":
    main()

"""Evaluation throughput (tokens per second) of perplexity and cloze scoring against a bare forward pass, and the
cloze scorer before and after sharing each review's prefix across its options.

    python benchmarks/eval_speed.py [--model gemma-3-270m] [--langs en,de,fr] [--limit 40] [--repeat 3]

For each measured task the same token rows go, in the same batches, through
a bare ``model(input_ids, attention_mask)`` call (full logits, nothing
else); the ratio is the task's throughput over that one. Perplexity reads
the UDHR evaluation part, cloze the MultiEmo evaluation part with the
"It is positive/negative" template. Cloze runs twice: ``cloze-plain`` scores
every option's row from scratch (what langprune did before), ``cloze``
runs each review once and its options from the key/value cache; the largest
score difference between the two and whether any prediction changed are
printed too. Tokens count the plain rows, so both cloze lines divide the
same work. ``cloze-bf16`` is the shared scorer on the model loaded with
``--dtype bfloat16``; the largest score difference against float32, the
predictions that changed and both accuracies are printed before the timings
(the tolerance a grid's ``evaluation: {dtype: bfloat16}`` relies on). Medians
over --repeat runs; ``--no-bare`` skips the bare forward, whose full logits at
every position cost more than the task itself.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def bare_forward(model, rows, pad, batch_size) -> float:
    from langprune.text import right_padded

    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    start = time.perf_counter()
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            ids, mask = right_padded([rows[i] for i in order[b : b + batch_size]], pad, "cpu")
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--langs", default="en,de,fr")
    parser.add_argument("--limit", type=int, default=40, help="cloze examples per language")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default="perplexity,cloze-plain,cloze,cloze-bf16", help="which timings to take")
    parser.add_argument(
        "--no-bare", action="store_true", help="skip the bare forward reference (full logits at every position: slow)"
    )
    args = parser.parse_args()

    from langprune import load_model
    from langprune.calibration import evaluation_texts, text_windows
    from langprune.engine.scoring import score_requests
    from langprune.evaluation.choice import prompts, requests_for
    from langprune.evaluation.perplexity import evaluate_perplexity
    from langprune.evaluation.tasks import catalog

    model, tokenizer = load_model(args.model)
    pad = tokenizer.pad_token_id or 0
    langs = args.langs.split(",")
    task = catalog()["multiemo"]
    ppl_rows = [
        w
        for lang in langs
        for w in text_windows(tokenizer, evaluation_texts(lang, "udhr"), args.seqlen, complete=False)
    ]
    prompted = [p for lang in langs for p in prompts(task, "multiemo", lang, args.limit)]
    cloze_requests = [r for p in prompted for r in requests_for(tokenizer, p)]
    cloze_rows = [list(r.context) + list(r.continuation) for r in cloze_requests]

    def run_ppl():
        for lang in langs:
            evaluate_perplexity(model, tokenizer, "udhr", lang, args.seqlen, args.batch_size)

    def run_cloze(shared: bool = True) -> list[float]:
        return score_requests(model, cloze_requests, pad, args.batch_size, shared=shared)

    after = run_cloze(True)
    if "cloze-plain" in args.cases.split(","):  # the plain scorer is slow: only when its timing is asked for
        before = run_cloze(False)
        difference = max(abs(x - y) for x, y in zip(before, after))
        changed, at = 0, 0
        for p in prompted:
            k = len(p.options)
            pick = lambda scores: max(range(k), key=lambda i: scores[at + i])
            changed += pick(before) != pick(after)
            at += k
        print(
            f"cloze: {len(prompted)} reviews, largest score difference {difference:.2e} nats, "
            f"{changed} predictions changed"
        )
    low, _ = load_model(args.model, dtype="bfloat16")
    run_bf16 = lambda: score_requests(low, cloze_requests, pad, args.batch_size)  # noqa: E731
    in_bf16 = run_bf16()
    picks = {name: [] for name in ("float32", "bfloat16")}
    at = 0
    for p in prompted:
        for name, scores in (("float32", after), ("bfloat16", in_bf16)):
            picks[name].append(max(range(len(p.options)), key=lambda i: scores[at + i]))
        at += len(p.options)
    accuracy = {
        name: sum(x == p.gold for x, p in zip(chosen, prompted)) / len(prompted) for name, chosen in picks.items()
    }
    flips = sum(a != b for a, b in zip(picks["float32"], picks["bfloat16"]))
    print(
        f"cloze in bfloat16: largest score difference {max(abs(x - y) for x, y in zip(after, in_bf16)):.3f} nats, "
        f"{flips} of {len(prompted)} predictions changed, accuracy {accuracy['bfloat16']:.4f} against float32's "
        f"{accuracy['float32']:.4f}",
        flush=True,
    )
    cases = {
        "perplexity": (run_ppl, ppl_rows),
        "cloze-plain": (lambda: run_cloze(False), cloze_rows),
        "cloze": (run_cloze, cloze_rows),
        "cloze-bf16": (run_bf16, cloze_rows),
    }
    for name, (run, rows) in ((n, cases[n]) for n in args.cases.split(",")):
        tokens = sum(len(r) for r in rows)
        task_s, bare_s = [], []
        for _ in range(args.repeat):  # interleaved, so drifts of the machine hit both alike
            start = time.perf_counter()
            run()
            task_s.append(time.perf_counter() - start)
            if not args.no_bare:
                bare_s.append(bare_forward(model, rows, pad, args.batch_size))
        t = statistics.median(task_s)
        line = f"{name:10s} {len(rows):5d} rows {tokens:7d} tokens   task {tokens / t:8.0f} tok/s ({t:6.2f} s)"
        if bare_s:
            b = statistics.median(bare_s)
            line += f"   bare forward {tokens / b:8.0f} tok/s ({b:6.2f} s)   ratio {b / t:.3f}"
        if name.startswith("cloze"):
            line += f"   {t / len(prompted):.3f} s per review"
        print(line, flush=True)


if __name__ == "__main__":
    main()

"""Paired bootstrap tests between two evaluations of the same items (Koehn, 2004), one definition for every metric.

Both runs scored the same items (examples, token windows, sentences), so each
resample draws one set of item indices with replacement and recomputes the
metric for both runs on it: perplexity from the resampled windows' summed NLL
and tokens, accuracy as the mean, BLEU and chrF from sacrebleu's per-sentence
statistics (as sacrebleu's own paired test resamples them). From the
resampled differences d* = metric_b* - metric_a*:

- **p-value, two-sided**: p = min(1, 2 min(P(d* <= 0), P(d* >= 0))), each
  P counted as (1 + count) / (1 + B) over the B resamples (so never exactly
  zero): B random ones, or all n^n when n^n <= B (the exact bootstrap
  distribution, which small inputs get). Equal metrics (up to float32
  rounding) give p = 1.
- **95% interval of the difference**: the 2.5th and 97.5th percentiles of d*
  (inverted CDF: the smallest d* with at least that share of resamples at or
  below it).
- **Minimum detectable effect**: the smallest true difference this test finds
  (p < 0.05) in 80% of repeats, MDE = (z_0.975 + z_0.8) · SE with SE the
  standard deviation of d* (normal approximation). It depends on how much the
  paired items disagree: two accuracy runs that differ on a share q of n items
  have SE near sqrt(q / n), so 300 items with q = 0.1 detect about 5 points,
  and 3 points need about 900. Where no resample differs (the runs agree on
  every item) there is nothing to estimate it from, and it is None.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..errors import UserError

SAMPLES = 1000
LEVEL = 0.95
POWER = 0.8
_Z = 1.959963984540054 + 0.8416212335729143  # z at 1 - 0.05/2 plus z at the power, 0.8


def resample_indices(n: int, samples: int, seed: int) -> tuple[np.ndarray, bool]:
    """(resamples x n) item indices: every one of the n^n resamples when there are at most ``samples`` of them
    (the exact bootstrap distribution), else ``samples`` random ones from ``seed``; and whether it is exact."""
    if n**n <= samples:
        return np.array(list(itertools.product(range(n), repeat=n)), dtype=np.int64).reshape(-1, n), True
    return np.random.default_rng(seed).integers(0, n, size=(samples, n)), False


def two_sided(deltas: np.ndarray, observed_a: float, observed_b: float) -> dict:
    """The two-sided p-value and the 95% percentile interval of the resampled differences ``deltas``."""
    deltas = np.asarray(deltas, dtype=float)
    if not np.all(np.isfinite(deltas)):
        raise UserError("a resampled metric is NaN or infinite: the evaluation holds broken scores; evaluate again")
    below = (1 + np.sum(deltas <= 0)) / (1 + len(deltas))
    above = (1 + np.sum(deltas >= 0)) / (1 + len(deltas))
    equal = math.isclose(observed_a, observed_b, rel_tol=1e-6, abs_tol=1e-12)  # equal up to float32 rounding
    ordered = np.sort(deltas)
    tail = (1 - LEVEL) / 2
    low, high = (ordered[max(math.ceil(q * len(ordered)) - 1, 0)] for q in (tail, 1 - tail))
    return {
        "p_value": 1.0 if equal else float(min(1.0, 2 * min(below, above))),
        "ci": [float(low), float(high)],
        "mde": float(_Z * deltas.std()) if deltas.std() > 0 else None,  # no item differs: nothing to estimate it from
    }


def _result(metric: str, value_a: float, value_b: float, n: int, tested: dict, exact: bool) -> dict:
    return {"metric": metric, "a": value_a, "b": value_b, "delta": value_b - value_a, **tested, "n": n,
            "exact": exact}  # fmt: skip


def accuracy_test(correct_a, correct_b, samples: int = SAMPLES, seed: int = 0) -> dict:
    """Paired bootstrap on per-example correctness (0/1) of two runs over the same examples."""
    return mean_test(correct_a, correct_b, "accuracy", samples, seed)


def mean_test(values_a, values_b, metric: str, samples: int = SAMPLES, seed: int = 0) -> dict:
    """Paired bootstrap on a per-example score whose task metric is its mean (accuracy, exact match, F1...)."""
    a, b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    idx, exact = resample_indices(len(a), samples, seed)
    value_a, value_b = float(a.mean()), float(b.mean())
    tested = two_sided(b[idx].mean(1) - a[idx].mean(1), value_a, value_b)
    return _result(metric, value_a, value_b, len(a), tested, exact)


def perplexity_test(windows_a, windows_b, samples: int = SAMPLES, seed: int = 0) -> dict:
    """Paired bootstrap on per-window (nll, tokens): perplexity = exp(sum nll / sum tokens) of each resample."""
    a, b = np.asarray(windows_a, dtype=float), np.asarray(windows_b, dtype=float)
    if a.shape != b.shape or not np.array_equal(a[:, 1], b[:, 1]):
        raise UserError(
            "the runs scored different token windows (another tokenizer, seqlen or corpus): evaluate both "
            "with the same --seqlen and --corpus"
        )
    idx, exact = resample_indices(len(a), samples, seed)
    tokens = a[:, 1][idx].sum(1)
    ppl_a, ppl_b = np.exp(a[:, 0][idx].sum(1) / tokens), np.exp(b[:, 0][idx].sum(1) / tokens)
    value_a = math.exp(a[:, 0].sum() / a[:, 1].sum())
    value_b = math.exp(b[:, 0].sum() / b[:, 1].sum())
    return _result("ppl", value_a, value_b, len(a), two_sided(ppl_b - ppl_a, value_a, value_b), exact)


def translation_tests(hyps_a, hyps_b, references, target: str, samples: int = SAMPLES, seed: int = 0) -> list[dict]:
    """BLEU and chrF, each resampled from sacrebleu's per-sentence statistics, with the test above."""
    from sacrebleu.metrics import BLEU, CHRF

    from .translation import BLEU_TOKENIZER

    metrics = {"bleu": BLEU(tokenize=BLEU_TOKENIZER.get(target, "13a")), "chrf": CHRF()}
    idx, exact = resample_indices(len(references), samples, seed)
    tests = []
    for name, metric in metrics.items():
        stats = [np.asarray(metric._extract_corpus_statistics(list(h), [list(references)])) for h in (hyps_a, hyps_b)]
        value_a, value_b = (metric._compute_score_from_stats(list(s.sum(0))).score for s in stats)
        resampled = [np.array([metric._compute_score_from_stats(list(s[i].sum(0))).score for i in idx]) for s in stats]
        tested = two_sided(resampled[1] - resampled[0], value_a, value_b)
        tests.append(_result(name, value_a, value_b, len(references), tested, exact))
    return tests


def compare_results(a: dict, b: dict, samples: int = SAMPLES, seed: int = 0) -> list[dict]:
    """Paired tests for every task and language that both ``eval.json`` results hold, b against a."""
    rows = []
    tasks_a, tasks_b = a["tasks"], b["tasks"]
    for task in tasks_a:
        for key, ra in tasks_a[task].items():
            rb = tasks_b.get(task, {}).get(key)
            if rb is None:
                continue
            if "windows" in ra:
                tests = [perplexity_test(ra["windows"], rb["windows"], samples, seed)]
            elif "items" in ra:
                correct_b = {item["key"]: item["correct"] for item in rb["items"]}
                shared = [item for item in ra["items"] if item["key"] in correct_b]
                tests = [
                    accuracy_test([i["correct"] for i in shared], [correct_b[i["key"]] for i in shared], samples, seed)
                ]
            elif "hypotheses" in ra and ra["references"] == rb["references"]:
                tests = translation_tests(
                    ra["hypotheses"], rb["hypotheses"], ra["references"], key.split("-")[-1], samples, seed
                )
            else:
                continue
            rows += [{"task": task, "key": key, **test} for test in tests]
    return rows


def harness_tests(a: dict, folder_a, b: dict, folder_b, samples: int = SAMPLES, seed: int = 0) -> list[dict]:
    """Paired tests of lm-eval tasks both evaluations logged per sample (``--log-samples``), matched by doc_id."""
    from .harness import sample_scores

    ha, hb = a.get("harness") or {}, b.get("harness") or {}
    logs_a = (ha.get("files") or {}).get("samples", {})
    logs_b = (hb.get("files") or {}).get("samples", {})
    rows = []
    for task in sorted(set(logs_a) & set(logs_b)):
        metrics = [k.split(",")[0] for k in ha["results"].get(task, {}) if k.endswith(",none") and "_stderr" not in k]
        for metric in metrics:
            scores_a = sample_scores(folder_a, logs_a[task], metric)
            scores_b = sample_scores(folder_b, logs_b[task], metric)
            shared = sorted(set(scores_a) & set(scores_b))
            if not shared:
                continue
            test = mean_test([scores_a[k] for k in shared], [scores_b[k] for k in shared], metric, samples, seed)
            rows.append({"task": f"lm-eval {task}", "key": "-", **test})
    return rows

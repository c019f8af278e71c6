"""Paired bootstrap tests between two evaluations of the same items (Koehn, 2004).

Both runs scored the same examples (same keys, same windows), so each
resample draws one set of item indices with replacement and recomputes the
metric for both runs on it. The p-value is the share of resamples in which
the run that is better on the full data is not better, smoothed as
(1 + misses) / (1 + samples) so that it is never exactly zero. BLEU and chrF
use sacrebleu's own paired bootstrap, which resamples sentence statistics.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UserError

SAMPLES = 1000


def _p_value(a: np.ndarray, b: np.ndarray, observed_a: float, observed_b: float, higher_is_better: bool) -> float:
    """Share of resamples (a, b: the metric per resample) where the observed winner does not win."""
    if math.isclose(observed_a, observed_b, rel_tol=1e-6, abs_tol=1e-12):  # equal up to float32 rounding
        return 1.0
    sign = 1.0 if higher_is_better else -1.0
    margin = sign * (b - a) if sign * (observed_b - observed_a) > 0 else sign * (a - b)
    return float((1 + np.sum(margin <= 0)) / (1 + len(a)))


def _indices(n: int, samples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def accuracy_test(correct_a, correct_b, samples: int = SAMPLES, seed: int = 0) -> dict:
    """Paired bootstrap on per-example correctness (0/1) of two runs over the same examples."""
    return mean_test(correct_a, correct_b, True, "accuracy", samples, seed)


def mean_test(values_a, values_b, higher_is_better: bool, metric: str, samples: int = SAMPLES, seed: int = 0) -> dict:
    """Paired bootstrap on a per-example score whose task metric is its mean (accuracy, exact match, F1...)."""
    a, b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    idx = _indices(len(a), samples, seed)
    value_a, value_b = float(a.mean()), float(b.mean())
    p = _p_value(a[idx].mean(1), b[idx].mean(1), value_a, value_b, higher_is_better)
    return {"metric": metric, "a": value_a, "b": value_b, "delta": value_b - value_a, "p_value": p, "n": len(a)}


def perplexity_test(windows_a, windows_b, samples: int = SAMPLES, seed: int = 0) -> dict:
    """Paired bootstrap on per-window (nll, tokens): perplexity = exp(sum nll / sum tokens) of each resample."""
    a, b = np.asarray(windows_a, dtype=float), np.asarray(windows_b, dtype=float)
    if a.shape != b.shape or not np.array_equal(a[:, 1], b[:, 1]):
        raise UserError(
            "the runs scored different token windows (another tokenizer, seqlen or corpus): evaluate both "
            "with the same --seqlen and --corpus"
        )
    idx = _indices(len(a), samples, seed)
    tokens = a[:, 1][idx].sum(1)
    ppl_a, ppl_b = np.exp(a[:, 0][idx].sum(1) / tokens), np.exp(b[:, 0][idx].sum(1) / tokens)
    value_a = math.exp(a[:, 0].sum() / a[:, 1].sum())
    value_b = math.exp(b[:, 0].sum() / b[:, 1].sum())
    p = _p_value(ppl_a, ppl_b, value_a, value_b, higher_is_better=False)
    return {"metric": "ppl", "a": value_a, "b": value_b, "delta": value_b - value_a, "p_value": p, "n": len(a)}


def translation_tests(hyps_a, hyps_b, references, target: str, samples: int = SAMPLES) -> list[dict]:
    """sacrebleu's paired bootstrap for BLEU and chrF (its seed is fixed, so reruns agree)."""
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    from .translation import BLEU_TOKENIZER

    metrics = {"bleu": BLEU(tokenize=BLEU_TOKENIZER.get(target, "13a")), "chrf": CHRF()}
    test = PairedTest(
        [("a", list(hyps_a)), ("b", list(hyps_b))], metrics, [list(references)], test_type="bs", n_samples=samples
    )
    _, results = test()
    tests = []
    for name in metrics:
        key = next(k for k in results if k.lower().startswith(name))
        base, other = results[key]
        tests.append(
            {
                "metric": name,
                "a": base.score,
                "b": other.score,
                "delta": other.score - base.score,
                "p_value": other.p_value,
                "n": len(references),
            }
        )
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
                    ra["hypotheses"], rb["hypotheses"], ra["references"], key.split("-")[-1], samples
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
            higher = ha.get("higher_is_better", {}).get(task, {}).get(metric, True)
            test = mean_test(
                [scores_a[k] for k in shared], [scores_b[k] for k in shared], higher, metric, samples, seed
            )
            rows.append({"task": f"lm-eval {task}", "key": "-", **test})
    return rows

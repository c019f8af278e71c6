"""Evaluation on tiny models and small data, against hand-computed values and independent computations."""

import math

import pytest
import torch
from conftest import VOCAB, tiny_model, tiny_tokenizer, token_ids

from langprune.data import Example
from langprune.engine.scoring import Request, score_requests
from langprune.errors import UserError
from langprune.evaluation import EvalOptions, evaluate, text_nll
from langprune.evaluation.choice import choice_prompt, cloze_prompt, requests_for
from langprune.evaluation.fidelity import compare_hidden_states
from langprune.evaluation.rankc import consistency, rankc
from langprune.evaluation.significance import accuracy_test, compare_results, perplexity_test
from langprune.evaluation.tasks import catalog
from langprune.evaluation.translation import generate


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tok):
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: the next token is uniform over the vocabulary
    texts = ["the cat is on the mat .", "it was not a dog , and he is at the door ."]
    scores = text_nll(model, tok, texts, seqlen=8)
    assert scores["nll"] == pytest.approx(scores["tokens"] * math.log(VOCAB), rel=1e-6)  # float32 log-softmax
    assert sum(w[1] for w in scores["windows"]) == scores["tokens"]


def _brute_force_logprob(model, context, continuation):
    ids = torch.tensor([list(context) + list(continuation)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logprobs = torch.log_softmax(logits, -1)
    return sum(float(logprobs[len(context) + i - 1, t]) for i, t in enumerate(continuation))


def test_scores_equal_full_logits_and_do_not_depend_on_batching_or_padding(arch):
    model = tiny_model(arch)
    ids = token_ids(6, 14, seed=5).tolist()
    requests = [Request(tuple(row[: 3 + i]), tuple(row[3 + i : 5 + 2 * i])) for i, row in enumerate(ids)]
    one = score_requests(model, requests, batch_size=1)
    batched = score_requests(model, requests, batch_size=4)
    expected = [_brute_force_logprob(model, r.context, r.continuation) for r in requests]
    assert one == pytest.approx(expected, abs=1e-4)
    assert batched == pytest.approx(one, abs=1e-5)


def test_shared_prefix_scores_equal_scoring_each_option_from_scratch(arch):
    """Options of one context from its key/value cache (``shared``) against full rows, on every tiny architecture,
    with continuations of one, two and four tokens (the right-padded batch) and contexts alone in their group."""
    model = tiny_model(arch)
    ids = token_ids(4, 16, seed=7).tolist()
    requests = [Request(tuple(row[: 4 + 3 * k]), tuple(ids[(k + j) % 4][-length:])) for k, row in enumerate(ids[:3])
                for j, length in enumerate((1, 2, 4))]  # fmt: skip
    requests.append(Request(tuple(ids[3][:5]), tuple(ids[3][5:7])))  # a context of its own: the plain path
    shared = score_requests(model, requests, shared=True)
    plain = score_requests(model, requests, shared=False)
    assert shared == pytest.approx(plain, abs=1e-5)
    assert shared == pytest.approx([_brute_force_logprob(model, r.context, r.continuation) for r in requests], abs=1e-4)


def test_one_token_options_of_many_contexts_batched_equal_scoring_each_from_scratch(arch):
    """Cloze items whose options are one token each (It is positive / negative): their contexts, of different
    lengths, run together in padded batches, read at each one's last position."""
    model = tiny_model(arch)
    ids = token_ids(5, 16, seed=11).tolist()
    requests = [Request(tuple(row[: 6 + 2 * k]), (option,)) for k, row in enumerate(ids) for option in (7, 9, 30)]
    for batch_size in (1, 3):
        shared = score_requests(model, requests, batch_size=batch_size, shared=True)
        assert shared == pytest.approx(score_requests(model, requests, shared=False), abs=1e-5)
    assert shared == pytest.approx([_brute_force_logprob(model, r.context, r.continuation) for r in requests], abs=1e-4)


def test_a_model_that_changes_its_logits_unknown_to_langprune_is_refused():
    model = tiny_model("llama")
    plain = model.forward
    model.forward = lambda *args, **kwargs: type(out := plain(*args, **kwargs))(logits=out.logits * 3)
    with pytest.raises(UserError, match="changes its logits after the output head"):
        score_requests(model, [Request((1, 2, 3), (4,))])


def test_cloze_and_choice_prompts_follow_the_templates(tok):
    tasks = catalog()
    xnli = Example("validation/0", {"premise": "He is here", "hypothesis": "he is not"}, "neutral")
    p = cloze_prompt(tasks["xnli"], xnli)
    assert [p.context + c for c in p.continuations] == [
        "He is here, right? Yes, he is not",
        "He is here, right? No, he is not",
        "He is here, right? Also, he is not",
    ]
    assert p.options[p.gold] == "neutral"
    review = Example("review-1", {"review": "Great food."}, "positive")
    p = cloze_prompt(tasks["multiemo"], review)
    assert [p.context + c for c in p.continuations] == ["Great food. It is negative", "Great food. It is positive"]
    assert cloze_prompt(tasks["multiemo"], Example("r", {"review": "so so"}, "neutral")) is None
    # The space before the verbalised label belongs to the label's tokens, not to the context.
    request = requests_for(tok, p)[1]
    assert tok.decode(list(request.context), skip_special_tokens=True).endswith("is")
    q = choice_prompt(tasks["mmlu"], Example("k", {"question": "Which?"}, "C", ("w", "x", "y", "z")))
    assert q.context == "Which?\nA. w\nB. x\nC. y\nD. z\nAnswer:" and q.continuations == [" A", " B", " C", " D"]
    assert q.gold == 2


def test_rankc_matches_hand_computed_values():
    e = math.e
    assert consistency(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert consistency(["a", "b"], ["b", "a"]) == pytest.approx(1 / (e + 1))  # only P@2 = 1 counts, with w_2
    assert consistency(["a", "b", "c"], ["a", "c", "b"]) == pytest.approx((e**2 + 0.5 * e + 1) / (e**2 + e + 1))
    value, n = rankc({"x": ["a", "b"], "y": ["a", "b"], "z": ["a", "b"]}, {"x": ["a", "b"], "y": ["b", "a"]})
    assert n == 2 and value == pytest.approx((1 + 1 / (e + 1)) / 2)


def test_paired_bootstrap_on_known_data():
    same = accuracy_test([1, 0, 1, 1, 0], [1, 0, 1, 1, 0])
    assert same["p_value"] == 1.0 and same["delta"] == 0
    better = accuracy_test([0] * 30, [1] * 30, samples=200)
    assert better["p_value"] == pytest.approx(2 / 201) and better["delta"] == 1 and better["ci"] == [1.0, 1.0]
    # One differing item out of 40: the difference is 0 whenever that item is not drawn, (39/40)^40 of the time, so
    # the two-sided p-value is twice that share.
    a, b = [1] * 40, [1] * 39 + [0]
    p = accuracy_test(a, b, samples=4000, seed=1)["p_value"]
    assert p == pytest.approx(2 * (39 / 40) ** 40, abs=0.05)
    assert accuracy_test(a, b, seed=3) == accuracy_test(a, b, seed=3)
    windows = [[10.0, 5], [12.0, 5], [9.0, 4], [11.0, 5], [10.5, 5], [9.5, 4]]
    assert perplexity_test(windows, windows)["p_value"] == 1.0
    lower = perplexity_test(windows, [[n - 1, t] for n, t in windows], samples=100)
    assert lower["b"] < lower["a"] and lower["p_value"] == pytest.approx(2 / 101) and lower["ci"][1] < 0


@pytest.mark.parametrize("seed", range(6))
def test_two_sided_p_value_and_interval_equal_brute_force_enumeration(seed):
    """n = 4 items: all 4^4 = 256 resamples enumerated here; the test's exact mode must agree."""
    import itertools
    import random

    rng = random.Random(seed)
    a = [rng.choice([0, 1]) for _ in range(4)]
    b = [rng.choice([0, 1]) for _ in range(4)]
    deltas = sorted(
        sum(b[i] for i in draw) / 4 - sum(a[i] for i in draw) / 4 for draw in itertools.product(range(4), repeat=4)
    )
    below = (1 + sum(d <= 0 for d in deltas)) / 257
    above = (1 + sum(d >= 0 for d in deltas)) / 257
    expected = 1.0 if sum(a) == sum(b) else min(1.0, 2 * min(below, above))
    found = accuracy_test(a, b, samples=256)
    assert found["exact"] and found["p_value"] == pytest.approx(expected, abs=1e-12)
    mean = sum(deltas) / 256
    spread = math.sqrt(sum((d - mean) ** 2 for d in deltas) / 256)  # over every resample: the bootstrap's SE
    assert found["mde"] == (pytest.approx((1.959963985 + 0.841621234) * spread, rel=1e-9) if spread else None)
    assert found["ci"] == pytest.approx([deltas[math.ceil(0.025 * 256) - 1], deltas[math.ceil(0.975 * 256) - 1]])
    windows_a = [[rng.uniform(5, 15), 4] for _ in range(3)]
    windows_b = [[nll + rng.uniform(-2, 2), t] for nll, t in windows_a]
    ppl = lambda w, draw: math.exp(sum(w[i][0] for i in draw) / sum(w[i][1] for i in draw))
    deltas = sorted(ppl(windows_b, d) - ppl(windows_a, d) for d in itertools.product(range(3), repeat=3))
    below, above = ((1 + sum(f(d) for d in deltas)) / 28 for f in (lambda d: d <= 0, lambda d: d >= 0))
    found = perplexity_test(windows_a, windows_b, samples=27)
    assert found["exact"] and found["p_value"] == pytest.approx(min(1.0, 2 * min(below, above)), abs=1e-12)
    assert found["ci"] == pytest.approx([deltas[0], deltas[-1]])  # 2.5% and 97.5% of 27: the extremes


def test_minimum_detectable_effect_is_detected_in_about_80_percent_of_repeats():
    """Paired 0/1 items that disagree on a share q: an effect of the reported MDE is significant ~80% of the time,
    and the MDE is near its closed form 2.80 * sqrt(q / n)."""
    import numpy as np

    n, q = 400, 0.2
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, n)
    b = np.where(rng.random(n) < q, 1 - a, a)
    mde = accuracy_test(a, b, samples=2000)["mde"]
    assert mde == pytest.approx(2.8016 * math.sqrt(q / n), rel=0.15)
    found = 0
    for repeat in range(200):  # discordant items flip in b's favour with the odds that make b - a = mde on average
        r = np.random.default_rng(repeat + 1)
        discordant = r.random(n) < q
        gain = r.random(n) < 0.5 + mde / (2 * q)
        found += (
            accuracy_test(np.where(discordant, ~gain, 0), np.where(discordant, gain, 0), 500, repeat)["p_value"] < 0.05
        )
    assert 0.7 <= found / 200 <= 0.9


def test_translation_test_resamples_sentences_like_sacrebleu():
    from sacrebleu.metrics import CHRF

    from langprune.evaluation.significance import translation_tests

    refs = ["the cat sat on the mat", "a dog ran in the park", "it is raining today", "we eat bread"]
    hyps_a = ["the cat sat on a mat", "a dog ran", "it rains today", "we eat"]
    hyps_b = ["the cat sat on the mat", "a dog ran in a park", "it is raining", "we eat bread"]
    bleu, chrf = translation_tests(hyps_a, hyps_b, refs, "en", samples=256)
    assert chrf["exact"] and chrf["a"] == pytest.approx(CHRF().corpus_score(hyps_a, [refs]).score)
    assert chrf["delta"] > 0 and chrf["ci"][0] <= chrf["delta"] <= chrf["ci"][1] and 0 < chrf["p_value"] <= 1
    assert bleu["metric"] == "bleu" and bleu["b"] > bleu["a"]


def _independent_snr(dense_states, pruned_states):
    """Appendix D.1 written out directly, in float64."""
    snrs, errors = [], []
    for h, g in zip(dense_states, pruned_states):
        h, g = h.double(), g.double()
        mu = h.norm(dim=1).mean()
        error = ((h - g) / mu).pow(2).mean()
        signal = (h / mu).pow(2).mean()
        if error > 0:  # identical layers have no finite SNR and stay out of the mean
            snrs.append(10 * math.log10(signal / error))
        errors.append(float(error))
    return sum(snrs) / len(snrs), errors


def test_fidelity_follows_appendix_d1_and_handles_identical_states():
    dense = tiny_model("llama")
    pruned = tiny_model("llama")
    with torch.no_grad():
        for p in pruned.model.layers[1].parameters():
            p.mul_(0.7)
    windows = [row.tolist() for row in token_ids(5, 10, seed=2)]
    windows[-1] = windows[-1][:6]  # a shorter window: padding in the batch
    result = compare_hidden_states(dense, pruned, windows, batch_size=2)
    states = []
    for model in (dense, pruned):
        per_layer = [[] for _ in range(3)]
        for w in windows:
            with torch.no_grad():
                hs = model.model(input_ids=torch.tensor([w]), output_hidden_states=True).hidden_states[1:]
            for k, h in enumerate(hs):
                per_layer[k].append(h[0])
        states.append([torch.cat(layer) for layer in per_layer])
    snr, errors = _independent_snr(*states)
    assert result["layers"][0]["identical"] and result["layers"][0]["snr_db"] is None  # layer 0 was not changed
    assert result["snr_db"] == pytest.approx(snr, rel=1e-6)
    assert [layer["pruning_error"] for layer in result["layers"]] == pytest.approx(errors, rel=1e-6, abs=1e-12)
    assert compare_hidden_states(dense, pruned, windows, batch_size=5)["snr_db"] == pytest.approx(
        result["snr_db"], rel=1e-9
    )
    same = compare_hidden_states(dense, dense, windows)
    assert same["snr_db"] is None and same["identical_layers"] == 3 and same["pruning_error"] == 0


def test_greedy_translation_does_not_depend_on_batching(tok):
    model = tiny_model("llama")
    prompts = [tok("the of and to", add_special_tokens=False)["input_ids"][: 2 + i] for i in range(4)]
    one = generate(model, tok, prompts, 6, None, 0, batch_size=1)
    four = generate(model, tok, prompts, 6, None, 0, batch_size=4)
    assert one == four and all(isinstance(h, str) for h in one)


def test_evaluate_end_to_end_on_tiny_corpora(tiny_corpora, tok):
    model = tiny_model("llama")
    settings = EvalOptions(seqlen=16, batch_size=3, limit=12, translation_corpus="udhr")
    results = evaluate(
        model, tok, ["ppl", "fidelity", "cloze", "translation", "rankc"], ["fr", "de"], settings, dense=model
    )
    tasks = results["tasks"]
    assert set(tasks["ppl"]) == {"fr", "de"} and tasks["ppl"]["fr"]["tokens"] > 0
    assert tasks["fidelity"]["de"]["snr_db"] is None and tasks["fidelity"]["de"]["identical_layers"] == 3
    assert set(tasks["multiemo"]) == {"fr", "de", "en"}  # English joins for RankC
    assert tasks["multiemo"]["fr"]["n"] == 12 and all(
        i["options"] == ["negative", "positive"] for i in tasks["multiemo"]["fr"]["items"]
    )
    assert set(tasks["translation"]) == {"fr-en", "en-fr", "de-en", "en-de"}
    assert tasks["translation"]["fr-en"]["n"] == 12
    assert 0 <= tasks["rankc"]["multiemo"]["fr"]["rankc"] <= 1 and tasks["rankc"]["multiemo"]["fr"]["n"] == 12
    again = evaluate(model, tok, ["ppl", "cloze"], ["fr"], EvalOptions(seqlen=16, batch_size=1, limit=12))
    assert again["tasks"]["ppl"]["fr"]["nll"] == pytest.approx(tasks["ppl"]["fr"]["nll"], rel=1e-6)
    assert [i["predicted"] for i in again["tasks"]["multiemo"]["fr"]["items"]] == [
        i["predicted"] for i in tasks["multiemo"]["fr"]["items"]
    ]
    rows = compare_results(results, again)
    assert {(r["task"], r["key"], r["metric"]) for r in rows} == {("ppl", "fr", "ppl"), ("multiemo", "fr", "accuracy")}
    assert all(r["p_value"] == 1.0 for r in rows), rows


def test_tasks_without_data_are_refused_or_skipped(tiny_corpora, tok):
    model = tiny_model("llama")
    with pytest.raises(UserError, match="no data for mmlu sw"):
        evaluate(model, tok, ["mmlu"], ["sw"])
    with pytest.raises(UserError, match="unknown task 'clozz'.*cloze"):
        evaluate(model, tok, ["clozz"], ["fr"])
    skipped = evaluate(model, tok, ["cloze"], ["fr", "sw"], EvalOptions(seqlen=16, limit=4, skip_missing=True))
    assert set(skipped["tasks"]["multiemo"]) == {"fr"} and any("sw" in s for s in skipped["skipped"])


def test_lrp2_shifts_block_a_towards_english_and_back_at_block_b(tiny_corpora, tok):
    from langprune.evaluation.lrp2 import Projection, mean_states, projected, search_layers

    model = tiny_model("llama")
    ids = token_ids(2, 9, seed=4)

    def states():
        with torch.no_grad():
            return model.model(input_ids=ids, output_hidden_states=True).hidden_states[1:]

    plain = states()
    english, french = torch.randn(3, 32), torch.randn(3, 32)
    projection = Projection("fr", french, english, a=0, b=2)
    with projected(model, projection):
        shifted = states()
    torch.testing.assert_close(shifted[0], plain[0] + english[0] - french[0])  # block a: towards English
    assert not torch.allclose(shifted[1], plain[1])  # later blocks see the shifted states
    torch.testing.assert_close(states()[2], plain[2])  # hooks are gone after the block
    same = Projection("fr", english, english, a=0, b=1)
    with projected(model, same):
        torch.testing.assert_close(states()[2], plain[2])  # equal means: no change at all
    # Mean vectors: the brute-force mean over real tokens of each block's raw output, which is what the
    # projection hooks shift (the last block included: before the final norm, in the hook's own space).
    texts = ["the of and to in a is that for it as was", "with be by on not he this are or his from at"]
    means = mean_states(model, tok, texts, seqlen=8, batch_size=3)
    from langprune.text import text_windows

    rows = []
    for w in text_windows(tok, texts, 8, complete=False):
        seen = []
        hooks = [
            block.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
            for block in model.model.layers
        ]
        with torch.no_grad():
            model.model(input_ids=torch.tensor([w]))
        for h in hooks:
            h.remove()
        rows.append(torch.stack(seen)[:, 0])
    torch.testing.assert_close(means, torch.cat(rows, dim=1).double().mean(1).float(), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the last block's vector is not the final-norm output (the defect this guards against)
        normed = model.model(input_ids=torch.tensor([text_windows(tok, texts, 8, complete=False)[0]])).last_hidden_state
    assert not torch.allclose(means[2], normed[0].double().mean(0).float(), atol=1e-3)
    found = search_layers(model, tok, Projection("fr", french, english), catalog()["multiemo"], "multiemo", limit=6)
    assert len(found.search) == 3 and (found.a, found.b) in [(a, b) for a, b, _ in found.search]
    assert max(acc for *_, acc in found.search) == next(
        acc for a, b, acc in found.search if (a, b) == (found.a, found.b)
    )


def test_evaluate_with_lrp2_records_the_searched_blocks(tiny_corpora, tok):
    model = tiny_model("llama")
    results = evaluate(
        model, tok, ["cloze"], ["fr"], EvalOptions(seqlen=16, limit=6, lrp2=True, lrp2_stride=1, lrp2_dev=6)
    )
    chosen = results["lrp2"]["fr"]
    assert chosen["a"] < chosen["b"] and chosen["dev_task"] == "multiemo" and len(chosen["search"]) == 3
    assert results["tasks"]["multiemo"]["fr"]["n"] == 6


@pytest.mark.slow  # lm-eval indexes its task registry (about 20 s)
def test_harness_bridge_runs_a_local_task_file_on_the_model_in_memory(tmp_path, tok):
    pytest.importorskip("lm_eval")
    from helpers import harness_task_folder

    from langprune.engine.scoring import Request
    from langprune.evaluation.harness import harness_evaluate

    rows = harness_task_folder(tmp_path / "tasks", 6)
    model = tiny_model("llama")
    out = harness_evaluate(model, tok, ["tiny_choice"], tmp_path / "tasks", batch_size=2)
    accuracy = out["results"]["tiny_choice"]["acc,none"]
    # Independent check: the harness scores " to in" etc. after the question (no BOS for this tokenizer).
    context = tuple(tok("the of and", add_special_tokens=False)["input_ids"])
    scores = [
        score_requests(model, [Request(context, tuple(tok(" " + c, add_special_tokens=False)["input_ids"]))])[0]
        for c in rows[0]["choices"]
    ]
    best = max(range(3), key=scores.__getitem__)
    assert accuracy == pytest.approx(sum(best == r["answer"] for r in rows) / 6)
    with pytest.raises(UserError, match="knows no task"):
        harness_evaluate(model, tok, ["no_such_task"], tmp_path / "tasks")


def test_translation_directions_choose_which_pairs_are_translated(tiny_corpora, tok):
    from langprune.evaluation.runner import plan

    def keys(directions):
        settings = EvalOptions(limit=2, translation_corpus="udhr", translation_directions=directions)
        return sorted(job.key for job in plan(["translation"], ["fr", "de"], settings)[0])

    assert keys(None) == ["de-en", "en-de", "en-fr", "fr-en"]  # the task's own: both
    assert keys(("to-en",)) == ["de-en", "fr-en"]
    assert keys("from-en") == ["en-de", "en-fr"]  # a grid file's single word
    model = tiny_model("llama")
    results = evaluate(
        model,
        tok,
        ["translation"],
        ["fr"],
        EvalOptions(limit=2, translation_corpus="udhr", translation_directions=("to-en",)),
    )
    assert set(results["tasks"]["translation"]) == {"fr-en"}


@pytest.mark.parametrize("directions", [("into-en",), ("to-en", "both")])
def test_an_unknown_translation_direction_is_refused(directions):
    with pytest.raises(UserError, match="use to-en, from-en or to-en,from-en"):
        EvalOptions(translation_directions=directions)

"""The papers' analyses against brute-force computations written here independently (plain loops, numpy)."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from conftest import install_corpus, tiny_model, token_ids, word_text

from langprune.analysis.features import overlap_matrix, quadrant_means, unique_top_share
from langprune.analysis.inputs import SentenceBatch
from langprune.analysis.lape import count_neurons, find_activation, language_specific, lape
from langprune.analysis.lsar import lsar_subspace, sentence_embeddings, split
from langprune.engine import Tag, TokenBatch

# ---------------------------------------------------------------- features


def brute_overlap(norms: np.ndarray, beta: float) -> np.ndarray:
    count, width = norms.shape
    k = max(1, int(width * beta / 100))
    ranks = [sorted(range(width), key=lambda j: (-norms[s][j], j)) for s in range(count)]
    out = np.zeros((count, count))
    for a in range(count):
        for b in range(count):
            top, bottom = set(ranks[a][:k]), set(ranks[b][width - k :])
            out[a, b] = len(top & bottom) / k
    return out


@pytest.mark.parametrize("beta", [10, 30, 50])
def test_overlap_matrix_matches_a_plain_loop(beta):
    norms = torch.rand(5, 37, generator=torch.Generator().manual_seed(beta), dtype=torch.float64)
    norms[2, :5] = norms[2, 5]  # ties rank by index
    assert np.allclose(overlap_matrix(norms, beta).numpy(), brute_overlap(norms.numpy(), beta))


def test_a_set_against_itself_has_no_overlap_and_opposite_sets_overlap_fully():
    norms = torch.arange(20, dtype=torch.float64).unsqueeze(0)
    matrix = overlap_matrix(torch.cat([norms, -norms]), 30)
    assert matrix[0, 0] == 0 and matrix[1, 1] == 0
    assert matrix[0, 1] == 1 and matrix[1, 0] == 1  # the top of one is exactly the bottom of the other


def test_quadrant_means_leave_out_the_diagonal():
    matrix = torch.rand(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kinds = ["monolingual", "monolingual", "translation", "translation"]
    means = quadrant_means(matrix, kinds)
    assert means["monolingual x monolingual"] == pytest.approx(float(matrix[0, 1] + matrix[1, 0]) / 2)
    assert means["monolingual x translation"] == pytest.approx(float(matrix[:2, 2:].mean()))
    assert means["translation x monolingual"] == pytest.approx(float(matrix[2:, :2].mean()))
    assert means["translation x translation"] == pytest.approx(float(matrix[2, 3] + matrix[3, 2]) / 2)
    assert quadrant_means(matrix[:2, :2], kinds[:2])["translation x translation"] is None


def test_unique_top_share_matches_sets():
    rng = random.Random(0)
    a = torch.tensor([rng.random() for _ in range(200)], dtype=torch.float64)
    b = torch.tensor([rng.random() for _ in range(200)], dtype=torch.float64)
    for k in (20, 50, 100):
        top_a = set(sorted(range(200), key=lambda j: -a[j])[:k])
        top_b = set(sorted(range(200), key=lambda j: -b[j])[:k])
        assert unique_top_share(a, b, k) == pytest.approx(len(top_a - top_b) / k)
    assert unique_top_share(a, a, 20) == 0


def padded_batches(tags, seed=0):
    """Batches with padding at the ends of rows, tagged."""
    batches = []
    for i, tag in enumerate(tags):
        ids = token_ids(3, 10, seed + i)
        mask = torch.ones_like(ids)
        mask[0, 7:] = 0
        mask[2, 4:] = 0
        ids[mask == 0] = 0
        batches.append(TokenBatch(ids, mask, tag))
    return batches


def test_feature_norms_equal_hidden_states_of_a_plain_forward():
    from langprune.analysis.features import feature_norms

    model = tiny_model("llama")
    sets = {"a": padded_batches([Tag("a")] * 2), "b": padded_batches([Tag("b")], seed=5)}
    norms = feature_norms(model, [b for chosen in sets.values() for b in chosen])
    for name, chosen in sets.items():
        squares = 0
        for batch in chosen:
            with torch.no_grad():
                hidden = model(
                    batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True
                ).hidden_states
            real = batch.attention_mask.bool()
            squares = squares + torch.stack([h[real].double().square().sum(0) for h in hidden[:-1]])
        assert torch.allclose(norms[name], squares.sqrt(), rtol=1e-5, atol=1e-6)


def test_feature_norms_at_a_layer_equal_that_layers_inputs():
    from langprune.analysis.features import feature_norms

    model = tiny_model("gemma3")
    batches = padded_batches([Tag("a")] * 2)
    norms = feature_norms(model, batches, at="mlp.down_proj")["a"]
    squares = torch.zeros_like(norms)
    for batch in batches:
        seen = []
        handles = [
            block.mlp.down_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
            for block in model.model.layers
        ]
        with torch.no_grad():
            model(batch.input_ids, attention_mask=batch.attention_mask)
        for handle in handles:
            handle.remove()
        for layer, inputs in enumerate(seen):
            squares[layer] += inputs[batch.attention_mask.bool()].double().square().sum(0)
    assert torch.allclose(norms, squares.sqrt(), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="reads its own input"):
        feature_norms(model, batches, at="self_attn.k_proj")  # shares q_proj's input: never a group's first reader


# ---------------------------------------------------------------- lape


def test_lape_is_the_entropy_of_normalised_probabilities():
    probability = torch.tensor(
        [[[0.5, 0.5, 0.0], [0.2, 0.2, 0.2], [0.0, 0.0, 0.0], [0.9, 0.0, 0.0]]], dtype=torch.float64
    )
    values = lape(probability)[0]
    assert values[0] == pytest.approx(math.log(2))
    assert values[1] == pytest.approx(math.log(3))
    assert math.isnan(values[2])  # never active: no distribution
    assert values[3] == 0


def brute_language_specific(probability, languages, filter_rate, top_rate, bar_rate):
    flat = sorted(probability.flatten().tolist())
    filter_value = flat[max(1, round(len(flat) * filter_rate)) - 1]
    bar = flat[max(1, round(len(flat) * bar_rate)) - 1]
    candidates = []
    blocks, neurons, count = probability.shape
    for b in range(blocks):
        for n in range(neurons):
            p = probability[b, n].tolist()
            if max(p) <= filter_value or sum(p) == 0:
                continue
            q = [x / sum(p) for x in p]
            entropy = -sum(x * math.log(x) for x in q if x > 0)
            candidates.append((entropy, b * neurons + n, b, n))
    candidates.sort()
    chosen = candidates[: round(blocks * neurons * top_rate)]
    found = {lang: [] for lang in languages}
    for _, _, b, n in sorted(chosen):
        for k, lang in enumerate(languages):
            if probability[b, n, k] > bar:
                found[lang].append([b, n])
    return found


def test_language_specific_neurons_match_a_plain_loop():
    generator = torch.Generator().manual_seed(3)
    probability = torch.rand(3, 200, 4, generator=generator, dtype=torch.float64) ** 3
    languages = ["en", "de", "fr", "zh"]
    for rates in [(0.95, 0.01, 0.95), (0.8, 0.05, 0.9)]:
        mine = language_specific(probability, languages, *rates)
        expected = brute_language_specific(probability, languages, *rates)
        assert {k: sorted(v) for k, v in mine.items()} == {k: sorted(v) for k, v in expected.items()}


def test_neuron_counts_match_hooks_on_a_plain_forward(arch):  # every supported architecture (conftest's arch)
    model = tiny_model(arch)
    languages = ["en", "de"]
    batches = padded_batches([Tag("analysis", "en"), Tag("analysis", "de"), Tag("analysis", "en")])
    counts = count_neurons(model, batches, languages)
    from langprune.engine import find_blocks

    _, blocks = find_blocks(model)
    tap = find_activation(blocks[0])
    active = torch.zeros_like(counts.active)
    tokens = torch.zeros(2, dtype=torch.float64)
    for batch in batches:
        seen = []
        handles = [
            dict(block.named_modules())[tap].register_forward_hook(lambda m, i, o: seen.append(o)) for block in blocks
        ]
        with torch.no_grad():
            model(batch.input_ids, attention_mask=batch.attention_mask)
        for h in handles:
            h.remove()
        column = languages.index(batch.tag.language)
        real = batch.attention_mask.bool()
        for layer, output in enumerate(seen):
            active[layer, :, column] += (output.reshape(-1, output.shape[-1])[real.reshape(-1)] > 0).double().sum(0)
        tokens[column] += int(real.sum())
    assert torch.equal(counts.active, active)
    assert torch.equal(counts.tokens, tokens)
    assert (counts.magnitude > 0).all() and torch.isfinite(counts.magnitude).all()


# ---------------------------------------------------------------- lsar


def numpy_lsar(means: np.ndarray, rank: int):
    """Xie et al.'s two SVD steps written directly in numpy."""
    centre = means.mean(axis=1, keepdims=True)
    u, s, vt = np.linalg.svd(means - centre, full_matrices=False)
    rebuilt = centre + u[:, :rank] @ np.diag(s[:rank]) @ vt[:rank]
    v, *_ = np.linalg.lstsq(rebuilt.T, np.ones(means.shape[1]), rcond=None)
    mu = v / (v @ v)
    u2, _, _ = np.linalg.svd(rebuilt - mu[:, None], full_matrices=False)
    return mu, u2[:, :rank], rebuilt


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_lsar_subspace_matches_a_direct_svd(rank):
    means = np.random.default_rng(rank).normal(size=(16, 5)) + 3.0
    mu, basis = lsar_subspace(torch.tensor(means), rank)
    mu_ref, basis_ref, rebuilt = numpy_lsar(means, rank)
    assert np.allclose(mu.numpy(), mu_ref)
    # the same subspace (singular vectors are defined up to sign): equal projectors
    assert np.allclose((basis @ basis.T).numpy(), basis_ref @ basis_ref.T, atol=1e-8)
    assert np.allclose((basis.T @ basis).numpy(), np.eye(rank))
    assert np.allclose((basis.T @ mu).numpy(), 0, atol=1e-8)  # mu is orthogonal to the language subspace
    for column in range(5):  # mu . (m_l - mu) = 0: mu is the shared part of every (rank-r) language mean
        assert mu.numpy() @ (rebuilt[:, column] - mu.numpy()) == pytest.approx(0, abs=1e-8)


def test_full_rank_lsar_puts_every_language_difference_in_the_specific_part():
    means = torch.tensor(np.random.default_rng(0).normal(size=(12, 4)))
    _, basis = lsar_subspace(means, 3)
    agnostic, specific = split(means.T, basis)
    assert torch.allclose(agnostic + specific, means.T.double())
    spread = agnostic - agnostic.mean(0)
    assert spread.abs().max() < 1e-8  # the agnostic parts of the language means coincide


def test_sentence_embeddings_average_real_non_special_tokens():
    model = tiny_model("llama")
    batches = padded_batches([Tag("analysis", "en"), Tag("analysis", "de")])
    rows = sum(b.input_ids.shape[0] for b in batches)
    places = iter(torch.randperm(rows, generator=torch.Generator().manual_seed(0)).tolist())  # any order comes back
    batches = [
        SentenceBatch(b.input_ids, b.attention_mask, b.tag, tuple(next(places) for _ in b.input_ids)) for b in batches
    ]
    for batch in batches:
        batch.input_ids[:, 0] = 1  # BOS, a special token
    embeddings = sentence_embeddings(model, batches, special_ids={0, 1})
    for batch in batches:
        with torch.no_grad():
            hidden = model(
                batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True
            ).hidden_states
        for i, row in enumerate(batch.positions):
            keep = batch.attention_mask[i].bool() & (batch.input_ids[i] != 1)
            for layer in range(len(hidden) - 2):  # the last hidden state is after the final norm
                expected = hidden[layer + 1][i][keep].double().mean(0).float()
                assert torch.allclose(embeddings[layer, row], expected, atol=1e-5)


def test_sentence_batches_group_rows_by_length_and_keep_each_sentence_position(tiny_corpora, checkpoint):
    from langprune.analysis.inputs import sentence_batches
    from langprune.calibration import evaluation_texts
    from langprune.models import load_tokenizer
    from langprune.text import bos_ids, encode

    install_corpus(
        "udhr",
        {
            lang: [[f"u{i}", word_text(100 * k + i, 3 + i % 7)] for i in range(80)]
            for k, lang in enumerate(("en", "fr"))
        },
    )  # lengths 3 to 9 words, mixed
    tokenizer = load_tokenizer(str(checkpoint))
    batches = sentence_batches(tokenizer, ["en", "fr"], "udhr", None, 40, 4)
    expected = [
        (bos_ids(tokenizer) + encode(tokenizer, text))[:40]
        for lang in ("en", "fr")
        for text in evaluation_texts(lang, "udhr")
    ]
    language_of = [lang for lang in ("en", "fr") for _ in evaluation_texts(lang, "udhr")]
    assert sorted(p for b in batches for p in b.positions) == list(range(len(expected)))
    for language in ("en", "fr"):
        mine = [b for b in batches if b.tag.language == language]
        assert all(language_of[p] == language for b in mine for p in b.positions)
        lengths = [n for b in mine for n in b.attention_mask.sum(1).tolist()]
        assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]  # longest first, lengths differ
    for batch in batches:
        for row, position in enumerate(batch.positions):
            length = int(batch.attention_mask[row].sum())
            assert batch.input_ids[row, :length].tolist() == expected[position]


# ---------------------------------------------------------------- masks


def write_run(folder, keep: dict, language: str, seed: int, model="tiny"):
    """A run folder as prune writes it, for the parts masks reads: report and bit-packed mask shards."""
    from safetensors.torch import save_file

    from langprune.runs.folder import MASKS_DIR, MASKS_INDEX, PACKED, pack_bits

    (folder / MASKS_DIR).mkdir(parents=True)
    save_file(
        {n: pack_bits(k) for n, k in keep.items()},
        str(folder / MASKS_DIR / "block.safetensors"),
        metadata={PACKED: json.dumps({n: list(k.shape) for n, k in keep.items()})},
    )
    (folder / MASKS_DIR / MASKS_INDEX).write_text(json.dumps({n: "block.safetensors" for n in keep}))
    (folder / "report.json").write_text(
        json.dumps(
            {
                "model": model,
                "method": "wanda",
                "seed": seed,
                "calibration": {"recipe": f"mono:{language}", "languages": [language]},
            }
        )
    )
    return folder


NAMES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.mlp.down_proj",
    "model.layers.1.self_attn.q_proj",
    "model.layers.1.mlp.down_proj",
]


def random_keep(seed, share=0.5):
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.rand(40, 50, generator=generator) >= share for n in NAMES}


def test_mask_iou_with_seed_intersection_matches_sets(tmp_path):
    from langprune.analysis.masks import analyze_masks

    keeps = {("de", 0): random_keep(1), ("de", 1): random_keep(2), ("en", 0): random_keep(3), ("en", 1): random_keep(4)}
    runs = [write_run(tmp_path / f"{lang}{seed}", keep, lang, seed) for (lang, seed), keep in keeps.items()]
    result = analyze_masks(runs)
    for name in NAMES:
        block, module = int(name.split(".")[2]), ".".join(name.split(".")[3:])
        pruned = {
            key: {i for i, kept in enumerate(keep[name].flatten().tolist()) if not kept} for key, keep in keeps.items()
        }
        stable = {lang: pruned[(lang, 0)] & pruned[(lang, 1)] for lang in ("de", "en")}
        for lang in ("de", "en"):
            union = pruned[(lang, 0)] | pruned[(lang, 1)]
            assert result["stable"][lang][module][block] == pytest.approx(len(stable[lang]) / len(union))
        expected = len(stable["de"] & stable["en"]) / len(stable["de"] | stable["en"])
        assert result["iou"]["de|en"][module][block] == pytest.approx(expected)


def test_a_run_against_itself_has_iou_one_and_random_masks_the_expected_iou(tmp_path):
    from langprune.analysis.masks import analyze_masks

    same = random_keep(7)
    result = analyze_masks([write_run(tmp_path / "a", same, "de", 0), write_run(tmp_path / "b", same, "en", 0)])
    assert all(v == 1 for per in result["iou"]["de|en"].values() for v in per)
    result = analyze_masks(
        [write_run(tmp_path / "c", random_keep(8), "de", 0), write_run(tmp_path / "d", random_keep(9), "en", 0)]
    )
    # two independent masks pruning half each: IoU = p^2 / (2p - p^2) = 1/3
    assert all(abs(v - 1 / 3) < 0.05 for per in result["iou"]["de|en"].values() for v in per)


# ---------------------------------------------------------------- commands, figures and bad input


@pytest.fixture
def runs(checkpoint, tiny_corpora, cli, tmp_path):
    """Four tiny wanda runs: calibrated in en and fr, two seeds each."""
    made = []
    for language in ("en", "fr"):
        for seed in (0, 1):
            out = tmp_path / f"{language}-s{seed}"
            done = cli(
                "prune",
                "--model",
                checkpoint,
                "--calib",
                f"mono:{language}",
                "--nsamples",
                4,
                "--seqlen",
                16,
                "--seed",
                seed,
                "--out",
                out,
            )
            assert done.returncode == 0, done.stderr
            made.append(out)
    return made


@pytest.mark.slow  # 13 s: every analysis end to end with its figures drawn twice
def test_every_analysis_runs_from_the_cli_and_redraws_from_json(checkpoint, runs, cli, tmp_path):
    done = cli("analyze", "masks", *runs, "--out", tmp_path / "iou")
    assert done.returncode == 0, done.stderr
    assert "IoU en vs fr" in done.stdout
    for kind, extra in (("lape", ["--pruned", runs[0], "--pruned", runs[2]]), ("lsar", ["--pruned", runs[0]])):
        done = cli(
            "analyze",
            kind,
            "--model",
            checkpoint,
            "--langs",
            "en,fr,de",
            "--seqlen",
            24,
            *extra,
            "--out",
            tmp_path / kind,
        )
        assert done.returncode == 0, done.stderr
    done = cli(
        "analyze",
        "features",
        "--model",
        checkpoint,
        "--sets",
        "mono:en,mono:fr,mono:de",
        "--nsamples",
        3,
        "--seqlen",
        16,
        "--beta",
        20,
        "--out",
        tmp_path / "features",
    )
    assert done.returncode == 0, done.stderr
    for kind in ("iou", "lape", "lsar", "features"):
        folder = tmp_path / kind
        result = json.loads((folder / "analysis.json").read_text())
        assert result["provenance"]["versions"] and result["settings"]["out"] == str(folder)
        pictures = {p.name: p.read_bytes() for p in folder.glob("*.png")}
        assert pictures and all(data[:4] == b"\x89PNG" for data in pictures.values())
        for p in folder.glob("*.png"):
            p.unlink()
        done = cli("analyze", "plot", folder)
        assert done.returncode == 0, done.stderr
        assert {p.name for p in folder.glob("*.png")} == set(pictures)
    lape_result = json.loads((tmp_path / "lape" / "analysis.json").read_text())
    assert lape_result["models"] == [str(checkpoint), "en-s0", "fr-s0"] and lape_result["focus_language"] == "en"


@pytest.mark.parametrize(
    "args, message",
    [
        (["features", "--sets", "mono:en,mono:fr", "--beta", "60"], "outside (0, 50]"),
        (["features", "--sets", "mono:en,mono:fr", "--beta", "0"], "outside (0, 50]"),
        (["features", "--sets", "mono:en,mono:xx"], "xx"),
        (["features", "--sets", "mono:en"], "at least two"),
        (["features", "--sets", "mono:en,mono:fr", "--layers", "a"], "integers"),
        (["lape", "--langs", "en,qq"], "qq"),
        (["lape", "--langs", "en"], "at least two"),
        (["lsar", "--langs", "en,fr", "--pruned", "nowhere"], "nowhere"),
        (["plot", "nowhere"], "does not exist"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(cli, tmp_path, args, message):
    done = cli("analyze", *args, *([] if args[0] == "plot" else ["--out", tmp_path / "out"]))
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "out").exists()


def test_masks_refuses_one_run_and_runs_of_different_models(runs, cli, tmp_path):
    done = cli("analyze", "masks", runs[0], "--out", tmp_path / "out")
    assert done.returncode == 2 and "at least two" in done.stderr
    other = write_run(tmp_path / "other", random_keep(1), "de", 0, model="another-model")
    done = cli("analyze", "masks", runs[0], other, "--out", tmp_path / "out")
    assert done.returncode == 2 and "different models" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_layer_out_of_range_is_refused(checkpoint, tiny_corpora, cli, tmp_path):
    done = cli(
        "analyze",
        "features",
        "--model",
        checkpoint,
        "--sets",
        "mono:en,mono:fr",
        "--nsamples",
        2,
        "--seqlen",
        16,
        "--layers",
        7,
        "--out",
        tmp_path / "out",
    )
    assert done.returncode == 2 and "layer 7 is out of range" in done.stderr
    assert not (tmp_path / "out").exists()

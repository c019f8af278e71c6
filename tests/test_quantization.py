"""GPTQ, joint sparse+quant, OWL, RIA and SparseGPT's block selection against independent brute force; quantized checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from conftest import save_checkpoint, tiny_model, token_ids
from helpers import round_to_nearest, sparsegpt_prune

from langprune.compress import kernels, prune_model
from langprune.compress.profiles import outlier_ratio, owl_sparsities
from langprune.compress.quantization import QuantSpec
from langprune.compress.sparsity import Sparsity
from langprune.errors import UserError


def layer_problem(seed=0, rows=12, cols=48, tokens=300):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5
    x = torch.randn(tokens, cols, generator=g) @ mix + 0.3 * torch.randn(tokens, cols, generator=g)
    x[:, :3] *= 6  # outlier features
    return torch.randn(rows, cols, generator=g), x


def plain_grid(values: list[float], spec: QuantSpec) -> tuple[float, float]:
    """One row's scale and zero point from a list of floats, written out by hand."""
    low, high = min(min(values), 0.0), max(max(values), 0.0)
    if spec.symmetric:
        high = max(abs(low), high)
        low = -high
    if low == 0 and high == 0:
        low, high = -1.0, 1.0
    scale = float(torch.tensor((high - low) / spec.maxq, dtype=torch.float32))
    zero = float(2 ** (spec.bits - 1)) if spec.symmetric else min(max(round(-low / scale), 0), spec.maxq)
    return scale, zero


def plain_quantize(value: float, scale: float, zero: float, maxq: int) -> float:
    code = min(max(float(torch.round(torch.tensor(value / scale, dtype=torch.float64))) + zero, 0), maxq)
    return scale * (code - zero)


def brute_force_gptq(w, hessian, spec: QuantSpec, keep=None, sparsity=None, blocksize=16):
    """The OBS recursion column by column in float64 with a conditioned inverse Hessian, no lazy updates.

    Scales come from the group's current weights when its first column is
    reached (per row with plain loops); with ``sparsity`` the per-row mask of
    each block is chosen at the block start, as SparseGPT does.
    """
    w = w.double().clone()
    h = hessian.double().clone()
    h += 0.01 * h.diagonal().mean() * torch.eye(h.shape[0], dtype=torch.float64)
    rows, cols = w.shape
    keep = torch.ones(rows, cols, dtype=torch.bool) if keep is None else keep.clone()
    hinv = torch.linalg.inv(h)
    size = spec.group_size or cols
    grid = {}
    for j in range(cols):
        if sparsity is not None and j % blocksize == 0:
            end = min(j + blocksize, cols)
            n_prune = int(end * sparsity.ratio) - int(j * sparsity.ratio)
            # diagonal of H⁻¹ conditioned on the columns before each one
            diag, cond = [], hinv.clone()
            for c in range(j, end):
                diag.append(cond[c, c].item())
                cond = cond - torch.outer(cond[:, c], cond[c, :]) / cond[c, c]
            for r in range(rows):
                order = sorted(range(j, end), key=lambda c: (w[r, c].item() ** 2 / diag[c - j], c))
                for c in order[:n_prune]:
                    keep[r, c] = False
        if j % size == 0:
            for r in range(rows):
                values = [w[r, c].item() * keep[r, c].item() for c in range(j, min(j + size, cols))]
                grid[r] = plain_grid(values, spec)
        for r in range(rows):
            target = plain_quantize(w[r, j].item(), *grid[r], spec.maxq) if keep[r, j] else 0.0
            err = (w[r, j].item() - target) / hinv[j, j].item()
            w[r, j:] -= err * hinv[j, j:]
            w[r, j] = target
        hinv = hinv - torch.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return w, keep


@pytest.mark.parametrize("text", ["w4g16", "w3g8,asym", "w8", "w2g16"])
def test_gptq_equals_brute_force_obs(text):
    spec = QuantSpec.parse(text)
    w, x = layer_problem(seed=2, rows=6, cols=32)
    hessian = 2 * x.T @ x / x.shape[0]
    result = kernels.obs_sweep(w, hessian, quant=spec, blocksize=16, inner=4)
    expected, _ = brute_force_gptq(w, hessian, spec)
    # Rounding is discontinuous: a float32/float64 difference may flip one code, and the flip propagates a little.
    close = torch.isclose(result.weight.double(), expected, rtol=0, atol=1e-4)
    assert close.float().mean() >= 0.97
    assert torch.allclose(result.weight.double()[:, :8], expected[:, :8], atol=1e-4)


@pytest.mark.parametrize("text", ["w4g16", "w3g16,asym", "w4", "w4g16,actorder", "w2g8"])
def test_gptq_stays_on_its_grid_and_beats_round_to_nearest(text):
    spec = QuantSpec.parse(text)
    w, x = layer_problem(seed=1)
    hessian = 2 * x.T @ x / x.shape[0]
    result = kernels.obs_sweep(w, hessian, quant=spec, blocksize=32)
    size = spec.group_size or w.shape[1]
    for r in range(w.shape[0]):
        for start in range(0, w.shape[1], size):
            group = result.weight[r, start : start + size]
            assert len(set(group.tolist())) <= 2**spec.bits
            g = start // size
            codes = group / result.scale[r, g] + result.zero_point[r, g]
            assert (
                torch.allclose(codes, codes.round(), atol=1e-3)
                and codes.min() >= -1e-3
                and codes.max() <= spec.maxq + 1e-3
            )
    rtn, _, _ = round_to_nearest(w, spec)

    def error(q):
        return torch.linalg.norm(x @ (w - q).T).item()

    assert error(result.weight) < error(rtn)
    assert kernels.relative_output_error(w, result.weight, hessian) == pytest.approx(
        error(result.weight) ** 2 / torch.linalg.norm(x @ w.T).item() ** 2, rel=1e-3
    )


def test_joint_sparse_quant_equals_brute_force_and_keeps_exactly_the_pruned_zeros():
    spec, sparsity = QuantSpec.parse("w4g16"), Sparsity.parse("0.5")
    w, x = layer_problem(seed=4, rows=6, cols=32)
    hessian = 2 * x.T @ x / x.shape[0]
    result = kernels.obs_sweep(w, hessian, sparsity=sparsity, quant=spec, blocksize=16, inner=4)
    expected, keep = brute_force_gptq(w, hessian, spec, sparsity=sparsity)
    assert torch.equal(result.keep, keep)
    assert (result.weight[~result.keep] == 0).all()
    assert ((~result.keep).sum(1) == 16).all()
    assert torch.isclose(result.weight.double(), expected, atol=1e-4).float().mean() >= 0.97


@pytest.mark.parametrize("sparsity", ["0.5", "2:4"])
def test_gptq_after_a_fixed_mask_keeps_its_zeros(sparsity):
    w, x = layer_problem(seed=5)
    hessian = 2 * x.T @ x / x.shape[0]
    keep = kernels.mask_from_scores(kernels.wanda_scores(w, (x * x).sum(0)), Sparsity.parse(sparsity))
    result = kernels.obs_sweep(w * keep, hessian, keep=keep, quant=QuantSpec.parse("w4g16"), blocksize=32)
    assert torch.equal(result.keep, keep)
    assert (result.weight[~keep] == 0).all()
    expected, _ = brute_force_gptq(w * keep, hessian, QuantSpec.parse("w4g16"), keep=keep)
    assert torch.isclose(result.weight.double(), expected, atol=1e-4).float().mean() >= 0.97


def test_ria_masks_equal_plain_loops():
    w, x = layer_problem(seed=6, rows=8, cols=24)
    w[0, :4] = 0  # rows and columns with zeros
    norms = (x * x).sum(0)
    for alpha in (0.5, 1.0, 0.0):
        scores = kernels.ria_scores(w, norms, alpha)
        rows, cols = w.shape
        for r in range(rows):
            for c in range(cols):
                row_sum = sum(abs(w[r, k].item()) for k in range(cols))
                col_sum = sum(abs(w[k, c].item()) for k in range(rows))
                expected = (abs(w[r, c].item()) / row_sum + abs(w[r, c].item()) / col_sum) * norms[c].item() ** (
                    alpha / 2
                )
                assert scores[r, c].item() == pytest.approx(expected, rel=1e-5, abs=1e-12)
        keep = kernels.mask_from_scores(scores, Sparsity.parse("0.5"))
        for r in range(rows):
            pruned = sorted(range(cols), key=lambda c: (scores[r, c].item(), c))[:12]
            assert [c for c in range(cols) if not keep[r, c]] == sorted(pruned)


def test_owl_follows_the_published_formula():
    g = torch.Generator().manual_seed(0)
    layers = [torch.rand(40, generator=g) ** 4 for _ in range(3)]
    total = sum(v.sum().item() for v in layers)
    count = sum(v.numel() for v in layers)
    plain = sum(1 for v in layers for s in v.tolist() if s > 5 * total / count) / count
    assert outlier_ratio([lambda v=v: v for v in layers], 5.0) == pytest.approx(plain)
    ratios = [0.02, 0.07, 0.01, 0.04]
    sparsities = owl_sparsities(ratios, 0.7, 0.08)
    low, high = min(ratios), max(ratios)
    keep = [(r - low) / (high - low) * 0.16 for r in ratios]  # rescaled to [0, 2λ]
    mean_keep = sum(keep) / len(keep)
    assert sparsities == pytest.approx([1 - (k - mean_keep + 0.3) for k in keep])
    assert sum(sparsities) / 4 == pytest.approx(0.7)
    assert sparsities[1] == min(sparsities)  # the most outliers: the least pruned
    assert owl_sparsities([0.1, 0.1], 0.5, 0.08) == [0.5, 0.5]


def test_owl_run_records_block_targets_averaging_to_the_target():
    model = tiny_model("llama")
    result = prune_model(model, token_ids(8, 16), "wanda", "0.6", profile="owl")
    targets = result.summary["profile"]["block_sparsity"]
    assert sum(targets) / len(targets) == pytest.approx(0.6) and len(set(targets)) > 1
    for name, info in result.summary["layers"].items():
        block = int(name.split(".")[2])
        assert info["target_sparsity"] == pytest.approx(targets[block])
        assert info["sparsity"] == pytest.approx(int(info["shape"][1] * targets[block]) / info["shape"][1])


def brute_force_block_selection(w, hessian, ratio, blocksize):
    """The reference SparseGPT mask: per block of columns, one threshold over all rows at the (numel·ratio)-th saliency."""
    w = w.double().clone()
    h = hessian.double().clone()
    h += 0.01 * h.diagonal().mean() * torch.eye(h.shape[0], dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    rows, cols = w.shape
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    for j in range(cols):
        if j % blocksize == 0:
            end = min(j + blocksize, cols)
            diag, cond = [], hinv.clone()
            for c in range(j, end):
                diag.append(cond[c, c].item())
                cond = cond - torch.outer(cond[:, c], cond[c, :]) / cond[c, c]
            saliency = sorted((w[r, c].item() ** 2 / diag[c - j], r, c) for r in range(rows) for c in range(j, end))
            threshold = saliency[int(len(saliency) * ratio)][0]
            for value, r, c in saliency:
                pruned[r, c] = value <= threshold
        for r in range(rows):
            if pruned[r, j]:
                w[r, j:] -= w[r, j] / hinv[j, j] * hinv[j, j:]
        hinv = hinv - torch.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return ~pruned


def test_block_mask_selection_equals_the_reference_rule():
    w, x = layer_problem(seed=7, rows=6, cols=32)
    hessian = 2 * x.T @ x / x.shape[0]
    _, keep = sparsegpt_prune(w, hessian, Sparsity.parse("0.5"), blocksize=16, inner=4, selection="block")
    assert torch.equal(keep, brute_force_block_selection(w, hessian, 0.5, 16))
    per_row = (~keep).sum(1)
    assert per_row.min() < per_row.max()  # rows end up unequally sparse, unlike the default


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return save_checkpoint(tiny_model("llama"), tmp_path_factory.mktemp("llama-q"))


@pytest.mark.parametrize(
    "method,sparsity,spec",
    [
        ("sparsegpt", "0.5", "w4g16"),
        ("wanda", "2:4", "w4g16,asym"),
        ("none", "0.5", "w8"),
        ("ria", "0.5", "w4g32,actorder"),
    ],
)
def test_quantized_checkpoint_loads_with_from_pretrained_and_gives_the_same_logits(
    llama_folder, tmp_path, method, sparsity, spec
):
    from helpers import save_run

    from langprune.models import load_model
    from langprune.runs import load_masks, remeasure

    model, tokenizer = load_model(str(llama_folder))
    result = prune_model(model, token_ids(8, 16), method, sparsity, quantize=spec)
    save_run(tmp_path / "run", model, tokenizer, result.changes, result.summary)
    config = json.loads((tmp_path / "run" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    assert config["ignore"] == ["lm_head"]
    ids = token_ids(2, 10, seed=5)
    with torch.no_grad():
        expected = model(ids).logits
        # Asymmetric grids load only dequantized with compressed-tensors 0.20 (docs/compression.md); symmetric ones either way.
        options = {"quantization_config": tf.CompressedTensorsConfig(dequantize=True)} if "asym" in spec else {}
        loaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "run", **options)
        assert torch.allclose(loaded(ids).logits, expected, atol=1e-5)
        ours, _ = load_model(str(tmp_path / "run"))
        assert torch.allclose(ours(ids).logits, expected, atol=1e-5)
    measured = remeasure(tmp_path / "run")
    assert measured["nonzero_where_mask_prunes"] == 0
    if method != "none":
        masks = load_masks(tmp_path / "run")
        assert all(torch.equal(masks[name], result.changes[name].keep) for name in masks)
    layer = result.summary["layers"]["model.layers.0.mlp.down_proj"]["quantization"]
    assert layer["spec"] == str(QuantSpec.parse(spec)) and 0 <= layer["output_error"] < 0.5


def test_quantized_run_through_the_cli_then_eval_and_inspect(llama_folder, tmp_path, cli, tiny_corpora):
    out = tmp_path / "q"
    done = cli(
        "prune",
        "--model",
        llama_folder,
        "--calib",
        f"file:{llama_folder}/calib.txt",
        "--seqlen",
        "16",
        "--nsamples",
        "8",
        "--method",
        "sparsegpt",
        "--quantize",
        "w4g16",
        "--out",
        out,
    )
    assert done.returncode == 0, done.stderr
    assert "quantized 21 layers to w4g16" in done.stdout
    inspected = cli("inspect", out)
    assert inspected.returncode == 0 and "pruned with sparsegpt at 0.5, quantized to w4g16 (GPTQ)" in inspected.stdout
    assert "output error" in inspected.stdout
    evaluated = cli("eval", out, "--tasks", "ppl,fidelity", "--langs", "en")
    assert evaluated.returncode == 0, evaluated.stderr
    tasks = json.loads((out / "eval.json").read_text())["tasks"]
    assert tasks["ppl"]["en"]["ppl"] > 1 and sorted(tasks) == ["fidelity", "ppl"], tasks.keys()
    again = cli("prune", "--model", out, "--calib", f"file:{llama_folder}/calib.txt", "--out", tmp_path / "again")
    assert again.returncode == 2 and "already quantized" in again.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--quantize", "w4g100"], "does not divide"),
        (["--quantize", "w9"], "outside 2-8"),
        (["--quantize", "w1g16"], "outside 2-8"),
        (["--quantize", "int4"], "unknown quantization spec"),
        (["--quantize", "w4g16,fast"], "unknown flag"),
        (["--profile", "owl", "--no-calib"], "needs calibration text"),
        (["--profile", "owl", "--owl-lambda", "0.4"], "--owl-lambda"),
        (["--profile", "owl", "--owl-m", "0.5"], "--owl-m"),
        (["--profile", "owl", "--sparsity", "2:4"], "N:M"),
        (["--profile", "spiky"], "unknown --profile"),
        (["--method", "none"], "prunes nothing"),
        (["--mask-selection", "block"], "applies to sparsegpt"),
        (["--method", "sparsegpt", "--mask-selection", "column"], "--mask-selection must be"),
        (["--method", "ria", "--ria-alpha", "-1"], "--ria-alpha"),
        (["--method", "sparsegpt", "--sparsity", "2:4", "--quantize", "w4g16,actorder"], "actorder"),
    ],
)
def test_bad_compression_options_give_one_line_and_exit_2(llama_folder, tmp_path, cli, args, message):
    calib = [] if "--no-calib" in args else ["--calib", f"file:{llama_folder}/calib.txt"]
    args = [a for a in args if a != "--no-calib"]
    out = tmp_path / "bad"
    done = cli("prune", "--model", llama_folder, *calib, "--seqlen", "16", "--nsamples", "4", *args, "--out", out)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not out.exists() and not list(tmp_path.glob("bad*"))


def test_gpt2_conv1d_layers_are_refused_for_quantization(checkpoint, tmp_path, cli):
    done = cli(
        "prune",
        "--model",
        checkpoint,
        "--calib",
        f"file:{checkpoint}/calib.txt",
        "--seqlen",
        "16",
        "--quantize",
        "w4g16",
        "--out",
        tmp_path / "g",
    )
    assert done.returncode == 2 and "Conv1D" in done.stderr


def test_quant_spec_round_trips_and_bad_specs_are_user_errors():
    for text in ("w4g128", "w8", "w3g64,asym", "w4g128,asym,actorder"):
        assert str(QuantSpec.parse(text)) == text
    for text in ("w4g0", "4bit", "w10g128", "w4g128,fp8"):
        with pytest.raises(UserError):
            QuantSpec.parse(text)

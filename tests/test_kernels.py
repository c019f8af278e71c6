"""Kernels against independent brute-force computations."""

import pytest
import torch
from helpers import sparsegpt_prune

from langprune.compress import kernels
from langprune.compress.sparsity import Sparsity
from langprune.engine import statistics


def brute_force_mask(scores: torch.Tensor, sparsity: Sparsity) -> torch.Tensor:
    """Plain Python loops: per row (or per group of M), prune the lowest scores, lower index first on ties."""
    rows, cols = scores.shape
    keep = torch.ones(rows, cols, dtype=torch.bool)
    for r in range(rows):
        values = scores[r].tolist()
        if sparsity.structured:
            for g in range(0, cols, sparsity.m):
                group = sorted(range(g, g + sparsity.m), key=lambda j: (values[j], j))
                for j in group[: sparsity.m - sparsity.n]:
                    keep[r, j] = False
        else:
            for j in sorted(range(cols), key=lambda j: (values[j], j))[: int(cols * sparsity.ratio)]:
                keep[r, j] = False
    return keep


SPECS = [Sparsity.parse(s) for s in ("0.5", "0.3", "0.9", "2:4", "4:8", "1:4")]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_wanda_and_magnitude_masks_equal_brute_force(spec):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(12, 16, generator=g)
    weight[0, :8] = 0.25  # ties, as in de-quantised GGUF weights
    norms = torch.rand(16, generator=g) * 10
    for scores in (kernels.magnitude_scores(weight), kernels.wanda_scores(weight, norms)):
        keep = kernels.mask_from_scores(scores, spec)
        assert torch.equal(keep, brute_force_mask(scores, spec))
    # Wanda score by hand: |W_ij| * sqrt(sum of squares_j)
    assert torch.allclose(kernels.wanda_scores(weight, norms)[3, 5], weight[3, 5].abs() * norms[5].sqrt())


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_exact_sparsity_per_row_and_group(spec):
    scores = torch.rand(7, 24, generator=torch.Generator().manual_seed(0))
    keep = kernels.mask_from_scores(scores, spec)
    if spec.structured:
        assert (keep.view(7, -1, spec.m).sum(-1) == spec.n).all()
    else:
        assert ((~keep).sum(1) == int(24 * spec.ratio)).all()


def test_contrastive_score_formula():
    w = torch.tensor([[2.0, -3.0]])
    x, z = torch.tensor([4.0, 9.0]), torch.tensor([1.0, 36.0])
    s = kernels.contrastive_wanda_scores(w, x, z, eps=0.0)
    assert torch.allclose(s, torch.tensor([[2 * 2 * 2 / 1, 3 * 3 * 3 / 6]]))


def test_gram_upper_equals_full_product():
    x = torch.randn(50, 600, dtype=torch.float32)
    acc = torch.zeros(600, 600)
    statistics.accumulate_gram_upper_(acc, x[:20])
    statistics.accumulate_gram_upper_(acc, x[20:])
    assert torch.allclose(statistics.symmetrize_upper_(acc), x.T @ x, rtol=1e-4, atol=1e-3)


def _layer_problem(seed=0, rows=24, cols=64, tokens=400):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5
    x = torch.randn(tokens, cols, generator=g) @ mix + 0.3 * torch.randn(tokens, cols, generator=g)  # correlated inputs
    x[:, :4] *= 8  # a few outlier features, as in LLMs
    w = torch.randn(rows, cols, generator=g)
    return w, x


@pytest.mark.parametrize("spec", [Sparsity.parse("0.5"), Sparsity.parse("2:4"), Sparsity.parse("0.7")], ids=str)
def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude(spec):
    w, x = _layer_problem()
    hessian = 2 * x.T @ x / x.shape[0]
    pruned, keep = sparsegpt_prune(w, hessian, spec, blocksize=16)
    assert (pruned[~keep] == 0).all()
    if spec.structured:
        assert (keep.view(w.shape[0], -1, spec.m).sum(-1) == spec.n).all()
    else:
        assert ((~keep).sum(1) == int(w.shape[1] * spec.ratio)).all()

    def error(wp):
        return torch.linalg.norm(x @ w.T - x @ wp.T).item()

    sq = (x * x).sum(0)
    wanda = w * kernels.mask_from_scores(kernels.wanda_scores(w, sq), spec)
    magnitude = w * kernels.mask_from_scores(kernels.magnitude_scores(w), spec)
    assert error(pruned) < error(wanda)
    assert error(pruned) < error(magnitude)


def brute_force_sparsegpt(w: torch.Tensor, hessian: torch.Tensor, spec: Sparsity, blocksize: int) -> torch.Tensor:
    """The OBS recursion one column at a time, in float64, with no lazy or batched updates.

    Uses H⁻¹ directly: once column j is fixed, the inverse Hessian of the remaining
    columns is conditioned on it (a Schur complement), and its row j divided by its
    diagonal gives the update of the later weights. The saliency of column c is
    w² / d_c with d_c the inverse-Hessian diagonal conditioned on all columns before c.
    """
    w = w.double().clone()
    h = hessian.double().clone()
    h += 0.01 * h.diagonal().mean() * torch.eye(h.shape[0], dtype=torch.float64)
    rows, cols = w.shape

    def condition(hinv, j):
        return hinv - torch.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]

    hinv = torch.linalg.inv(h)
    d = []
    for j in range(cols):
        d.append(hinv[j, j].item())
        hinv = condition(hinv, j)
    hinv = torch.linalg.inv(h)
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    for j in range(cols):
        start = j - j % blocksize
        if spec.structured and j % spec.m == 0:
            span = range(j, j + spec.m)
            for r in range(rows):
                order = sorted(span, key=lambda c: (w[r, c].item() ** 2 / d[c], c))
                for c in order[: spec.m - spec.n]:
                    pruned[r, c] = True
        elif not spec.structured and j == start:
            end = min(start + blocksize, cols)
            n_prune = int(end * spec.ratio) - int(start * spec.ratio)
            for r in range(rows):
                order = sorted(range(start, end), key=lambda c: (w[r, c].item() ** 2 / d[c], c))
                for c in order[:n_prune]:
                    pruned[r, c] = True
        for r in range(rows):
            if pruned[r, j]:
                w[r, j:] -= w[r, j] / hinv[j, j] * hinv[j, j:]
        hinv = condition(hinv, j)
    w[pruned] = 0
    return w


@pytest.mark.parametrize("spec", [Sparsity.parse("0.5"), Sparsity.parse("2:4"), Sparsity.parse("0.3")], ids=str)
def test_sparsegpt_equals_brute_force_obs(spec):
    w, x = _layer_problem(rows=6, cols=40, seed=3)
    hessian = 2 * x.T @ x / x.shape[0]
    pruned, keep = sparsegpt_prune(w, hessian, spec, blocksize=16, inner=4)
    expected = brute_force_sparsegpt(w, hessian, spec, blocksize=16)
    assert torch.equal(keep, expected != 0)
    assert torch.allclose(pruned.double(), expected, rtol=1e-4, atol=1e-4)


def test_sparsegpt_handles_dead_inputs_and_singular_hessian():
    w, x = _layer_problem(cols=32)
    x[:, 5] = 0  # an input that never fires
    x[:, 7] = x[:, 6]  # an exactly dependent input: singular Hessian
    hessian = 2 * x.T @ x / x.shape[0]
    pruned, keep = sparsegpt_prune(w, hessian, Sparsity.parse("0.5"), blocksize=8, percdamp=0.0)
    assert torch.isfinite(pruned).all()
    assert (pruned[:, 5] == 0).all()


def test_sparsegpt_warns_and_survives_an_indefinite_hessian():
    w, _ = _layer_problem(cols=16)
    hessian = -torch.eye(16)
    with pytest.warns(UserWarning):
        pruned, _ = sparsegpt_prune(w, hessian, Sparsity.parse("0.5"), blocksize=8)
    assert torch.isfinite(pruned).all()


MODES = [(False, False), (True, False), (False, True)]  # (act-order permutation, hessian consumed)


@pytest.mark.parametrize(("permuted", "consume"), MODES, ids=["in-order", "act-order", "over-the-hessian"])
def test_in_place_inverse_factor_equals_the_textbook_one(permuted, consume):
    """U with UᵀU = (H + damp·mean(diag)·I)⁻¹, dead inputs on a unit diagonal, columns permuted as act-order asks.
    In one buffer the caller's Hessian is only read; consumed, U is written over H's upper triangle and H's strict
    lower one is left as it was. Brute force in float64."""
    _, x = _layer_problem(cols=24, seed=5)
    x[:, 3] = 0  # a dead input
    hessian = 2 * x.T @ x / x.shape[0]
    before = hessian.clone()
    dead = torch.diagonal(hessian) == 0
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0)) if permuted else None
    upper = kernels._inverse_cholesky_upper(hessian, 0.01, "layer", dead, perm, consume=consume)
    if consume:
        assert upper.data_ptr() == hessian.data_ptr()  # no second matrix
        assert torch.equal(hessian.tril(-1), before.tril(-1))
        upper = upper.triu()  # below the diagonal lies H, which the sweep never reads
    else:
        assert torch.equal(hessian, before)
    h = before.double().clone()
    h[3, 3] = 1.0
    if permuted:
        h = h[perm][:, perm]
    h += 0.01 * h.diagonal().mean() * torch.eye(24, dtype=torch.float64)
    expected = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    assert torch.allclose(upper.double(), expected, rtol=1e-4, atol=1e-5)
    assert torch.allclose(upper.double().T @ upper.double(), torch.linalg.inv(h), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("consume", [False, True], ids=["buffer", "over-the-hessian"])
def test_in_place_inverse_factor_dampens_more_when_it_must(consume):
    """A Hessian with a negative eigenvalue fails at 1% dampening; the retry reloads the matrix (from the untouched
    Hessian, or from the strict lower triangle a consumed Hessian keeps) with ten times the dampening (a warning says
    so), so the factor is that of the more damped matrix."""
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    eigenvalues = torch.tensor([-0.05] + [1.0] * 11, dtype=torch.float64)
    hessian = (q @ torch.diag(eigenvalues) @ q.T).float()
    h = hessian.double() + 0.1 * hessian.double().diagonal().mean() * torch.eye(12, dtype=torch.float64)
    dead = torch.zeros(12, dtype=torch.bool)
    with pytest.warns(UserWarning, match="needed dampening 0.1"):
        upper = kernels._inverse_cholesky_upper(hessian, 0.01, "layer", dead, consume=consume).triu()
    assert torch.allclose(upper.double().T @ upper.double(), torch.linalg.inv(h), rtol=1e-3, atol=1e-4)


def test_a_consumed_hessian_gives_the_same_sparsegpt_sweep():
    """Handing the Hessian over changes where the factor is computed, not the pruned weights or the mask (within
    float32 rounding of two LAPACK builds); a Hessian statistic refuses to be read after it is taken."""
    from langprune.compress.kernels import obs_sweep
    from langprune.engine.statistics import Hessian

    w, x = _layer_problem(rows=16, cols=64, seed=3)
    statistic = Hessian(64, "layer")
    statistic.add_batch(x)
    kept = obs_sweep(w, statistic.value.clone(), sparsity=Sparsity.parse("0.5"), blocksize=16)
    consumed = obs_sweep(w, statistic.take(), sparsity=Sparsity.parse("0.5"), blocksize=16, consume_hessian=True)
    assert torch.equal(kept.keep, consumed.keep)
    assert torch.allclose(kept.weight, consumed.weight, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="handed over"):
        _ = statistic.value


@pytest.mark.parametrize("spec", [Sparsity.parse("0.5"), Sparsity.parse("2:4")], ids=str)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "wanda-contrastive"])
def test_row_local_methods_mask_a_slice_of_rows_at_a_time_with_the_same_result(monkeypatch, method, spec):
    """Slices of 2 rows (ROW_SLICE 40 over 16 columns) give the whole layer's mask bit for bit, ties and
    N:M included, and the weight is zeroed exactly where the mask says."""
    from langprune.compress import methods
    from langprune.compress.methods import get_method
    from langprune.engine.statistics import ContrastedNorms, SquaredNorms

    g = torch.Generator().manual_seed(2)
    weight = torch.randn(11, 16, generator=g)
    weight[2, :8] = 0.5  # ties
    kind = ContrastedNorms if method == "wanda-contrastive" else SquaredNorms
    statistic = kind(16, "layer")
    statistic.add_batch(torch.randn(30, 16, generator=g))
    if kind is ContrastedNorms:
        from langprune.engine.collection import Tag

        statistic.add_batch(torch.randn(30, 16, generator=g), Tag(role="contrast"))
    chosen = get_method(method)
    assert chosen.row_local
    whole = kernels.mask_from_scores(chosen.scores("layer", weight, statistic, 0), spec)
    monkeypatch.setattr(methods, "ROW_SLICE", 40)
    pruned = weight.clone()
    keep = chosen.prune_group({"layer": pruned}, statistic, spec, 0)["layer"].keep
    assert torch.equal(keep, whole)
    assert torch.equal(pruned, weight * whole)

"""Pure tensor kernels: scores in, masks (and updated weights) out.

Nothing here knows about models, hooks or files, so every function can be
tested alone against a brute-force computation. Masks are boolean ``keep``
masks shaped like the ``(out_features, in_features)`` weight: True where the
weight survives. Ties are broken deterministically: among equal scores the
lower input index is pruned first (a stable sort), so reruns give identical
masks even on the heavily tied de-quantised weights of GGUF models.
"""

from __future__ import annotations

import warnings

import torch

from .sparsity import Sparsity


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|W|: the importance of each weight when no activations are known."""
    return weight.detach().abs().float()


def wanda_scores(weight: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
    """Wanda: S_ij = |W_ij| * ||X_j||_2 with ||X_j||^2 summed over calibration tokens."""
    norms = input_sq_norms.to(torch.float32).sqrt()
    return weight.detach().abs().float() * norms.unsqueeze(0)


def contrastive_wanda_scores(
    weight: torch.Tensor, x_sq_norms: torch.Tensor, z_sq_norms: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Translation-feature paper, Eq. 4: S_ij = |W_ij| * ||X_j|| * ||X_j|| / (||Z_j|| + eps).

    Features that are large on the contrast set Z get small scores and are pruned.
    """
    x = x_sq_norms.to(torch.float32).sqrt()
    z = z_sq_norms.to(torch.float32).sqrt()
    return weight.detach().abs().float() * (x * x / (z + eps)).unsqueeze(0)


def random_scores(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform scores from a seeded generator: random pruning with the same pattern rules."""
    return torch.rand(shape, generator=generator, dtype=torch.float32)


def mask_from_scores(scores: torch.Tensor, sparsity: Sparsity) -> torch.Tensor:
    """Keep mask pruning the lowest scores, compared within each output row.

    Unstructured: exactly ``int(in_features * ratio)`` weights per row.
    N:M: in every group of M consecutive inputs of a row, the M - N lowest.
    """
    rows, cols = scores.shape
    if sparsity.structured:
        n, m = sparsity.n, sparsity.m
        if cols % m:
            raise ValueError(f"{cols} input features are not divisible into groups of {m}")
        groups = scores.reshape(rows, cols // m, m)
        order = torch.sort(groups, dim=-1, stable=True).indices[..., : m - n]
        keep = torch.ones_like(scores, dtype=torch.bool)
        keep.view(rows, cols // m, m).scatter_(-1, order, False)
        return keep
    return prune_lowest(scores, int(cols * sparsity.ratio))


def prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep mask removing exactly the ``k`` lowest scores of each row, lowest index first among ties."""
    if not k:
        return torch.ones_like(scores, dtype=torch.bool)
    # Selection instead of a full sort: the k-th smallest score of each row is the threshold.
    threshold = torch.topk(scores, k, dim=1, largest=False, sorted=False).values.amax(1, keepdim=True)
    at_or_below = scores <= threshold
    if bool((at_or_below.sum(1) == k).all()):  # no row has extra ties at its threshold (the usual case)
        return ~at_or_below
    below = scores < threshold
    ties = scores == threshold
    needed = k - below.sum(1, keepdim=True)
    return ~(below | (ties & (ties.cumsum(1) <= needed)))


def _inverse_cholesky_upper(hessian: torch.Tensor, percdamp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of H⁻¹, dampening more (with a warning) until it exists.

    The dampening is added to the diagonal of ``hessian`` in place (the caller
    owns it), so no identity matrix or damped copy is ever allocated.
    """
    diagonal = hessian.diagonal()
    mean_diag = abs(diagonal.mean().item()) or 1.0
    damp, added = percdamp, 0.0
    for attempt in range(6):
        diagonal.add_(damp * mean_diag - added)
        added = damp * mean_diag
        factor, info = torch.linalg.cholesky_ex(hessian)
        if info.item() == 0:
            inverse = torch.cholesky_inverse(factor)
            del factor
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info.item() == 0 and torch.isfinite(upper).all():
                if attempt:
                    warnings.warn(f"{name}: Hessian needed dampening {damp:g} (asked {percdamp:g}) to factorise")
                return upper
        damp = damp * 10 if damp else 1e-4
    warnings.warn(f"{name}: Hessian could not be factorised; falling back to its diagonal")
    diag = (diagonal - added).abs()
    return torch.diag(1.0 / torch.sqrt(torch.where(diag > 0, diag, torch.ones_like(diag))))


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: Sparsity,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "layer",
    inner: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh, 2023): prune columns left to right, updating the rest.

    ``hessian`` is H = 2XXᵀ over calibration tokens. Inputs that never fire
    (zero diagonal) get their weights zeroed and a unit diagonal. Within each
    block of columns, weights are chosen per output row by the OBS saliency
    w² / [H⁻¹]_jj²; the number pruned per row and block follows the cumulative
    target, so each row ends with exactly ``int(in_features * ratio)`` zeros,
    like the per-row comparison group of Wanda. Because rows are independent
    given H, layers that share an input can be stacked into one call.

    The sequential OBS updates are computed exactly as in the paper, but
    organised for speed on CPUs: each block is held transposed (columns
    contiguous), the rank-1 updates only touch the next ``inner`` columns, and
    the rest of the block and of the matrix receive the accumulated errors as
    matrix products. Each column then costs two tensor operations.

    Returns the updated float32 weight and its keep mask.
    """
    w = weight.detach().to(torch.float32).clone()
    h = hessian.to(torch.float32).clone()
    rows, cols = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    hinv = _inverse_cholesky_upper(h, percdamp, name)
    del h
    if sparsity.structured:
        m = sparsity.m
        blocksize = max(m, blocksize // m * m)
        inner = max(m, inner // m * m)
    keep = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        block_t = w[:, start:end].T.contiguous()  # (columns, rows): one column per contiguous row
        hinv_block = hinv[start:end, start:end]
        diag = torch.diag(hinv_block).unsqueeze(1)
        keep_t = torch.ones_like(block_t, dtype=torch.bool)
        if not sparsity.structured:
            n_prune = int(end * sparsity.ratio) - int(start * sparsity.ratio)
            keep_t = prune_lowest((block_t**2 / diag**2).T, n_prune).T
        # err_j = (w_j - q_j) / [H⁻¹]_jj, nonzero only where column j is pruned.
        err_scale = (~keep_t).float() / diag
        err_t = torch.empty_like(block_t)
        for sub in range(0, end - start, inner):
            sub_end = min(sub + inner, end - start)
            for i in range(sub, sub_end):
                if sparsity.structured and i % sparsity.m == 0:
                    span = slice(i, i + sparsity.m)
                    saliency = (block_t[span] ** 2 / diag[span] ** 2).T
                    keep_t[span] = mask_from_scores(saliency, sparsity).T
                    err_scale[span] = (~keep_t[span]).float() / diag[span]
                torch.mul(block_t[i], err_scale[i], out=err_t[i])
                block_t[i + 1 : sub_end].addr_(hinv_block[i, i + 1 : sub_end], err_t[i], alpha=-1.0)
            if sub_end < end - start:
                block_t[sub_end:].addmm_(hinv_block[sub:sub_end, sub_end:].T, err_t[sub:sub_end], alpha=-1.0)
        w[:, start:end] = block_t.T
        keep[:, start:end] = keep_t.T
        if end < cols:
            w[:, end:].addmm_(err_t.T, hinv[start:end, end:], alpha=-1.0)
    w[~keep] = 0.0
    return w, keep

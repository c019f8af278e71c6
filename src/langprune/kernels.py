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
    keep = torch.ones_like(scores, dtype=torch.bool)
    if sparsity.structured:
        n, m = sparsity.n, sparsity.m
        if cols % m:
            raise ValueError(f"{cols} input features are not divisible into groups of {m}")
        groups = scores.reshape(rows, cols // m, m)
        order = torch.sort(groups, dim=-1, stable=True).indices[..., : m - n]
        keep.view(rows, cols // m, m).scatter_(-1, order, False)
        return keep
    k = int(cols * sparsity.ratio)
    if k:
        # Selection instead of a full sort: everything below the k-th smallest score,
        # then as many of the scores equal to it as needed, lowest index first.
        threshold = torch.kthvalue(scores, k, dim=1, keepdim=True).values
        below = scores < threshold
        ties = scores == threshold
        needed = k - below.sum(1, keepdim=True)
        keep = ~(below | (ties & (ties.cumsum(1) <= needed)))
    return keep


def accumulate_gram_upper_(acc: torch.Tensor, x: torch.Tensor, block: int = 256) -> None:
    """acc += XᵀX, computing only the blocks on and above the diagonal.

    XᵀX is symmetric, so this does about (k+1)/(2k) of the multiply-adds of a
    full product for k column blocks; ``symmetrize_upper`` fills in the rest
    once at the end. X is (tokens, features).
    """
    d = x.shape[1]
    if d <= block:
        acc.addmm_(x.T, x)
        return
    starts = range(0, d, block)
    for i in starts:
        xi_t = x[:, i : i + block].T
        acc[i : i + block, i:].addmm_(xi_t, x[:, i:])


def symmetrize_upper(acc: torch.Tensor, block: int = 256) -> torch.Tensor:
    """Mirror the upper block triangle written by ``accumulate_gram_upper_``."""
    if acc.shape[0] <= block:
        return acc
    return torch.triu(acc) + torch.triu(acc, 1).T


def _inverse_cholesky_upper(hessian: torch.Tensor, percdamp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of H⁻¹, dampening more (with a warning) until it exists."""
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype)
    mean_diag = abs(torch.diag(hessian).mean().item()) or 1.0
    damp = percdamp
    for attempt in range(6):
        factor, info = torch.linalg.cholesky_ex(hessian + damp * mean_diag * eye)
        if info.item() == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info.item() == 0 and torch.isfinite(upper).all():
                if attempt:
                    warnings.warn(f"{name}: Hessian needed dampening {damp:g} (asked {percdamp:g}) to factorise")
                return upper
        damp = damp * 10 if damp else 1e-4
    warnings.warn(f"{name}: Hessian could not be factorised; falling back to its diagonal")
    diag = torch.diag(hessian).abs()
    return torch.diag(1.0 / torch.sqrt(torch.where(diag > 0, diag, torch.ones_like(diag))))


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: Sparsity,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "layer",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh, 2023): prune columns left to right, updating the rest.

    ``hessian`` is H = 2XXᵀ over calibration tokens. Inputs that never fire
    (zero diagonal) get their weights zeroed and a unit diagonal. Within each
    block of columns, weights are chosen per output row by the OBS saliency
    w² / [H⁻¹]_jj²; the number pruned per row and block follows the cumulative
    target, so each row ends with exactly ``int(in_features * ratio)`` zeros,
    like the per-row comparison group of Wanda. Because rows are independent
    given H, layers that share an input can be stacked into one call.

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
    keep = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        count = end - start
        w_block = w[:, start:end].clone()
        err_block = torch.zeros_like(w_block)
        hinv_block = hinv[start:end, start:end]
        diag = torch.diag(hinv_block)
        block_keep = torch.ones_like(w_block, dtype=torch.bool)
        if not sparsity.structured:
            n_prune = int(end * sparsity.ratio) - int(start * sparsity.ratio)
            if n_prune:
                saliency = w_block**2 / diag.unsqueeze(0) ** 2
                order = torch.sort(saliency, dim=1, stable=True).indices[:, :n_prune]
                block_keep.scatter_(1, order, False)
        for i in range(count):
            col = w_block[:, i]
            d = diag[i]
            if sparsity.structured and i % sparsity.m == 0:
                span = slice(i, i + sparsity.m)
                saliency = w_block[:, span] ** 2 / diag[span].unsqueeze(0) ** 2
                block_keep[:, span] = mask_from_scores(saliency, sparsity)
            q = col * block_keep[:, i]
            err = (col - q) / d
            w_block[:, i:].addr_(err, hinv_block[i, i:], alpha=-1.0)
            w_block[:, i] = q
            err_block[:, i] = err
        w[:, start:end] = w_block
        keep[:, start:end] = block_keep
        if end < cols:
            w[:, end:].addmm_(err_block, hinv[start:end, end:], alpha=-1.0)
    w[~keep] = 0.0
    return w, keep

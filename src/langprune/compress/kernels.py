"""Pure tensor kernels: scores in, masks (and updated weights) out.

Nothing here knows about models, hooks or files, so every function can be
tested alone against a brute-force computation. Masks are boolean ``keep``
masks shaped like the ``(out_features, in_features)`` weight: True where the
weight survives. Ties are broken deterministically: among equal scores the
lower input index is pruned first (a stable sort), so reruns give identical
masks even on the heavily tied de-quantised weights of GGUF models.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from ..engine.memory import all_finite, mirror_upper_
from .quantization import QuantSpec, grid_params, group_grid
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


def _inverse_cholesky_upper(
    hessian: torch.Tensor,
    percdamp: float,
    name: str,
    dead: torch.Tensor,
    perm: torch.Tensor | None = None,
    consume: bool = False,
) -> torch.Tensor:
    """Upper Cholesky factor of H⁻¹ (H with unit diagonal at ``dead`` inputs, permuted by ``perm``), dampening more
    (with a warning) until it exists.

    Everything happens in one n×n float32 buffer besides the caller's
    ``hessian``, which is only read: the buffer is handed to LAPACK as a
    column-major view, so factorising, inverting and factorising again all
    work in place without torch's hidden column-major copies. The old way
    (a clone, a factor, an inverse, the upper factor and a finite check)
    held six Hessian-sized matrices at its peak: 4.9 GB for a 14336-wide
    down projection. A failed attempt reloads the buffer from ``hessian``.

    With ``consume`` (the caller never reads ``hessian`` again) a float32
    Hessian on the CPU in its own column order needs no buffer at all:
    ``_factor_over_upper_triangle`` writes the factor over H's upper
    triangle and leaves its strict lower one intact, so a failed attempt
    mirrors H back from there. The result is then ``hessian`` itself, valid
    on and above the diagonal (below it lies H, which the sweep never reads).
    """
    n = hessian.shape[0]
    rows = max(1, (1 << 22) // n)
    base_diagonal = torch.diagonal(hessian).to(torch.float32).masked_fill(dead, 1.0)
    if perm is not None:
        base_diagonal = base_diagonal[perm]
    over_hessian = consume and perm is None and hessian.device.type == "cpu" and hessian.dtype == torch.float32

    if over_hessian:
        work = hessian

        def load(damp_total: float, attempt: int) -> None:
            if attempt:  # H's upper triangle holds a failed factor; its strict lower one is still H
                mirror_upper_(hessian.mT)
            hessian.diagonal().copy_(base_diagonal).add_(damp_total)

        def factor() -> bool:
            return _factor_over_upper_triangle(hessian)

    else:
        buffer = torch.empty(n, n, dtype=torch.float32, device=hessian.device)
        work = buffer.mT  # column-major: LAPACK's own layout, so out=work is truly in place
        info = torch.empty((), dtype=torch.int32, device=hessian.device)

        def load(damp_total: float, attempt: int) -> None:
            for start in range(0, n, rows):  # a slice of rows at a time: permuting never copies the whole matrix
                index = slice(start, start + rows) if perm is None else perm[start : start + rows]
                chunk = hessian[index]
                work[start : start + rows] = chunk if perm is None else chunk[:, perm]
            work.diagonal().copy_(base_diagonal).add_(damp_total)

        def factor() -> bool:
            torch.linalg.cholesky_ex(work, out=(work, info))
            if info.item():
                return False
            torch.cholesky_inverse(work, out=work)
            torch.linalg.cholesky_ex(work, upper=True, out=(work, info))
            return info.item() == 0

    mean_diag = abs(base_diagonal.mean().item()) or 1.0
    damp = percdamp
    for attempt in range(6):
        load(damp * mean_diag, attempt)
        if factor() and all_finite(work):
            if attempt:
                warnings.warn(
                    f"{name}: Hessian needed dampening {damp:g} (asked {percdamp:g}) to factorise", stacklevel=2
                )
            return work
        damp = damp * 10 if damp else 1e-4
    work = buffer = None  # noqa: F841  (the failed attempts' matrix goes before the diagonal comes)
    warnings.warn(f"{name}: Hessian could not be factorised; falling back to its diagonal", stacklevel=2)
    diag = base_diagonal.abs()
    return torch.diag(1.0 / torch.sqrt(torch.where(diag > 0, diag, torch.ones_like(diag))))


def _factor_over_upper_triangle(hessian: torch.Tensor) -> bool:
    """U with UᵀU = H⁻¹ written over the upper triangle of the float32 CPU matrix ``hessian``, in place; False when
    H is not positive definite.

    Seen column-major (``hessian.mT``), H's upper triangle is LAPACK's lower
    one: potrf factorises it, potri inverts the factor, potrf factorises the
    inverse (H⁻¹ = L Lᵀ, so U = Lᵀ, which row-major is that same triangle).
    scipy's wrappers are used because they leave the other triangle alone
    (``clean=0``), which torch's ``cholesky_ex`` zeroes; BLAS threads follow
    torch's thread count.
    """
    from scipy.linalg import lapack
    from threadpoolctl import threadpool_limits

    lower = hessian.mT.numpy()  # Fortran-ordered, sharing memory: overwrite_a works on it directly
    with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
        for step in ("potrf", "potri", "potrf"):
            if step == "potrf":
                out, info = lapack.spotrf(lower, lower=1, clean=0, overwrite_a=1)
            else:
                out, info = lapack.spotri(lower, lower=1, overwrite_c=1)
            if out.ctypes.data != lower.ctypes.data:
                raise RuntimeError(f"LAPACK {step} copied the Hessian instead of working in place")
            if info:
                return False
    return True


def ria_scores(weight: torch.Tensor, input_sq_norms: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """RIA (Zhang et al., ICLR 2024): (|W_ij| / Σ_row |W| + |W_ij| / Σ_col |W|) · ||X_j||^alpha.

    A weight counts relative to the other weights of its output row and of
    its input column; rows and columns with no weight at all contribute 0.
    """
    magnitude = weight.detach().abs().float()
    row_sums = magnitude.sum(1, keepdim=True)
    col_sums = magnitude.sum(0, keepdim=True)
    relative = magnitude / torch.where(row_sums > 0, row_sums, 1.0) + magnitude / torch.where(
        col_sums > 0, col_sums, 1.0
    )
    return relative * input_sq_norms.to(torch.float32).sqrt().pow(alpha).unsqueeze(0)


MASK_SELECTIONS = ("row", "block")


@dataclass
class ObsResult:
    """What an OBS sweep leaves: the float32 weight (pruned and/or on the grid), its keep mask, the grid per group."""

    weight: torch.Tensor
    keep: torch.Tensor
    scale: torch.Tensor | None = None  # (rows, groups), in the weight's own column order
    zero_point: torch.Tensor | None = None


def _chunk_sizes(blocksize: int, inner: int, sparsity: Sparsity | None, quant: QuantSpec | None) -> tuple[int, int]:
    """Block and inner sizes that keep every N:M span inside an inner chunk and every quantization group inside a block.

    A span or group is decided from weights that must already hold every
    update from the columns before it, which is true at chunk starts only.
    """
    step = sparsity.m if sparsity is not None and sparsity.structured else 1
    group = quant.group_size if quant is not None and quant.group_size and not quant.act_order else None
    unit = math.lcm(step, group or 1)
    blocksize = max(unit, blocksize // unit * unit)
    inner = next(c for c in range(max(inner, step), 0, -1) if c % step == 0 and (group is None or group % c == 0))
    return blocksize, inner


def obs_sweep(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: Sparsity | None = None,
    keep: torch.Tensor | None = None,
    quant: QuantSpec | None = None,
    selection: str = "row",
    scale_dtype: torch.dtype = torch.float32,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "layer",
    inner: int = 16,
    consume_hessian: bool = False,
) -> ObsResult:
    """The optimal-brain-surgeon column sweep shared by SparseGPT and GPTQ (and both at once).

    Columns are fixed left to right; each fixed column's error, divided by
    its inverse-Hessian diagonal, is fed back into the columns not yet fixed
    (rows are independent given H = 2XXᵀ/T, so layers sharing an input can be
    stacked). What a column is fixed *to* is the only difference:

    - ``sparsity`` (SparseGPT): pruned weights become 0. The mask is chosen
      per block of columns by the saliency w² / [H⁻¹]_jj²: with
      ``selection="row"`` (langprune's default) each row ends with exactly
      ``int(in_features * ratio)`` zeros, like Wanda's comparison group; with
      ``"block"`` one threshold over all rows of the block, as the reference
      implementation does (rows then end up unequally sparse; it prunes every
      saliency at or below the ``int(numel * ratio)``-th smallest). N:M picks
      the spans as it reaches them.
    - ``keep`` (a fixed mask, e.g. Wanda's): pruned weights stay 0, so a
      quantizer that follows pruning keeps the zeros zero.
    - ``quant`` (GPTQ): kept weights are rounded to the grid. Scales come
      from the current (already updated) weights of a group when the sweep
      reaches it, or, with ``act_order`` or per-row scales, from the weights
      before the sweep (static groups). Zero is on the grid, so pruning and
      quantization together still leave exact zeros.

    Inputs that never fire (zero diagonal) get their weights zeroed and a unit
    diagonal; a Hessian that does not factorise is dampened further, with a
    warning. The column updates are organised for CPUs: each block is held
    transposed, rank-1 updates touch only the next ``inner`` columns, the
    rest receive the accumulated errors as matrix products. With
    ``consume_hessian`` the caller hands ``hessian`` over: the inverse factor
    may be computed in its storage (no second Hessian-sized matrix), leaving
    it overwritten.
    """
    if selection not in MASK_SELECTIONS:
        raise ValueError(f"mask selection must be one of {MASK_SELECTIONS}, not {selection!r}")
    w = weight.detach().to(torch.float32, copy=True)  # one copy: a float32 working matrix, whatever the input
    rows, cols = w.shape
    dead = torch.diagonal(hessian) == 0
    w[:, dead] = 0.0
    fixed = keep is not None
    keep = keep.clone() if fixed else torch.ones_like(w, dtype=torch.bool)
    structured = sparsity is not None and sparsity.structured
    static = quant is not None and (quant.act_order or not quant.group_size)
    scale = zero_point = None
    if static:  # groups in the weight's own column order, from the weights before the sweep
        scale, zero_point = group_grid(w * keep, quant, scale_dtype)
    perm = None
    if quant is not None and quant.act_order:
        diagonal = torch.diagonal(hessian).to(torch.float32).masked_fill(dead, 1.0)
        perm = torch.argsort(diagonal, descending=True, stable=True)
        w, keep = w[:, perm], keep[:, perm]
    group_of = _group_index(cols, quant, perm)
    hinv = _inverse_cholesky_upper(hessian, percdamp, name, dead, perm, consume=consume_hessian)
    blocksize, inner = _chunk_sizes(blocksize, inner, sparsity, quant)
    if quant is not None and not static:
        scale = torch.empty(rows, cols // quant.group_size, dtype=torch.float32, device=w.device)
        zero_point = torch.empty_like(scale)
    masked = fixed or sparsity is not None
    target, current, grid = torch.empty(rows, dtype=torch.float32, device=w.device), None, None
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        block_t = w[:, start:end].T.contiguous()  # (columns, rows): one column per contiguous row
        hinv_block = hinv[start:end, start:end]
        diag = torch.diag(hinv_block).unsqueeze(1)
        keep_t = keep[:, start:end].T.contiguous()
        if sparsity is not None and not structured and not fixed:
            keep_t = _select_block(block_t**2 / diag**2, sparsity, start, end, selection)
        # err_j = (w_j - fixed value_j) / [H⁻¹]_jj; pruning alone: nonzero only where column j is pruned.
        err_scale = (~keep_t).float() / diag
        inverse_diag = 1.0 / diag
        err_t = torch.empty_like(block_t)
        for sub in range(0, end - start, inner):
            sub_end = min(sub + inner, end - start)
            for i in range(sub, sub_end):
                if structured and not fixed and i % sparsity.m == 0:
                    span = slice(i, i + sparsity.m)
                    saliency = (block_t[span] ** 2 / diag[span] ** 2).T
                    keep_t[span] = mask_from_scores(saliency, sparsity).T
                    err_scale[span] = (~keep_t[span]).float() / diag[span]
                if quant is None:
                    torch.mul(block_t[i], err_scale[i], out=err_t[i])
                else:
                    column = start + i
                    if not static and column % quant.group_size == 0:
                        group, g = slice(i, i + quant.group_size), column // quant.group_size
                        scale[:, g], zero_point[:, g] = grid_params(block_t[group] * keep_t[group], quant, scale_dtype)
                    g = group_of[column]
                    if g != current:
                        current, grid = g, (scale[:, g], zero_point[:, g], 1.0 / scale[:, g])
                    _snap_column_(block_t[i], target, *grid, quant)
                    if masked:
                        target.mul_(keep_t[i])
                    torch.sub(block_t[i], target, out=err_t[i]).mul_(inverse_diag[i])
                    block_t[i] = target
                block_t[i + 1 : sub_end].addr_(hinv_block[i, i + 1 : sub_end], err_t[i], alpha=-1.0)
            if sub_end < end - start:
                block_t[sub_end:].addmm_(hinv_block[sub:sub_end, sub_end:].T, err_t[sub:sub_end], alpha=-1.0)
        w[:, start:end] = block_t.T
        keep[:, start:end] = keep_t.T
        if end < cols:
            w[:, end:].addmm_(err_t.T, hinv[start:end, end:], alpha=-1.0)
    w[~keep] = 0.0
    if perm is not None:
        inverse = torch.argsort(perm)
        w, keep = w[:, inverse], keep[:, inverse]
    return ObsResult(w, keep, scale, zero_point)


def _snap_column_(column: torch.Tensor, out: torch.Tensor, scale, zero_point, inverse_scale, quant: QuantSpec) -> None:
    """``fake_quantize`` of one column into ``out``, in place: the sweep's inner step, without temporaries.

    Symmetric grids have the constant zero point 2^(bits-1), so the clamp
    runs on the signed code directly (the same values, two operations fewer).
    """
    torch.mul(column, inverse_scale, out=out).round_()
    if quant.symmetric:
        half = (quant.maxq + 1) // 2
        out.clamp_(-half, quant.maxq - half).mul_(scale)
    else:
        out.add_(zero_point).clamp_(0, quant.maxq).sub_(zero_point).mul_(scale)


def _select_block(saliency_t: torch.Tensor, sparsity: Sparsity, start: int, end: int, selection: str) -> torch.Tensor:
    """Transposed keep mask of one block of columns (unstructured sparsity)."""
    if selection == "row":
        n_prune = int(end * sparsity.ratio) - int(start * sparsity.ratio)
        return prune_lowest(saliency_t.T, n_prune).T
    flat = saliency_t.reshape(-1)
    k = int(flat.numel() * sparsity.ratio)
    if k >= flat.numel():
        return torch.zeros_like(saliency_t, dtype=torch.bool)
    threshold = torch.kthvalue(flat, k + 1).values
    return saliency_t > threshold


def _group_index(cols: int, quant: QuantSpec | None, perm: torch.Tensor | None) -> list[int]:
    """The group of the column visited at each position of the sweep."""
    if quant is None:
        return []
    size = quant.group_size or cols
    order = perm.tolist() if perm is not None else range(cols)
    return [column // size for column in order]


def relative_output_error(before: torch.Tensor, after: torch.Tensor, hessian: torch.Tensor, chunk: int = 4096) -> float:
    """||(W_before - W_after) X||² / ||W_before X||² on the calibration inputs, from H = 2XXᵀ/T alone.

    tr(D H Dᵀ) for D = W_before - W_after, in row chunks (float64 sums), so
    no activations are needed and memory stays at a chunk of rows.
    """
    h = hessian.to(torch.float32)
    error = reference = 0.0
    for rows in range(0, before.shape[0], chunk):
        b = before[rows : rows + chunk].float()
        d = b - after[rows : rows + chunk].float()
        error += float(((d @ h) * d).sum(dtype=torch.float64))
        reference += float(((b @ h) * b).sum(dtype=torch.float64))
    return error / reference if reference > 0 else 0.0

"""Low-rank matrix completion, the solver behind the `complete` stage (pipeline/complete.py).

NMCL (§4.3) fills in the modalities a video lacks with a rank-100, regularized factorization of
the matrix that stacks every video's concatenated pooled features. Following Hastie, Mazumder,
Lee & Zadeh ("Matrix completion and low-rank SVD via fast alternating least squares", JMLR 16,
2015) we minimize the maximum-margin factorization criterion

    F(A, B) = 1/2 ||P_Ω(X - A Bᵀ)||²_F + λ/2 (||A||²_F + ||B||²_F),   A: N×r, B: D×r

whose solution is also the rank-r solution of the nuclear-norm problem
min_M 1/2 ||P_Ω(X - M)||²_F + λ ||M||_* when r is large enough, and fill the holes with A Bᵀ.
Two solvers of F, both written as dense torch matmuls (GPU when present):

* "als" (default): the paper's alternating ridge regressions on the observed entries. A video
  lacks *whole modalities*, so the rows fall into a handful of missing patterns and the columns
  into a handful of blocks: one r×r system per pattern / per block, and the right-hand sides of
  all rows are one matmul X B with zeros in the holes. X is never written during the fit.
* "softimpute-als": the paper's Algorithm 3.1 (fill the holes with the current fit, X* =
  P_Ω(X) + P_Ω⊥(A Bᵀ), then ridge on X*, eqs. 20-23). Same cost per iteration and it takes an
  elementwise mask, but a row lacking a large block moves towards its fit only a fraction per
  iteration, so on block-missing data it needs more iterations (docs/complete.md has figures).

Either way an iteration is two passes over X (Xᵀ A and X B); memory is one float32 copy of X
(2.5 GB at 270k × 2,348) plus the factors, and row chunks bound the temporaries.

`pipeline/complete.py:run_complete` reads the pooled modalities from the store, standardizes each column over the
videos that have it, completes, undoes the standardization and writes every modality `m` as the
new store modality `m@completed` (observed rows copied bit for bit, `observed_mask_of: m` in
its metadata so models can still tell measured from imputed rows). The originals stay.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from extractors.base import one_thread


# -- the algorithm ------------------------------------------------------------------------------
def _fill_missing(X: torch.Tensor, observed: torch.Tensor, blocks: list[tuple[int, int]] | None,
                  US: torch.Tensor, V: torch.Tensor, chunk_rows: int) -> float:
    """Overwrite the missing entries of X with the current fit (US @ Vᵀ), i.e. form X* in place.
    Returns ||P_Ω⊥(fit)||², needed for the objective. `blocks` = column ranges of a row-block
    mask ([N, K]); None = elementwise mask ([N, D]), handled as one block with `torch.where`."""
    spans = blocks or [(0, X.shape[1])]
    filled_sq = 0.0
    for k, (c0, c1) in enumerate(spans):
        rows_missing = ~observed[:, k] if blocks else ~observed.all(dim=1)
        rows = rows_missing.nonzero().squeeze(1)
        for s in range(0, len(rows), chunk_rows):
            idx = rows[s:s + chunk_rows]
            fit = US[idx] @ V[c0:c1].T
            if blocks is None:  # keep this row's observed entries, fill only its holes
                keep = observed[idx]
                fit = torch.where(keep, X[idx], fit)
                filled_sq += float(fit.masked_fill(keep, 0).square().sum(dtype=torch.float64))
            else:
                filled_sq += float(fit.square().sum(dtype=torch.float64))
            X[idx, c0:c1] = fit
    return filled_sq


def _thin_svd(M: torch.Tensor):
    """SVD of a tall [n, r] matrix through its r×r Gram matrix (eigh in float64): M = U S Rᵀ with
    U = M R S⁻¹. Several times faster than a direct SVD for n in the 100,000s; components with a
    vanishing singular value (soft-thresholded away) get U columns of 0, which leaves the fit,
    the only thing they enter, unchanged."""
    gram = (M.T @ M).double()
    with one_thread():   # tiny r×r LAPACK calls: threads only spin-wait
        evals, R = torch.linalg.eigh(gram)
    evals, R = evals.flip(0).clamp_min(0), R.flip(1)
    s = evals.sqrt()
    alive = s > s[0] * 1e-6
    inv = torch.where(alive, 1 / s.clamp_min(1e-300), 0)
    U = M @ (R * inv).to(M.dtype)
    return U, s.to(M.dtype), R.to(M.dtype)


def _ridge_svd_step(XtA: torch.Tensor, d: torch.Tensor, lam: float):
    """One half step of Algorithm 3.1 given XtA = X*ᵀ A = (D Uᵀ X*)ᵀ: the ridge solution
    B̃ᵀ = (D² + λI)⁻¹ D Uᵀ X* (eq. 22), then the SVD B̃D = Ũ D̃² Rᵀ gives the new (V, D) and the
    rotation R that keeps the other factor's fit unchanged (U ← UR, as the authors' R code does)."""
    B_tilde = XtA / (d.square() + lam)                # [D, r]: ridge solution (eq. 22)
    Ut, s, R = _thin_svd(B_tilde * d)
    return Ut, s.sqrt(), R


def lambda_max(X: torch.Tensor, iters: int = 20, seed: int = 0) -> float:
    """Largest singular value of X (missing entries zero) by power iteration: at λ ≥ λ_max the
    nuclear-norm solution is 0, so configs give λ as a fraction of it (scale-free in N)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(X.shape[1], 1, generator=g).to(X.device)
    sigma = 0.0
    for _ in range(iters):
        w = X.T @ (X @ v)
        sigma = float(w.norm().sqrt())
        v = w / w.norm().clamp_min(1e-30)
    return sigma


def _spd_inverse(G: torch.Tensor) -> torch.Tensor:
    """Inverse of a symmetric positive definite r×r matrix (a ridge Gram matrix), via Cholesky in
    float64: one small inverse then a big matmul beats a solve with many right-hand sides."""
    with one_thread():
        return torch.cholesky_inverse(torch.linalg.cholesky(G.double())).to(G.dtype)


def _als_blocks(X: torch.Tensor, observed: torch.Tensor, spans: list[tuple[int, int]], r: int, lam: float,
                tol: float, max_iters: int, seed: int, callback, info: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact alternating ridge regressions on the observed entries only (the paper's "ALS", §3),
    made cheap by the block structure. X holds 0 in its missing entries and is not modified.

    A-step: row i gets a_i = (B_Oᵢᵀ B_Oᵢ + λI)⁻¹ B_Oᵢᵀ x_Oᵢ over its observed blocks Oᵢ. Rows with
    the same missing pattern share the r×r matrix, so it is one solve per pattern, and the
    right-hand sides of all rows are the single matmul X B (zeros drop the missing blocks).
    B-step: every column of block k is observed by the same rows, so one r×r matrix per block,
    AᵀA minus the rows lacking the block, and the right-hand sides are Xᵀ A.
    """
    N, D = X.shape
    device = X.device
    # Missing patterns as integers (bit k = block k observed); the most common one (usually
    # "everything observed") is solved for all rows at once, the others overwrite their rows.
    codes = (observed.long() << torch.arange(len(spans), device=device)).sum(1)
    values, counts = torch.unique(codes, return_counts=True)
    order = counts.argsort(descending=True)
    common = int(values[order[0]])
    groups = [(int(v), (codes == v).nonzero().squeeze(1)) for v in values[order[1:]].tolist()]
    lacking = [(~observed[:, k]).nonzero().squeeze(1) for k in range(len(spans))]
    ridge = lam * torch.eye(r, device=device)
    observed_sq = sum(float(X[s:s + 16384].square().sum(dtype=torch.float64)) for s in range(0, N, 16384))
    g = torch.Generator().manual_seed(seed)
    A = (torch.randn(N, r, generator=g) / r ** 0.5).to(device)
    B = torch.zeros(D, r, device=device)
    t0 = time.perf_counter()
    for it in range(1, max_iters + 1):
        XtA, AtA = X.T @ A, A.T @ A                                   # [D, r], [r, r]
        B = torch.empty(D, r, device=device)
        for (c0, c1), rows in zip(spans, lacking):
            B[c0:c1] = XtA[c0:c1] @ _spd_inverse(AtA - A[rows].T @ A[rows] + ridge)
        XB = X @ B                                                    # [N, r]
        block_gram = [B[c0:c1].T @ B[c0:c1] for c0, c1 in spans]

        def gram_of(code: int) -> torch.Tensor:
            return sum(block_gram[k] for k in range(len(spans)) if code >> k & 1) + ridge

        A = XB @ _spd_inverse(gram_of(common))
        for code, rows in groups:
            A[rows] = XB[rows] @ _spd_inverse(gram_of(code))
        # F(A, B) = 1/2 ||P_Ω(X - ABᵀ)||² + λ/2 (||A||² + ||B||²). Since each a_i solves its
        # ridge system, Σ_i a_iᵀ(B_Oᵢᵀ B_Oᵢ + λI)a_i = <A, XB>, so F = 1/2 (||P_Ω X||² - <A, XB>)
        # + λ/2 ||B||²: no extra pass over anything N-sized but one dot product.
        objective = 0.5 * (observed_sq - float((XB * A).sum(dtype=torch.float64))) \
            + 0.5 * lam * float(B.square().sum(dtype=torch.float64))
        if _record_iteration(info, it, objective, t0, tol, callback):
            break
    return A, B


def _record_iteration(info: dict, it: int, objective: float, t0: float, tol: float, callback) -> bool:
    """Log one iteration's objective and relative decrease; True when it has converged."""
    change = (info["objective"] - objective) / objective if it > 1 else float("inf")
    info.update(iterations=it, objective=objective, change=change)
    info["history"].append({"iteration": it, "objective": objective, "change": change,
                            "seconds": time.perf_counter() - t0})
    if callback is not None:
        callback(info)
    info["converged"] = change < tol
    return info["converged"]


def _softimpute_als(X: torch.Tensor, observed: torch.Tensor, spans, r: int, lam: float, tol: float,
                    max_iters: int, seed: int, chunk_rows: int, callback, info: dict):
    """Algorithm 3.1 (softImpute-ALS): every half step fills X* = P_Ω(X) + P_Ω⊥(ABᵀ) in place and
    solves the ridge regression on the filled matrix (eqs. 20-23). Needs no per-row solves, so it
    also takes an elementwise mask; but a row lacking a large block is pulled towards its fit
    only a fraction per iteration (an EM rate), so on block-missing data `_als_blocks` converges
    in far fewer iterations at the same cost each."""
    N, D = X.shape
    device = X.device
    observed_sq = sum(float(X[s:s + chunk_rows].square().sum(dtype=torch.float64)) for s in range(0, N, chunk_rows))
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(N, r, generator=g)).Q.to(device)  # step 1
    d = torch.ones(r, device=device)
    V = torch.zeros(D, r, device=device)
    t0 = time.perf_counter()
    for it in range(1, max_iters + 1):
        # Step 2: fill X* with the current fit, ridge-regress for B, re-orthogonalize.
        filled_sq = _fill_missing(X, observed, spans, U * d.square(), V, chunk_rows)
        XtA = X.T @ (U * d)                                           # [D, r] = (D Uᵀ X*)ᵀ
        # F(A, B) at the current A = UD, B = VD, free from XtA: ||X* - ABᵀ||² = ||X*||²
        # - 2 <B, X*ᵀA> + ||ABᵀ||², and the missing entries contribute 0 to it (X* = ABᵀ there).
        A, B = U * d, V * d
        fit_sq = float(((A.T @ A) * (B.T @ B)).sum(dtype=torch.float64))
        resid = observed_sq + filled_sq - 2 * float((B * XtA).sum(dtype=torch.float64)) + fit_sq
        objective = 0.5 * max(resid, 0.0) + 0.5 * lam * float(A.square().sum() + B.square().sum())
        V, d, R = _ridge_svd_step(XtA, d, lam)
        U = U @ R
        # Step 3: the same with Xᵀ, A and B swapped.
        _fill_missing(X, observed, spans, U * d.square(), V, chunk_rows)
        XB = X @ (V * d)                                              # [N, r]
        U, d, R = _ridge_svd_step(XB, d, lam)
        V = V @ R
        if _record_iteration(info, it, objective, t0, tol, callback):  # step 4: relative decrease of F
            break
    # Step 5: M = X* V = Ũ D_σ Rᵀ; the output fit is Ũ diag((σ - λ)+) (V R)ᵀ.
    _fill_missing(X, observed, spans, U * d.square(), V, chunk_rows)
    Ut, sigma, R = _thin_svd(X @ V)
    return Ut * (sigma - lam).clamp_min(0), V @ R


def soft_impute_als(X: torch.Tensor, observed: torch.Tensor, rank: int = 100, lam: float = 1.0,
                    tol: float = 1e-4, max_iters: int = 100, seed: int = 0, device: str = "cpu",
                    blocks: dict[str, int] | None = None, method: str = "als", inplace: bool = False,
                    chunk_rows: int = 16384, callback: Callable[[dict], None] | None = None
                    ) -> tuple[torch.Tensor, dict]:
    """Complete X [N, D]: minimize F(A, B) = 1/2 ||P_Ω(X - ABᵀ)||² + λ/2 (||A||² + ||B||²), the
    criterion of Hastie et al. 2015, and fill the missing entries with ABᵀ.

    observed: bool [N, K] with `blocks` = {name: width} for the K column blocks in order (a row
        has a whole block or lacks it), or bool [N, D] elementwise (then method "softimpute-als").
    lam: λ in the units of X (see `lambda_max` for a scale-free choice).
    method: "als" (exact alternating ridge regressions, grouped by missing pattern; default) or
        "softimpute-als" (Algorithm 3.1). Both minimize F; see their docstrings for the trade-off.
    Returns (completed [N, D] float32 on `device`, info). Observed entries of the result are the
    input's, unchanged; with `inplace=True` and X already float32 on `device`, X itself is
    completed (no second N×D copy). `callback(info)` runs after every iteration.
    """
    N, D = X.shape
    observed = observed.to(device=device, dtype=torch.bool)
    spans = None
    if blocks is not None:
        widths = list(blocks.values())
        if sum(widths) != D or observed.shape != (N, len(widths)):
            raise ValueError(f"blocks {blocks} do not match X {tuple(X.shape)} and mask {tuple(observed.shape)}")
        ends = np.cumsum([0] + widths)
        spans = [(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])]
        empty = [name for k, name in enumerate(blocks) if not bool(observed[:, k].any())]
    else:
        if observed.shape != (N, D):
            raise ValueError(f"mask {tuple(observed.shape)} does not match X {tuple(X.shape)}")
        if method == "als":
            raise ValueError('an elementwise mask needs method="softimpute-als" (ALS batches by block)')
        empty = [f"column {j}" for j in (~observed.any(dim=0)).nonzero().squeeze(1)[:5].tolist()]
    if empty:
        raise ValueError(f"nothing observed for {', '.join(empty)}: a block missing for every row cannot be "
                         "completed (drop it from the modalities to complete)")
    if method not in ("als", "softimpute-als"):
        raise ValueError(f'method must be "als" or "softimpute-als", got {method!r}')

    X = X.to(device=device, dtype=torch.float32)
    if not inplace:
        X = X.clone()
    # Missing entries start at 0 (the column mean after standardization).
    _fill_missing(X, observed, spans, torch.zeros(N, 1, device=device), torch.zeros(D, 1, device=device), chunk_rows)
    r = max(1, min(rank, N, D))
    info = {"method": method, "rank": r, "lambda": lam, "iterations": 0, "objective": float("nan"),
            "change": float("nan"), "converged": False, "history": []}
    t0 = time.perf_counter()
    if method == "als":
        A, B = _als_blocks(X, observed, spans, r, lam, tol, max_iters, seed, callback, info)
    else:
        A, B = _softimpute_als(X, observed, spans, r, lam, tol, max_iters, seed, chunk_rows, callback, info)
    _fill_missing(X, observed, spans, A, B, chunk_rows)
    info["seconds"] = time.perf_counter() - t0
    return X, info


# -- standardization ------------------------------------------------------------------------------
def standardize_(X: torch.Tensor, observed: torch.Tensor, spans: list[tuple[int, int]],
                 chunk_rows: int = 16384, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """z-score every column over the rows that observe its block, in place; missing entries
    become 0. Returns (mean [D], std [D]) to undo it. Modalities differ wildly in scale (raw
    audio statistics vs unit-norm embeddings); without this the largest one owns the fit."""
    D = X.shape[1]
    col_obs = torch.zeros(D, dtype=X.dtype, device=X.device)
    total = torch.zeros(D, dtype=torch.float64, device=X.device)
    total_sq = torch.zeros(D, dtype=torch.float64, device=X.device)
    expand = torch.cat([torch.full((c1 - c0,), k, device=X.device) for k, (c0, c1) in enumerate(spans)]).long()
    for s in range(0, X.shape[0], chunk_rows):
        mask = observed[s:s + chunk_rows][:, expand].to(X.dtype)
        chunk = X[s:s + chunk_rows] * mask
        col_obs += mask.sum(0)
        total += chunk.sum(0, dtype=torch.float64)
        total_sq += chunk.square().sum(0, dtype=torch.float64)
    n = col_obs.double().clamp_min(1)
    mean = total / n
    std = (total_sq / n - mean.square()).clamp_min(0).sqrt().clamp_min(eps)
    mean, std = mean.to(X.dtype), std.to(X.dtype)
    for s in range(0, X.shape[0], chunk_rows):
        mask = observed[s:s + chunk_rows][:, expand]
        X[s:s + chunk_rows] = torch.where(mask, (X[s:s + chunk_rows] - mean) / std, 0.0)
    return mean, std


# -- the stage ------------------------------------------------------------------------------------

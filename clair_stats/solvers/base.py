"""Pieces shared by the fast solvers: the (S, c) step and the iteration record."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clair_stats.core.penalties import block_soft_threshold

__all__ = ["SolverOutput", "sparse_center_step"]


@dataclass(frozen=True)
class SolverOutput:
    """What a stacked-matrix solver returns to :func:`clair_stats.decompose`."""

    low_rank: np.ndarray  # (p, Kq)
    sparse: np.ndarray  # (p, Kq)
    center: np.ndarray | None  # (p, q)
    dual: np.ndarray | None  # (p, Kq)
    converged: bool
    iterations: int
    primal_residual: float
    dual_residual: float
    duality_gap: float
    relative_gap: float
    objective: float
    message: str
    penalty: float | None = None  # ADMM's final beta, for warm starts


def sparse_center_step(
    target: np.ndarray,
    thresholds: np.ndarray,
    center: bool,
    center_init: np.ndarray | None = None,
    *,
    tol: float = 1e-13,
    max_iter: int = 500,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Solve min_{S, c} sum_k t_k ||S_k||_F + 1/2 ||S + c 1^T - R||_F^2 exactly.

    Without a centre this is block soft-thresholding of R. With one, c solves
    the convex location problem min_c sum_k h_k(R_k - c), h_k the Moreau
    envelope of t_k ||.||_F (a multivariate Huber loss), and S_k is R_k - c
    block soft-thresholded. The location problem is solved by the MM iteration
    c <- sum_k a_k R_k / sum_k a_k with a_k = min(1, t_k / ||R_k - c||_F), which
    decreases the objective monotonically; warm starts make it a few steps.

    Parameters
    ----------
    target : numpy.ndarray, shape (p, Kq)
        R.
    thresholds : numpy.ndarray, shape (K,)
        t_k > 0.
    center : bool
        Whether c is a variable (else c = 0 and None is returned).
    center_init : numpy.ndarray, shape (p, q), optional
        Warm start for c.

    Returns
    -------
    sparse : numpy.ndarray, shape (p, Kq)
    center : numpy.ndarray, shape (p, q), or None
    """
    p = target.shape[0]
    n_clients = thresholds.size
    blocks = target.reshape(p, n_clients, -1)
    if not center:
        return block_soft_threshold(target, thresholds), None
    c = blocks.mean(axis=1) if center_init is None else center_init.copy()
    scale = float(np.sqrt(np.einsum("ikj,ikj->", blocks, blocks))) + 1e-300
    for _ in range(max_iter):
        diff = blocks - c[:, None, :]
        norms = np.sqrt(np.einsum("ikj,ikj->k", diff, diff))
        a = np.where(norms > thresholds, thresholds / np.maximum(norms, 1e-300), 1.0)
        c_new = np.einsum("k,ikj->ij", a, blocks) / a.sum()
        step = float(np.linalg.norm(c_new - c))
        c = c_new
        if step <= tol * scale:
            break
    centred = (blocks - c[:, None, :]).reshape(target.shape)
    return block_soft_threshold(centred, thresholds), c

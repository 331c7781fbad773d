"""Duality-gap certificates for P0, P1 and P1c, independent of the solver.

Given any candidate (L, S, c) and any candidate dual matrix Y, the functions
build a *feasible* primal point and a *feasible* dual point from them and return
the gap between their objectives. The gap bounds the suboptimality of the primal
point whatever produced it (ADMM, block-coordinate descent or cvxpy), so it is
the stopping rule of the fast solvers and the yardstick of the cross-validation.

The duals (penalty g(L, S) = ||L||_* + lam sum_k w_k ||S_k||_F, Pi the removal of
the block mean, needed only with a centre):

- P0:  max <Y, M>               s.t. ||Y||_op <= 1,  ||Y_k||_F <= lam w_k,    PiY = Y;
- P1:  max <Y, M> - ||Y||_F^2/2  s.t. ||Y||_op <= mu, ||Y_k||_F <= mu lam w_k, PiY = Y;
- P1c: max <Y, M> - eps ||Y||_F  s.t. ||Y||_op <= 1,  ||Y_k||_F <= lam w_k,    PiY = Y.

A candidate Y is made dual feasible by Pi and by dividing it by the largest
violation factor (never below 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from clair_stats.core.penalties import NuclearNorm, block_norms
from clair_stats.core.problems import Problem, remove_block_mean

__all__ = ["Certificate", "duality_gap", "operator_norm"]


@dataclass(frozen=True)
class Certificate:
    """A primal-dual pair's objectives and their gap.

    Parameters
    ----------
    primal : float
        Objective of the feasible primal point built from the candidate.
    dual : float
        Objective of the feasible dual point built from the candidate.
    gap : float
        primal - dual >= 0 (up to rounding): bounds primal - optimum.
    relative_gap : float
        gap / reference, with reference the primal objective (P0, P1c) or the
        objective at L = S = 0 (P1), so that the certificate is scale free.
    """

    primal: float
    dual: float
    gap: float
    relative_gap: float


def operator_norm(x: np.ndarray) -> float:
    """||X||_op, from the top eigenvalue of the smaller Gram matrix.

    Parameters
    ----------
    x : numpy.ndarray, shape (m, n)
        The matrix (0 is returned when it is empty).

    Returns
    -------
    float
        Its largest singular value.
    """
    if x.size == 0:
        return 0.0
    xt = x if x.shape[0] <= x.shape[1] else x.T
    gram = xt @ xt.T
    n = gram.shape[0]
    top = scipy.linalg.eigh(gram, eigvals_only=True, subset_by_index=(n - 1, n - 1))
    return float(np.sqrt(max(top[0], 0.0)))


def duality_gap(
    problem: Problem,
    data: np.ndarray,
    low_rank: np.ndarray,
    sparse: np.ndarray,
    center: np.ndarray | None,
    dual: np.ndarray | None = None,
    *,
    nuclear_norm: float | None = None,
    dual_operator_norm: float | None = None,
    residual: np.ndarray | None = None,
) -> Certificate:
    """Certify a candidate solution of ``problem`` by a duality gap.

    Parameters
    ----------
    problem : Problem
        The program (P0, P1 or P1c), with its lam, weights, mu or eps and
        whether it has a centre: it sets the primal objective and the dual
        constraints.
    data : numpy.ndarray, shape (p, Kq)
        The stacked matrix M.
    low_rank, sparse : numpy.ndarray, shape (p, Kq)
        Candidate L and S (stacked).
    center : numpy.ndarray, shape (p, q), or None
        Candidate c.
    dual : numpy.ndarray, shape (p, Kq), optional
        Candidate dual Y. Default: the residual M - L - S - c 1^T, the natural
        dual of P1; required for P0 and P1c.
    nuclear_norm : float, optional
        ||L||_* if already known (for example from singular value thresholding).
    dual_operator_norm : float, optional
        An upper bound on ||Pi Y||_op; computed exactly when omitted.
    residual : numpy.ndarray, shape (p, Kq), optional
        M - L - S - c 1^T if already computed.

    Returns
    -------
    Certificate
    """
    n_clients = problem.n_clients
    lam_w = problem.lam * problem.weights
    if nuclear_norm is None:
        nuclear_norm = NuclearNorm().value(low_rank)
    if residual is None:
        residual = problem.residual(data, low_rank, sparse, center)
    if dual is None:
        if problem.mode != "penalized":
            raise ValueError(f"{problem.name} needs a dual candidate Y.")
        dual = residual
    y = remove_block_mean(dual, n_clients) if problem.center else dual
    op = operator_norm(y) if dual_operator_norm is None else dual_operator_norm
    bound = problem.mu if problem.mode == "penalized" else 1.0
    block_ratio = float(np.max(block_norms(y, n_clients) / (bound * lam_w)))
    y = y / max(1.0, op / bound, block_ratio)

    if problem.mode == "exact":
        # feasible primal point: put the residual into S
        feasible_sparse = sparse + residual
        primal = nuclear_norm + float(lam_w @ block_norms(feasible_sparse, n_clients))
        dual_value = float(np.vdot(y, data))
        reference = primal
    elif problem.mode == "constrained":
        # feasible primal point: move the part of the residual beyond eps into S
        res_norm = float(np.linalg.norm(residual))
        shift = 0.0 if res_norm <= problem.eps else 1.0 - problem.eps / res_norm
        feasible_sparse = sparse + shift * residual
        primal = nuclear_norm + float(lam_w @ block_norms(feasible_sparse, n_clients))
        dual_value = float(np.vdot(y, data)) - problem.eps * float(np.linalg.norm(y))
        reference = primal
    else:
        primal = 0.5 * float(np.vdot(residual, residual)) + problem.mu * (
            nuclear_norm + float(lam_w @ block_norms(sparse, n_clients))
        )
        dual_value = float(np.vdot(y, data)) - 0.5 * float(np.vdot(y, y))
        centred = remove_block_mean(data, n_clients) if problem.center else data
        reference = 0.5 * float(np.vdot(centred, centred))
    gap = primal - dual_value
    scale = max(reference, np.finfo(float).tiny)
    return Certificate(
        primal=primal, dual=dual_value, gap=gap, relative_gap=max(gap, 0.0) / scale
    )

"""Step 1 of CLAIR: split the stacked updates into low-rank plus block-sparse parts."""

from __future__ import annotations

import contextlib
import functools
import time
import warnings

import numpy as np
from threadpoolctl import ThreadpoolController

from clair_stats.core.exceptions import ConvergenceWarning
from clair_stats.core.linalg import stack, unstack
from clair_stats.core.lowrank import LowRankUpdates
from clair_stats.core.problems import MODES, Problem
from clair_stats.core.results import (
    Decomposition,
    FactoredDecomposition,
    SolverInfo,
)
from clair_stats.core.validation import (
    check_nonnegative,
    check_positive,
    check_updates,
    check_weights,
)
from clair_stats.solvers.admm import admm_p0
from clair_stats.solvers.bcd import bcd_p1
from clair_stats.solvers.cvx import CVXPY_SOLVERS, cvxpy_solve
from clair_stats.solvers.factored import as_factored, reduce_updates

__all__ = ["DEFAULT_C_LAM", "decompose", "default_lam"]

#: Default c_lam of lam = c_lam / sqrt(K) when gamma is unknown (SPEC §3).
#: ``simulations/lambda_calibration.py`` maps, over 288 regimes (p 30/80, q 1-10,
#: K 20-100, r 2/5, gamma 0.1-0.4, random and orthogonal contamination, 8 noiseless
#: replicates each), the values of c at which P0 recovers exactly on every replicate.
#: c = 4 lies in 206 of the 288 windows, c = 4.5 in 224; but the good c rises with K
#: (at K = 20, 71 of 96 windows contain 4 and 59 contain 4.5), and at q = 1, K = 20,
#: c = 4.5 passes sqrt(qK) = 4.47, above which no block can be flagged at all. No
#: single c works everywhere (30 regimes, 26 of them with q = 1, have no window).
DEFAULT_C_LAM = 4.0

_SOLVERS = ("proximal", "cvxpy")
_DEFAULT_MAX_ITER = {"proximal": 5000, "cvxpy": 100_000}


def default_lam(n_clients: int) -> float:
    """lam = c_lam / sqrt(K) with c_lam = :data:`DEFAULT_C_LAM`."""
    return DEFAULT_C_LAM / np.sqrt(n_clients)


def decompose(
    updates: np.ndarray | LowRankUpdates,
    lam: float | None = None,
    mode: str = "exact",
    mu: float | None = None,
    eps: float | None = None,
    center: bool = False,
    weights: np.ndarray | None = None,
    solver: str = "proximal",
    tol: float | None = None,
    max_iter: int | None = None,
    init: Decomposition | None = None,
    verbose: bool = False,
    cvxpy_solver: str = "SCS",
) -> Decomposition | FactoredDecomposition:
    """Decompose the stacked client updates into low-rank plus block-sparse parts.

    With M = [Theta^_1, ..., Theta^_K] in R^{p x Kq} (block k = client k):

    .. math::

        (P0)\\quad \\min_{L,S,c} \\|L\\|_* + \\lambda \\sum_k w_k \\|S_k\\|_F
            \\ \\text{ s.t. } L + S + c 1^T = M,

        (P1)\\quad \\min_{L,S,c} \\tfrac12 \\|M - L - S - c 1^T\\|_F^2
            + \\mu \\|L\\|_* + \\mu\\lambda \\sum_k w_k \\|S_k\\|_F,

        (P1c)\\quad \\min_{L,S,c} \\|L\\|_* + \\lambda \\sum_k w_k \\|S_k\\|_F
            \\ \\text{ s.t. } \\|M - L - S - c 1^T\\|_F \\le \\varepsilon,

    where the centre c in R^{p x q} is a variable only when ``center=True``.

    Parameters
    ----------
    updates : array_like of shape (K, p, q), or LowRankUpdates
        The local estimates Theta^_k, K >= 2. Factored updates Theta^_k =
        s_k B_k A_k are solved on a core of size R x K max_k r_k, R <= sum_k r_k
        (with ``center=True``: R x K n_w, n_w <= min(q, sum_k r_k)), and never
        multiplied out (:mod:`clair_stats.solvers.factored`).
    lam : float, optional
        lam > 0. Default c_lam / sqrt(K) (:func:`default_lam`). The objective is
        positively homogeneous, so lam does not depend on the scale of M; the
        theory value of T1 is 3 / (7 sqrt(gamma K)).
    mode : {"exact", "penalized", "constrained"}
        P0, P1 or P1c. P1c is solved by cvxpy only.
    mu : float
        mu > 0, required for P1; of the order of the noise operator norm,
        tau (sqrt(p) + sqrt(Kq)) for iid N(0, tau^2) noise.
    eps : float
        eps >= 0, required for P1c: a bound on ||M - (L0 + S0)||_F.
    center : bool
        Estimate an unknown common backbone c (the Theta_0 of SPEC §2).
    weights : array_like, shape (K,), optional
        Block weights w_k > 0 (default 1; sqrt of client sample sizes is one
        choice).
    solver : {"proximal", "cvxpy"}
        ``"proximal"``: ADMM for P0, exact block-coordinate descent for P1.
        ``"cvxpy"``: the exact reference (small instances only).
    tol : float, optional
        Proximal: target of the relative duality gap (and of the relative
        primal residual for P0), default 1e-7. cvxpy: backend tolerance,
        default 1e-8 (Clarabel reports "optimal_inaccurate" at 1e-9).
    max_iter : int, optional
        Iteration limit (default 5000 proximal, 100000 cvxpy).
    init : Decomposition, optional
        Warm start from an earlier decomposition of data of the same shape
        (proximal solver only; for example along a path of lam).
    verbose : bool
        Print solver progress.
    cvxpy_solver : {"SCS", "CLARABEL"}
        Backend of ``solver="cvxpy"``.

    Returns
    -------
    Decomposition or FactoredDecomposition
        ``low_rank`` and ``sparse`` (K, p, q), ``center`` (p, q) or None, the
        dual matrix, the problem and :class:`~clair_stats.core.results.SolverInfo`.
        For LowRankUpdates, a
        :class:`~clair_stats.core.results.FactoredDecomposition`: the same problem,
        ``info``, ``support()``, ``rank()`` and ``block_norms``, with the blocks
        held as Q X_k W_k^T (``dense()`` multiplies them out).

    Warns
    -----
    ConvergenceWarning
        When the solver stops before meeting ``tol``; ``info.converged`` is
        then False.

    Raises
    ------
    ValueError, TypeError
        On malformed input, with what is wrong and how to fix it.

    References
    ----------
    Xu, Caramanis, Sanghavi (2012). Robust PCA via outlier pursuit. IEEE
    Transactions on Information Theory 58(5), 3047-3064.
    He, Chen, Feng (2026). Federated LoRA fine-tuning for LLMs via collaborative
    alignment. arXiv:2605.21217.

    Examples
    --------
    >>> from clair_stats import FederatedModel, decompose
    >>> sample = FederatedModel(p=30, q=2, rank=2, n_clients=20).sample(seed=0)
    >>> result = decompose(sample.updates)
    >>> bool((result.support() == ~sample.benign).all())
    True
    """
    if isinstance(updates, LowRankUpdates):
        if init is not None:
            raise ValueError(
                "init (warm start) is not supported for LowRankUpdates; omit it."
            )
        if not isinstance(center, bool | np.bool_):
            raise TypeError(f"center must be True or False, got {center!r}.")
        reduction = reduce_updates(updates, shared_rows=bool(center))
        core = decompose(
            reduction.core,
            lam=lam,
            mode=mode,
            mu=mu,
            eps=eps,
            center=center,
            weights=weights,
            solver=solver,
            tol=tol,
            max_iter=max_iter,
            verbose=verbose,
            cvxpy_solver=cvxpy_solver,
        )
        return as_factored(reduction, core)
    data3 = check_updates(updates)
    n_clients = data3.shape[0]
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {_SOLVERS}, got {solver!r}.")
    if not isinstance(cvxpy_solver, str) or cvxpy_solver.upper() not in CVXPY_SOLVERS:
        raise ValueError(
            f"cvxpy_solver must be one of {CVXPY_SOLVERS}, got {cvxpy_solver!r}."
        )
    if not isinstance(center, bool | np.bool_):
        raise TypeError(f"center must be True or False, got {center!r}.")
    lam = default_lam(n_clients) if lam is None else check_positive(lam, "lam")
    w = check_weights(weights, n_clients)
    if mode == "penalized":
        if mu is None:
            raise ValueError(
                "mode='penalized' (P1) needs mu > 0: of the order of the noise "
                "operator norm, tau (sqrt(p) + sqrt(Kq)) for iid N(0, tau^2) noise."
            )
        mu = check_positive(mu, "mu")
    elif mu is not None:
        raise ValueError(f"mu is a parameter of mode='penalized', not {mode!r}.")
    if mode == "constrained":
        if eps is None:
            raise ValueError(
                "mode='constrained' (P1c) needs eps >= 0, a bound on the "
                "Frobenius norm of the noise ||M - (L0 + S0)||_F."
            )
        eps = check_nonnegative(eps, "eps")
        if solver != "cvxpy":
            raise ValueError(
                "mode='constrained' (P1c) is solved by cvxpy only: use "
                "solver='cvxpy', or mode='penalized' for the fast solver."
            )
    elif eps is not None:
        raise ValueError(f"eps is a parameter of mode='constrained', not {mode!r}.")
    tol = (1e-7 if solver == "proximal" else 1e-8) if tol is None else tol
    tol = check_positive(tol, "tol")
    max_iter = _DEFAULT_MAX_ITER[solver] if max_iter is None else max_iter
    if isinstance(max_iter, bool) or not isinstance(max_iter, int | np.integer):
        raise TypeError(f"max_iter must be an int, got {max_iter!r}.")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}.")

    # Solve on M / s with s a power of two near max |M_ij|: exact in floating
    # point, and it keeps squares and Gram matrices clear of under- and overflow.
    # P0 is positively homogeneous; mu and eps scale with M, so the solution of
    # every program scales back by s.
    data = stack(data3)
    peak = float(np.max(np.abs(data))) if data.size else 0.0
    scale = 2.0 ** np.round(np.log2(peak)) if peak > 0 else 1.0
    data = data / scale
    problem = Problem(
        mode=mode,
        lam=lam,
        weights=w,
        center=center,
        mu=None if mu is None else mu / scale,
        eps=None if eps is None else eps / scale,
    )
    # the dual of P0 and P1c lives in a unit ball; that of P1 is a residual
    dual_scale = scale if mode == "penalized" else 1.0
    warm = None
    if init is not None:
        if not isinstance(init, Decomposition):
            raise TypeError(
                "init must be the Decomposition returned by an earlier decompose() "
                f"call, got {type(init).__name__}."
            )
        if solver != "proximal":
            raise ValueError("init (warm start) is used by solver='proximal' only.")
        if init.low_rank.shape != data3.shape:
            raise ValueError(
                f"init has blocks of shape {init.low_rank.shape}, the data "
                f"{data3.shape}; warm starts need the same (K, p, q)."
            )
        warm = (
            stack(init.low_rank) / scale,
            stack(init.sparse) / scale,
            None if init.center is None else init.center / scale,
            None if init.dual is None else stack(init.dual) / dual_scale,
            init.penalty if init.problem.mode == mode else None,
        )

    start = time.perf_counter()
    with _blas_threads(data.size if solver == "proximal" else None):
        out = _solve(problem, data, solver, tol, max_iter, warm, verbose, cvxpy_solver)
    seconds = time.perf_counter() - start
    name = {"cvxpy": f"cvxpy/{cvxpy_solver.upper()}"}.get(
        solver, "admm" if mode == "exact" else "bcd"
    )

    # objective and gap: degree 1 in M for P0 and P1c, degree 2 for P1
    value_scale = scale**2 if mode == "penalized" else scale
    info = SolverInfo(
        solver=name,
        problem=problem.name,
        converged=bool(out.converged),
        iterations=int(out.iterations),
        objective=float(out.objective) * value_scale,
        primal_residual=float(out.primal_residual),
        dual_residual=float(out.dual_residual),
        duality_gap=float(out.duality_gap) * value_scale,
        relative_gap=float(out.relative_gap),
        seconds=seconds,
        message=out.message,
    )
    if not info.converged:
        warnings.warn(
            f"{name} did not converge on {problem.name}: {out.message} "
            f"(relative gap {info.relative_gap:.2e}, tol {tol:.1e}). Increase "
            "max_iter, loosen tol, or check the data scale.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return Decomposition(
        low_rank=unstack(out.low_rank * scale, n_clients),
        sparse=unstack(out.sparse * scale, n_clients),
        center=None if out.center is None else out.center * scale,
        dual=None if out.dual is None else unstack(out.dual * dual_scale, n_clients),
        problem=Problem(mode=mode, lam=lam, weights=w, center=center, mu=mu, eps=eps),
        info=info,
        data_norm=float(np.linalg.norm(data)) * scale,
        penalty=out.penalty,
    )


#: Below this many entries of M the fast solvers run BLAS on one thread. Their
#: matrices are then small and a multi-threaded BLAS only adds synchronisation,
#: which turns into waiting when other processes hold the cores: measured on the
#: 2-core machine with two other jobs running, ADMM took 45 ms on one thread
#: against 3.7 s on two at p x Kq = 100 x 1000 (14.7 ms against 45-160 ms at
#: 60 x 500).
SINGLE_THREAD_MAX_SIZE = 2**20


@functools.cache
def _threadpools() -> ThreadpoolController:
    # found once: a fresh threadpool_limits() inspects the loaded libraries each
    # time (0.1-1.5 ms, a tenth of a whole solve at 60 x 500)
    return ThreadpoolController()


def _blas_threads(size: int | None):
    """One BLAS thread for a fast solve of a small problem, else no change."""
    if size is None or size > SINGLE_THREAD_MAX_SIZE:
        return contextlib.nullcontext()
    return _threadpools().limit(limits=1, user_api="blas")


def _solve(problem, data, solver, tol, max_iter, warm, verbose, cvxpy_solver):
    if solver == "cvxpy":
        return cvxpy_solve(
            problem,
            data,
            tol=tol,
            max_iter=max_iter,
            verbose=verbose,
            cvxpy_solver=cvxpy_solver,
        )
    if problem.mode == "exact":
        return admm_p0(
            problem, data, tol=tol, max_iter=max_iter, init=warm, verbose=verbose
        )
    return bcd_p1(problem, data, tol=tol, max_iter=max_iter, init=warm, verbose=verbose)

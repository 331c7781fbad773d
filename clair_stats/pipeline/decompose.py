"""Step 1 of CLAIR: split the stacked updates into low-rank plus block-sparse parts."""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from clair_stats.core.exceptions import ConvergenceWarning, PerformanceWarning
from clair_stats.core.linalg import stack, unstack
from clair_stats.core.lowrank import LowRankUpdates
from clair_stats.core.problems import MODES, Problem
from clair_stats.core.results import (
    Decomposition,
    FactoredDecomposition,
    SolverInfo,
)
from clair_stats.core.validation import (
    check_bool,
    check_choice,
    check_int,
    check_nonnegative,
    check_positive,
    check_updates,
    check_weights,
)
from clair_stats.solvers.admm import admm_p0
from clair_stats.solvers.base import SolverOutput
from clair_stats.solvers.bcd import bcd_p1
from clair_stats.solvers.cvx import CVXPY_SOLVERS, cvxpy_solve
from clair_stats.solvers.factored import (
    as_factored,
    factored_blas_threads,
    reduce_updates,
)

__all__ = ["DEFAULT_C_LAM", "decompose", "default_lam"]

#: Default c_lam of lam = c_lam / sqrt(K) when gamma is unknown (docs/programs.md §3.1).
#: ``simulations/lambda_calibration.py`` maps, over 288 regimes (p 30/80, q 1-10,
#: K 20-100, r 2/5, gamma 0.1-0.4, random and orthogonal contamination, 8 noiseless
#: replicates each), the values of c at which P0 recovers exactly on every replicate.
#: In its last full run c = 4 lies in 203 of the 288 windows and c = 4.5 and c = 5
#: in 217; but the good c rises with K, and at q = 1, K = 20, c = 4.5 passes
#: sqrt(qK) = 4.47, above which no block can be flagged at all. No single c works
#: everywhere (29 regimes, 26 of them with q = 1, have no window).
DEFAULT_C_LAM = 4.0

_SOLVERS = ("proximal", "cvxpy")
#: solver="cvxpy" warns from this many entries of M (p x Kq) on. Measured with
#: the default tol (SCS, 2-core machine): 27 s at 60 x 500 and 96 s at
#: 100 x 1000, about 1 ms per entry and growing slightly faster than linearly;
#: the proximal solvers took 15-45 ms on the same instances
#: (benchmarks/results/solvers.md).
CVXPY_WARN_SIZE = 10_000
#: Seconds per entry of M of solver="cvxpy" at the default tol (see above).
CVXPY_SECONDS_PER_ENTRY = 1e-3
_DEFAULT_MAX_ITER = {"proximal": 5000, "cvxpy": 100_000}
#: Default tol per solver (relative duality gap; cvxpy's backend tolerance).
DEFAULT_TOL = {"proximal": 1e-7, "cvxpy": 1e-8}


def default_lam(n_clients: int) -> float:
    """lam = c_lam / sqrt(K) with c_lam = :data:`DEFAULT_C_LAM`.

    Parameters
    ----------
    n_clients : int
        K, the number of clients.

    Returns
    -------
    float
        The default weight lam of the block penalty.
    """
    return DEFAULT_C_LAM / np.sqrt(n_clients)


def decompose(
    updates: np.ndarray | LowRankUpdates,
    lam: float | str | None = None,
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
    lam : float or "auto", optional
        lam > 0. Default c_lam / sqrt(K) (:func:`default_lam`). The objective is
        positively homogeneous, so lam does not depend on the scale of M; the
        theory value of T1 is 3 / (7 sqrt(gamma K)). ``"auto"`` chooses lam from
        the data (modes "exact" and "penalized"): a path over lam, the widest
        plateau of the flagged set, and a second solve with the weights of the
        flagged clients reduced (:func:`clair_stats.pipeline.lam.select_lam`,
        docs/programs.md §3.1.7); the result's ``problem`` records the lam and
        weights used. Not with ``init``.
    mode : {"exact", "penalized", "constrained"}
        P0, P1 or P1c. P1c is solved by cvxpy only.
    mu : float
        mu > 0, required for P1; of the order of the noise operator norm,
        tau (sqrt(p) + sqrt(Kq)) for iid N(0, tau^2) noise.
    eps : float
        eps >= 0, required for P1c: a bound on ||M - (L0 + S0)||_F.
    center : bool
        Estimate an unknown common backbone c (the Theta_0 of docs/model.md §2).
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
    if isinstance(lam, str):
        return _decompose_auto(
            updates,
            lam,
            init,
            mode=mode,
            mu=mu,
            eps=eps,
            center=center,
            weights=weights,
            solver=solver,
            tol=tol,
            max_iter=max_iter,
        )
    if isinstance(updates, LowRankUpdates):
        return _decompose_factored(
            updates,
            init,
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
    data = check_updates(updates)
    settings = _Settings.checked(
        data.shape[0],
        lam=lam,
        mode=mode,
        mu=mu,
        eps=eps,
        center=center,
        weights=weights,
        solver=solver,
        tol=tol,
        max_iter=max_iter,
        cvxpy_solver=cvxpy_solver,
    )
    scaled = _Scaled.of(data)
    _warn_size(settings, scaled.matrix.shape)
    warm = _warm_start(init, data.shape, scaled.scale, settings)
    out, seconds = _run_solver(settings, scaled, warm, verbose)
    info = _solver_info(out, settings, scaled.scale, seconds)
    return Decomposition(
        low_rank=unstack(out.low_rank * scaled.scale, settings.n_clients),
        sparse=unstack(out.sparse * scaled.scale, settings.n_clients),
        center=None if out.center is None else out.center * scaled.scale,
        dual=None
        if out.dual is None
        else unstack(out.dual * settings.dual_scale(scaled.scale), settings.n_clients),
        problem=settings.problem(),
        info=info,
        data_norm=float(np.linalg.norm(scaled.matrix)) * scaled.scale,
        penalty=out.penalty,
    )


def _decompose_auto(
    updates: np.ndarray | LowRankUpdates,
    lam: str,
    init: Decomposition | None,
    *,
    eps: float | None,
    **options,
) -> Decomposition | FactoredDecomposition:
    """decompose(lam="auto"): the final solve of :func:`~.lam.select_lam`."""
    from clair_stats.pipeline.lam import select_lam

    if lam != "auto":
        raise TypeError(
            f"lam must be a positive real number, None or 'auto', not the str "
            f"{lam!r}; pass float({lam!r}) for a number."
        )
    if init is not None:
        raise ValueError(
            "lam='auto' runs its own warm-started path over lam; omit init, or "
            "pass a number for lam."
        )
    if eps is not None:
        raise ValueError(
            "lam='auto' serves mode='exact' and mode='penalized'; eps belongs to "
            "mode='constrained', which needs a number for lam."
        )
    return select_lam(updates, **options).decomposition


def _decompose_factored(
    updates: LowRankUpdates, init: Decomposition | None, **options
) -> FactoredDecomposition:
    """P0/P1/P1c of factored updates: solved on the core, wrapped with its bases."""
    if init is not None:
        raise ValueError(
            "init (warm start) is not supported for LowRankUpdates; omit it."
        )
    center = check_bool(options["center"], "center")
    with factored_blas_threads():  # the reduction and the core solve
        reduction = reduce_updates(updates, shared_rows=center)
        return as_factored(reduction, decompose(reduction.core, **options))


@dataclass(frozen=True)
class _Settings:
    """The checked options of one decomposition."""

    n_clients: int
    mode: str
    lam: float
    weights: np.ndarray
    center: bool
    mu: float | None
    eps: float | None
    solver: str
    tol: float
    max_iter: int
    cvxpy_solver: str

    @classmethod
    def checked(
        cls,
        n_clients: int,
        *,
        lam: float | None,
        mode: str,
        mu: float | None,
        eps: float | None,
        center: bool,
        weights: np.ndarray | None,
        solver: str,
        tol: float | None,
        max_iter: int | None,
        cvxpy_solver: str,
    ) -> _Settings:
        """Validate every option of :func:`decompose`; fill the defaults.

        The defaults: lam = c_lam / sqrt(K), tol 1e-7 (proximal) or 1e-8 (cvxpy),
        max_iter 5000 (proximal) or 100000 (cvxpy).
        """
        check_choice(mode, "mode", MODES)
        check_choice(solver, "solver", _SOLVERS)
        if (
            not isinstance(cvxpy_solver, str)
            or cvxpy_solver.upper() not in CVXPY_SOLVERS
        ):
            raise ValueError(
                f"cvxpy_solver must be one of {CVXPY_SOLVERS}, got {cvxpy_solver!r}."
            )
        center = check_bool(center, "center")
        lam = default_lam(n_clients) if lam is None else check_positive(lam, "lam")
        mu = _check_mu(mode, mu)
        eps = _check_eps(mode, eps, solver)
        tol = DEFAULT_TOL[solver] if tol is None else tol
        max_iter = _DEFAULT_MAX_ITER[solver] if max_iter is None else max_iter
        return cls(
            n_clients=n_clients,
            mode=mode,
            lam=lam,
            weights=check_weights(weights, n_clients),
            center=center,
            mu=mu,
            eps=eps,
            solver=solver,
            tol=check_positive(tol, "tol"),
            max_iter=check_int(max_iter, "max_iter", 1),
            cvxpy_solver=cvxpy_solver,
        )

    def problem(self, scale: float = 1.0) -> Problem:
        """The program for M / scale (mu and eps scale with M)."""
        return Problem(
            mode=self.mode,
            lam=self.lam,
            weights=self.weights,
            center=self.center,
            mu=None if self.mu is None else self.mu / scale,
            eps=None if self.eps is None else self.eps / scale,
        )

    def dual_scale(self, scale: float) -> float:
        """The dual of P0 and P1c lives in a unit ball; that of P1 is a residual."""
        return scale if self.mode == "penalized" else 1.0

    def value_scale(self, scale: float) -> float:
        """Objective and gap are of degree 1 in M for P0 and P1c, 2 for P1.

        For P1 on data of order 1e300 the objective is not representable: inf
        (the relative gap, which is scale-free, still certifies the solution).
        """
        if self.mode != "penalized":
            return scale
        with np.errstate(over="ignore"):
            return float(np.float64(scale) ** 2)

    @property
    def solver_name(self) -> str:
        if self.solver == "cvxpy":
            return f"cvxpy/{self.cvxpy_solver.upper()}"
        return "admm" if self.mode == "exact" else "bcd"


def _check_mu(mode: str, mu: object) -> float | None:
    if mode != "penalized":
        if mu is not None:
            raise ValueError(f"mu is a parameter of mode='penalized', not {mode!r}.")
        return None
    if mu is None:
        raise ValueError(
            "mode='penalized' (P1) needs mu > 0: of the order of the noise "
            "operator norm, tau (sqrt(p) + sqrt(Kq)) for iid N(0, tau^2) noise."
        )
    return check_positive(mu, "mu")


def _check_eps(mode: str, eps: object, solver: str) -> float | None:
    if mode != "constrained":
        if eps is not None:
            raise ValueError(f"eps is a parameter of mode='constrained', not {mode!r}.")
        return None
    if eps is None:
        raise ValueError(
            "mode='constrained' (P1c) needs eps >= 0, a bound on the "
            "Frobenius norm of the noise ||M - (L0 + S0)||_F."
        )
    if solver != "cvxpy":
        raise ValueError(
            "mode='constrained' (P1c) is solved by cvxpy only: use "
            "solver='cvxpy', or mode='penalized' for the fast solver."
        )
    return check_nonnegative(eps, "eps")


@dataclass(frozen=True)
class _Scaled:
    """M / s with s a power of two near max |M_ij|, and s.

    Dividing by a power of two is exact in floating point, and it keeps squares
    and Gram matrices clear of under- and overflow. P0 is positively
    homogeneous; mu and eps scale with M, so the solution of every program
    scales back by s.
    """

    matrix: np.ndarray
    scale: float

    @classmethod
    def of(cls, data: np.ndarray) -> _Scaled:
        matrix = stack(data)
        peak = float(np.max(np.abs(matrix))) if matrix.size else 0.0
        scale = 2.0 ** np.round(np.log2(peak)) if peak > 0 else 1.0
        return cls(matrix=matrix / scale, scale=float(scale))


def _warn_size(settings: _Settings, shape: tuple[int, int]) -> None:
    """PerformanceWarning before a cvxpy solve of more than CVXPY_WARN_SIZE entries."""
    size = shape[0] * shape[1]
    if settings.solver != "cvxpy" or size < CVXPY_WARN_SIZE:
        return
    warnings.warn(
        f"solver='cvxpy' on M of size {shape[0]} x {shape[1]} ({size} entries): "
        f"expect about {size * CVXPY_SECONDS_PER_ENTRY:.0f} s or more (measured "
        "about 1 ms per entry: 27 s at 60 x 500, 96 s at 100 x 1000). The "
        "default solver='proximal' solves the same program to a certified "
        "duality gap in milliseconds; cvxpy is the reference for small instances.",
        PerformanceWarning,
        stacklevel=3,
    )


def _warm_start(
    init: object, shape: tuple[int, int, int], scale: float, settings: _Settings
) -> tuple | None:
    """The iterate of an earlier Decomposition, scaled like the data, or None."""
    if init is None:
        return None
    if not isinstance(init, Decomposition):
        raise TypeError(
            "init must be the Decomposition returned by an earlier decompose() "
            f"call, got {type(init).__name__}."
        )
    if settings.solver != "proximal":
        raise ValueError("init (warm start) is used by solver='proximal' only.")
    if init.low_rank.shape != shape:
        raise ValueError(
            f"init has blocks of shape {init.low_rank.shape}, the data "
            f"{shape}; warm starts need the same (K, p, q)."
        )
    dual_scale = settings.dual_scale(scale)
    return (
        stack(init.low_rank) / scale,
        stack(init.sparse) / scale,
        None if init.center is None else init.center / scale,
        None if init.dual is None else stack(init.dual) / dual_scale,
        init.penalty if init.problem.mode == settings.mode else None,
    )


def _run_solver(
    settings: _Settings, scaled: _Scaled, warm: tuple | None, verbose: bool
) -> tuple[SolverOutput, float]:
    """Solve the scaled program with the chosen solver; its output and seconds."""
    problem = settings.problem(scaled.scale)
    data = scaled.matrix
    start = time.perf_counter()
    with _blas_threads(data.size if settings.solver == "proximal" else None):
        if settings.solver == "cvxpy":
            out = cvxpy_solve(
                problem,
                data,
                tol=settings.tol,
                max_iter=settings.max_iter,
                verbose=verbose,
                cvxpy_solver=settings.cvxpy_solver,
            )
        elif settings.mode == "exact":
            out = admm_p0(
                problem,
                data,
                tol=settings.tol,
                max_iter=settings.max_iter,
                init=warm,
                verbose=verbose,
            )
        else:
            out = bcd_p1(
                problem,
                data,
                tol=settings.tol,
                max_iter=settings.max_iter,
                init=warm,
                verbose=verbose,
            )
    return out, time.perf_counter() - start


def _times(value: float, scale: float) -> float:
    """value * scale, inf (not an error) when it overflows."""
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.float64(value) * np.float64(scale))


def _solver_info(
    out: SolverOutput, settings: _Settings, scale: float, seconds: float
) -> SolverInfo:
    """The solver statistics in the units of the data; warns if not converged."""
    value_scale = settings.value_scale(scale)
    info = SolverInfo(
        solver=settings.solver_name,
        problem=settings.problem().name,
        converged=bool(out.converged),
        iterations=int(out.iterations),
        objective=_times(float(out.objective), value_scale),
        primal_residual=float(out.primal_residual),
        dual_residual=float(out.dual_residual),
        duality_gap=_times(float(out.duality_gap), value_scale),
        relative_gap=float(out.relative_gap),
        seconds=seconds,
        message=out.message,
    )
    if not info.converged:
        warnings.warn(
            f"{info.solver} did not converge on {info.problem}: {out.message} "
            f"(relative gap {info.relative_gap:.2e}, tol {settings.tol:.1e}). "
            "Increase max_iter, loosen tol, or check the data scale.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return info


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

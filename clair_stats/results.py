"""Result objects: solver statistics and the decomposition (SPEC §3, step 1)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clair_stats._validation import stack
from clair_stats.penalties import block_norms
from clair_stats.problems import Problem

__all__ = ["ConvergenceWarning", "Decomposition", "SolverInfo"]


class ConvergenceWarning(UserWarning):
    """A solver stopped at ``max_iter`` before its certificate met ``tol``."""


@dataclass(frozen=True)
class SolverInfo:
    """Statistics of one solve.

    Attributes
    ----------
    solver : str
        ``"admm"`` (P0), ``"bcd"`` (P1) or ``"cvxpy/<SOLVER>"``.
    problem : str
        ``"P0"``, ``"P1"`` or ``"P1c"``.
    converged : bool
        Whether the stopping rule was met (for cvxpy: an optimal status).
    iterations : int
        Iterations taken (for cvxpy: those reported by the backend, or -1).
    objective : float
        The program's objective at the returned (L, S, c).
    primal_residual : float
        P0: ||M - L - S - c 1^T||_F / ||M||_F. P1c: the relative excess
        max(||M - L - S - c 1^T||_F - eps, 0) / ||M||_F. P1: the relative change
        of L in the last iteration.
    dual_residual : float
        P0 (ADMM): beta ||N_{t+1} - N_t||_F with N = S + c 1^T, which bounds how
        far the dual iterate is from ||Y||_op <= 1. P1: ||N_{t+1} - N_t||_F / mu,
        the same bound for the residual as a dual point. cvxpy: NaN.
    duality_gap : float
        Absolute gap of the certificate (:func:`clair_stats.certificates.duality_gap`).
    relative_gap : float
        The scale-free certificate the fast solvers stop on.
    seconds : float
        Wall-clock time of the solve.
    message : str
        Backend status or a stopping note.
    """

    solver: str
    problem: str
    converged: bool
    iterations: int
    objective: float
    primal_residual: float
    dual_residual: float
    duality_gap: float
    relative_gap: float
    seconds: float
    message: str = ""

    def __repr__(self) -> str:
        state = "converged" if self.converged else "NOT converged"
        return (
            f"SolverInfo({self.solver} on {self.problem}: {state} in "
            f"{self.iterations} it, objective={self.objective:.10g}, "
            f"relative_gap={self.relative_gap:.2e}, "
            f"primal_residual={self.primal_residual:.2e}, {self.seconds:.3g} s)"
        )


@dataclass(frozen=True)
class Decomposition:
    """The split M = L + S (+ c 1^T) returned by :func:`clair_stats.decompose`.

    Attributes
    ----------
    low_rank : numpy.ndarray, shape (K, p, q)
        Blocks L^_k of the low-rank part.
    sparse : numpy.ndarray, shape (K, p, q)
        Blocks S^_k of the block-sparse part.
    center : numpy.ndarray, shape (p, q), or None
        The centre c^ (``center=True``), else None.
    dual : numpy.ndarray, shape (K, p, q), or None
        The dual matrix Y (Lagrange multiplier of the constraint of P0/P1c, the
        residual for P1), usable as a warm start and for certificates.
    problem : Problem
        The program solved, with lam, mu, eps and the weights.
    info : SolverInfo
        Solver statistics and certificate.
    data_norm : float
        ||M||_F, the scale that relative tolerances refer to.
    penalty : float or None
        ADMM's final penalty beta (for M scaled to max |M_ij| ~ 1), reused by a
        warm start; None for other solvers.
    """

    low_rank: np.ndarray = field(repr=False)
    sparse: np.ndarray = field(repr=False)
    center: np.ndarray | None = field(repr=False)
    dual: np.ndarray | None = field(repr=False)
    problem: Problem
    info: SolverInfo
    data_norm: float
    penalty: float | None = None

    @property
    def n_clients(self) -> int:
        """K."""
        return int(self.low_rank.shape[0])

    @property
    def block_norms(self) -> np.ndarray:
        """||S^_k||_F for every client, shape (K,)."""
        # divide by the peak first: sums of squares of tiny or huge entries
        # would under- or overflow
        peak = float(np.max(np.abs(self.sparse))) if self.sparse.size else 0.0
        if peak == 0.0:
            return np.zeros(self.n_clients)
        return block_norms(stack(self.sparse) / peak, self.n_clients) * peak

    def support(self, tol: float = 1e-6) -> np.ndarray:
        """Clients whose block of S^ is nonzero: ||S^_k||_F > tol ||M||_F.

        The fast solvers return exact zeros; ``tol`` absorbs the residual
        entries of an interior-point or SCS solution.
        """
        return self.block_norms > tol * self.data_norm

    def singular_values(self) -> np.ndarray:
        """Singular values of the stacked L^ (p x Kq), decreasing."""
        return np.linalg.svd(stack(self.low_rank), compute_uv=False)

    def rank(self, tol: float = 1e-6) -> int:
        """Numerical rank of L^: singular values above tol * ||M||_F."""
        return int(np.sum(self.singular_values() > tol * self.data_norm))

    def __repr__(self) -> str:
        k, p, q = self.low_rank.shape
        return (
            f"Decomposition({self.problem.name}, K={k}, p={p}, q={q}, "
            f"lam={self.problem.lam:.4g}, rank={self.rank()}, "
            f"support={int(self.support().sum())}/{k}, {self.info!r})"
        )

    def summary(self) -> str:
        """A readable report of the problem, the solution and the solver."""
        i = self.info
        k, p, q = self.low_rank.shape
        extra = ""
        if self.problem.mu is not None:
            extra += f"  mu = {self.problem.mu:.6g}\n"
        if self.problem.eps is not None:
            extra += f"  eps = {self.problem.eps:.6g}\n"
        flagged = np.nonzero(self.support())[0]
        return (
            f"CLAIR decomposition ({self.problem.name}, mode={self.problem.mode!r})\n"
            f"  K = {k} clients, p = {p}, q = {q}, center = {self.problem.center}\n"
            f"  lam = {self.problem.lam:.6g} (lam sqrt(K) = "
            f"{self.problem.lam * np.sqrt(k):.4g})\n{extra}"
            f"  rank(L^) = {self.rank()}\n"
            f"  nonzero blocks of S^: {flagged.tolist()}\n"
            f"solver {i.solver}: {'converged' if i.converged else 'NOT converged'}"
            f" in {i.iterations} iterations, {i.seconds:.3g} s\n"
            f"  objective = {i.objective:.12g}\n"
            f"  duality gap = {i.duality_gap:.3e} (relative {i.relative_gap:.3e})\n"
            f"  primal residual = {i.primal_residual:.3e}, "
            f"dual residual = {i.dual_residual:.3e}\n"
            f"  {i.message}"
        )

"""Result objects: solver statistics, the decomposition, refined LoRA factors.

Step 1 (docs/programs.md §3.1) returns a :class:`Decomposition` (dense) or a
:class:`FactoredDecomposition` (LoRA factors); step 4 (docs/pipeline.md §3.4) of
factored updates returns :class:`RefinedFactors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clair_stats.core.linalg import stack
from clair_stats.core.penalties import block_norms
from clair_stats.core.problems import Problem

__all__ = [
    "Decomposition",
    "FactoredDecomposition",
    "RefinedFactors",
    "SolverInfo",
]


@dataclass(frozen=True)
class SolverInfo:
    """Statistics of one solve.

    Parameters
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
        Absolute gap of the certificate
        (:func:`clair_stats.core.certificates.duality_gap`).
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

    Parameters
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
        ADMM's final penalty beta (for M scaled to ``max |M_ij| ~ 1``), reused by a
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

        Parameters
        ----------
        tol : float, default 1e-6
            The cut, relative to ||M||_F (``data_norm``).

        Returns
        -------
        numpy.ndarray of bool, shape (K,)
            True for the clients in the support of S^.
        """
        return self.block_norms > tol * self.data_norm

    def singular_values(self) -> np.ndarray:
        """Singular values of the stacked L^ (p x Kq), decreasing."""
        return np.linalg.svd(stack(self.low_rank), compute_uv=False)

    def rank(self, tol: float = 1e-6) -> int:
        """Numerical rank of L^: singular values above tol * ||M||_F.

        Parameters
        ----------
        tol : float, default 1e-6
            The cut, relative to ||M||_F (``data_norm``).

        Returns
        -------
        int
            The number of singular values of the stacked L^ above the cut.
        """
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


@dataclass(frozen=True)
class FactoredDecomposition:
    """The split of factored updates, M = L + S (+ c 1^T), held on a small core.

    Returned by :func:`clair_stats.decompose` for
    :class:`~clair_stats.core.lowrank.LowRankUpdates` (docs/programs.md §5, "LoRA
    scale"). With Q (p x R) an orthonormal basis of span(B_1, ..., B_K) and W_k (q x
    m_k) one of the row space of A_k (with ``center=True`` one basis W of all row
    spaces), every block is L^_k = Q X_k W_k^T, S^_k = Q Z_k W_k^T, where (X, Z) solve
    the same program on the core blocks C_k = Q^T Theta^_k W_k (zero-padded to a common
    width). Q and W_k are isometries, so objective, certificate, block norms and
    singular values are those of the core solve, and no p x Kq or K x p x q array is
    formed.

    Parameters
    ----------
    core : Decomposition
        The solve on the core, blocks of shape (R, m) with m = max_k m_k.
    core_data : numpy.ndarray, shape (K, R, m)
        The core blocks C_k (zero-padded).
    basis : SpanBasis or numpy.ndarray, shape (p, R)
        Q, orthonormal columns: from :func:`clair_stats.decompose` an operator
        kept as its triangular factors
        (:class:`clair_stats.solvers.factored.SpanBasis`; ``Q @ x`` and
        ``Q.T @ y`` as for an array, ``numpy.asarray(Q)`` forms it).
    row_bases : tuple of numpy.ndarray
        W_k of shape (q, m_k) per client, or a single W (q, m) shared by all
        clients (``center=True``).
    widths : tuple of int
        m_k, the number of core columns of block k that carry data (the rest
        is padding, zero in L^, S^ and the data).
    shape : tuple of int
        (K, p, q) of the original updates.
    reduction_error : numpy.ndarray, shape (K,)
        sqrt(max(||Theta^_k||_F^2 - ||C_k||_F^2, 0)): the part of Theta^_k
        outside the core, 0 up to rounding (about 1e-8 ||Theta^_k||_F, the
        resolution of the difference of squares) unless directions closer
        than about sqrt(R eps) to the span of the others were merged.
    reduction_seconds : float
        Wall-clock time of the reduction (the core solve is in ``info``).
    """

    core: Decomposition = field(repr=False)
    core_data: np.ndarray = field(repr=False)
    basis: np.ndarray = field(repr=False)  # or a SpanBasis (an operator)
    row_bases: tuple[np.ndarray, ...] = field(repr=False)
    widths: tuple[int, ...]
    shape: tuple[int, int, int]
    reduction_error: np.ndarray = field(repr=False)
    reduction_seconds: float = 0.0

    @property
    def problem(self) -> Problem:
        """The program solved."""
        return self.core.problem

    @property
    def info(self) -> SolverInfo:
        """Solver statistics and certificate of the core solve."""
        return self.core.info

    @property
    def data_norm(self) -> float:
        """||M||_F (= the core's)."""
        return self.core.data_norm

    @property
    def n_clients(self) -> int:
        """K."""
        return self.shape[0]

    @property
    def core_shape(self) -> tuple[int, int]:
        """(R, K m): the shape of the stacked core matrix."""
        k, r, m = self.core.low_rank.shape
        return (r, k * m)

    @property
    def block_norms(self) -> np.ndarray:
        """||S^_k||_F for every client, shape (K,)."""
        return self.core.block_norms

    def support(self, tol: float = 1e-6) -> np.ndarray:
        """Clients whose block of S^ is nonzero: ||S^_k||_F > tol ||M||_F.

        Parameters
        ----------
        tol : float, default 1e-6
            The cut, relative to ||M||_F (``data_norm``).

        Returns
        -------
        numpy.ndarray of bool, shape (K,)
            True for the clients in the support of S^ (from the core solve).
        """
        return self.core.support(tol)

    def singular_values(self) -> np.ndarray:
        """Singular values of the stacked L^ (those of the core), decreasing."""
        return self.core.singular_values()

    def rank(self, tol: float = 1e-6) -> int:
        """Numerical rank of L^: singular values above tol * ||M||_F.

        Parameters
        ----------
        tol : float, default 1e-6
            The cut, relative to ||M||_F (``data_norm``).

        Returns
        -------
        int
            The number of singular values of L^ (those of the core) above the
            cut.
        """
        return self.core.rank(tol)

    def row_basis(self, k: int) -> np.ndarray:
        """W_k (q, m), the row basis of block k (shared with ``center=True``).

        Parameters
        ----------
        k : int
            The client index, 0-based (ignored when one basis is shared).

        Returns
        -------
        numpy.ndarray, shape (q, m_k)
            Orthonormal columns spanning the row space of A_k (or of all A_k).
        """
        return self.row_bases[0] if len(self.row_bases) == 1 else self.row_bases[k]

    def _lift(self, blocks: np.ndarray, k: int) -> np.ndarray:
        """Q X_k W_k^T for the core block X_k (R, m), padding dropped."""
        w = self.row_basis(k)
        return self.basis @ blocks[k][:, : w.shape[1]] @ w.T

    @property
    def center(self) -> np.ndarray | None:
        """The centre c^ = Q c_core W^T as a dense (p, q) array, or None."""
        if self.core.center is None:
            return None
        return self.basis @ self.core.center @ self.row_bases[0].T

    def dense(self) -> Decomposition:
        """The same decomposition with dense (K, p, q) blocks (small problems only)."""

        def lift(blocks: np.ndarray | None) -> np.ndarray | None:
            if blocks is None:
                return None
            return np.stack([self._lift(blocks, k) for k in range(self.n_clients)])

        return Decomposition(
            low_rank=lift(self.core.low_rank),
            sparse=lift(self.core.sparse),
            center=self.center,
            dual=lift(self.core.dual),
            problem=self.core.problem,
            info=self.core.info,
            data_norm=self.core.data_norm,
            penalty=self.core.penalty,
        )

    def __repr__(self) -> str:
        k, p, q = self.shape
        r, n = self.core_shape
        return (
            f"FactoredDecomposition({self.problem.name}, K={k}, p={p}, q={q}, "
            f"core {r} x {n}, lam={self.problem.lam:.4g}, rank={self.rank()}, "
            f"support={int(self.support().sum())}/{k}, {self.info!r})"
        )

    def summary(self) -> str:
        """The core decomposition's report, with the factored shapes."""
        k, p, q = self.shape
        r, n = self.core_shape
        return (
            f"factored updates: K = {k}, p = {p}, q = {q}; core {r} x {n} "
            f"(reduction {self.reduction_seconds:.3g} s, max reduction error "
            f"{float(np.max(self.reduction_error)):.2e}); the problem solved on the "
            f"core (blocks {r} x {n // k}):\n" + self.core.summary()
        )


@dataclass(frozen=True)
class RefinedFactors:
    """Refined updates in LoRA factors, Theta~_k ~ B~_k A~_k (docs/pipeline.md §3.4).

    For a collaborative client, B~_k A~_k is the best rank-t_k approximation of
    Theta~_k (its truncated SVD, B~_k = U_t Sigma_t, A~_k = V_t^T); a flagged
    client keeps its own factors (s_k B_k, A_k), exactly.

    Parameters
    ----------
    B : tuple of numpy.ndarray
        B~_k, shape (p, t_k).
    A : tuple of numpy.ndarray
        A~_k, shape (t_k, q).
    truncation_error : numpy.ndarray, shape (K,)
        ||Theta~_k - B~_k A~_k||_F, from the singular values dropped (0 for
        flagged clients).
    refined_norm : numpy.ndarray, shape (K,)
        ||Theta~_k||_F, the scale of the truncation error.
    collaborative : numpy.ndarray of bool, shape (K,)
        S^: which clients were refined.
    """

    B: tuple[np.ndarray, ...] = field(repr=False)
    A: tuple[np.ndarray, ...] = field(repr=False)
    truncation_error: np.ndarray = field(repr=False)
    refined_norm: np.ndarray = field(repr=False)
    collaborative: np.ndarray = field(repr=False)

    @property
    def n_clients(self) -> int:
        """K."""
        return len(self.B)

    @property
    def ranks(self) -> tuple[int, ...]:
        """(t_1, ..., t_K)."""
        return tuple(int(b.shape[1]) for b in self.B)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(K, p, q)."""
        return (self.n_clients, int(self.B[0].shape[0]), int(self.A[0].shape[1]))

    def client(self, k: int) -> np.ndarray:
        """B~_k A~_k as a dense (p, q) array.

        Parameters
        ----------
        k : int
            The client index, 0-based.

        Returns
        -------
        numpy.ndarray, shape (p, q)
            The refined update of client k (its own update if flagged).
        """
        return self.B[k] @ self.A[k]

    def dense(self) -> np.ndarray:
        """All B~_k A~_k as a dense (K, p, q) array (small problems only)."""
        return np.stack([self.client(k) for k in range(self.n_clients)])

    def as_updates(self):
        """The refined factors as :class:`~clair_stats.core.lowrank.LowRankUpdates`."""
        from clair_stats.core.lowrank import LowRankUpdates

        return LowRankUpdates(list(self.B), list(self.A))

    def transpose(self) -> RefinedFactors:
        """The factors of the transposes, B~_k A~_k -> A~_k^T B~_k^T."""
        return RefinedFactors(
            B=tuple(np.ascontiguousarray(a.T) for a in self.A),
            A=tuple(np.ascontiguousarray(b.T) for b in self.B),
            truncation_error=self.truncation_error,
            refined_norm=self.refined_norm,
            collaborative=self.collaborative,
        )

    def __repr__(self) -> str:
        k, p, q = self.shape
        worst = float(
            np.max(self.truncation_error / np.maximum(self.refined_norm, 1e-300))
        )
        return (
            f"RefinedFactors(K={k}, p={p}, q={q}, ranks {min(self.ranks)}.."
            f"{max(self.ranks)}, max relative truncation error {worst:.2e})"
        )

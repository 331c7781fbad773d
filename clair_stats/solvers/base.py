"""Pieces shared by the fast solvers: the (S, c) step, Anderson acceleration and
the iteration record."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clair_stats.core.penalties import block_soft_threshold

__all__ = ["SafeguardedAnderson", "SolverOutput", "sparse_center_step"]


@dataclass(frozen=True)
class SolverOutput:
    """What a stacked-matrix solver returns to :func:`clair_stats.decompose`.

    :func:`clair_stats.decompose` turns it into a
    :class:`~clair_stats.core.results.Decomposition` (blocks of shape (K, p, q))
    with a :class:`~clair_stats.core.results.SolverInfo`, whose fields of the same
    names say what the statistics mean for each program.

    Parameters
    ----------
    low_rank : numpy.ndarray, shape (p, Kq)
        L^, stacked.
    sparse : numpy.ndarray, shape (p, Kq)
        S^, stacked.
    center : numpy.ndarray of shape (p, q), or None
        c^; None without a centre.
    dual : numpy.ndarray of shape (p, Kq), or None
        The dual matrix Y (a warm start and the certificate's candidate).
    converged : bool
        Whether the stopping rule was met.
    iterations : int
        Iterations taken.
    primal_residual : float
        The relative primal residual (P0, P1c) or the relative change of L (P1).
    dual_residual : float
        The dual residual of the last iteration.
    duality_gap : float
        The absolute gap of the certificate.
    relative_gap : float
        The scale-free gap the solvers stop on.
    objective : float
        The program's objective at (L^, S^, c^).
    message : str
        The stopping note.
    penalty : float, optional
        ADMM's final penalty beta, reused by a warm start; default None (the
        other solvers).
    accepted : int, default 0
        Anderson extrapolations that passed the safeguard.
    rejected : int, default 0
        Anderson extrapolations that failed it (each cost one iteration).
    """

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
    accepted: int = 0  # Anderson extrapolations that passed the safeguard
    rejected: int = 0  # and those that failed it (each cost one iteration)


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
        Warm start for c; default None, the mean block of R.
    tol : float, default 1e-13
        The MM iteration stops when c moves by at most ``tol`` ||R||_F
        (keyword only).
    max_iter : int, default 500
        The most MM steps (keyword only).

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


class SafeguardedAnderson:
    """Type-II Anderson acceleration of a fixed-point map w -> T(w), safeguarded.

    With g_i = T(w_i) - w_i and the last m differences dW = [w_{i+1} - w_i],
    dG = [g_{i+1} - g_i], the extrapolated point is

        w_k + g_k - (dW + dG) gamma,   gamma = argmin ||g_k - dG gamma||_2

    (Walker and Ni 2011); a ridge of ``ridge`` tr(dG^T dG) keeps the small
    least-squares problem well posed. The differences live in a ring buffer with
    their Gram matrix, updated by one row per step (m inner products).

    Safeguard: the solver evaluates T at the extrapolated point (its next
    iteration) and hands the residual norm to :meth:`rejected_step`; if it is above
    ||g_k||, the extrapolation is rejected, the memory cleared and the plain
    image T(w_k), stored by :meth:`propose`, is returned for the solver to
    continue from. Every accepted point thus lowers the fixed-point residual,
    and a rejection costs one iteration.

    Parameters
    ----------
    memory : int
        m, the number of differences kept.
    ridge : float
        Relative Tikhonov weight of the least-squares problem.

    Attributes
    ----------
    accepted, rejected : int
        Extrapolations that passed and failed the safeguard.
    """

    def __init__(self, memory: int, ridge: float = 1e-10) -> None:
        self.memory = memory
        self.ridge = ridge
        self.accepted = self.rejected = 0
        self._dw: np.ndarray | None = None
        self._dg: np.ndarray | None = None
        self._gram = np.zeros((memory, memory))
        self._plain: object | None = None  # T(w_k) while its extrapolation is tried
        self._bound = np.inf  # ||g_k||, which the extrapolation must not exceed
        self.reset()

    def reset(self) -> None:
        """Forget the history (after a rejection, or when the map changes)."""
        self._w: np.ndarray | None = None
        self._g: np.ndarray | None = None
        self._count = 0  # differences stored
        self._next = 0  # ring-buffer slot of the next difference
        self._plain = None

    def __len__(self) -> int:
        """The number of differences in memory."""
        return self._count

    def rejected_step(self, residual_norm: float) -> object | None:
        """Judge the last extrapolation by the residual norm found there.

        Parameters
        ----------
        residual_norm : float
            ||T(w) - w|| at the point the solver just evaluated.

        Returns
        -------
        object or None
            When that point was an extrapolation whose residual exceeds the one
            it started from: the plain state given to :meth:`propose` (the
            memory is then cleared). Otherwise None.
        """
        plain, self._plain = self._plain, None
        if plain is None:
            return None
        if residual_norm > self._bound:
            self.rejected += 1
            self.reset()
            return plain
        self.accepted += 1
        return None

    def propose(self, w: np.ndarray, g: np.ndarray, plain: object) -> np.ndarray | None:
        """Record (w, g = T(w) - w); the extrapolated point, or None.

        Parameters
        ----------
        w, g : numpy.ndarray
            The current point and its fixed-point residual.
        plain : object
            The solver's state at T(w), returned by :meth:`rejected_step` if
            the extrapolation fails.

        Returns
        -------
        numpy.ndarray or None
            The extrapolated point (shape of w); None when no difference is
            stored yet or the least-squares problem is singular (the solver
            then takes the plain step).
        """
        shape = w.shape
        w, g = w.ravel(), g.ravel()
        if self._dw is None or self._dw.shape[1] != w.size:
            self._dw = np.empty((self.memory, w.size))
            self._dg = np.empty((self.memory, w.size))
        if self._w is not None:
            slot = self._next
            np.subtract(w, self._w, out=self._dw[slot])
            np.subtract(g, self._g, out=self._dg[slot])
            self._count = min(self._count + 1, self.memory)
            self._next = (slot + 1) % self.memory
            row = self._dg[: self._count] @ self._dg[slot]
            self._gram[slot, : self._count] = row
            self._gram[: self._count, slot] = row
        self._w, self._g = w.copy(), g.copy()
        if not self._count:
            return None
        n = self._count
        gram = self._gram[:n, :n].copy()
        gram[np.diag_indices(n)] += self.ridge * np.trace(gram) + 1e-300
        try:
            gamma = np.linalg.solve(gram, self._dg[:n] @ g)
        except np.linalg.LinAlgError:
            return None
        if not np.all(np.isfinite(gamma)):
            return None
        self._plain, self._bound = plain, float(np.linalg.norm(g))
        # two products instead of gamma @ (dW + dG): no m x size temporary (200 MB
        # for the 1600 x 1600 core of generic K = 100 at p = q = 4096)
        step = w + g
        step -= gamma @ self._dw[:n]
        step -= gamma @ self._dg[:n]
        return step.reshape(shape)

"""LoRA factors: the reduction to a small core and the lift back.

The maths is in docs/programs.md §5.8.

When every update is given in factors, Theta^_k = s_k B_k A_k with B_k (p x r_k)
and A_k (r_k x q), its compact SVD Theta^_k = U_k Sigma_k V_k^T (rank m_k <= r_k)
costs two thin QRs and an r_k x r_k SVD (:func:`client_svds`). Let Q (p x R) be an
orthonormal basis of span(U_1, ..., U_K) and W_k = V_k (q x m_k); then

.. math:: \\hat\\Theta_k = Q C_k W_k^T, \\qquad C_k = Q^T U_k \\Sigma_k
          \\in R^{R x m_k}.

For any (L, S, c), replacing L_k by Q Q^T L_k W_k W_k^T (and S_k, c alike) keeps
the constraint of P0 and the fit of P1 (the data are fixed by both projections)
and does not increase ||L||_* nor any ||S_k||_F (contractions). So P0/P1 have a
solution L_k = Q X_k W_k^T, S_k = Q Z_k W_k^T, and (X, Z) solve the same program
on the core blocks C_k: nuclear norm, block norms, inner products and the
duality gap are invariant under the isometries Q and W_k. Blocks of different
width are zero-padded to m = max_k m_k (padding is the same as completing W_k
by orthonormal columns outside the data, which the solution leaves at zero),
so the dense solvers of :func:`clair_stats.decompose` solve the core unchanged.

With a centre (``center=True``) c is shared by all blocks, so the right
projection must be common: W is then one orthonormal basis of all the row
spaces, of dimension n_w <= min(q, sum_k r_k), and the core blocks are R x n_w.
The stacked core is R x K n_w instead of R x K m: at K = 100, r_k = 16 (R = n_w =
1600) that is 1600 x 160000, 2 GB in float64. It is not reformulated (each
residual Theta^_k - c carries every client's row space), so its memory grows as
K^3; benchmarks/bench_lora_scale.py measures the centred cases under an 8 GB
address-space cap (docs/programs.md §5.8).

Q is found without a p x (sum r_k) QR: pivoted Cholesky of the Gram matrix of
[U_1, ..., U_K] (unit diagonal, so the pivoting tolerance R eps measures the
overlap of the client subspaces, not their scale), then one more Cholesky pass
(CholeskyQR2) that restores the orthogonality lost to the condition number.

The refinement (:func:`refine_factored`) reuses Q, the core blocks Q^T U_k Sigma_k
and the V_k of the decomposition when it is given one, so that its only
products with p- or q-row matrices are the Gram matrix of the V_k (which
gives the row basis W of the collaborative clients, left implicit as V_P
R_11^{-1} when well conditioned) and the two lifts of all refined factors at
once. The per-client truncations run in the small coordinates: for large cores
one eigendecomposition of D^T D (D the common part) and one Lanczos run per
client on a diagonal plus rank-r matrix.

References
----------
Xu, Caramanis, Sanghavi (2012). Robust PCA via outlier pursuit. IEEE TIT 58(5).
He, Chen, Feng (2026). Federated LoRA fine-tuning for LLMs via collaborative
alignment. arXiv:2605.21217.
Fukaya, Nakatsukasa, Yanagisawa, Yamamoto (2014). CholeskyQR2: a simple and
communication-avoiding algorithm for computing a tall-skinny QR factorization.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.linalg import lapack
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from threadpoolctl import ThreadpoolController

from clair_stats.core.lowrank import LowRankUpdates
from clair_stats.core.results import (
    Decomposition,
    FactoredDecomposition,
    RefinedFactors,
)
from clair_stats.core.validation import check_shrinkage

__all__ = [
    "FACTORED_BLAS_THREADS",
    "ITERATIVE_SVD_MIN",
    "ONE_PASS_MAX_CONDITION",
    "Reduction",
    "SpanBasis",
    "client_svds",
    "factored_blas_threads",
    "reduce_updates",
    "refine_factored",
    "span_basis",
]


#: Per-client refined cores with at least this many columns get their top-t
#: singular triplets by Lanczos (ARPACK) instead of a full SVD: measured at
#: d = 800, 6.5 ms against 190 ms, singular values equal to 1.5e-15 relative.
ITERATIVE_SVD_MIN = 256

#: Largest condition number of R_11 at which one Cholesky pass is kept:
#: Q_1 = G_1 R_11^{-1} is then orthonormal to about kappa^2 eps <= 2e-12.
ONE_PASS_MAX_CONDITION = 100.0


#: BLAS threads of the factored path's heavy calls (the reduction, the core solve,
#: lam="auto"'s path and the refinement run inside :func:`factored_blas_threads`);
#: None leaves the BLAS library's own setting. One thread, because a multi-threaded
#: BLAS waits for its threads whenever another process holds a core: on the shared
#: 2-core machine
#: generic K = 100 at p = q = 4096 took 545 s with two OpenBLAS threads and 31 s
#: with one at 1-min load 3 (the reduction alone 42 s against 1.5 s;
#: benchmarks/bench_lora_scale.py), while on an idle machine two threads gain at
#: most the factor 2 of the cores. The LoRA pipelines fit many modules, which
#: processes parallelise better than BLAS threads. Results do not depend on it
#: beyond rounding.
FACTORED_BLAS_THREADS: int | None = 1


@functools.cache
def _threadpools() -> ThreadpoolController:
    # found once: a fresh controller inspects the loaded libraries (0.1-1.5 ms)
    return ThreadpoolController()


def factored_blas_threads() -> contextlib.AbstractContextManager:
    """A context in which BLAS runs on :data:`FACTORED_BLAS_THREADS` threads.

    Returns
    -------
    contextlib.AbstractContextManager
        threadpoolctl's limit, or a no-op when the setting is None.
    """
    if FACTORED_BLAS_THREADS is None:
        return contextlib.nullcontext()
    return _threadpools().limit(limits=FACTORED_BLAS_THREADS, user_api="blas")


class SpanBasis:
    """An orthonormal basis Q = F T^{-1} kept as its factors, used as an operator.

    F (n x R) holds pivot columns of the stacked matrix (or, after a second
    Cholesky pass, the first pass's basis) and T (R x R) is upper triangular.
    ``Q @ x`` is F (T^{-1} x) and ``Q.T @ y`` is T^{-T} (F^T y): with thin x and
    y (the r columns of A^, the t_k columns of a refined client) this costs
    O(n R k) where forming Q would cost a triangular solve of n x R^2.
    ``numpy.asarray(Q)`` forms it (once).

    Parameters
    ----------
    factor : numpy.ndarray, shape (n, R)
        F.
    upper : numpy.ndarray, shape (R, R)
        T, upper triangular and nonsingular.
    """

    __slots__ = ("_dense", "_factor", "_upper")

    def __init__(self, factor: np.ndarray, upper: np.ndarray) -> None:
        self._factor, self._upper, self._dense = factor, upper, None

    @property
    def shape(self) -> tuple[int, int]:
        """(n, R)."""
        return (self._factor.shape[0], self._upper.shape[0])

    @property
    def ndim(self) -> int:
        """2."""
        return 2

    @property
    def T(self) -> _TransposedSpan:  # noqa: N802 - numpy's name
        """Q^T, an operator."""
        return _TransposedSpan(self)

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        if self._dense is not None:
            return self._dense @ x
        return self._factor @ scipy.linalg.solve_triangular(
            self._upper, x, check_finite=False
        )

    def dense(self) -> np.ndarray:
        """Q as an array (formed on the first call).

        Returns
        -------
        numpy.ndarray, shape (n, R)
            Orthonormal columns.
        """
        if self._dense is None:
            self._dense = scipy.linalg.solve_triangular(
                self._upper, self._factor.T, trans="T", check_finite=False
            ).T
        return self._dense

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self.dense(), dtype=dtype)


class _TransposedSpan:
    """Q^T of a :class:`SpanBasis`."""

    __slots__ = ("_of",)

    def __init__(self, of: SpanBasis) -> None:
        self._of = of

    @property
    def shape(self) -> tuple[int, int]:
        return self._of.shape[::-1]

    @property
    def T(self) -> SpanBasis:  # noqa: N802 - numpy's name
        return self._of

    def __matmul__(self, y: np.ndarray) -> np.ndarray:
        of = self._of
        if of._dense is not None:
            return of._dense.T @ y
        return scipy.linalg.solve_triangular(
            of._upper, of._factor.T @ np.asarray(y), trans="T", check_finite=False
        )

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self._of.dense().T, dtype=dtype)


def span_basis(
    stacked: np.ndarray, implicit: bool = False
) -> tuple[np.ndarray | SpanBasis, np.ndarray]:
    """An orthonormal basis Q of the column span of ``stacked`` and Q^T stacked.

    Pivoted Cholesky of the Gram matrix G^T G = P R^T R P^T gives the numerical
    rank R and the pivot columns G_1 (n x R) with G_1 = Q_1 R_11; then
    Q_1 = G_1 R_11^{-1} and Q_1^T G = R P^T. Q_1 is orthonormal to about
    kappa(R_11)^2 eps: when the condition number exceeds
    :data:`ONE_PASS_MAX_CONDITION` (the 1-norm estimate, and when it does, the
    2-norm estimate of :func:`_condition_2`, about the dimension smaller: 96
    against 2342 for 100 clients of rank 16 at p = 4096), a second Cholesky pass Q = Q_1
    chol(Q_1^T Q_1)^{-1} restores orthogonality to rounding (CholeskyQR2) and
    Q^T G is formed directly. Columns within about sqrt(N eps) of the span of
    the pivots (relative to the largest column norm) count as inside it.

    With ``implicit``, Q is returned as a :class:`SpanBasis`, Q = G_1 R_11^{-1}
    (one pass) or Q_1 R_2^{-1} (two), so that the last triangular solve with n
    rows is never made: the reduction and the refinement only apply Q and Q^T
    to thin matrices.

    Parameters
    ----------
    stacked : numpy.ndarray, shape (n, N)
        G; best with columns of comparable norm (orthonormal blocks here).
    implicit : bool, default False
        Return Q as a :class:`SpanBasis` operator instead of an array.

    Returns
    -------
    basis : numpy.ndarray or SpanBasis, shape (n, R)
        Q with orthonormal columns, R <= min(n, N) (R = 0 when G = 0: then an
        array).
    coefficients : numpy.ndarray, shape (R, N)
        Q^T G.
    """
    return _span_basis(stacked, stacked.T @ stacked, implicit)


def _pivoted_cholesky(
    gram: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None:
    """Pivoted Cholesky G^T G = P R^T R P^T of a Gram matrix (LAPACK dpstrf).

    Returns None when the numerical rank is 0; else the 1-based pivot order,
    the 0-based pivot columns (rank,), R (rank x N) in pivoted column order,
    R_11 (rank x rank) and the reciprocal 1-norm condition estimate of R_11.
    """
    factor, piv, rank, info = lapack.dpstrf(gram, lower=0)
    if info < 0:  # pragma: no cover - LAPACK argument error
        raise RuntimeError(f"LAPACK dpstrf failed with info = {info}.")
    if rank == 0 or not np.any(gram):
        return None
    upper = np.triu(factor[:rank])  # R (rank x N) in pivoted column order
    r11 = upper[:, :rank]
    rcond, _ = lapack.dtrcon(r11, norm="1", uplo="U", diag="N")
    return piv, piv[:rank] - 1, upper, r11, float(rcond)


def _span_basis(
    stacked: np.ndarray, gram: np.ndarray, implicit: bool = False
) -> tuple[np.ndarray | SpanBasis, np.ndarray]:
    """:func:`span_basis` with the Gram matrix G^T G given."""
    n, n_cols = stacked.shape
    found = _pivoted_cholesky(gram)
    if found is None:
        return np.zeros((n, 0)), np.zeros((0, n_cols))
    piv, pivots, upper, r11, rcond = found
    rank = pivots.size
    if (
        rcond * ONE_PASS_MAX_CONDITION >= 1.0
        or _condition_2(r11) <= ONE_PASS_MAX_CONDITION
    ):
        coefficients = np.empty((rank, n_cols))
        coefficients[:, piv - 1] = upper
        basis = SpanBasis(stacked[:, pivots], r11)  # Q_1 = G_1 R_11^{-1}
        return (basis if implicit else basis.dense()), coefficients
    first = SpanBasis(stacked[:, pivots], r11).dense()
    try:
        r2 = scipy.linalg.cholesky(first.T @ first, check_finite=False)
    except np.linalg.LinAlgError:  # pragma: no cover - kappa(R_11) beyond 1/sqrt(eps)
        basis = np.linalg.qr(first)[0]
        return basis, basis.T @ stacked
    # G = Q_1 R P^T = Q R_2 R P^T, so Q^T G = R_2 R P^T
    coefficients = np.empty((rank, n_cols))
    coefficients[:, piv - 1] = r2 @ upper
    basis = SpanBasis(first, r2)  # Q = Q_1 R_2^{-1}
    return (basis if implicit else basis.dense()), coefficients


@dataclass(frozen=True)
class Reduction:
    """Theta^_k = Q C_k W_k^T: the core of factored updates.

    Parameters
    ----------
    basis : SpanBasis or numpy.ndarray, shape (p, R)
        Q, as an operator (:class:`SpanBasis`: ``Q @ x``, ``Q.T @ y``,
        ``numpy.asarray(Q)``), or an array when R = 0.
    row_bases : tuple of numpy.ndarray
        W_k (q, m_k) per client, or one shared W (q, n_w) when ``shared``.
    core : numpy.ndarray, shape (K, R, m)
        C_k, zero-padded to the common width m.
    widths : tuple of int
        m_k (``shared``: n_w for every client).
    shared : bool
        One row basis for all clients (needed by a centre and by refinement).
    reduction_error : numpy.ndarray, shape (K,)
        sqrt(max(||Theta^_k||_F^2 - ||C_k||_F^2, 0)).
    seconds : float
        Wall-clock time.
    """

    basis: np.ndarray
    row_bases: tuple[np.ndarray, ...]
    core: np.ndarray
    widths: tuple[int, ...]
    shared: bool
    reduction_error: np.ndarray
    seconds: float

    def row_basis(self, k: int) -> np.ndarray:
        """W_k (or the shared W).

        Parameters
        ----------
        k : int
            The client index, 0-based (ignored when the basis is shared).

        Returns
        -------
        numpy.ndarray, shape (q, m_k)
            Orthonormal columns spanning the row space of A_k (or of all A_k).
        """
        return self.row_bases[0] if self.shared else self.row_bases[k]


def client_svds(
    updates: LowRankUpdates,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Compact SVDs Theta^_k = U_k diag(sigma_k) V_k^T from the factors.

    B_k = Q_b R_b and A_k^T = Q_a R_a (thin QR), then the SVD of the r_k x r_k
    matrix s_k R_b R_a^T = u diag(sigma) v^T gives U_k = Q_b u, V_k = Q_a v.
    Singular values at or below r_k eps sigma_1 (rounding, as in
    ``numpy.linalg.matrix_rank``) are dropped, so that a client of rank below
    r_k (a rank-deficient or zero B_k) adds no spurious directions to the span.

    Parameters
    ----------
    updates : LowRankUpdates
        The K clients' factors: Theta^_k = s_k B_k A_k with B_k (p, r_k),
        A_k (r_k, q) and the scaling s_k.

    Returns
    -------
    left, right, values : lists of K arrays
        U_k (p, m_k), V_k (q, m_k) and sigma_k (m_k,), m_k = rank of Theta^_k
        (0 for a zero update).
    """
    return _client_svds(updates, range(updates.n_clients))


def _client_svds(
    updates: LowRankUpdates, clients
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """:func:`client_svds` of the listed clients only."""
    left, right, values = [], [], []
    for k in clients:
        b, a, s = updates.B[k], updates.A[k], updates.scaling[k]
        qb, rb = np.linalg.qr(b)
        qa, ra = np.linalg.qr(a.T)
        u, sv, vt = np.linalg.svd(s * (rb @ ra.T))
        keep = int(np.sum(sv > max(b.shape[1], 1) * np.finfo(float).eps * sv[0]))
        left.append(qb @ u[:, :keep])
        right.append(qa @ vt[:keep].T)
        values.append(sv[:keep])
    return left, right, values


def reduce_updates(updates: LowRankUpdates, shared_rows: bool = False) -> Reduction:
    """Reduce factored updates to the core C_k = Q^T Theta^_k W_k.

    Parameters
    ----------
    updates : LowRankUpdates
        Theta^_k = s_k B_k A_k.
    shared_rows : bool
        Use one orthonormal basis W of all row spaces (for a centre) instead of
        one W_k per client. The core blocks are then R x n_w, n_w <= min(q,
        sum_k r_k), instead of R x max_k r_k.

    Returns
    -------
    Reduction

    Raises
    ------
    ValueError
        When every update is zero (there is nothing to decompose).
    """
    if not isinstance(updates, LowRankUpdates):
        raise TypeError(
            f"updates must be LowRankUpdates, got {type(updates).__name__}."
        )
    start = time.perf_counter()
    with factored_blas_threads():
        return _reduce(updates, shared_rows, start)


def _reduce(updates: LowRankUpdates, shared_rows: bool, start: float) -> Reduction:
    """:func:`reduce_updates` after the type check."""
    n_clients = updates.n_clients
    col_q, row_v, middle = client_svds(updates)
    basis, coeffs = span_basis(np.hstack(col_q), implicit=True)
    if basis.shape[1] == 0:
        raise ValueError(
            "every update is zero (all B_k A_k = 0); there is nothing to decompose."
        )
    col_offsets = np.cumsum([0] + [x.shape[1] for x in col_q])
    blocks = [
        coeffs[:, col_offsets[k] : col_offsets[k + 1]] * middle[k]
        for k in range(n_clients)
    ]  # Q^T U_k Sigma_k, R x m_k
    if shared_rows:
        row_basis, row_coeffs = span_basis(np.hstack(row_v))
        row_offsets = np.cumsum([0] + [x.shape[1] for x in row_v])
        blocks = [
            blocks[k] @ row_coeffs[:, row_offsets[k] : row_offsets[k + 1]].T
            for k in range(n_clients)
        ]  # C_k V_k^T W, R x n_w
        row_bases: tuple[np.ndarray, ...] = (row_basis,)
    else:
        row_bases = tuple(row_v)
    widths = tuple(int(x.shape[1]) for x in blocks)
    core = np.zeros((n_clients, basis.shape[1], max(widths)))
    for k, x in enumerate(blocks):
        core[k, :, : x.shape[1]] = x
    # ||Theta^_k||_F = ||Sigma_k||_F since U_k and V_k have orthonormal columns
    data2 = np.array([np.vdot(m, m) for m in middle])
    core2 = np.einsum("kij,kij->k", core, core)
    lost = np.sqrt(np.maximum(data2 - core2, 0.0))
    return Reduction(
        basis=basis,
        row_bases=row_bases,
        core=core,
        widths=widths,
        shared=shared_rows,
        reduction_error=lost,
        seconds=time.perf_counter() - start,
    )


def as_factored(
    reduction: Reduction, core_result: Decomposition
) -> FactoredDecomposition:
    """Wrap the core's Decomposition with the bases that lift it back."""
    return FactoredDecomposition(
        core=core_result,
        core_data=reduction.core,
        basis=reduction.basis,
        row_bases=reduction.row_bases,
        widths=reduction.widths,
        shape=(
            core_result.n_clients,
            reduction.basis.shape[0],
            reduction.row_bases[0].shape[0],
        ),
        reduction_error=reduction.reduction_error,
        reduction_seconds=reduction.seconds,
    )


def refine_factored(
    updates: LowRankUpdates,
    subspace: np.ndarray,
    collaborative: np.ndarray,
    rank: int | None = None,
    *,
    basis: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    shrinkage: float | np.ndarray | None = None,
    decomposition: FactoredDecomposition | None = None,
) -> RefinedFactors:
    """Refine factored updates and truncate each refined update by SVD.

    .. math::

        \\tilde\\Theta_k = \\bar\\Theta + (1 - b_k) P_{\\hat A}
            (\\hat\\Theta_k - \\bar\\Theta), \\qquad \\bar\\Theta =
            \\sum_{j \\in \\hat S} \\pi_j \\hat\\Theta_j, \\qquad k \\in \\hat S
            \\quad (b_k = 0: P_{\\hat A} \\hat\\Theta_k + P_{\\hat A}^\\perp
            \\bar\\Theta),

    held as Q Z_k W^T with Q a basis of span(B_1, ..., B_K, A^) and W one of the
    row spaces of the collaborative clients, Z_k = Q^T Theta~_k W = A_c w_k + D
    (R x n_w), where A^ = Q A_c, w_k = A_c^T Q^T ((1 - b_k) Theta^_k + b_k
    Thetabar) W and D = Q^T P_A^perp Thetabar W is common to all clients. Since
    A_c^T D = 0, Z_k^T Z_k = D^T D + w_k^T w_k: in the eigenbasis V_D of D^T D
    (eigenvalues Lambda) the Gram matrix of Z_k is Lambda + h_k^T h_k with h_k =
    w_k V_D (r rows), a diagonal plus rank-r matrix whose top-t eigenpairs
    (Lanczos, O(n_w r) per product) give the best rank-t approximation B~_k A~_k
    = (Q Z_k y)(W V_D y)^T, y the top eigenvectors, and the truncation error
    sqrt(||Z_k||_F^2 - sum_{i <= t} sigma_i^2) (a difference of squares: exact
    up to about 1e-8 ||Z_k||_F). When D has fewer than :data:`ITERATIVE_SVD_MIN`
    rows or columns, D = U_D Sigma_D V_D^T by one SVD instead and each
    Z_k, an (r + d) x (d + r) matrix in the orthonormal bases [A_c, U_D] and
    [V_D, O_k] (O_k the part of row(w_k) outside span(V_D)), by a full SVD, which
    gives the error as sqrt(sum_{i > t} sigma_i^2). Clients outside S^ keep their
    factors (s_k B_k, A_k).

    W is never formed when the Gram matrix of the clients' right singular vectors
    V = [V_k] is well conditioned (1-norm condition estimate of its pivoted
    Cholesky factor R_11 at most :data:`ONE_PASS_MAX_CONDITION`): W = V_P
    R_11^{-1} (V_P the pivot columns), and a lift X W^T is (R_11^{-1} X^T)^T
    V_P^T. Otherwise W comes from :func:`span_basis`.

    Parameters
    ----------
    updates : LowRankUpdates
        The client updates Theta^_k = s_k B_k A_k, as factors.
    subspace : numpy.ndarray, shape (p, r)
        A^ (orthonormal columns).
    collaborative : numpy.ndarray of bool, shape (K,)
        S^.
    rank : int, optional
        t, the rank of every refined factorisation. Default: each client's own
        LoRA rank r_k (so that the refined adapters have the shapes of the
        received ones).
    basis : numpy.ndarray, shape (p, R), optional
        Q of an earlier reduction (orthonormal columns spanning every B_k and
        A^, as :class:`FactoredDecomposition` ``.basis``); found when omitted.
    weights : numpy.ndarray, shape (K,), optional
        Pooling weights of Thetabar over S^ (normalised there; default equal),
        as in :func:`clair_stats.pipeline.refine.refine`.
    shrinkage : float or numpy.ndarray of shape (K,), optional
        b_k in [0, 1] (default 0), as in :func:`clair_stats.pipeline.refine.refine`.
    decomposition : FactoredDecomposition, optional
        Step 1 on these same updates (:func:`clair_stats.decompose`): its Q
        (then ``basis`` is not needed), core blocks Q^T U_k Sigma_k and row bases
        V_k (or, with a centre, the blocks Q^T Theta^_k W in one row basis W)
        are reused, so that neither the client SVDs nor any product with the
        p-row basis Q are computed again before the lift.

    Returns
    -------
    RefinedFactors

    Notes
    -----
    Cost (K clients in S^, N = sum of their ranks, n_w <= N): the Gram matrix of
    V (N x N x q, not with a ``decomposition`` that has a centre), the
    eigendecomposition of D^T D (n_w x n_w), one Lanczos run per client on
    Lambda + h_k^T h_k, and the products that lift all clients at once: p x R x
    sum t_k for the B~_k, sum t_k x n_w x q for the A~_k. Without
    ``decomposition`` also the client SVDs and, with ``basis`` given, Q^T [U_k]
    (p x R x N).
    """
    n_clients, p, q = updates.shape
    collaborative = np.asarray(collaborative, dtype=bool)
    if collaborative.shape != (n_clients,):
        raise ValueError(
            f"collaborative must have shape (K,) = ({n_clients},), got "
            f"{collaborative.shape}."
        )
    if subspace.ndim != 2 or subspace.shape[0] != p:
        raise ValueError(
            f"subspace must have shape (p, r) = ({p}, r), got {subspace.shape}."
        )
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int | np.integer):
            raise TypeError(f"rank must be an int or None, got {rank!r}.")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}.")
    if decomposition is not None:
        if not isinstance(decomposition, FactoredDecomposition):
            raise TypeError(
                "decomposition must be the FactoredDecomposition of these updates, "
                f"got {type(decomposition).__name__}."
            )
        if tuple(decomposition.shape) != (n_clients, p, q):
            raise ValueError(
                f"decomposition is of updates of shape {decomposition.shape}, "
                f"these are {(n_clients, p, q)}."
            )
        basis = decomposition.basis
    pooled = check_shrinkage(shrinkage, n_clients)
    ranks = [updates.ranks[k] if rank is None else int(rank) for k in range(n_clients)]
    out_b = [updates.scaling[k] * updates.B[k] for k in range(n_clients)]
    out_a = list(updates.A)
    errors = np.zeros(n_clients)
    norms = updates.norms()
    members = np.flatnonzero(collaborative)
    if members.size == 0:
        return RefinedFactors(
            B=tuple(out_b),
            A=tuple(out_a),
            truncation_error=errors,
            refined_norm=norms,
            collaborative=collaborative.copy(),
        )
    pool = _pool_weights(weights, members, n_clients)
    with factored_blas_threads():
        return _refine(
            updates,
            subspace,
            members,
            basis,
            decomposition,
            pool,
            pooled,
            ranks,
            (out_b, out_a, errors, norms, collaborative),
        )


def _refine(
    updates: LowRankUpdates,
    subspace: np.ndarray,
    members: np.ndarray,
    basis: np.ndarray | None,
    decomposition: FactoredDecomposition | None,
    pool: np.ndarray,
    pooled: np.ndarray,
    ranks: list[int],
    outputs: tuple,
) -> RefinedFactors:
    """:func:`refine_factored` on a non-empty S^ after the checks."""
    out_b, out_a, errors, norms, collaborative = outputs
    coords = _Coordinates.of(updates, members, subspace, basis, decomposition)
    a_c = coords.basis.T @ subspace  # A^ = Q A_c
    mean = coords.mean(pool)  # Q^T Thetabar W
    shared = mean - a_c @ (a_c.T @ mean)  # D = Q^T P_A^perp Thetabar W
    mean_inside = a_c.T @ mean  # A_c^T Q^T Thetabar W, for the pooled clients
    inside = coords.inside(a_c)  # w_k = A_c^T Q^T Theta^_k W per client
    for i, k in enumerate(members):
        if pooled[k] > 0:  # pool a share b_k of the in-subspace deviation
            inside[i] = (1.0 - pooled[k]) * inside[i] + pooled[k] * mean_inside
    # D of ITERATIVE_SVD_MIN rows and columns or more: its SVD would dominate
    large = min(shared.shape) >= ITERATIVE_SVD_MIN
    truncate = _truncate_large if large else _truncate
    small_b, small_a, t_k, errors[members], norms[members] = truncate(
        a_c, shared, inside, [ranks[k] for k in members], members
    )
    # lift all clients at once: B~_k = Q (.), A~_k = (.) W^T
    lifted_b = coords.basis @ small_b
    lifted_a = coords.lift_rows(small_a)
    edges = np.concatenate([[0], np.cumsum(t_k)])
    for i, k in enumerate(members):
        out_b[k] = lifted_b[:, edges[i] : edges[i + 1]]
        out_a[k] = lifted_a[edges[i] : edges[i + 1]]
    return RefinedFactors(
        B=tuple(out_b),
        A=tuple(out_a),
        truncation_error=errors,
        refined_norm=norms,
        collaborative=collaborative.copy(),
    )


def _pool_weights(
    weights: np.ndarray | None, members: np.ndarray, n_clients: int
) -> np.ndarray:
    """pi over S^ (normalised there; equal by default), one per member."""
    if weights is None:
        return np.full(members.size, 1.0 / members.size)
    pool = np.asarray(weights, dtype=float)
    if pool.shape != (n_clients,) or not (
        np.all(np.isfinite(pool)) and np.all(pool >= 0) and pool[members].sum() > 0
    ):
        raise ValueError(
            "weights must be K nonnegative finite numbers, positive somewhere "
            "on the collaborative set."
        )
    return pool[members] / pool[members].sum()


@dataclass(frozen=True)
class _Coordinates:
    """Q^T Theta^_k W = left_k right_k for the members k (right_k = I: shared W).

    ``left`` holds the blocks side by side (R x N), ``right`` (N x n_w) the
    coordinates of the V_k in W, or is None when ``left`` holds the blocks
    Q^T Theta^_k W themselves (a centred decomposition's core).
    """

    basis: np.ndarray
    left: np.ndarray
    right: np.ndarray | None
    edges: np.ndarray
    lift_rows: object

    @classmethod
    def of(
        cls,
        updates: LowRankUpdates,
        members: np.ndarray,
        subspace: np.ndarray,
        basis: np.ndarray | None,
        decomposition: FactoredDecomposition | None,
    ) -> _Coordinates:
        if decomposition is not None and decomposition.problem.center:
            width = decomposition.row_bases[0].shape[1]
            left = np.hstack([decomposition.core_data[k, :, :width] for k in members])
            edges = np.arange(members.size + 1) * width
            row_basis = decomposition.row_bases[0]
            return cls(basis, left, None, edges, lambda x: x @ row_basis.T)
        if decomposition is not None:
            left = np.hstack(
                [
                    decomposition.core_data[k, :, : decomposition.widths[k]]
                    for k in members
                ]
            )
            rows = [decomposition.row_bases[k] for k in members]
        else:
            col_u, rows, values = _client_svds(updates, members)
            if basis is None:  # Q must span every column space and A^
                basis, coeffs = span_basis(np.hstack([subspace, *col_u]), implicit=True)
                left = coeffs[:, subspace.shape[1] :] * np.concatenate(values)
            else:  # Q^T U_k Sigma_k
                left = (basis.T @ np.hstack(col_u)) * np.concatenate(values)
        edges = np.concatenate([[0], np.cumsum([v.shape[1] for v in rows])])
        right, lift_rows = _row_span(np.vstack([v.T for v in rows]))
        return cls(basis, left, right, edges, lift_rows)

    def mean(self, pool: np.ndarray) -> np.ndarray:
        """Q^T Thetabar W = sum_k pi_k Q^T Theta^_k W."""
        column_pool = np.repeat(pool, np.diff(self.edges))
        if self.right is None:
            n_w = self.edges[1] - self.edges[0]
            blocks = self.left.reshape(self.left.shape[0], -1, n_w)
            return np.einsum("ikj,k->ij", blocks, pool)
        return (self.left * column_pool) @ self.right

    def inside(self, a_c: np.ndarray) -> list[np.ndarray]:
        """w_k = A_c^T Q^T Theta^_k W (r x n_w) for every member."""
        projected = a_c.T @ self.left
        out = []
        for i in range(self.edges.size - 1):
            block = projected[:, self.edges[i] : self.edges[i + 1]]
            out.append(
                block
                if self.right is None
                else block @ self.right[self.edges[i] : self.edges[i + 1]]
            )
        return out


def _row_span(rows: np.ndarray) -> tuple[np.ndarray, object]:
    """Coordinates V^T W (N x n_w) of the rows of V^T in a basis W of their span,
    and the map X -> X W^T.

    Pivoted Cholesky of V^T V = P R^T R P^T as in :func:`span_basis`. When the
    2-norm condition number of R_11 (:func:`_condition_2`) is at most
    :data:`ONE_PASS_MAX_CONDITION`, W = V_P R_11^{-1} is orthonormal to about
    kappa^2 eps <= 2e-12 and is left implicit (a :class:`SpanBasis`, no q x N
    triangular solve): X W^T = (W X^T)^T = (V_P (R_11^{-1} X^T))^T. Otherwise
    W = :func:`span_basis` (V). The 2-norm estimate alone is used here (not the
    1-norm one that :func:`span_basis` tries first), because the 1-norm one is
    pessimistic by about the dimension: at K = 100 clients of rank 16 with
    Gaussian A_k (q = 4096), kappa_2(R_11) = 4.3 where 1 / rcond_1 = 676.
    """
    gram = rows @ rows.T
    found = _pivoted_cholesky(gram)
    if found is None:
        return np.zeros((rows.shape[0], 0)), lambda x: np.zeros(
            (x.shape[0], rows.shape[1])
        )
    piv, pivots, upper, r11, _ = found
    if _condition_2(r11) <= ONE_PASS_MAX_CONDITION:
        coefficients = np.empty((pivots.size, rows.shape[0]))
        coefficients[:, piv - 1] = upper
        row_basis = SpanBasis(rows[pivots].T, r11)  # W = V_P R_11^{-1}, implicit
        return coefficients.T, lambda x: (row_basis @ x.T).T
    row_basis, coefficients = _span_basis(rows.T, gram)
    return coefficients.T, lambda x: x @ row_basis.T


def _condition_2(upper: np.ndarray, steps: int = 12, width: int = 4) -> float:
    """An estimate of the 2-norm condition number of an upper triangular matrix.

    Block power iteration (``width`` vectors, ``steps`` steps) on R^T R for
    ||R||_2 and on (R^T R)^{-1} (two triangular solves) for ||R^{-1}||_2: O(n^2)
    per step instead of the O(n^3) of the singular values. Power iteration
    approaches both norms from below; the fixed start makes it deterministic.
    """
    n = upper.shape[0]
    start = np.random.default_rng(n).standard_normal((n, min(width, n)))
    big, small = np.linalg.qr(start)[0], np.linalg.qr(start)[0]
    for _ in range(steps):
        big = np.linalg.qr(upper.T @ (upper @ big))[0]
        inverse = scipy.linalg.solve_triangular(upper, small, check_finite=False)
        small = np.linalg.qr(
            scipy.linalg.solve_triangular(upper, inverse, trans="T", check_finite=False)
        )[0]
    top = np.linalg.norm(upper @ big, 2)
    inv = np.linalg.norm(
        scipy.linalg.solve_triangular(upper, small, check_finite=False), 2
    )
    return float(top * inv)


def _truncate(
    a_c: np.ndarray,
    shared: np.ndarray,
    inside: list[np.ndarray],
    ranks: list[int],
    members: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[int], np.ndarray, np.ndarray]:
    """Best rank-t_k approximations of Z_k = A_c w_k + D by SVDs (small n_w).

    Returns the left factors side by side in Q coordinates (R x sum t_k), the
    right ones stacked in W coordinates (sum t_k x n_w), the t_k, the truncation
    errors and ||Z_k||_F.
    """
    # D = U_D Sigma_D V_D^T, once for all clients
    u_d, s_d, vt_d = scipy.linalg.svd(
        shared, full_matrices=False, lapack_driver="gesdd", check_finite=False
    )
    keep = s_d > s_d.size * np.finfo(float).eps * (s_d[0] if s_d.size else 0.0)
    u_d, s_d, v_d = u_d[:, keep], s_d[keep], vt_d[keep].T
    outer = np.hstack([a_c, u_d])  # orthonormal: U_D lies in the complement of A_c
    small_b, small_a, widths = [], [], []
    errors, norms = np.zeros(members.size), np.zeros(members.size)
    for i, k in enumerate(members):
        # in the orthonormal bases [A_c, U_D] (rows) and [V_D, O_k] (columns),
        # O_k the part of row(w_k) outside span(V_D):  F = [[w V_D, T^T], [Sigma_D, 0]]
        w = inside[i]
        in_d = w @ v_d
        o_k, t_k = np.linalg.qr(w.T - v_d @ in_d.T)
        middle = np.zeros((outer.shape[1], v_d.shape[1] + o_k.shape[1]))
        middle[: a_c.shape[1], : v_d.shape[1]] = in_d
        middle[: a_c.shape[1], v_d.shape[1] :] = t_k.T
        middle[a_c.shape[1] :, : v_d.shape[1]] = np.diag(s_d)
        u, sv, vt, errors[i], norms[i] = _truncated_svd(
            middle, ranks[i], in_d, t_k, s_d, seed=int(k)
        )
        small_b.append(outer @ (u * sv))
        small_a.append(vt[:, : v_d.shape[1]] @ v_d.T + vt[:, v_d.shape[1] :] @ o_k.T)
        widths.append(sv.size)
    return np.hstack(small_b), np.vstack(small_a), widths, errors, norms


def _truncate_large(
    a_c: np.ndarray,
    shared: np.ndarray,
    inside: list[np.ndarray],
    ranks: list[int],
    members: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[int], np.ndarray, np.ndarray]:
    """:func:`_truncate` by one eigendecomposition of D^T D and Lanczos per client.

    Z_k^T Z_k = D^T D + w_k^T w_k (A_c^T D = 0) is Lambda + h_k^T h_k in the
    eigenbasis V_D of D^T D, h_k = w_k V_D. Its top-t eigenpairs (sigma_i^2, y_i)
    give B~_k = Z_k V_D y = A_c (h_k y) + D (V_D y) and A~_k = (V_D y)^T; the
    error is sqrt(||Z_k||_F^2 - sum_{i <= t} sigma_i^2) with ||Z_k||_F^2 = ||w_k||_F^2
    + ||D||_F^2. The Gram matrix squares the singular values, as the Lanczos
    iteration on Z_k^T Z_k of :func:`_truncated_svd` does: eigenvalues to about
    eps ||Z_k||_2^2 either way.
    """
    n_w = shared.shape[1]
    evals, v_d = scipy.linalg.eigh(shared.T @ shared, driver="evd", check_finite=False)
    evals = np.maximum(evals, 0.0)
    shared2 = float(np.vdot(shared, shared))
    heads = np.vstack(inside) @ v_d  # h_k stacked, (r |S^|) x n_w
    n_in = a_c.shape[1]
    vectors, small_h, widths = [], [], []
    errors, norms = np.zeros(members.size), np.zeros(members.size)
    for i, k in enumerate(members):
        h = heads[i * n_in : (i + 1) * n_in]
        total = shared2 + float(np.vdot(inside[i], inside[i]))
        vals, vecs = _top_eigenpairs(evals, h, min(ranks[i], n_w), seed=int(k))
        keep = vals > 0.0
        vals, vecs = vals[keep], vecs[:, keep]
        errors[i] = np.sqrt(max(total - float(np.sum(vals)), 0.0))
        norms[i] = np.sqrt(total)
        vectors.append(vecs)
        small_h.append(h @ vecs)
        widths.append(vals.size)
    rows = v_d @ np.hstack(vectors)  # V_D y in W coordinates, n_w x sum t_k
    small_b = a_c @ np.hstack(small_h) + shared @ rows
    return small_b, rows.T, widths, errors, norms


def _top_eigenpairs(
    diag: np.ndarray, h: np.ndarray, t: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The t largest eigenpairs of diag + h^T h, decreasing (Lanczos, tol 0)."""
    n = diag.size
    if t < n - 1:

        def gram(x: np.ndarray) -> np.ndarray:
            x = x.reshape(n, -1)
            return diag[:, None] * x + h.T @ (h @ x)

        op = LinearOperator((n, n), matvec=gram, matmat=gram, dtype=float)
        v0 = np.random.default_rng(seed).standard_normal(n)
        try:
            vals, vecs = eigsh(op, k=t, which="LA", tol=0.0, v0=v0)
        except ArpackNoConvergence:  # pragma: no cover - fall back to the full one
            pass
        else:
            order = np.argsort(vals)[::-1]
            return np.maximum(vals[order], 0.0), vecs[:, order]
    vals, vecs = scipy.linalg.eigh(np.diag(diag) + h.T @ h, check_finite=False)
    return np.maximum(vals[::-1][:t], 0.0), vecs[:, ::-1][:, :t]


def _truncated_svd(
    middle: np.ndarray,
    rank: int,
    inside: np.ndarray,
    t_k: np.ndarray,
    s_d: np.ndarray,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Top-t singular triplets of F = [[w V_D, T^T], [Sigma_D, 0]] and the error.

    Small F: a full SVD, the error sqrt(sum_{i > t} sigma_i^2). Large F
    (:data:`ITERATIVE_SVD_MIN` columns or more): F^T F = diag(Sigma_D^2, 0) +
    h^T h with h = [w V_D, T^T] (r rows) is a diagonal plus rank-r matrix, so
    Lanczos (ARPACK, tol 0: machine precision) needs O((d + r) r) per product;
    then U = F V / sigma and the error is sqrt(||F||_F^2 - sum_{i <= t}
    sigma_i^2), exact up to a cancellation floor of about 1e-8 ||F||_F.

    Returns
    -------
    u : (rows, t), sigma : (t,), vt : (t, cols), error : float, norm : float
        With t <= ``rank`` (fewer when F has lower rank).
    """
    n_cols = middle.shape[1]
    t = min(rank, min(middle.shape))
    if n_cols >= ITERATIVE_SVD_MIN and t < n_cols - 1:
        diag = np.zeros(n_cols)
        diag[: s_d.size] = s_d**2
        h = np.hstack([inside, t_k.T])

        def gram(x: np.ndarray) -> np.ndarray:
            x = x.reshape(n_cols, -1)
            return diag[:, None] * x + h.T @ (h @ x)

        op = LinearOperator((n_cols, n_cols), matvec=gram, matmat=gram, dtype=float)
        v0 = np.random.default_rng(seed).standard_normal(n_cols)
        try:
            vals, vecs = eigsh(op, k=t, which="LA", tol=0.0, v0=v0)
        except ArpackNoConvergence:  # pragma: no cover - fall back to the full SVD
            pass
        else:
            order = np.argsort(vals)[::-1]
            vals, vecs = np.maximum(vals[order], 0.0), vecs[:, order]
            keep = vals > 0.0
            sv, vecs = np.sqrt(vals[keep]), vecs[:, keep]
            u = (middle @ vecs) / sv
            total = float(np.vdot(middle, middle))
            error = float(np.sqrt(max(total - float(np.sum(sv**2)), 0.0)))
            return u, sv, vecs.T, error, float(np.sqrt(total))
    u, sv, vt = scipy.linalg.svd(
        middle, full_matrices=False, lapack_driver="gesdd", check_finite=False
    )
    error = float(np.sqrt(np.sum(sv[t:] ** 2)))
    return u[:, :t], sv[:t], vt[:t], error, float(np.sqrt(np.sum(sv**2)))

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
1600) that is 1600 x 160000, 2 GB in float64.

Q is found without a p x (sum r_k) QR: pivoted Cholesky of the Gram matrix of
[U_1, ..., U_K] (unit diagonal, so the pivoting tolerance R eps measures the
overlap of the client subspaces, not their scale), then one more Cholesky pass
(CholeskyQR2) that restores the orthogonality lost to the condition number.

References
----------
Xu, Caramanis, Sanghavi (2012). Robust PCA via outlier pursuit. IEEE TIT 58(5).
He, Chen, Feng (2026). Federated LoRA fine-tuning for LLMs via collaborative
alignment. arXiv:2605.21217.
Fukaya, Nakatsukasa, Yanagisawa, Yamamoto (2014). CholeskyQR2: a simple and
communication-avoiding algorithm for computing a tall-skinny QR factorization.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.linalg import lapack
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from clair_stats.core.lowrank import LowRankUpdates
from clair_stats.core.results import (
    Decomposition,
    FactoredDecomposition,
    RefinedFactors,
)
from clair_stats.core.validation import check_shrinkage

__all__ = [
    "ITERATIVE_SVD_MIN",
    "ONE_PASS_MAX_CONDITION",
    "Reduction",
    "client_svds",
    "reduce_updates",
    "refine_factored",
    "span_basis",
]


#: Per-client refined cores with at least this many columns get their top-t
#: singular triplets by Lanczos (ARPACK) instead of a full SVD: measured at
#: d = 800, 6.5 ms against 190 ms, singular values equal to 1.5e-15 relative.
ITERATIVE_SVD_MIN = 256

#: Largest 1-norm condition estimate of R_11 at which one Cholesky pass is kept:
#: Q_1 = G_1 R_11^{-1} is then orthonormal to about kappa^2 eps <= 2e-12.
ONE_PASS_MAX_CONDITION = 100.0


def span_basis(stacked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An orthonormal basis Q of the column span of ``stacked`` and Q^T stacked.

    Pivoted Cholesky of the Gram matrix G^T G = P R^T R P^T gives the numerical
    rank R and the pivot columns G_1 (n x R) with G_1 = Q_1 R_11; then
    Q_1 = G_1 R_11^{-1} and Q_1^T G = R P^T. Q_1 is orthonormal to about
    kappa(R_11)^2 eps: when the condition estimate exceeds
    :data:`ONE_PASS_MAX_CONDITION`, a second Cholesky pass Q = Q_1
    chol(Q_1^T Q_1)^{-1} restores orthogonality to rounding (CholeskyQR2) and
    Q^T G is formed directly. Columns within about sqrt(N eps) of the span of
    the pivots (relative to the largest column norm) count as inside it.

    Parameters
    ----------
    stacked : numpy.ndarray, shape (n, N)
        G; best with columns of comparable norm (orthonormal blocks here).

    Returns
    -------
    basis : numpy.ndarray, shape (n, R)
        Q with orthonormal columns, R <= min(n, N) (R = 0 when G = 0).
    coefficients : numpy.ndarray, shape (R, N)
        Q^T G.
    """
    n, n_cols = stacked.shape
    gram = stacked.T @ stacked
    factor, piv, rank, info = lapack.dpstrf(gram, lower=0)
    if info < 0:  # pragma: no cover - LAPACK argument error
        raise RuntimeError(f"LAPACK dpstrf failed with info = {info}.")
    if rank == 0 or not np.any(gram):
        return np.zeros((n, 0)), np.zeros((0, n_cols))
    pivots = piv[:rank] - 1  # LAPACK pivots are 1-based
    upper = np.triu(factor[:rank])  # R (rank x N) in pivoted column order
    r11 = upper[:, :rank]
    # Q_1^T = R_11^{-T} G_1^T
    first = scipy.linalg.solve_triangular(
        r11, stacked[:, pivots].T, trans="T", check_finite=False
    ).T
    rcond, _ = lapack.dtrcon(r11, norm="1", uplo="U", diag="N")
    if rcond * ONE_PASS_MAX_CONDITION >= 1.0:
        coefficients = np.empty((rank, n_cols))
        coefficients[:, piv - 1] = upper
        return first, coefficients
    try:
        r2 = scipy.linalg.cholesky(first.T @ first, check_finite=False)
    except np.linalg.LinAlgError:  # pragma: no cover - kappa(R_11) beyond 1/sqrt(eps)
        basis = np.linalg.qr(first)[0]
        return basis, basis.T @ stacked
    basis = scipy.linalg.solve_triangular(r2, first.T, trans="T", check_finite=False).T
    # G = Q_1 R P^T = Q R_2 R P^T, so Q^T G = R_2 R P^T
    coefficients = np.empty((rank, n_cols))
    coefficients[:, piv - 1] = r2 @ upper
    return basis, coefficients


@dataclass(frozen=True)
class Reduction:
    """Theta^_k = Q C_k W_k^T: the core of factored updates.

    Parameters
    ----------
    basis : numpy.ndarray, shape (p, R)
        Q.
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
    left, right, values = [], [], []
    for b, a, s in zip(updates.B, updates.A, updates.scaling, strict=True):
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
    n_clients = updates.n_clients
    col_q, row_v, middle = client_svds(updates)
    basis, coeffs = span_basis(np.hstack(col_q))
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
) -> RefinedFactors:
    """Refine factored updates and truncate each refined update by SVD.

    .. math::

        \\tilde\\Theta_k = \\bar\\Theta + (1 - b_k) P_{\\hat A}
            (\\hat\\Theta_k - \\bar\\Theta), \\qquad \\bar\\Theta =
            \\sum_{j \\in \\hat S} \\pi_j \\hat\\Theta_j, \\qquad k \\in \\hat S
            \\quad (b_k = 0: P_{\\hat A} \\hat\\Theta_k + P_{\\hat A}^\\perp
            \\bar\\Theta),

    held as Q Z_k W^T with Q a basis of span(B_1, ..., B_K, A^) and W one of all row
    spaces, Z_k = Q^T Theta~_k W = A_c w_k + D (R x n_w), where A^ = Q A_c, w_k =
    A_c^T Q^T ((1 - b_k) Theta^_k + b_k Thetabar) W and D = Q^T P_A^perp Thetabar W
    is common to all clients. With D = U_D Sigma_D V_D^T (one SVD) and O_k an
    orthonormal basis of the part of row(w_k) outside span(V_D), Z_k is an (r + d) x
    (d + r) matrix in the orthonormal bases [A_c, U_D] and [V_D, O_k]; its SVD gives
    the best rank-t approximation B~_k A~_k = (Q U_t Sigma_t)(W V_t)^T and the
    truncation error sqrt(sum_{i > t} sigma_i^2) exactly. Clients outside S^ keep
    their factors (s_k B_k, A_k).

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

    Returns
    -------
    RefinedFactors

    Notes
    -----
    Cost: one SVD of D (R x n_w) and one of an (r + d) x (d + r) matrix per
    collaborative client, d = rank(D) <= min(R, n_w); then two products of
    sizes p x R x sum t_k and sum t_k x n_w x q. When every client has its own
    column space, d is close to sum_k r_k and the per-client SVDs dominate
    (K SVDs of size ~ sum_k r_k).
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
    col_u, row_v, values = client_svds(updates)
    if basis is None:  # Q must span every column space and A^
        basis, _ = span_basis(np.hstack([subspace, *col_u]))
    row_basis, row_coeffs = span_basis(np.hstack(row_v))
    offsets = np.cumsum([0] + [v.size for v in values])
    # Q^T U_k Sigma_k and V_k^T W: Q^T Theta^_k W is their product
    left = (basis.T @ np.hstack(col_u)) * np.concatenate(values)
    right = row_coeffs.T
    a_c = basis.T @ subspace  # A^ = Q A_c
    cols = np.concatenate([np.arange(offsets[j], offsets[j + 1]) for j in members])
    if weights is None:
        pool = np.full(members.size, 1.0 / members.size)
    else:
        pool = np.asarray(weights, dtype=float)
        if pool.shape != (n_clients,) or not (
            np.all(np.isfinite(pool)) and np.all(pool >= 0) and pool[members].sum() > 0
        ):
            raise ValueError(
                "weights must be K nonnegative finite numbers, positive somewhere "
                "on the collaborative set."
            )
        pool = pool[members] / pool[members].sum()
    column_pool = np.concatenate(
        [np.full(offsets[j + 1] - offsets[j], pool[i]) for i, j in enumerate(members)]
    )
    mean = (left[:, cols] * column_pool) @ right[cols]  # Q^T Thetabar W
    # D = Q^T P_A^perp Thetabar W = U_D Sigma_D V_D^T, once for all clients
    shared = mean - a_c @ (a_c.T @ mean)
    u_d, s_d, vt_d = scipy.linalg.svd(
        shared, full_matrices=False, lapack_driver="gesdd", check_finite=False
    )
    keep = s_d > s_d.size * np.finfo(float).eps * (s_d[0] if s_d.size else 0.0)
    u_d, s_d, v_d = u_d[:, keep], s_d[keep], vt_d[keep].T
    mean_inside = a_c.T @ mean  # A_c^T Q^T Thetabar W, for the pooled clients
    outer = np.hstack([a_c, u_d])  # orthonormal: U_D lies in the complement of A_c
    small_b, small_a = {}, {}
    for k in members:
        sl = slice(offsets[k], offsets[k + 1])
        # Q^T Theta~_k W = A_c w_k + D with w_k = A_c^T Q^T Theta^_k W; in the
        # orthonormal bases [A_c, U_D] (rows) and [V_D, O_k] (columns), O_k the
        # part of row(w_k) outside span(V_D):  F = [[w V_D, T^T], [Sigma_D, 0]]
        w = (a_c.T @ left[:, sl]) @ right[sl]
        if pooled[k] > 0:  # pool a share b_k of the in-subspace deviation
            w = (1.0 - pooled[k]) * w + pooled[k] * mean_inside
        inside = w @ v_d
        o_k, t_k = np.linalg.qr(w.T - v_d @ inside.T)
        middle = np.zeros((outer.shape[1], v_d.shape[1] + o_k.shape[1]))
        middle[: a_c.shape[1], : v_d.shape[1]] = inside
        middle[: a_c.shape[1], v_d.shape[1] :] = t_k.T
        middle[a_c.shape[1] :, : v_d.shape[1]] = np.diag(s_d)
        u, sv, vt, errors[k], norms[k] = _truncated_svd(
            middle, ranks[k], inside, t_k, s_d, seed=int(k)
        )
        small_b[k] = outer @ (u * sv)
        small_a[k] = vt[:, : v_d.shape[1]] @ v_d.T + vt[:, v_d.shape[1] :] @ o_k.T
    # lift all clients at once: B~_k = Q (.), A~_k = (.) W^T
    lifted_b = basis @ np.hstack([small_b[k] for k in members])
    lifted_a = np.vstack([small_a[k] for k in members]) @ row_basis.T
    start = 0
    for k in members:
        t = small_b[k].shape[1]
        out_b[k] = lifted_b[:, start : start + t]
        out_a[k] = lifted_a[start : start + t]
        start += t
    return RefinedFactors(
        B=tuple(out_b),
        A=tuple(out_a),
        truncation_error=errors,
        refined_norm=norms,
        collaborative=collaborative.copy(),
    )


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

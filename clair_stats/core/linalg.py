"""Linear algebra shared by every step: stacking, the top-r subspace, the energies.

One home for three ideas that the pipeline, the baselines, the LoRA code and the
studies all need (docs/model.md §1):

- :func:`stack` / :func:`unstack`: client updates (K, p, q) <-> the stacked matrix
  M = [Theta_1, ..., Theta_K] (p x Kq), block k = columns kq .. (k+1)q - 1;
- :func:`left_singular`, :func:`top_left_singular` and :func:`top_subspace`: the
  top-r left singular vectors of a matrix or of a stack of updates (dense or
  factored), e.g. A^ of step 2, the plain SVD baseline and the oracle subspace of
  the benign clients;
- :func:`off_subspace_residuals`: R_k = P_A^perp (Theta_k - c), the explicit
  projection that the energies, the trimmed refit and the copy rules share;
- :func:`off_subspace_energy`: E_k = ||P_A^perp (Theta_k - c)||_F^2 for every
  client, the statistic of step 3, from dense or factored updates.
"""

from __future__ import annotations

import numpy as np

from clair_stats.core.lowrank import LowRankUpdates

__all__ = [
    "PARTIAL_SVD_MIN",
    "RANGE_TOL",
    "TOP_GAP_MIN",
    "TOP_PARTIAL_MIN",
    "TOP_RESIDUAL_TOL",
    "left_singular",
    "off_subspace_energy",
    "off_subspace_residuals",
    "stack",
    "top_left_partial",
    "top_left_singular",
    "top_subspace",
    "unstack",
]


def stack(updates: np.ndarray) -> np.ndarray:
    """Stack client updates (K, p, q) into M = [Theta_1, ..., Theta_K] (p, Kq).

    Block k of M is columns kq .. (k+1)q - 1.

    Parameters
    ----------
    updates : numpy.ndarray, shape (K, p, q)
        The client updates Theta^_k, client k at index k.

    Returns
    -------
    numpy.ndarray, shape (p, Kq)
        The stacked matrix M, C-contiguous.
    """
    n_clients, p, q = updates.shape
    return np.ascontiguousarray(updates.transpose(1, 0, 2)).reshape(p, n_clients * q)


def unstack(matrix: np.ndarray, n_clients: int) -> np.ndarray:
    """Inverse of :func:`stack`: (p, Kq) -> (K, p, q).

    Parameters
    ----------
    matrix : numpy.ndarray, shape (p, Kq)
        A stacked matrix (M, L, S or a residual).
    n_clients : int
        K, the number of blocks; it must divide the number of columns (a
        ``ValueError`` otherwise).

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        Block k of ``matrix`` at index k, C-contiguous.
    """
    p, n_cols = matrix.shape
    if n_clients < 1 or n_cols % n_clients:
        raise ValueError(
            f"cannot split {n_cols} columns into {n_clients} blocks of equal width q."
        )
    q = n_cols // n_clients
    return np.ascontiguousarray(matrix.reshape(p, n_clients, q).transpose(1, 0, 2))


#: From this smaller dimension on, a low-rank matrix is decomposed on its range only.
PARTIAL_SVD_MIN = 800
#: From this smaller dimension on, the top r singular vectors are found by
#: subspace iteration (:func:`top_left_singular`, r at most an eighth of it): at
#: 4096 x 720 and r = 16 about 0.05 s against 0.9 s for the full SVD.
TOP_PARTIAL_MIN = 256
#: The range basis is accepted when ||L - Q Q^T L||_F <= this * ||L||_F.
RANGE_TOL = 1e-13
#: :func:`top_left_singular` accepts its Ritz triplets when every residual is at
#: most this * sigma_1 ...
TOP_RESIDUAL_TOL = 1e-12
#: ... and the gap sigma_r - sigma_{r+1} is at least this * sigma_1, so that the
#: subspace is within residual / gap <= 1e-9 of the exact one.
TOP_GAP_MIN = 1e-3
_TOP_MAX_SWEEPS = 20


def left_singular(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and all singular values of ``matrix``, decreasing.

    For a large matrix of low numerical rank (min dimension at least
    :data:`PARTIAL_SVD_MIN`), an orthonormal basis Q of its range is found from
    L Omega (Gaussian Omega, the width doubling from 32) and accepted when the
    exactly computed remainder ||L - Q Q^T L||_F is at most :data:`RANGE_TOL`
    ||L||_F; then L = Q (Q^T L) and the SVD of the small Q^T L gives the
    singular triplets. The singular values beyond the width of Q are returned
    as zeros (they are at most the remainder). Otherwise, or when the width
    would exceed a quarter of the dimension, a full thin SVD.

    Parameters
    ----------
    matrix : numpy.ndarray, shape (m, n)
        The matrix to decompose (the stacked updates or the low-rank part L).

    Returns
    -------
    u : numpy.ndarray, shape (m, k)
        Left singular vectors, k = min(m, n) (or the width of Q).
    singular_values : numpy.ndarray, shape (min(m, n),)
    """
    m, n = matrix.shape
    small = min(m, n)
    if small >= PARTIAL_SVD_MIN:
        norm = float(np.linalg.norm(matrix))
        rng = np.random.default_rng(small)
        width = 32
        while width <= small // 4:
            basis = np.linalg.qr(matrix @ rng.standard_normal((n, width)))[0]
            coeffs = basis.T @ matrix
            remainder = matrix - basis @ coeffs
            if float(np.linalg.norm(remainder)) <= RANGE_TOL * max(norm, 1e-300):
                u_small, sv_small, _ = np.linalg.svd(coeffs, full_matrices=False)
                sv = np.zeros(small)
                sv[: sv_small.size] = sv_small
                return basis @ u_small, sv
            width *= 2
    u, sv, _ = np.linalg.svd(matrix, full_matrices=False)
    return u, sv


def top_subspace(
    updates: np.ndarray | LowRankUpdates,
    rank: int,
    clients: np.ndarray | None = None,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """The top-r left singular vectors of the stack of (some) client updates.

    .. math:: \\hat A = \\text{top-}r \\text{ left singular vectors of }
              [\\Theta_k]_{k \\in C} \\in R^{p \\times |C| q}.

    Plain SVD + refinement uses all clients; the oracle subspace uses the benign
    set S. When sigma_r = sigma_{r+1} the subspace is not unique and the one
    LAPACK returns is used.

    Parameters
    ----------
    updates : numpy.ndarray of shape (K, p, q), or LowRankUpdates
        Theta_k. For factored updates Theta_k = s_k B_k A_k, with A_k^T = Q_k R_k
        (thin QR), M M^T = G G^T for G = [s_k B_k R_k^T] (p x sum_k r_k), so the
        SVD of G gives A^ without forming any p x q product.
    rank : int
        r, 0 <= r <= the number of singular vectors (``min(p, |C| q)``).
    clients : numpy.ndarray of bool, shape (K,), optional
        C, the clients stacked (default all).
    start : numpy.ndarray, shape (p, k), optional
        A subspace near the answer (A^ of step 2 when refitting on S^), which
        starts the subspace iteration of :func:`top_left_singular`: it then
        takes a few sweeps instead of about ten; the result is the same.

    Returns
    -------
    numpy.ndarray, shape (p, r)
        Orthonormal columns.
    """
    n_clients = updates.shape[0]
    if clients is None:
        members = np.arange(n_clients)
    else:
        clients = np.asarray(clients, dtype=bool)
        if clients.shape != (n_clients,):
            raise ValueError(
                f"clients must be a boolean mask of shape (K,) = ({n_clients},), "
                f"got shape {clients.shape}."
            )
        members = np.flatnonzero(clients)
        if members.size == 0:
            raise ValueError("clients selects no client; the stack would be empty.")
    if isinstance(updates, LowRankUpdates):
        matrix = np.hstack(
            [
                updates.scaling[k]
                * (updates.B[k] @ np.linalg.qr(updates.A[k].T, mode="r").T)
                for k in members
            ]
        )
    else:
        matrix = stack(np.asarray(updates)[members])
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer):
        raise TypeError(f"rank must be an int, got {rank!r}.")
    available = min(matrix.shape)
    if 0 <= rank <= available:
        u, _ = top_left_singular(matrix, rank, start)
        available = u.shape[1] if u.shape[1] < rank else available
    if not 0 <= rank <= available:
        raise ValueError(
            f"rank must be in [0, {available}] (the number of singular vectors of "
            f"a {matrix.shape[0]} x {matrix.shape[1]} stack), got {rank}."
        )
    return np.ascontiguousarray(u)


def top_left_singular(
    matrix: np.ndarray, rank: int, start: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The top-r left singular vectors and singular values of ``matrix``.

    For a matrix whose smaller dimension is at least :data:`TOP_PARTIAL_MIN` and
    r at most an eighth of it: block subspace iteration on M M^T (r + max(r,
    12) vectors) with a Rayleigh-Ritz step per sweep, W = M^T Q = P S G^T giving
    the Ritz triplets (Q G, S, P) with M^T (Q G) = P S exactly; they are
    accepted when every residual ||M p_j - (Q G)_j s_j|| of the top r is at
    most :data:`TOP_RESIDUAL_TOL` sigma_1 and the Ritz gap s_r - s_{r+1} is at
    least :data:`TOP_GAP_MIN` sigma_1 (the subspace then lies within residual /
    gap of the exact one). Two products with M per sweep instead of a full SVD
    (1600 x 1440, r = 8: about 0.1 s against 1.4 s). Otherwise, or without
    convergence, :func:`left_singular`.

    Parameters
    ----------
    matrix : numpy.ndarray, shape (m, n)
        M.
    rank : int
        r, 0 <= r <= min(m, n).
    start : numpy.ndarray, shape (m, k), optional
        Vectors near the top-r left singular subspace, the first k of the
        iteration's block (the rest random); ignored by the full SVD.

    Returns
    -------
    u : numpy.ndarray, shape (m, r)
        Orthonormal columns.
    singular_values : numpy.ndarray, shape (r,)
        Decreasing.
    """
    if min(matrix.shape) >= TOP_PARTIAL_MIN:
        found = top_left_partial(matrix, rank, start)
        if found is not None:
            return found
    u, sv = left_singular(matrix)
    return u[:, :rank], sv[:rank]


def top_left_partial(
    matrix: np.ndarray, rank: int, start: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """The subspace iteration of :func:`top_left_singular`, or None.

    Parameters
    ----------
    matrix : numpy.ndarray, shape (m, n)
        M.
    rank : int
        r.
    start : numpy.ndarray, shape (m, k), optional
        Start vectors (at most the block's width are used); the rest of the
        first block is M times random vectors.

    Returns
    -------
    tuple of numpy.ndarray, or None
        (U (m, r), sigma (r,)) when the iteration converged with a gap (see
        :func:`top_left_singular`); None when r is 0 or above min(m, n) / 8, or
        it did not.
    """
    m, n = matrix.shape
    if not 0 < rank <= min(m, n) // 8:
        return None
    width = rank + max(rank, 12)
    rng = np.random.default_rng(min(m, n))
    block = matrix @ rng.standard_normal((n, width))
    if start is not None and start.size:
        given = min(start.shape[1], width)
        block[:, :given] = start[:, :given]
    basis = np.linalg.qr(block)[0]
    for _ in range(_TOP_MAX_SWEEPS):
        right, values, g_t = np.linalg.svd(matrix.T @ basis, full_matrices=False)
        if values[0] == 0.0:
            return None
        left = basis @ g_t.T
        image = matrix @ right  # M P, m x b
        residual = image[:, :rank] - left[:, :rank] * values[:rank]
        res = np.sqrt(np.einsum("ij,ij->j", residual, residual))
        if np.all(res <= TOP_RESIDUAL_TOL * values[0]):
            if values[rank - 1] - values[rank] < TOP_GAP_MIN * values[0]:
                return None  # the top-r subspace is barely determined: full SVD
            return np.ascontiguousarray(left[:, :rank]), values[:rank]
        basis = np.linalg.qr(image)[0]
    return None


def off_subspace_energy(
    updates: np.ndarray | LowRankUpdates,
    subspace: np.ndarray,
    center: np.ndarray | None = None,
) -> np.ndarray:
    """E_k = ||P_A^perp (Theta_k - c)||_F^2 for every client.

    The projection is applied explicitly, R_k = X_k - A (A^T X_k) with X_k =
    Theta_k - c, rather than as ||X_k||_F^2 - ||A^T X_k||_F^2, so that an energy
    far below ||X_k||_F^2 keeps its relative accuracy (no cancellation).

    Parameters
    ----------
    updates : numpy.ndarray of shape (K, p, q), or LowRankUpdates
        Theta_k. For factored updates Theta_k = s_k B_k A_k, E_k = ||G_k A_k||_F^2
        with G_k = s_k P_A^perp B_k (p x r_k), computed as ||R_G R_A^T||_F^2 from
        the r_k x r_k triangular factors of G_k and A_k^T: no p x q product.
    subspace : numpy.ndarray, shape (p, r)
        A, orthonormal columns (r = 0 allowed: E_k = ||Theta_k - c||_F^2).
    center : numpy.ndarray, shape (p, q), optional
        c, subtracted first (dense updates only).

    Returns
    -------
    numpy.ndarray, shape (K,)
        E_k >= 0.
    """
    if isinstance(updates, LowRankUpdates):
        if center is not None:
            raise ValueError(
                "off_subspace_energy of LowRankUpdates takes no center; subtract it "
                "on the core of the factored decomposition instead."
            )
        out = np.empty(updates.n_clients)
        for k in range(updates.n_clients):
            b = updates.B[k]
            g = updates.scaling[k] * (b - subspace @ (subspace.T @ b))
            # ||G A||_F = ||R_G R_A^T||_F with the triangular factors of G and A^T
            rg = np.linalg.qr(g, mode="r")
            ra = np.linalg.qr(updates.A[k].T, mode="r")
            out[k] = float(np.sum((rg @ ra.T) ** 2))
        return out
    outside = off_subspace_residuals(updates, subspace, center)
    return np.einsum("kpq,kpq->k", outside, outside)


def off_subspace_residuals(
    updates: np.ndarray, subspace: np.ndarray, center: np.ndarray | None = None
) -> np.ndarray:
    """R_k = P_A^perp (Theta_k - c) = X_k - A (A^T X_k), X_k = Theta_k - c.

    Applied explicitly rather than as a difference of squared norms, so that a
    residual far below ||X_k|| keeps its relative accuracy (no cancellation).

    Parameters
    ----------
    updates : numpy.ndarray, shape (K, p, q)
        Theta_k (dense, or the core of factored updates).
    subspace : numpy.ndarray, shape (p, r)
        A, orthonormal columns (r = 0 allowed: R_k = Theta_k - c).
    center : numpy.ndarray, shape (p, q), optional
        c, subtracted first.

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        A new array.
    """
    centred = updates if center is None else updates - center
    # matmul broadcasts over the clients (faster than the einsum pair)
    return centred - subspace @ (subspace.T @ centred)

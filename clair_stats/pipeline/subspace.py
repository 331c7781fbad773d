"""Step 2 of CLAIR: the shared subspace A^ from the low-rank part L^ (SPEC §3)."""

from __future__ import annotations

import numpy as np

from clair_stats.core.results import Decomposition, FactoredDecomposition
from clair_stats.core.validation import stack

__all__ = ["estimate_subspace"]


def estimate_subspace(
    decomposition: Decomposition | FactoredDecomposition,
    rank: int | None = None,
    tol: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """A^ = the top-r left singular vectors of the stacked L^ (p x Kq).

    Parameters
    ----------
    decomposition : Decomposition or FactoredDecomposition
        The result of :func:`clair_stats.decompose`. For a factored one, L^ =
        Q X W^T blockwise, so A^ = Q A_c with A_c the top-r left singular
        vectors of the core's L (the singular values are the same).
    rank : int, optional
        r. Default: the numerical rank of L^, the number of singular values above
        ``tol * ||M||_F`` (for P1 these are the values that survived the
        thresholding; for P0 the tolerance absorbs the solver's accuracy).
    tol : float
        Relative tolerance of the numerical rank.

    Returns
    -------
    subspace : numpy.ndarray, shape (p, r)
        A^ with orthonormal columns.
    singular_values : numpy.ndarray
        All singular values of L^, decreasing (for diagnostics). For a large L^
        of low rank (min dimension >= 800) only those on an exactly verified
        range basis are computed; the others are returned as zeros (they are at
        most 1e-13 ||L^||_F).
    """
    if isinstance(decomposition, FactoredDecomposition):
        r_core, n_core = decomposition.core_shape
        if rank is not None and not isinstance(rank, bool) and rank > r_core:
            # the core has R rows: L^ has at most R nonzero singular values
            raise ValueError(
                f"rank must be between 1 and {min(r_core, n_core)}, the rank of the "
                f"core of the factored updates (R = {r_core} <= sum_k r_k); got "
                f"{rank}. L^ has no more nonzero singular values than that."
            )
        core_subspace, sv = estimate_subspace(decomposition.core, rank=rank, tol=tol)
        return decomposition.basis @ core_subspace, sv
    low_rank = stack(decomposition.low_rank)
    u, sv = _left_singular(low_rank)
    max_rank = sv.size
    if rank is None:
        rank = int(np.sum(sv > tol * decomposition.data_norm))
    elif isinstance(rank, bool) or not isinstance(rank, int | np.integer):
        raise TypeError(f"rank must be an int or None, got {rank!r}.")
    elif not 1 <= rank <= max_rank:
        raise ValueError(
            f"rank must be between 1 and min(p, Kq) = {max_rank}, got {rank}."
        )
    return u[:, :rank], sv


#: From this smaller dimension on, a low-rank L^ is decomposed on its range only.
PARTIAL_SVD_MIN = 800
#: The range basis is accepted when ||L - Q Q^T L||_F <= this * ||L||_F.
RANGE_TOL = 1e-13


def _left_singular(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and all singular values of ``matrix``, decreasing.

    For a large matrix of low numerical rank (min dimension at least
    :data:`PARTIAL_SVD_MIN`), an orthonormal basis Q of its range is found from
    L Omega (Gaussian Omega, the width doubling from 32) and accepted when the
    exactly computed remainder ||L - Q Q^T L||_F is at most :data:`RANGE_TOL`
    ||L||_F; then L = Q (Q^T L) and the SVD of the small Q^T L gives the
    singular triplets. The singular values beyond the width of Q are returned
    as zeros (they are at most the remainder). Otherwise, or when the width
    would exceed a quarter of the dimension, a full thin SVD.
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

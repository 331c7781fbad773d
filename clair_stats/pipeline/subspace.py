"""Step 2 of CLAIR: the shared subspace A^ from L^ (docs/pipeline.md §3.2)."""

from __future__ import annotations

import numpy as np

from clair_stats.core.linalg import left_singular, stack
from clair_stats.core.results import Decomposition, FactoredDecomposition

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
    u, sv = left_singular(low_rank)
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

"""Step 3 of CLAIR: the collaborative set S^ (docs/pipeline.md §3.3).

``support``: S^ = {k : ||S^_k||_F <= tol ||M||_F}, for noiseless data.

``test``: under "client k is benign" with iid N(0, sigma_k^2) estimation error,
T_k = ||P_A^perp (Theta^_k - c)||_F^2 / sigma_k^2 ~ chi^2 with (p - r) q degrees of
freedom; the p-values are corrected for K tests by Holm (family-wise error) or
Benjamini-Hochberg (false discovery rate), and S^ is the set not rejected.
sigma_k^2 is given, or estimated robustly as median_k ||P_A^perp (Theta^_k -
c)||_F^2 / median(chi^2_{(p-r)q}), valid while fewer than half of the clients are
contaminated. With a regression design the estimation error has covariance
sigma^2 (I_q kron (X_k^T X_k)^{-1}), and the chi-square law holds approximately
with sigma_k^2 = sigma^2 tr((X_k^T X_k)^{-1}) / p (exactly when X_k^T X_k is a
multiple of I).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clair_stats.core.linalg import off_subspace_energy
from clair_stats.core.validation import check_alpha, check_choice, check_noise_levels
from clair_stats.pipeline.multitest import METHODS, reject

__all__ = ["ChiSquareTest", "chi_square_test", "energy_test"]


@dataclass(frozen=True)
class ChiSquareTest:
    """The per-client test of step 3 (docs/pipeline.md §3.3.2).

    Attributes
    ----------
    statistics : numpy.ndarray, shape (K,)
        T_k.
    p_values : numpy.ndarray, shape (K,)
        P(chi^2_df >= T_k), uncorrected.
    adjusted_p_values : numpy.ndarray, shape (K,)
        After the multiple-testing correction.
    rejected : numpy.ndarray of bool, shape (K,)
        Clients flagged as contaminated at level ``alpha``.
    df : int
        (p - r) q.
    noise_variance : numpy.ndarray, shape (K,)
        sigma_k^2 used in T_k.
    estimated_noise : bool
        Whether sigma^2 was estimated from the statistics (median rule).
    """

    statistics: np.ndarray
    p_values: np.ndarray
    adjusted_p_values: np.ndarray
    rejected: np.ndarray
    df: int
    noise_variance: np.ndarray
    estimated_noise: bool


def _check_level(alpha: object, correction: object) -> None:
    """Raise unless alpha is in (0, 1) and correction is a known method."""
    check_choice(correction, "correction", METHODS)
    check_alpha(alpha)


def chi_square_test(
    updates: np.ndarray,
    subspace: np.ndarray,
    center: np.ndarray | None = None,
    sigma: float | np.ndarray | None = None,
    alpha: float = 0.05,
    correction: str = "holm",
) -> ChiSquareTest:
    """Test each client for contamination by its off-subspace energy.

    Parameters
    ----------
    updates : numpy.ndarray, shape (K, p, q)
        Theta^_k.
    subspace : numpy.ndarray, shape (p, r)
        A^ (orthonormal columns), r < p.
    center : numpy.ndarray, shape (p, q), optional
        c^, subtracted before projecting.
    sigma : float or numpy.ndarray of shape (K,), optional
        Per-entry noise standard deviation sigma (or sigma_k per client).
        Default: estimated by the median rule.
    alpha : float
        Level of the corrected test, in (0, 1).
    correction : {"holm", "fdr_bh", "bonferroni"}
        Multiple-testing correction (:mod:`clair_stats.pipeline.multitest`).

    Returns
    -------
    ChiSquareTest
    """
    _check_level(alpha, correction)
    n_clients, p, q = updates.shape
    r = subspace.shape[1]
    if r >= p:
        raise ValueError(
            f"the test needs r < p (an off-subspace complement); got r = {r}, p = {p}."
        )
    energy = off_subspace_energy(updates, subspace, center)
    return energy_test(
        energy,
        (p - r) * q,
        sigma=sigma,
        alpha=alpha,
        correction=correction,
    )


def energy_test(
    energy: np.ndarray,
    df: int,
    sigma: float | np.ndarray | None = None,
    alpha: float = 0.05,
    correction: str = "holm",
) -> ChiSquareTest:
    """The test of :func:`chi_square_test` from the off-subspace energies.

    T_k = E_k / sigma_k^2 with E_k = ||P_A^perp (Theta^_k - c)||_F^2, compared
    with chi^2_df, df = (p - r) q; without ``sigma``, sigma^2 = median_k E_k /
    median(chi^2_df). Used directly by the factored path, which computes E_k on
    a small core but must keep the degrees of freedom of the full p x q blocks.

    Parameters
    ----------
    energy : numpy.ndarray, shape (K,)
        E_k >= 0.
    df : int
        (p - r) q, with the p and q of the original updates.
    sigma, alpha, correction
        As in :func:`chi_square_test`.

    Returns
    -------
    ChiSquareTest
    """
    # imported here: scipy.stats is most of the import time of clair_stats
    import scipy.stats

    _check_level(alpha, correction)
    energy = np.asarray(energy, dtype=float)
    n_clients = energy.size
    if sigma is None:
        variance = np.full(n_clients, np.median(energy) / scipy.stats.chi2.median(df))
        estimated = True
    else:
        variance = check_noise_levels(sigma, n_clients) ** 2
        estimated = False
    if np.any(variance <= 0):
        raise ValueError(
            "the estimated noise variance is 0 (the updates lie in the subspace "
            "exactly): use detect='support' for noiseless data, or pass sigma."
        )
    statistics = energy / variance
    p_values = scipy.stats.chi2.sf(statistics, df)
    rejected, adjusted = reject(p_values, alpha, correction)
    return ChiSquareTest(
        statistics=statistics,
        p_values=p_values,
        adjusted_p_values=adjusted,
        rejected=np.asarray(rejected, dtype=bool),
        df=df,
        noise_variance=np.asarray(variance, dtype=float),
        estimated_noise=estimated,
    )

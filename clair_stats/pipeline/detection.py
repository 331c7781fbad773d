"""Step 3 of CLAIR: the collaborative set S^ (docs/pipeline.md §3.3).

``support``: S^ = {k : ||S^_k||_F <= tol ||M||_F}, for noiseless data.

``test``: client k is tested by its off-subspace energy E_k = ||P_A^perp
(Theta^_k - c)||_F^2; the K p-values are corrected by Holm (family-wise error),
Benjamini-Hochberg (false discovery rate) or Bonferroni, and S^ is the set not
rejected. Three laws of E_k under "client k is benign" (docs/pipeline.md §3.3.2):

- ``"chi2"``: iid N(0, sigma_k^2) errors, T_k = E_k / sigma_k^2 ~ chi^2 with
  (p - r) q degrees of freedom; sigma_k given, or estimated by the median rule
  sigma^2 = median_k E_k / median(chi^2_{(p-r)q}) (breakdown point 1/2: valid
  while fewer than half of the clients are contaminated).
- ``"weighted_chi2"``: the error of Theta^_k has columns iid N(0, C_k) (the OLS
  error has C_k = sigma^2 (X_k^T X_k)^{-1}), so E_k = sum_j lambda_kj
  chi^2_q with lambda_kj the eigenvalues of P_A^perp C_k P_A^perp; when C_k
  holds sigma^2 estimated with nu_k residual degrees of freedom, the p-value is
  that of the ratio P(sum_j lambda_kj chi^2_q / (chi^2_nu / nu) > E_k). Both
  by numerical inversion of the characteristic function
  (:mod:`clair_stats.pipeline.weighted_chi2`).
- ``"empirical"``: no noise level at all; log E_k against the other clients'
  median and MAD, with the exact law of that score under "benign log energies
  are iid normal" (:mod:`clair_stats.pipeline.empirical_null`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clair_stats.core.linalg import off_subspace_energy
from clair_stats.core.validation import (
    check_alpha,
    check_choice,
    check_noise_cov,
    check_noise_df,
    check_noise_levels,
)
from clair_stats.pipeline.multitest import METHODS, reject

__all__ = [
    "TESTS",
    "ClientTest",
    "chi_square_test",
    "empirical_energy_test",
    "energy_test",
    "median_rule",
    "weighted_energy_test",
]

#: The laws of the off-subspace energies, by name.
TESTS: tuple[str, ...] = ("chi2", "weighted_chi2", "empirical")


@dataclass(frozen=True)
class ClientTest:
    """The per-client test of step 3 (docs/pipeline.md §3.3.2).

    Parameters
    ----------
    method : {"chi2", "weighted_chi2", "empirical"}
        The law of E_k under the null (module docstring).
    statistics : numpy.ndarray, shape (K,)
        ``"chi2"``: T_k = E_k / sigma_k^2. ``"weighted_chi2"``: T_k = E_k /
        E_0[E_k], the energy over its null mean q tr(P_A^perp C_k)
        (``noise_df``: with the estimated C_k). ``"empirical"``: the robust
        z-score of log E_k. Scale-free in every case.
    p_values : numpy.ndarray, shape (K,)
        Uncorrected, one-sided (large energies are evidence of contamination).
    adjusted_p_values : numpy.ndarray, shape (K,)
        After the multiple-testing correction.
    rejected : numpy.ndarray of bool, shape (K,)
        Clients flagged as contaminated at level ``alpha``.
    alpha : float
        The level of the test, in (0, 1): family-wise error for ``"holm"`` and
        ``"bonferroni"``, false discovery rate for ``"fdr_bh"``.
    correction : str
        The multiple-testing correction over the K clients: ``"holm"``,
        ``"fdr_bh"`` or ``"bonferroni"`` (:mod:`clair_stats.pipeline.multitest`).
    df : int or None
        (p - r) q for the chi-square laws; None for ``"empirical"``.
    noise_sd : numpy.ndarray of shape (K,), or None
        sigma_k used (``"weighted_chi2"``: sqrt(tr C_k / p)), in the units of
        the updates; None for ``"empirical"``.
    estimated_noise : bool
        sigma was estimated from the energies (median rule).
    noise_df : numpy.ndarray of shape (K,), or None
        nu_k of the ratio law (``"weighted_chi2"`` with an estimated C_k).
    """

    method: str
    statistics: np.ndarray = field(repr=False)
    p_values: np.ndarray = field(repr=False)
    adjusted_p_values: np.ndarray = field(repr=False)
    rejected: np.ndarray = field(repr=False)
    alpha: float
    correction: str
    df: int | None
    noise_sd: np.ndarray | None = field(repr=False)
    estimated_noise: bool
    noise_df: np.ndarray | None = field(default=None, repr=False)

    def describe(self) -> str:
        """One line: the law, the noise level and the correction."""
        if self.method == "empirical":
            law = (
                "empirical null (log E_k against the others' median and MAD, "
                "exact law; no noise level)"
            )
        elif self.method == "chi2":
            how = "estimated (median rule)" if self.estimated_noise else "given"
            law = f"chi^2 with {self.df} df, noise level {how}"
        else:
            law = f"weighted chi^2 ({self.df} terms) from noise_cov"
            if self.noise_df is not None:
                law += ", ratio to chi^2_nu / nu (noise_df)"
        return f"{law}; {self.correction} at alpha = {self.alpha:g}"


def _check_level(alpha: object, correction: object) -> float:
    """alpha in (0, 1) and a known correction, or raise."""
    check_choice(correction, "correction", METHODS)
    return check_alpha(alpha)


def _energies(energy: object) -> np.ndarray:
    """E_k as a float64 array of shape (K,): finite and >= 0, or raise."""
    e = np.asarray(energy, dtype=np.float64)
    if e.ndim != 1 or e.size == 0:
        raise ValueError(f"energy must have shape (K,), got {e.shape}.")
    if not np.all(np.isfinite(e)) or np.any(e < 0):
        raise ValueError(
            "the off-subspace energies must be finite and >= 0; got "
            f"{e[~(np.isfinite(e) & (e >= 0))][:3].tolist()}. Check the updates "
            "for NaN or inf."
        )
    return e


def median_rule(energy: np.ndarray, df: int) -> float:
    """sigma^2 = median_k E_k / median(chi^2_df), robust to fewer than K/2 outliers.

    Parameters
    ----------
    energy : numpy.ndarray, shape (K,)
        E_k >= 0.
    df : int
        (p - r) q.

    Returns
    -------
    float
        The per-entry noise variance sigma^2 (0 when half of the E_k are 0).
    """
    import scipy.stats

    return float(np.median(_energies(energy)) / scipy.stats.chi2.median(df))


def _finish(
    method: str,
    statistics: np.ndarray,
    p_values: np.ndarray,
    alpha: float,
    correction: str,
    **fields,
) -> ClientTest:
    p_values = np.clip(np.asarray(p_values, dtype=float), 0.0, 1.0)
    rejected, adjusted = reject(p_values, alpha, correction)
    return ClientTest(
        method=method,
        statistics=np.asarray(statistics, dtype=float),
        p_values=p_values,
        adjusted_p_values=adjusted,
        rejected=np.asarray(rejected, dtype=bool),
        alpha=float(alpha),
        correction=correction,
        **fields,
    )


def energy_test(
    energy: np.ndarray,
    df: int,
    sigma: float | np.ndarray | None = None,
    alpha: float = 0.05,
    correction: str = "holm",
) -> ClientTest:
    """The chi-square test from the off-subspace energies.

    T_k = E_k / sigma_k^2 with E_k = ||P_A^perp (Theta^_k - c)||_F^2, compared
    with chi^2_df, df = (p - r) q; without ``sigma``, sigma^2 is the median rule.
    Used directly by the factored path, which computes E_k on a small core but
    keeps the degrees of freedom of the full p x q blocks.

    Parameters
    ----------
    energy : numpy.ndarray, shape (K,)
        E_k >= 0.
    df : int
        (p - r) q, with the p and q of the original updates.
    sigma : float or numpy.ndarray of shape (K,), optional
        Per-entry noise standard deviation sigma (or sigma_k per client), in the
        units of the updates whose energies are given. Default: the median rule.
    alpha : float
        Level of the corrected test, in (0, 1).
    correction : {"holm", "fdr_bh", "bonferroni"}
        Multiple-testing correction (:mod:`clair_stats.pipeline.multitest`).

    Returns
    -------
    ClientTest
    """
    import scipy.stats

    alpha = _check_level(alpha, correction)
    energy = _energies(energy)
    n_clients = energy.size
    if sigma is None:
        sd = np.full(n_clients, np.sqrt(median_rule(energy, df)))
        if sd[0] == 0:
            raise ValueError(
                "the estimated noise level is 0: more than half of the updates lie "
                "in the subspace exactly. The data are noiseless: use "
                "detect='support' (detect='auto' does), or give the noise level."
            )
    else:
        sd = check_noise_levels(sigma, n_clients)
    # (sqrt(E) / sigma)^2: no underflow of sigma^2 for a tiny sigma
    with np.errstate(over="ignore"):
        statistics = (np.sqrt(energy) / sd) ** 2
    return _finish(
        "chi2",
        statistics,
        scipy.stats.chi2.sf(statistics, df),
        alpha,
        correction,
        df=int(df),
        noise_sd=sd,
        estimated_noise=sigma is None,
    )


def weighted_energy_test(
    energy: np.ndarray,
    eigenvalues: np.ndarray,
    multiplicity: int,
    noise_df: float | np.ndarray | None = None,
    alpha: float = 0.05,
    correction: str = "holm",
) -> ClientTest:
    """The exact test of the energies when the error covariance is known.

    With lambda_kj the eigenvalues of P_A^perp C_k P_A^perp, C_k the covariance
    of each column of Theta^_k - Theta_k (in the units of the energies),

    .. math:: p_k = P\\Big(\\sum_j \\lambda_{kj} \\chi^2_{q, j} > E_k\\Big)
              \\quad\\text{or, with } \\nu_k \\text{ (noise\\_df)},\\quad
              p_k = P\\Big(\\frac{\\sum_j \\lambda_{kj} \\chi^2_{q, j}}
              {\\chi^2_{\\nu_k} / \\nu_k} > E_k\\Big),

    the second when C_k = sigma^_k^2 G_k holds a variance estimated with nu_k
    residual degrees of freedom, independent of Theta^_k (OLS:
    nu_k = q (n_k - p)).

    Parameters
    ----------
    energy : numpy.ndarray, shape (K,)
        E_k >= 0.
    eigenvalues : numpy.ndarray, shape (K, p - r)
        lambda_kj >= 0, the eigenvalues of P_A^perp C_k P_A^perp
        (:func:`clair_stats.pipeline.weighted_chi2.projected_eigenvalues`).
    multiplicity : int
        q, the number of iid columns.
    noise_df : float or numpy.ndarray of shape (K,), optional
        nu_k.
    alpha, correction
        As in :func:`energy_test`.

    Returns
    -------
    ClientTest
    """
    from clair_stats.pipeline.weighted_chi2 import energy_sf

    alpha = _check_level(alpha, correction)
    energy = _energies(energy)
    lam = np.asarray(eigenvalues, dtype=float)
    n_clients = energy.size
    if lam.ndim != 2 or lam.shape[0] != n_clients:
        raise ValueError(
            f"eigenvalues must have shape (K, p - r) = ({n_clients}, ...), got "
            f"{lam.shape}."
        )
    nu = None if noise_df is None else check_noise_df(noise_df, n_clients)
    mean = multiplicity * lam.sum(axis=1)
    if np.any(mean <= 0):
        bad = np.flatnonzero(mean <= 0).tolist()
        raise ValueError(
            f"client(s) {bad} have no noise outside the subspace "
            "(tr(P_A^perp C_k) = 0); the test needs a positive definite noise_cov."
        )
    p_values = energy_sf(energy, lam, multiplicity, noise_df=nu)
    return _finish(
        "weighted_chi2",
        energy / mean,
        p_values,
        alpha,
        correction,
        df=int(lam.shape[1] * multiplicity),
        noise_sd=None,
        estimated_noise=False,
        noise_df=nu,
    )


def empirical_energy_test(
    energy: np.ndarray, alpha: float = 0.05, correction: str = "holm"
) -> ClientTest:
    """The empirical-null test of the energies: no noise level needed.

    z_k = (log E_k - med_{j != k} log E_j) / (1.4826 MAD_{j != k} log E_j), with
    p_k from the exact law of z_k under "benign log energies are iid normal"
    (:func:`clair_stats.pipeline.empirical_null.energy_p_values`; K >= 3).

    Parameters
    ----------
    energy : numpy.ndarray, shape (K,)
        E_k > 0.
    alpha, correction
        As in :func:`energy_test`.

    Returns
    -------
    ClientTest
    """
    # imported here: scipy.stats is most of the import time of clair_stats
    from clair_stats.pipeline.empirical_null import energy_p_values

    alpha = _check_level(alpha, correction)
    z, p_values = energy_p_values(_energies(energy))
    return _finish(
        "empirical",
        z,
        p_values,
        alpha,
        correction,
        df=None,
        noise_sd=None,
        estimated_noise=False,
    )


def chi_square_test(
    updates: np.ndarray,
    subspace: np.ndarray,
    center: np.ndarray | None = None,
    sigma: float | np.ndarray | None = None,
    alpha: float = 0.05,
    correction: str = "holm",
    *,
    noise_cov: np.ndarray | None = None,
    noise_df: float | np.ndarray | None = None,
) -> ClientTest:
    """Test each client for contamination by its off-subspace energy.

    Parameters
    ----------
    updates : numpy.ndarray, shape (K, p, q)
        Theta^_k.
    subspace : numpy.ndarray, shape (p, r)
        A (orthonormal columns), r < p.
    center : numpy.ndarray, shape (p, q), optional
        c, subtracted before projecting.
    sigma : float or numpy.ndarray of shape (K,), optional
        Per-entry noise standard deviation (chi-square law). Default: the median
        rule, unless ``noise_cov`` is given.
    alpha : float
        Level of the corrected test, in (0, 1).
    correction : {"holm", "fdr_bh", "bonferroni"}
        Multiple-testing correction (:mod:`clair_stats.pipeline.multitest`).
    noise_cov : numpy.ndarray of shape (p, p) or (K, p, p), optional
        C_k, the covariance of each column of Theta^_k - Theta_k: the exact
        weighted chi-square test (:func:`weighted_energy_test`).
    noise_df : float or numpy.ndarray of shape (K,), optional
        nu_k when C_k holds an estimated variance (the ratio law).

    Returns
    -------
    ClientTest
    """
    _check_level(alpha, correction)
    n_clients, p, q = updates.shape
    r = subspace.shape[1]
    if r >= p:
        raise ValueError(
            f"the test needs r < p (an off-subspace complement); got r = {r}, p = {p}."
        )
    energy = off_subspace_energy(updates, subspace, center)
    if noise_cov is not None:
        from clair_stats.pipeline.weighted_chi2 import projected_eigenvalues

        if sigma is not None:
            raise ValueError("pass sigma or noise_cov, not both.")
        cov = check_noise_cov(noise_cov, n_clients, p)
        return weighted_energy_test(
            energy,
            projected_eigenvalues(cov, subspace),
            q,
            noise_df=noise_df,
            alpha=alpha,
            correction=correction,
        )
    if noise_df is not None:
        raise ValueError("noise_df applies with noise_cov only.")
    return energy_test(
        energy, (p - r) * q, sigma=sigma, alpha=alpha, correction=correction
    )

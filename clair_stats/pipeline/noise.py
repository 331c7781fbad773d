"""The noise level of the client updates: given, from a covariance, or estimated.

:func:`~clair_stats.clair` needs a noise level twice (docs/pipeline.md §3.5): for
the penalty mu of P1 and for the test of step 3. This module holds what both
roles share:

- :class:`GivenNoise`, the user's ``sigma`` or ``noise_cov`` (and ``noise_df``),
  checked, with the per-entry standard deviation sigma_k that each implies
  (sigma_k^2 = tr(C_k) / p for a covariance);
- :func:`noise_norm`, the operator-norm scale of the noise on M,
  mu = max_k sigma_k sqrt(p) + (mean_k sigma_k^2)^{1/2} sqrt(Kq)
  (sigma (sqrt(p) + sqrt(Kq)) for one sigma: the norm of a p x Kq matrix of iid
  N(0, sigma^2) entries);
- :func:`noiseless_threshold` and :class:`NoiseLevel`, the scale-free rule that
  tells noiseless data from noisy data: with A^ and the centre c^,

  .. math:: \\rho = \\frac{\\operatorname{med}_k \\|P_{\\hat A}^\\perp
            (\\hat\\Theta_k - \\hat c)\\|_F^2}
            {\\operatorname{med}_k \\|\\hat\\Theta_k - \\hat c\\|_F^2},

  the share of the typical client's energy outside the subspace; the data are
  noiseless when rho <= rho_0 = max(1e-12, (10 tol)^2), tol the solver's
  relative accuracy (default 1e-7). Measured on noiseless instances of 30
  designs (p 20-80, q 1-10, K 20-100, with and without a centre): rho <= 9e-15;
  with iid noise of sd 1e-6 times the signal's, rho >= 8e-12.

The estimate itself (docs/pipeline.md §3.5): the median rule sigma^2 = med_k E_k
/ median(chi^2_{(p - r) q}) at a subspace that needs no noise level (the top-r
left singular vectors of P0's L^; r its numerical rank when not given), then
re-estimated at the subspace of P1 until it moves by less than 10%. Its
breakdown point is 1/2: fewer than half of the clients may be contaminated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clair_stats.core.validation import (
    check_noise_cov,
    check_noise_df,
    check_noise_levels,
)

__all__ = [
    "GivenNoise",
    "NoiseLevel",
    "noise_norm",
    "noiseless_threshold",
    "optimal_threshold",
]

#: The smallest rho_0 of the noiseless rule, whatever the solver's tol.
MIN_NOISELESS_RHO = 1e-12


def noiseless_threshold(tol: float) -> float:
    """rho_0 = max(1e-12, (10 tol)^2): below it the data count as noiseless.

    Parameters
    ----------
    tol : float
        The relative accuracy of the solver of step 1 (1e-7 by default).

    Returns
    -------
    float
        rho_0, the largest share of energy outside span(A^) of noiseless data.
    """
    return max(MIN_NOISELESS_RHO, (10.0 * tol) ** 2)


def noise_norm(sd: np.ndarray, p: int, n_clients: int, q: int) -> float:
    """mu = max_k sigma_k sqrt(p) + (mean_k sigma_k^2)^{1/2} sqrt(Kq).

    The operator norm of the p x Kq noise matrix with independent entries of
    standard deviation sigma_k in block k is at most about this (for one sigma,
    sigma (sqrt(p) + sqrt(Kq)), the edge of the Marchenko-Pastur law).

    Parameters
    ----------
    sd : array_like, shape (K,)
        The per-entry noise standard deviations sigma_k >= 0, in the units of
        the updates.
    p : int
        The number of rows of each update.
    n_clients : int
        K, the number of clients.
    q : int
        The number of columns of each update.

    Returns
    -------
    float
        mu, in the units of the updates (0 when every sigma_k is 0).
    """
    sd = np.asarray(sd, dtype=float)
    peak = float(np.max(sd))
    if peak == 0:
        return 0.0
    rms = peak * float(np.sqrt(np.mean((sd / peak) ** 2)))  # no overflow at 1e300
    return peak * float(np.sqrt(p)) + rms * float(np.sqrt(n_clients * q))


def optimal_threshold(shape: tuple[int, int], sd: float) -> float:
    r"""Gavish-Donoho's optimal hard threshold of singular values, noise sd known.

    For an m x n matrix (m <= n) of signal plus iid N(0, sd^2) noise, keep the
    singular values above lambda*(beta) sqrt(n) sd, beta = m / n,

    .. math:: \lambda^*(\beta) = \Big(2(\beta + 1) + \frac{8\beta}{\beta + 1
              + \sqrt{\beta^2 + 14\beta + 1}}\Big)^{1/2},

    the threshold with the least asymptotic squared error of the low-rank
    estimate; 1.15-1.4 times the noise edge sd (sqrt(m) + sqrt(n)), so noise
    directions fall below it with high probability.

    Parameters
    ----------
    shape : tuple of int
        (m, n), the shape of the matrix (in either order).
    sd : float
        The standard deviation of the iid noise entries, in the units of the
        matrix.

    Returns
    -------
    float
        The threshold lambda*(beta) sqrt(n) sd on the singular values.

    References
    ----------
    Gavish, Donoho (2014). The optimal hard threshold for singular values is
    4/sqrt(3). IEEE Transactions on Information Theory 60(8), 5040-5053.
    """
    m, n = sorted(shape)
    beta = m / n
    lam = np.sqrt(
        2 * (beta + 1) + 8 * beta / (beta + 1 + np.sqrt(beta**2 + 14 * beta + 1))
    )
    return float(lam * np.sqrt(n) * sd)


@dataclass(frozen=True)
class GivenNoise:
    """The noise level the caller gave: ``sigma``, or ``noise_cov`` (+ ``noise_df``).

    Parameters
    ----------
    sd : numpy.ndarray of shape (K,), or None
        sigma_k: ``sigma``, or sqrt(tr(C_k) / p) for ``noise_cov``; None when
        neither was given.
    cov : numpy.ndarray of shape (K, p, p), or None
        C_k.
    df : numpy.ndarray of shape (K,), or None
        nu_k.
    """

    sd: np.ndarray | None = field(repr=False)
    cov: np.ndarray | None = field(repr=False)
    df: np.ndarray | None = field(repr=False)

    @classmethod
    def checked(
        cls,
        sigma: object,
        noise_cov: object,
        noise_df: object,
        n_clients: int,
        p: int,
    ) -> GivenNoise:
        """Validate the three arguments of :func:`clair_stats.clair`.

        At most one of ``sigma`` and ``noise_cov`` may be given, and
        ``noise_df`` only with ``noise_cov`` (a ``ValueError`` otherwise).

        Parameters
        ----------
        sigma : float or array_like of shape (K,), or None
            The noise standard deviation of every entry, one for all clients or
            one per client (see
            :func:`~clair_stats.core.validation.check_noise_levels`).
        noise_cov : array_like of shape (p, p) or (K, p, p), or None
            The covariance C_k of each column of Theta^_k - Theta_k (see
            :func:`~clair_stats.core.validation.check_noise_cov`).
        noise_df : float or array_like of shape (K,), or None
            nu_k, the residual degrees of freedom of an estimated ``noise_cov``.
        n_clients : int
            K, the number of clients.
        p : int
            The number of rows of each update (the side of C_k).

        Returns
        -------
        GivenNoise
            The checked noise level; all fields None when neither ``sigma`` nor
            ``noise_cov`` was given.
        """
        if sigma is not None and noise_cov is not None:
            raise ValueError(
                "pass sigma (iid noise of sd sigma_k) or noise_cov (the covariance "
                "of each column of Theta^_k), not both."
            )
        if noise_df is not None and noise_cov is None:
            raise ValueError(
                "noise_df (residual degrees of freedom of an estimated noise "
                "variance) applies with noise_cov only."
            )
        if noise_cov is not None:
            cov = check_noise_cov(noise_cov, n_clients, p)
            df = None if noise_df is None else check_noise_df(noise_df, n_clients)
            sd = np.sqrt(np.trace(cov, axis1=1, axis2=2) / p)
            return cls(sd=sd, cov=cov, df=df)
        if sigma is not None:
            return cls(sd=check_noise_levels(sigma, n_clients), cov=None, df=None)
        return cls(sd=None, cov=None, df=None)

    @property
    def source(self) -> str | None:
        """``"noise_cov"``, ``"sigma"`` or None."""
        if self.cov is not None:
            return "noise_cov"
        return None if self.sd is None else "sigma"


@dataclass(frozen=True)
class NoiseLevel:
    """The noise level :func:`clair_stats.clair` used, and the noiseless rule.

    Parameters
    ----------
    sd : numpy.ndarray, shape (K,)
        Per-entry standard deviation sigma_k in the units of the updates: given
        (``sigma``), sqrt(tr(C_k) / p) (``noise_cov``), or the median rule at
        A^ (``estimated``; all equal).
    source : {"sigma", "noise_cov", "estimated"}
        Where ``sd`` came from: the caller's ``sigma`` or ``noise_cov``, or the
        median rule.
    relative_energy : float
        rho, the share of the typical client's energy outside span(A^)
        (module docstring).
    threshold : float
        rho_0 of the noiseless rule.
    """

    sd: np.ndarray = field(repr=False)
    source: str
    relative_energy: float
    threshold: float

    @property
    def noiseless(self) -> bool:
        """rho <= rho_0: the updates lie in span(A^) up to the solver's accuracy."""
        return self.relative_energy <= self.threshold

    def describe(self) -> str:
        """One line for :meth:`clair_stats.ClairResult.summary`."""
        how = {
            "sigma": "given (sigma)",
            "noise_cov": "from noise_cov (sqrt(tr C_k / p))",
            "estimated": "estimated (median rule)",
        }[self.source]
        med = float(np.median(self.sd))
        state = "noiseless" if self.noiseless else "noisy"
        return (
            f"noise sd {med:.4g} (median over clients), {how}; share of energy "
            f"outside span(A^) rho = {self.relative_energy:.3g} ({state}: rho_0 = "
            f"{self.threshold:.0e})"
        )

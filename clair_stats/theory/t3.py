r"""T3, consistent detection (docs/claims.md §4.4): separation ratio, power of the test.

With the regression generator (docs/model.md §2.3 (b)), OLS fits on n samples, noise
level sigma, and a contaminated client at separation margin :math:`\delta_k =
\|P_A^\perp(\Theta_k - \Theta_0)\|_F`, the separation ratio is

.. math::

    \rho = \frac{\delta_{\min}}{\sigma \sqrt{(p - r) q / n}},

the margin in units of the typical off-subspace noise of one local fit. T3 [1]_ states
that with :math:`\delta_{\min}` fixed and :math:`n \to \infty`,
:math:`P(\hat S = S) \to 1`. :func:`predicted_power` gives the power of the
chi-square test of step 3 (docs/pipeline.md §3.3.2) at known A as a function of rho, and
:func:`ratio_threshold` the ratio above which the test detects a contaminated
client with a given probability: the explicit separation condition the paper
leaves unquantified.

References
----------
.. [1] He, Chen, Feng, "Federated LoRA fine-tuning for LLMs via collaborative
   alignment", arXiv:2605.21217, 2026.
"""

from __future__ import annotations

import math

import scipy.stats
from scipy.optimize import brentq

from clair_stats.core.validation import (
    check_alpha,
    check_dims,
    check_fraction,
    check_int,
    check_nonnegative,
    check_positive,
)

__all__ = [
    "margin_for_ratio",
    "predicted_power",
    "ratio_threshold",
    "separation_ratio",
]


def separation_ratio(
    delta: float, sigma: float, p: int, q: int, r: int, n: int
) -> float:
    r"""The separation ratio :math:`\delta / (\sigma \sqrt{(p - r) q / n})` of T3.

    Parameters
    ----------
    delta : float
        Separation margin delta_min >= 0.
    sigma : float
        Noise standard deviation of the regression errors, > 0.
    p, q, r : int
        Shape of Theta_k and rank of span(A), 1 <= r < p.
    n : int
        Samples per client.

    Returns
    -------
    float
        rho.
    """
    p, q, r = check_dims(p, q, r)
    n = check_int(n, "n", 1)
    delta = check_nonnegative(delta, "delta")
    sigma = check_positive(sigma, "sigma")
    return delta / (sigma * math.sqrt((p - r) * q / n))


def margin_for_ratio(
    ratio: float, sigma: float, p: int, q: int, r: int, n: int
) -> float:
    r"""The margin delta whose separation ratio is ``ratio`` (inverse of
    :func:`separation_ratio`): :math:`\delta = \rho \sigma \sqrt{(p - r) q / n}`.

    Parameters
    ----------
    ratio : float
        rho >= 0.
    sigma, p, q, r, n
        As in :func:`separation_ratio`.

    Returns
    -------
    float
        delta.
    """
    p, q, r = check_dims(p, q, r)
    n = check_int(n, "n", 1)
    ratio = check_nonnegative(ratio, "ratio")
    sigma = check_positive(sigma, "sigma")
    return ratio * sigma * math.sqrt((p - r) * q / n)


def predicted_power(
    ratio: float,
    p: int,
    q: int,
    r: int,
    n: int,
    n_clients: int,
    alpha: float,
    leverage: bool = False,
) -> float:
    r"""Power of the chi-square test for one contaminated client, known subspace.

    With A known, :math:`T_k = \|P_A^\perp \hat\Theta_k\|_F^2 / \sigma_k^2` and
    :math:`P_A^\perp \hat\Theta_k = P_A^\perp\Theta_k + P_A^\perp E_k`, so
    :math:`T_k \sim \chi^2_{df}(nc)` with df = (p - r) q and
    :math:`nc = \delta_k^2 / \tau^2`. For OLS,
    :math:`\tau^2 = E\,\sigma^2 \mathrm{tr}((X^TX)^{-1})/p = \sigma^2/(n - p - 1)`,
    so in terms of the separation ratio rho, :math:`nc = \rho^2\, df\, (n - p - 1) / n`.
    The level is Holm's first step, alpha / K (Bonferroni): Holm's later steps are
    less strict, which makes this a lower bound for Holm at known A.

    ``leverage=True`` adds the first-order effect of estimating A: when the
    contaminated client is not separated by step 1 (``margin`` clients lie near
    span(A)), :math:`\hat A` is fitted through its block too, and absorbs the
    fraction h_k = tr(B_k (B^T B)^{-1} B_k^T) ~ r / (K q) (its leverage) of its
    off-subspace part, so the off-subspace part left is (1 - h) of it:
    nc -> (1 - r / (K q))^2 nc. (Measured in ``theory_checks/test_t3_detection.py``:
    with the true A the Monte Carlo power matches the known-A prediction; with A^
    it matches the leverage form.)

    Parameters
    ----------
    ratio : float
        The separation ratio rho >= 0 (:func:`separation_ratio`).
    p, q, r : int
        Shape of Theta_k and rank, 1 <= r < p.
    n : int
        Samples per client, n > p + 1 (the OLS error variance sigma^2/(n - p - 1)).
    n_clients : int
        K, the number of tests.
    alpha : float
        Family-wise level, in (0, 1).
    leverage : bool
        Apply the first-order correction for an estimated A.

    Returns
    -------
    float
        P(T_k > chi^2_{df}(1 - alpha / K)).
    """
    p, q, r = check_dims(p, q, r)
    n = check_int(n, "n", 1)
    if n <= p + 1:
        raise ValueError(
            f"predicted_power needs n > p + 1 (OLS error variance sigma^2/(n - p - 1)"
            f"); got n={n}, p={p}."
        )
    n_clients = check_int(n_clients, "n_clients", 1)
    alpha = check_alpha(alpha)
    ratio = check_nonnegative(ratio, "ratio")
    df = (p - r) * q
    crit = scipy.stats.chi2.isf(alpha / n_clients, df)
    nc = ratio**2 * df * (n - p - 1) / n
    if leverage:
        nc *= (1 - r / (n_clients * q)) ** 2
    return float(scipy.stats.ncx2.sf(crit, df, nc))


def ratio_threshold(
    p: int,
    q: int,
    r: int,
    n: int,
    n_clients: int,
    alpha: float = 0.05,
    power: float = 0.95,
) -> float:
    """R*: the separation ratio at which :func:`predicted_power` equals ``power``.

    Parameters
    ----------
    p, q, r, n, n_clients, alpha
        As in :func:`predicted_power` (known A, no leverage correction).
    power : float
        Target power, in (0, 1).

    Returns
    -------
    float
        R*, found by Brent's method on [1e-3, 100].
    """
    power = check_fraction(
        power, "power", why=" It is the target probability of detection."
    )
    return float(
        brentq(
            lambda rho: predicted_power(rho, p, q, r, n, n_clients, alpha) - power,
            1e-3,
            100.0,
        )
    )

r"""T4 (docs/claims.md §4): the oracle gain of CLAIR over local fitting, and its costs.

Direct-noise model (docs/model.md §2.3 (a)): :math:`\hat\Theta_k = \Theta_k + E_k` with
:math:`E_k` iid :math:`N(0, \tau^2)` entries; benign
:math:`\Theta_k = A B_k^T + H_k`, :math:`\|H_k\|_F = \eta` and
:math:`H_k = \eta P_A^\perp G / \|P_A^\perp G\|_F` (isotropic in the complement of
span(A), zero mean). The MSE of a method is the mean over the m = ``|S|`` benign
clients of :math:`\|\tilde\Theta_k - \Theta_k\|_F^2`.

Derivations (expectations over E and H):

- local: :math:`E\|E_k\|_F^2 = p q \tau^2` (:func:`local_mse`).
- oracle CLAIR (true A and S): :math:`\tilde\Theta_k - \Theta_k = P_A E_k +
  P_A^\perp \bar E + (\bar H - H_k)`, three uncorrelated terms, so the MSE is
  :math:`r q \tau^2 + (p - r) q \tau^2 / m + \mathrm{het}` (:func:`oracle_mse`).
  With :math:`\frac1m \sum_k \|H_k - \bar H\|_F^2 = \eta^2 - \|\bar H\|_F^2` and
  :math:`E\|\bar H\|_F^2 = \eta^2 / m`, het = :math:`\eta^2 (1 - 1/m)`
  (:func:`heterogeneity_cost`). The oracle gain is
  G = :math:`(p - r) q \tau^2 (1 - 1/m)` (:func:`oracle_gain`).
- estimated A, S known (first order): with the benign stack :math:`A B^T + N`,
  :math:`\hat A - A \approx P_A^\perp N B (B^T B)^{-1}`, and client k's extra
  error is :math:`(P_{\hat A} - P_A)(\hat\Theta_k - \bar\Theta) \approx
  P_A^\perp N B (B^T B)^{-1} (B_k - \bar B)^T`. Its mean square over k is
  :math:`(p - r) r \tau^2 / m + r \eta^2 / (q m)` (noise and heterogeneity act as
  off-subspace noise) and its cross term with :math:`\bar H - H_k` is
  :math:`-2 r \eta^2 / (q m)` (a client's own H_k tilts A^); the cross term with
  :math:`P_A^\perp \bar E` averages to 0. Subspace cost (a first-order prediction,
  not fitted to any Monte Carlo): sub = :math:`r (p - r) \tau^2 / m -
  r \eta^2 / (q m)` (:func:`subspace_cost`).

Predicted gain of CLAIR over local: G - het - sub (:func:`predicted_gain`). It
factorises,

.. math::

    G - \mathrm{het} - \mathrm{sub}
    = \Bigl(1 - \frac1m - \frac{r}{q m}\Bigr)\bigl((p - r) q \tau^2 - \eta^2\bigr),

so to first order CLAIR beats local iff :math:`\eta < \tau\sqrt{(p - r) q}`
(:func:`zero_gain_heterogeneity`), whatever m, as long as q (m - 1) > r; for
q (m - 1) < r the sign is reversed (a subspace estimated from too few clients
costs more than averaging gains). The check against Monte Carlo is in
``theory_checks/test_t4_oracle_gain.py`` and ``simulations/oracle_gain.py``.

Rates (docs/claims.md §4.6, the paper's Figure 1), regression generator
(docs/model.md §2.3 (b)): the first-order prediction
:math:`\sigma\sqrt{p r / (n q K)} / s` (:func:`spec_prediction`), and its refined
form (:func:`refined_prediction`): with OLS noise of per-entry variance
:math:`\tau^2 = \sigma^2 / (n - p - 1)`, :math:`B^T B \approx m q s^2 I_r` and
:math:`\|P_{\hat A} - P_A\|_F^2 = 2 \|P_A^\perp \hat A\|_F^2`,

.. math::

    E\|P_{\hat A} - P_A\|_F^2 \approx
    \frac{2 (p - r) r \sigma^2}{(n - p - 1)\, m q s^2}.

Every function accepts numpy arrays for its continuous arguments (tau, eta, sigma,
n, m, K; they broadcast) and returns a float when all arguments are scalars.

References
----------
- He, Chen, Feng, "Federated LoRA fine-tuning for LLMs via collaborative
  alignment", arXiv:2605.21217, 2026.
- H. Xu, C. Caramanis, S. Sanghavi, "Robust PCA via outlier pursuit",
  IEEE Transactions on Information Theory 58(5), 2012.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from clair_stats.core.validation import check_dims, check_int, check_real_array

__all__ = [
    "heterogeneity_cost",
    "local_mse",
    "oracle_gain",
    "oracle_mse",
    "predicted_gain",
    "refined_prediction",
    "shrinkage_excess_bound",
    "shrinkage_factor",
    "shrinkage_mse",
    "spec_prediction",
    "subspace_cost",
    "zero_gain_heterogeneity",
]

FloatOrArray = float | NDArray[np.float64]


def _out(x: NDArray[np.float64]) -> FloatOrArray:
    """A float for a 0-d result, the array otherwise."""
    return float(x) if np.ndim(x) == 0 else x


# -------------------------------------------------------------------------- T4
def local_mse(p: int, q: int, tau: ArrayLike) -> FloatOrArray:
    r"""MSE of the local estimates: :math:`E\|E_k\|_F^2 = p q \tau^2`.

    Parameters
    ----------
    p, q : int
        Shape of each Theta_k.
    tau : float or array_like
        Per-entry noise standard deviation, >= 0.

    Returns
    -------
    float or numpy.ndarray
    """
    p, q = check_int(p, "p", 1), check_int(q, "q", 1)
    tau = check_real_array(tau, "tau")
    return _out(p * q * tau**2)


def heterogeneity_cost(m: ArrayLike, eta: ArrayLike) -> FloatOrArray:
    r"""Heterogeneity cost of the refinement: :math:`\eta^2 (1 - 1/m)`.

    The expected :math:`\frac1m \sum_{k \in S} \|P_A^\perp(\bar H_S - H_k)\|_F^2`
    for independent, zero-mean :math:`H_k \perp` span(A) of norm eta.

    Parameters
    ----------
    m : int or array_like
        ``|S|``, the number of benign clients, >= 1.
    eta : float or array_like
        :math:`\|H_k\|_F`, >= 0.

    Returns
    -------
    float or numpy.ndarray
    """
    m = check_real_array(m, "m", minimum=1, whole=True)
    eta = check_real_array(eta, "eta")
    return _out(eta**2 * (1 - 1 / m))


def oracle_gain(p: int, q: int, r: int, m: ArrayLike, tau: ArrayLike) -> FloatOrArray:
    r"""Oracle gain G = :math:`(p - r) q \tau^2 (1 - 1/m)`.

    Local MSE minus oracle-CLAIR MSE (true A and S) without heterogeneity: the
    off-subspace noise is averaged over the m benign clients.

    Parameters
    ----------
    p, q, r : int
        Shape of Theta_k and dimension of span(A), 1 <= r < p.
    m : int or array_like
        ``|S|`` >= 1.
    tau : float or array_like
        Per-entry noise standard deviation, >= 0.

    Returns
    -------
    float or numpy.ndarray
    """
    p, q, r = check_dims(p, q, r)
    m = check_real_array(m, "m", minimum=1, whole=True)
    tau = check_real_array(tau, "tau")
    return _out((p - r) * q * tau**2 * (1 - 1 / m))


def oracle_mse(
    p: int, q: int, r: int, m: ArrayLike, tau: ArrayLike, eta: ArrayLike = 0.0
) -> FloatOrArray:
    r"""MSE of oracle CLAIR (true A and S) over the benign clients.

    .. math::

        r q \tau^2 + (p - r) q \tau^2 / m + \eta^2 (1 - 1/m).

    Parameters
    ----------
    p, q, r : int
        Shape of Theta_k and dimension of span(A), 1 <= r < p.
    m : int or array_like
        ``|S|`` >= 1.
    tau : float or array_like
        Per-entry noise standard deviation, >= 0.
    eta : float or array_like
        :math:`\|H_k\|_F`, >= 0.

    Returns
    -------
    float or numpy.ndarray
    """
    p, q, r = check_dims(p, q, r)
    m = check_real_array(m, "m", minimum=1, whole=True)
    tau = check_real_array(tau, "tau")
    het = heterogeneity_cost(m, eta)
    return _out(r * q * tau**2 + (p - r) * q * tau**2 / m + het)


def subspace_cost(
    p: int, q: int, r: int, m: ArrayLike, tau: ArrayLike, eta: ArrayLike = 0.0
) -> FloatOrArray:
    r"""First-order cost of estimating A (S known), see the module docstring.

    .. math::

        \mathrm{sub} = \frac{r (p - r) \tau^2}{m} - \frac{r \eta^2}{q m}.

    Negative for large eta: a client's own H_k tilts A^ towards itself, which
    partly undoes the heterogeneity cost.

    Parameters
    ----------
    p, q, r : int
        Shape of Theta_k and dimension of span(A), 1 <= r < p.
    m : int or array_like
        ``|S|`` >= 1.
    tau : float or array_like
        Per-entry noise standard deviation, >= 0.
    eta : float or array_like
        :math:`\|H_k\|_F`, >= 0.

    Returns
    -------
    float or numpy.ndarray
    """
    p, q, r = check_dims(p, q, r)
    m = check_real_array(m, "m", minimum=1, whole=True)
    tau = check_real_array(tau, "tau")
    eta = check_real_array(eta, "eta")
    return _out(r * (p - r) * tau**2 / m - r * eta**2 / (q * m))


def predicted_gain(
    p: int, q: int, r: int, m: ArrayLike, tau: ArrayLike, eta: ArrayLike = 0.0
) -> FloatOrArray:
    r"""Predicted gain of CLAIR (A estimated, S known) over local: G - het - sub.

    .. math::

        G - \mathrm{het} - \mathrm{sub}
        = \Bigl(1 - \frac1m - \frac{r}{q m}\Bigr)
          \bigl((p - r) q \tau^2 - \eta^2\bigr),

    in the units of the MSE (divide by :func:`local_mse` for a relative gain).

    Parameters
    ----------
    p, q, r : int
        Shape of Theta_k and dimension of span(A), 1 <= r < p.
    m : int or array_like
        ``|S|`` >= 1.
    tau : float or array_like
        Per-entry noise standard deviation, >= 0.
    eta : float or array_like
        :math:`\|H_k\|_F`, >= 0.

    Returns
    -------
    float or numpy.ndarray
        Positive where CLAIR is predicted to beat local fitting.
    """
    G = oracle_gain(p, q, r, m, tau)
    het = heterogeneity_cost(m, eta)
    sub = subspace_cost(p, q, r, m, tau, eta)
    return _out(np.asarray(G - het - sub))


def shrinkage_factor(tau: ArrayLike, delta: ArrayLike) -> FloatOrArray:
    r"""The best in-subspace pooling factor :math:`b^* = \tau^2 / (\tau^2 + \delta^2)`.

    Client k's in-subspace coordinates are :math:`y_k = \theta_k + e_k` with
    noise of variance tau^2 and clients spread around their mean with variance
    delta^2 per coordinate; :math:`\bar y + (1 - b)(y_k - \bar y)` has the
    smallest risk at b* (docs/claims.md §4.5). b* = 1 (pool) when the clients
    do not differ, b* -> 0 (keep) when they differ much more than their noise.

    Parameters
    ----------
    tau : float or array_like
        Per-entry noise standard deviation, >= 0.
    delta : float or array_like
        Per-coordinate standard deviation of the clients inside span(A), >= 0.

    Returns
    -------
    float or numpy.ndarray
        In [0, 1] (1 where tau = delta = 0).
    """
    tau = check_real_array(tau, "tau")
    delta = check_real_array(delta, "delta")
    total = tau**2 + delta**2
    ones = np.ones(np.broadcast(tau, delta).shape)
    return _out(np.divide(tau**2, total, out=ones, where=total > 0))


def shrinkage_mse(
    p: int,
    q: int,
    r: int,
    m: ArrayLike,
    tau: ArrayLike,
    delta: ArrayLike,
    eta: ArrayLike = 0.0,
    common: ArrayLike = 0.0,
    b: ArrayLike | None = None,
    estimated_subspace: bool = True,
) -> FloatOrArray:
    r"""First-order MSE of CLAIR with in-subspace pooling b (S known).

    Benign :math:`\Theta_k = A (\bar B + Z_k)^\top + H_k`, Z_k with iid
    entries of variance delta^2 (the spread inside span(A)), :math:`\bar B`
    with :math:`\bar B^\top \bar B \approx q\, \mathrm{common}^2 I_r`, H_k as in the
    module docstring, direct noise of sd tau; the refinement
    :math:`\tilde\Theta_k = \bar\Theta + (1 - b) P_{\hat A}(\hat\Theta_k -
    \bar\Theta)` over the m benign clients. Per client (docs/claims.md §4.5):

    .. math::

        r q \bigl[\tau^2 \bigl(1 - (1 - \tfrac1m)(2b - b^2)\bigr)
            + b^2 \delta^2 (1 - \tfrac1m)\bigr]
        + \frac{(p - r) q \tau^2}{m} + \eta^2 (1 - \tfrac1m)
        + \frac{f}{m}\Bigl[(1 - b)^2 \bigl((p - r) r \tau^2 + \frac{r \eta^2}{q}\bigr)
            - 2 (1 - b) \frac{r \eta^2}{q}\Bigr],

    f = delta^2 / (common^2 + delta^2) (the last term only with an estimated
    A: A^'s error leaks the in-subspace deviation B_k - Bbar out of span(A),
    and a common part makes A^ better determined). b = 0 gives
    :func:`oracle_mse` + :func:`subspace_cost` (at common = 0); b = 1 gives
    FedAvg over S, p q tau^2 / m + r q delta^2 (1 - 1/m) + eta^2 (1 - 1/m). The
    in-subspace term is smallest at b = :func:`shrinkage_factor`, where it is
    :math:`r q [\tau^2 - (1 - 1/m) \tau^4 / (\tau^2 + \delta^2)]`.

    Parameters
    ----------
    p, q, r : int
        Shape of Theta_k and dimension of span(A), 1 <= r < p.
    m : int or array_like
        ``|S|`` >= 1.
    tau : float or array_like
        Per-entry noise standard deviation, >= 0.
    delta : float or array_like
        Per-coordinate spread of the benign clients inside span(A), >= 0.
    eta : float or array_like
        :math:`\|H_k\|_F`, >= 0.
    common : float or array_like
        Per-entry size of the common part :math:`\bar B`, >= 0.
    b : float or array_like, optional
        The pooling factor in [0, 1]; default :func:`shrinkage_factor` (what the
        empirical-Bayes b^ estimates, to first order).
    estimated_subspace : bool
        Include the cost of estimating A from the m benign clients.

    Returns
    -------
    float or numpy.ndarray
    """
    p, q, r = check_dims(p, q, r)
    m = check_real_array(m, "m", minimum=1, whole=True)
    tau = check_real_array(tau, "tau")
    delta = check_real_array(delta, "delta")
    eta = check_real_array(eta, "eta")
    common = check_real_array(common, "common")
    if b is None:
        b = np.asarray(shrinkage_factor(tau, delta), dtype=float)
    else:
        b = check_real_array(b, "b")
        if np.any(b > 1):
            raise ValueError(f"b must lie in [0, 1], got a maximum of {np.max(b):.3g}.")
    inside = (
        r
        * q
        * (tau**2 * (1 - (1 - 1 / m) * (2 * b - b**2)) + b**2 * delta**2 * (1 - 1 / m))
    )
    outside = (p - r) * q * tau**2 / m + eta**2 * (1 - 1 / m)
    total = inside + outside
    if estimated_subspace:
        spread = delta**2 + common**2
        zeros = np.zeros(np.shape(spread))
        f = np.divide(delta**2, spread, out=zeros, where=spread > 0)
        noise = (p - r) * r * tau**2 + r * eta**2 / q
        total = total + f / m * ((1 - b) ** 2 * noise - 2 * (1 - b) * r * eta**2 / q)
    return _out(np.asarray(total))


def shrinkage_excess_bound(m: ArrayLike, tau: ArrayLike) -> FloatOrArray:
    r"""Per-client bound on the James-Stein b^'s excess risk over the best b.

    The bound is 4 tau^2 / m.

    With equal noise tau^2 known, equal weights and A and S known, the
    positive-part James-Stein (Lindley) estimator of the m clients'
    in-subspace parts, b^ = min(1, (D - 2) tau^2 / sum_k ||y_k - ybar||^2), D =
    (m - 1) r q, has total risk below that of the best fixed b by less than
    4 tau^2 (D - 1) / D (docs/claims.md §4.5): at most 4 tau^2 / m per client
    above the better of keeping (b = 0) and pooling (b = 1).

    Parameters
    ----------
    m : int or array_like
        ``|S|`` >= 2.
    tau : float or array_like
        Per-entry noise standard deviation, >= 0.

    Returns
    -------
    float or numpy.ndarray
    """
    m = check_real_array(m, "m", minimum=2, whole=True)
    tau = check_real_array(tau, "tau")
    return _out(np.asarray(4 * tau**2 / m))


def zero_gain_heterogeneity(p: int, q: int, r: int, tau: ArrayLike) -> FloatOrArray:
    r"""The eta at which the predicted gain changes sign: :math:`\tau\sqrt{(p-r) q}`.

    From the factorisation of :func:`predicted_gain`; it does not depend on m.
    CLAIR is predicted to beat local for eta below it when q (m - 1) > r, and
    above it when q (m - 1) < r (at q (m - 1) = r the predicted gain is 0).

    Parameters
    ----------
    p, q, r : int
        Shape of Theta_k and dimension of span(A), 1 <= r < p.
    tau : float or array_like
        Per-entry noise standard deviation, >= 0.

    Returns
    -------
    float or numpy.ndarray
    """
    p, q, r = check_dims(p, q, r)
    tau = check_real_array(tau, "tau")
    return _out(tau * np.sqrt((p - r) * q))


# ----------------------------------------------------------------------- rates
def spec_prediction(
    p: int,
    q: int,
    r: int,
    n: ArrayLike,
    K: ArrayLike,
    sigma: float = 1.0,
    signal_scale: float = 1.0,
) -> FloatOrArray:
    r"""First-order subspace error :math:`\sigma\sqrt{p r/(n q K)}/s`.

    The rate of docs/claims.md §4.6.

    Parameters
    ----------
    p, q, r : int
        Shape of Theta_k and dimension of span(A), 1 <= r < p.
    n : int or array_like
        Observations per client, >= 1.
    K : int or array_like
        Number of clients, >= 1.
    sigma : float
        Standard deviation of the regression noise, >= 0.
    signal_scale : float
        s, the standard deviation of the entries of B_k, > 0.

    Returns
    -------
    float or numpy.ndarray
        The predicted :math:`\|P_{\hat A} - P_A\|_F`.
    """
    p, q, r = check_dims(p, q, r)
    n = check_real_array(n, "n", minimum=1, whole=True)
    K = check_real_array(K, "K", minimum=1, whole=True)
    sigma = check_real_array(sigma, "sigma")
    s = check_real_array(signal_scale, "signal_scale", strict=True)
    return _out(sigma * np.sqrt(p * r / (n * q * K)) / s)


def refined_prediction(
    p: int,
    q: int,
    r: int,
    n: ArrayLike,
    m: ArrayLike,
    sigma: float = 1.0,
    signal_scale: float = 1.0,
) -> FloatOrArray:
    r"""Refined first-order subspace error of the regression generator (OLS fits).

    .. math::

        \sqrt{\frac{2 (p - r) r \sigma^2}{(n - p - 1)\, m q s^2}},

    the root of the first-order :math:`E\|P_{\hat A} - P_A\|_F^2` of the top-r
    subspace of the m benign clients' OLS estimates (module docstring).

    Parameters
    ----------
    p, q, r : int
        Shape of Theta_k and dimension of span(A), 1 <= r < p.
    n : int or array_like
        Observations per client; n > p + 1 (the OLS noise variance
        :math:`\sigma^2 / (n - p - 1)` is finite only there).
    m : int or array_like
        ``|S|``, the number of benign clients, >= 1.
    sigma : float
        Standard deviation of the regression noise, >= 0.
    signal_scale : float
        s, the standard deviation of the entries of B_k, > 0.

    Returns
    -------
    float or numpy.ndarray
        The predicted :math:`\|P_{\hat A} - P_A\|_F`.
    """
    p, q, r = check_dims(p, q, r)
    n = check_real_array(n, "n", minimum=1, whole=True)
    m = check_real_array(m, "m", minimum=1, whole=True)
    if np.any(n <= p + 1):
        raise ValueError(
            f"n must be > p + 1 = {p + 1} (the OLS noise variance sigma^2 / "
            f"(n - p - 1) is finite only there), got n={n.tolist()}; use more "
            "observations per client."
        )
    sigma = check_real_array(sigma, "sigma")
    s = check_real_array(signal_scale, "signal_scale", strict=True)
    return _out(np.sqrt(2 * (p - r) * r * sigma**2 / ((n - p - 1) * m * q * s**2)))

r"""Multi-response regression generator of the local estimates (docs/model.md §2.3 (b)).

The truth :math:`\Theta_k` is drawn exactly as by
:meth:`clair_stats.simulate.model.FederatedModel.sample`; each client k then observes

.. math::

    Y_k = X_k \Theta_k + \varepsilon_k, \qquad
    X_k \in R^{n_k x p} \text{ rows iid } N(0, \Sigma), \quad
    \varepsilon_k \text{ rows iid } N(0, \sigma^2 I_q),

and fits :math:`\hat\Theta_k` by OLS or ridge. For OLS, given :math:`X_k`,

.. math::

    E_k = \hat\Theta_k - \Theta_k = (X_k^T X_k)^{-1} X_k^T \varepsilon_k, \qquad
    \mathrm{Cov}(\mathrm{vec}\, E_k) = \sigma^2 \, I_q \otimes (X_k^T X_k)^{-1},

so :math:`E\|E_k\|_F^2 = \sigma^2 q\, \mathrm{tr}((X_k^T X_k)^{-1})`, which is
about :math:`\sigma^2 p q / (n_k - p - 1)` when :math:`\Sigma = I`
(:math:`E (X^T X)^{-1} = \Sigma^{-1} / (n - p - 1)` for a Wishart matrix).
These are the local estimates of the rates of [1]_ (its Figure 1,
docs/claims.md §4.6).

References
----------
.. [1] He, Chen, Feng, "Federated LoRA fine-tuning for LLMs via collaborative
   alignment", arXiv:2605.21217, 2026.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from clair_stats.core.validation import check_bool, check_nonnegative, check_positive
from clair_stats.simulate._draws import FloatArray, readonly
from clair_stats.simulate.sample import FederatedSample, SampleGenerator

__all__ = ["LocalFit", "RegressionSample", "fit_local", "sample_regression"]


# ------------------------------------------------------------------ one local fit
@dataclass(frozen=True)
class LocalFit:
    r"""OLS or ridge fit of one client's multi-response regression.

    Parameters
    ----------
    estimate : ndarray, shape (p, q)
        :math:`\hat\Theta = (X^T X + \alpha I)^{-1} X^T Y` (:math:`\alpha = 0`: OLS).
    sigma2_hat : float
        Pooled noise variance :math:`\mathrm{RSS} / (q (n - \mathrm{df}))`, with
        :math:`\mathrm{RSS} = \|Y - X \hat\Theta\|_F^2`.
    gram_inverse_trace : float
        OLS: :math:`\mathrm{tr}((X^T X)^{-1})`. Ridge: its analogue for the
        variance part of the error,
        :math:`\mathrm{tr}((X^T X + \alpha I)^{-1} X^T X (X^T X + \alpha I)^{-1})`.
        Either way :math:`\sigma^2 q` times it is
        :math:`E \|\hat\Theta - E\hat\Theta\|_F^2` given X.
    df : float
        :math:`\mathrm{tr}(H)`, :math:`H = X (X^T X + \alpha I)^{-1} X^T`: p for OLS.
    n : int
        Number of observations.
    gram_inverse : ndarray, shape (p, p)
        OLS: :math:`(X^T X)^{-1}`; ridge:
        :math:`(X^T X + \alpha I)^{-1} X^T X (X^T X + \alpha I)^{-1}`. Each
        column of :math:`\hat\Theta - E\hat\Theta` has covariance
        :math:`\sigma^2` times it; its trace is ``gram_inverse_trace``.
    """

    estimate: FloatArray
    sigma2_hat: float
    gram_inverse_trace: float
    df: float
    n: int
    gram_inverse: FloatArray


def _fit(X: FloatArray, Y: FloatArray, alpha: float) -> LocalFit:
    """OLS (``alpha = 0``, needs n > p and X of full column rank) or ridge.

    With the thin SVD X = U diag(s) V^T, the fit is
    Theta^ = V diag(s / (s^2 + alpha)) U^T Y, tr(H) = sum s^2 / (s^2 + alpha) and
    the trace of the error covariance scale is sum s^2 / (s^2 + alpha)^2
    (= sum 1 / s^2 = tr((X^T X)^{-1}) for OLS).
    """
    n, p = X.shape
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    if alpha == 0.0:
        if s[-1] <= s[0] * max(n, p) * np.finfo(np.float64).eps:
            raise ValueError(
                f"the design X (n={n}, p={p}) is numerically rank deficient "
                f"(condition number {s[0] / s[-1]:.3g}); OLS is not defined. Use "
                "ridge=alpha > 0 or a better conditioned design_cov."
            )
        gain = 1.0 / s  # s / (s^2 + 0)
    else:
        gain = s / (s**2 + alpha)
    theta = Vt.T @ (gain[:, None] * (U.T @ Y))
    df = float(np.sum(s * gain))  # tr(H) = sum s^2 / (s^2 + alpha)
    rss = float(np.sum((Y - X @ theta) ** 2))
    q = Y.shape[1]
    return LocalFit(
        estimate=theta,
        sigma2_hat=rss / (q * (n - df)),
        gram_inverse_trace=float(np.sum(gain**2)),
        df=df,
        n=n,
        gram_inverse=(Vt.T * gain**2) @ Vt,
    )


def fit_local(X: ArrayLike, Y: ArrayLike, ridge: float | None = None) -> LocalFit:
    r"""Fit :math:`Y = X \Theta + \varepsilon` by OLS or ridge, with a noise estimate.

    .. math::

        \hat\Theta = \arg\min_\Theta \|Y - X\Theta\|_F^2 + \alpha \|\Theta\|_F^2
        = (X^T X + \alpha I)^{-1} X^T Y,

    :math:`\alpha = 0` (OLS) when ``ridge`` is None. No intercept.

    Parameters
    ----------
    X : array_like, shape (n, p)
        Design.
    Y : array_like, shape (n, q)
        Responses.
    ridge : float or None
        alpha > 0 for ridge; None for OLS.

    Returns
    -------
    LocalFit
        The estimate, :math:`\hat\sigma^2 = \mathrm{RSS} / (q (n - \mathrm{df}))`,
        the trace of the error covariance scale and df = tr(H).

    Notes
    -----
    For OLS, :math:`q (n - p) \hat\sigma^2 / \sigma^2 \sim \chi^2_{q(n-p)}`: the
    estimate is unbiased and equals the mean over the q response columns of the
    per-column ``statsmodels`` ``OLS(y_j, X).fit().scale``. For ridge, the
    residual degrees of freedom n - tr(H) are the usual convention; that
    estimate is not unbiased (the bias of ridge enters the RSS).
    """
    try:
        Xa = np.asarray(X, dtype=np.float64)
        Ya = np.asarray(Y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"X and Y must be real arrays: {exc}") from exc
    if Xa.ndim != 2 or Ya.ndim != 2 or Xa.shape[0] != Ya.shape[0]:
        raise ValueError(
            f"X must have shape (n, p) and Y shape (n, q) with the same n; got "
            f"{Xa.shape} and {Ya.shape}. For one response, pass Y[:, None]."
        )
    if not (np.isfinite(Xa).all() and np.isfinite(Ya).all()):
        raise ValueError("X and Y must be finite (no NaN or inf).")
    alpha = _check_ridge(ridge)
    n, p = Xa.shape
    _check_sizes(np.array([n]), p, alpha)
    return _fit(Xa, Ya, alpha)


# --------------------------------------------------------------------- the sample
@dataclass(frozen=True, eq=False)
class RegressionSample(FederatedSample):
    r"""One draw of the regression generator: a :class:`FederatedSample` plus the fits.

    Every attribute of :class:`~clair_stats.FederatedSample` keeps its meaning
    (``updates`` holds :math:`\hat\Theta_k` from the local fits), except ``noise``,
    which is NaN: the errors :math:`E_k` have no single per-entry standard deviation
    tau (their covariance is :math:`\sigma^2 I_q \otimes (X_k^T X_k)^{-1}`). All
    arrays are read-only.

    Parameters
    ----------
    updates : ndarray, shape (K, p, q)
        The local fits :math:`\hat\Theta_k`.
    truth : ndarray, shape (K, p, q)
        :math:`\Theta_k`.
    subspace : ndarray, shape (p, r)
        A, with :math:`A^T A = I_r`.
    benign : ndarray of bool, shape (K,)
        True on the collaborative set S.
    backbone : ndarray, shape (p, q)
        :math:`\Theta_0` (zeros when ``center=False``).
    margin : ndarray, shape (K,)
        :math:`\delta_k = \|P_A^\perp (\Theta_k - \Theta_0)\|_F` for every
        client.
    noise : float
        NaN (see above).
    model : FederatedModel
        The generator of the truth.
    n : ndarray of int, shape (K,)
        Sample sizes :math:`n_k`.
    sigma : float
        sigma, the standard deviation of the entries of :math:`\varepsilon_k`.
    sigma2_hat : ndarray, shape (K,)
        :math:`\hat\sigma^2_k = \mathrm{RSS}_k / (q (n_k - \mathrm{df}_k))`;
        df = p for OLS (unbiased), tr(H_k) for ridge (see :func:`fit_local`).
    gram_inverse_trace : ndarray, shape (K,)
        OLS: :math:`\mathrm{tr}((X_k^T X_k)^{-1})`, so that
        :math:`E[\|E_k\|_F^2 \mid X_k] = \sigma^2 q` times it. Ridge: the trace of
        the variance part, see :class:`LocalFit`.
    gram_inverse : ndarray, shape (K, p, p)
        OLS: :math:`(X_k^T X_k)^{-1}`, so that each column of :math:`E_k` has
        covariance :math:`\sigma^2` times it. Ridge: see :class:`LocalFit`.
    residual_df : ndarray, shape (K,)
        :math:`n_k - \mathrm{df}_k` (:math:`n_k - p` for OLS): per response
        column, the degrees of freedom of :math:`\hat\sigma^2_k`.
    estimator : str
        ``"ols"`` or ``"ridge"``.
    ridge : float or None
        alpha of ridge; None for OLS.
    designs, responses : tuple of ndarray or None
        :math:`X_k` (n_k, p) and :math:`Y_k` (n_k, q) when drawn with
        ``keep_data=True``; None (the default) otherwise.
    """

    n: NDArray[np.int64]
    sigma: float
    sigma2_hat: FloatArray
    gram_inverse_trace: FloatArray
    gram_inverse: FloatArray
    residual_df: FloatArray
    estimator: str
    ridge: float | None
    designs: tuple[FloatArray, ...] | None = None
    responses: tuple[FloatArray, ...] | None = None

    @property
    def local_sd(self) -> np.ndarray:
        """Per-entry standard deviation of each local fit, shape (K,).

        sigma^_k sqrt(tr((X_k^T X_k)^{-1}) / p): the sigma of the chi-square test
        of :func:`clair_stats.clair` (``sigma=sample.local_sd``), estimated from
        the fits' own residuals.
        """
        return np.sqrt(self.sigma2_hat * self.gram_inverse_trace / self.p)

    @property
    def noise_cov(self) -> np.ndarray:
        """Estimated covariance of each column of Theta^_k - Theta_k, (K, p, p).

        sigma^_k^2 (X_k^T X_k)^{-1} for OLS: with :attr:`noise_df` it makes the
        test of :func:`clair_stats.clair` exact
        (``clair(sample.updates, noise_cov=sample.noise_cov,
        noise_df=sample.noise_df)``). For ridge it is the variance part only
        (ridge is biased) and the test is approximate.
        """
        return self.sigma2_hat[:, None, None] * self.gram_inverse

    @property
    def noise_df(self) -> np.ndarray:
        """nu_k = q (n_k - df_k): degrees of freedom of sigma^_k^2, shape (K,).

        For OLS, nu_k sigma^_k^2 / sigma^2 ~ chi^2_{nu_k}, independent of
        Theta^_k.
        """
        return self.q * self.residual_df

    def __repr__(self) -> str:
        n = (
            str(int(self.n[0]))
            if np.all(self.n == self.n[0])
            else f"{int(self.n.min())}..{int(self.n.max())}"
        )
        est = self.estimator if self.ridge is None else f"ridge({self.ridge:g})"
        return (
            f"RegressionSample(K={self.n_clients}, p={self.p}, q={self.q}, "
            f"r={self.rank}, benign={int(self.benign.sum())}, "
            f"contaminated={int(self.contaminated.sum())}, "
            f"type={self.model.contamination_type!r}, n={n}, sigma={self.sigma:g}, "
            f"estimator={est})"
        )


# ----------------------------------------------------------------------- checks
def _check_ridge(ridge: object) -> float:
    """alpha as a float (0.0 for OLS, i.e. ``ridge=None``), or raise."""
    if ridge is None:
        return 0.0
    try:
        return check_positive(ridge, "ridge")
    except ValueError as exc:
        raise ValueError(f"{exc} Pass ridge=None for OLS.") from None


def _check_sample_sizes(n: object, n_clients: int) -> NDArray[np.int64]:
    """n as an int array of shape (K,): one int for all clients or one per client."""
    if isinstance(n, numbers.Integral) and not isinstance(n, bool | np.bool_):
        return np.full(n_clients, int(n), dtype=np.int64)
    if isinstance(n, bool | np.bool_ | str) or not isinstance(n, Sequence | np.ndarray):
        raise TypeError(
            f"n must be an int or a sequence of K = {n_clients} ints (one sample "
            f"size per client), got {n!r} of type {type(n).__name__}."
        )
    arr = np.asarray(n)
    if arr.shape != (n_clients,):
        raise ValueError(
            f"n must have length K = {n_clients} (one sample size per client), got "
            f"shape {arr.shape}; pass a single int for equal sizes."
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"n must hold ints, got dtype {arr.dtype}.")
    return arr.astype(np.int64)


def _check_sizes(n: NDArray[np.int64], p: int, alpha: float) -> None:
    """OLS needs n_k > p (residual dof n_k - p >= 1); ridge needs n_k >= 1."""
    if alpha == 0.0:
        bad = np.flatnonzero(n <= p)
        if bad.size:
            raise ValueError(
                f"OLS needs n_k > p = {p} (residual degrees of freedom n_k - p >= 1), "
                f"but client(s) {bad.tolist()} have n_k = {n[bad].tolist()}; use "
                "ridge=alpha > 0 or more samples."
            )
    else:
        bad = np.flatnonzero(n < 1)
        if bad.size:
            raise ValueError(
                f"ridge needs n_k >= 1, but client(s) {bad.tolist()} have n_k = "
                f"{n[bad].tolist()}."
            )


def _design_factor(design_cov: object, p: int) -> FloatArray | None:
    """Lower Cholesky factor L of Sigma (L L^T = Sigma); None for Sigma = I."""
    if design_cov is None:
        return None
    try:
        S = np.asarray(design_cov, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"design_cov must be a real (p, p) = ({p}, {p}) matrix: {exc}"
        ) from exc
    if S.shape != (p, p):
        raise ValueError(
            f"design_cov must have shape (p, p) = ({p}, {p}), got {S.shape}."
        )
    if not np.isfinite(S).all():
        raise ValueError("design_cov must be finite (no NaN or inf).")
    scale = float(np.max(np.abs(S)))
    if float(np.max(np.abs(S - S.T))) > 1e-10 * scale:
        raise ValueError(
            "design_cov must be symmetric, got max |Sigma - Sigma^T| = "
            f"{float(np.max(np.abs(S - S.T))):.3g}; pass (Sigma + Sigma.T) / 2."
        )
    S = (S + S.T) / 2
    try:
        return np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        lam_min = float(np.linalg.eigvalsh(S)[0])
        raise ValueError(
            "design_cov must be symmetric positive definite; its Cholesky "
            f"factorisation failed (smallest eigenvalue {lam_min:.3g}). Pass an SPD "
            "matrix, e.g. add a small multiple of the identity."
        ) from None


# ---------------------------------------------------------------------- generator
def sample_regression(
    model: SampleGenerator,
    n: int | Sequence[int] | NDArray[np.integer],
    sigma: float = 1.0,
    design_cov: ArrayLike | None = None,
    ridge: float | None = None,
    seed: int | np.random.Generator | None = None,
    keep_data: bool = False,
) -> RegressionSample:
    r"""Draw an instance, local estimates from regressions (docs/model.md §2.3 (b)).

    .. math::

        Y_k = X_k \Theta_k + \varepsilon_k, \qquad
        \hat\Theta_k = (X_k^T X_k + \alpha I_p)^{-1} X_k^T Y_k,

    with :math:`X_k` rows iid :math:`N(0, \Sigma)`, :math:`\varepsilon_k` rows iid
    :math:`N(0, \sigma^2 I_q)`, and :math:`\alpha = 0` (OLS) unless ``ridge``.

    Draw order (fixed): the truth exactly as ``model.sample(noise=0.0, seed=rng)``
    (so it equals ``model.sample(seed=seed).truth`` for the same int seed, whatever
    n, sigma, Sigma or the estimator), then for each client k in order
    :math:`X_k` and :math:`\varepsilon_k`. The designs therefore do not depend on
    sigma or the estimator: OLS and ridge with the same seed fit the same data.

    Parameters
    ----------
    model : FederatedModel
        The generator of the truth.
    n : int or sequence of int
        :math:`n_k`: one int for every client or K ints. OLS needs
        :math:`n_k > p`; ridge needs :math:`n_k \ge 1`.
    sigma : float
        sigma >= 0, the noise standard deviation.
    design_cov : array_like, shape (p, p), or None
        :math:`\Sigma`, symmetric positive definite; None for :math:`I_p`. Rows are
        drawn as :math:`L z` with :math:`L L^T = \Sigma` (Cholesky).
    ridge : float or None
        alpha > 0 for ridge; None for OLS.
    seed : int, numpy.random.Generator or None
        Passed to :func:`numpy.random.default_rng`.
    keep_data : bool
        Store the :math:`X_k` and :math:`Y_k` in ``designs`` and ``responses``
        (memory :math:`\sum_k n_k (p + q)` floats); by default they are discarded.

    Returns
    -------
    RegressionSample

    References
    ----------
    .. [1] He, Chen, Feng, "Federated LoRA fine-tuning for LLMs via collaborative
       alignment", arXiv:2605.21217, 2026.

    Examples
    --------
    >>> from clair_stats.simulate.model import FederatedModel
    >>> model = FederatedModel(p=10, q=2, rank=2, n_clients=5, contamination=1)
    >>> s = sample_regression(model, n=50, sigma=0.5, seed=0)
    >>> s.updates.shape, s.sigma2_hat.shape, s.estimator
    ((5, 10, 2), (5,), 'ols')
    """
    p, q, K = model.p, model.q, model.n_clients
    sizes = _check_sample_sizes(n, K)
    sig = check_nonnegative(sigma, "sigma")
    alpha = _check_ridge(ridge)
    _check_sizes(sizes, p, alpha)
    L = _design_factor(design_cov, p)
    keep_data = check_bool(keep_data, "keep_data")

    rng = np.random.default_rng(seed)
    base = model.sample(noise=0.0, seed=rng)

    updates = np.empty((K, p, q))
    sigma2_hat = np.empty(K)
    traces = np.empty(K)
    gram_inverse = np.empty((K, p, p))
    residual_df = np.empty(K)
    designs: list[FloatArray] = []
    responses: list[FloatArray] = []
    for k in range(K):
        X = rng.standard_normal((sizes[k], p))
        if L is not None:
            X = X @ L.T  # rows L z ~ N(0, L L^T = Sigma)
        Y = X @ base.truth[k] + sig * rng.standard_normal((sizes[k], q))
        fit = _fit(X, Y, alpha)
        updates[k], sigma2_hat[k], traces[k] = (
            fit.estimate,
            fit.sigma2_hat,
            fit.gram_inverse_trace,
        )
        gram_inverse[k], residual_df[k] = fit.gram_inverse, sizes[k] - fit.df
        if keep_data:
            designs.append(readonly(X))
            responses.append(readonly(Y))

    return RegressionSample(
        updates=readonly(updates),
        truth=base.truth,
        subspace=base.subspace,
        benign=base.benign,
        backbone=base.backbone,
        margin=base.margin,
        noise=math.nan,
        model=model,
        n=readonly(sizes),
        sigma=sig,
        sigma2_hat=readonly(sigma2_hat),
        gram_inverse_trace=readonly(traces),
        gram_inverse=readonly(gram_inverse),
        residual_df=readonly(residual_df),
        estimator="ols" if alpha == 0.0 else "ridge",
        ridge=None if alpha == 0.0 else alpha,
        designs=tuple(designs) if keep_data else None,
        responses=tuple(responses) if keep_data else None,
    )

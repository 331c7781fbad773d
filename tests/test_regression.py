"""Tests of the docs/model.md §2.3 (b) regression generator,
clair_stats.simulate.regression."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.regression.linear_model import OLS

from clair_stats.simulate.model import FederatedModel
from clair_stats.simulate.regression import (
    RegressionSample,
    fit_local,
    sample_regression,
)
from clair_stats.simulate.sample import FederatedSample

P, Q, R, K = 10, 3, 2, 20


def make(**kwargs: object) -> FederatedModel:
    base: dict[str, object] = {
        "p": P,
        "q": Q,
        "rank": R,
        "n_clients": K,
        "contamination": 0.2,
        "center": True,
    }
    base.update(kwargs)
    return FederatedModel(**base)  # type: ignore[arg-type]


def ar1(p: int, rho: float) -> np.ndarray:
    """Sigma_ij = d_i d_j rho^|i - j| with unequal scales d: far from L^T L."""
    d = np.linspace(0.5, 3.0, p)
    idx = np.arange(p)
    return np.outer(d, d) * rho ** np.abs(idx[:, None] - idx[None, :])


ARRAYS = ("updates", "truth", "subspace", "benign", "backbone", "margin")
FITS = ("n", "sigma2_hat", "gram_inverse_trace")


# ------------------------------------------------------------------ shapes, basics
@pytest.mark.parametrize("ridge", [None, 0.5])
def test_shapes_and_types(ridge: float | None) -> None:
    s = make().sample_regression(n=40, sigma=0.3, ridge=ridge, seed=0)
    assert isinstance(s, RegressionSample)
    assert isinstance(s, FederatedSample)
    for arr in (s.updates, s.truth, s.low_rank_truth, s.sparse_truth):
        assert arr.shape == (K, P, Q)
        assert arr.dtype == np.float64
    assert s.subspace.shape == (P, R)
    assert s.backbone.shape == (P, Q)
    for arr in (s.benign, s.margin, s.n, s.sigma2_hat, s.gram_inverse_trace):
        assert arr.shape == (K,)
    assert s.n.dtype == np.int64
    np.testing.assert_array_equal(s.n, 40)
    assert s.contaminated.sum() == 4
    assert s.sigma == 0.3
    assert math.isnan(s.noise)
    assert s.estimator == ("ols" if ridge is None else "ridge")
    assert s.ridge == ridge
    assert s.designs is None
    assert s.responses is None
    assert np.all(s.sigma2_hat > 0)
    assert np.all(s.gram_inverse_trace > 0)
    text = repr(s)
    assert text.startswith("RegressionSample(K=20")
    assert len(text) < 200


def test_arrays_read_only() -> None:
    s = make().sample_regression(n=30, seed=1, keep_data=True)
    for name in ARRAYS + FITS:
        with pytest.raises(ValueError, match="read-only"):
            getattr(s, name)[0] = 0
    with pytest.raises(ValueError, match="read-only"):
        s.designs[0][0, 0] = 0.0  # type: ignore[index]


def test_keep_data_is_the_fitted_data() -> None:
    """With keep_data, Y_k = X_k Theta_k + eps_k and updates = lstsq(X_k, Y_k)."""
    sizes = [P + 1 + 3 * k for k in range(K)]
    s = make().sample_regression(n=sizes, sigma=0.7, seed=2, keep_data=True)
    assert s.designs is not None
    assert s.responses is not None
    assert len(s.designs) == len(s.responses) == K
    for k, (X, Y) in enumerate(zip(s.designs, s.responses, strict=True)):
        assert X.shape == (sizes[k], P)
        assert Y.shape == (sizes[k], Q)
        ols = np.linalg.lstsq(X, Y, rcond=None)[0]
        np.testing.assert_allclose(s.updates[k], ols, rtol=1e-9, atol=1e-11)
        G_inv = np.linalg.inv(X.T @ X)
        assert s.gram_inverse_trace[k] == pytest.approx(np.trace(G_inv), rel=1e-9)


def test_unequal_sample_sizes() -> None:
    sizes = np.array([P + 2, 15, 200, 30] * (K // 4))
    s = make().sample_regression(n=sizes, seed=3, keep_data=True)
    np.testing.assert_array_equal(s.n, sizes)
    assert [X.shape[0] for X in s.designs] == sizes.tolist()  # type: ignore[union-attr]
    # The same sizes as a tuple of Python ints give the same draw.
    t = make().sample_regression(n=tuple(int(x) for x in sizes), seed=3)
    np.testing.assert_array_equal(s.updates, t.updates)
    # More data, smaller error scale: tr((X^T X)^{-1}) is about p / (n - p - 1).
    assert s.gram_inverse_trace[2] < s.gram_inverse_trace[0]


# ---------------------------------------------------------------- reproducibility
def test_reproducible_from_seed() -> None:
    model = make(heterogeneity=0.3)
    kw = {"n": 25, "sigma": 0.5, "design_cov": ar1(P, 0.5)}
    a = model.sample_regression(**kw, seed=7)
    b = model.sample_regression(**kw, seed=7)
    c = model.sample_regression(**kw, seed=np.random.default_rng(7))
    for x in (b, c):
        for name in ARRAYS + FITS:
            np.testing.assert_array_equal(getattr(a, name), getattr(x, name))
    d = model.sample_regression(**kw, seed=8)
    assert not np.array_equal(a.truth, d.truth)
    assert not np.array_equal(a.updates, d.updates)


def test_truth_is_that_of_sample() -> None:
    """The truth is drawn by sample(): it depends on the seed only."""
    model = make(contamination_type="margin", heterogeneity=0.2)
    ref = model.sample(noise=0.3, seed=5)
    for kw in (
        {"n": 40},
        {"n": 12, "sigma": 3.0, "ridge": 2.0},
        {"n": 60, "design_cov": ar1(P, 0.8)},
    ):
        s = model.sample_regression(**kw, seed=5)
        for name in ("truth", "subspace", "benign", "backbone", "margin"):
            np.testing.assert_array_equal(getattr(s, name), getattr(ref, name))


def test_module_function_matches_method() -> None:
    model = make()
    a = model.sample_regression(n=30, sigma=0.2, seed=4)
    b = sample_regression(model, n=30, sigma=0.2, seed=4)
    for name in ARRAYS + FITS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_noiseless_ols_is_exact() -> None:
    s = make().sample_regression(n=P + 3, sigma=0.0, seed=6)
    np.testing.assert_allclose(s.updates, s.truth, rtol=0, atol=1e-9)
    assert np.all(s.sigma2_hat < 1e-20)


# ------------------------------------------------------------- error and variance
def test_ols_error_matches_gram_trace() -> None:
    r"""E[||E_k||_F^2 | X_k] = sigma^2 q tr((X_k^T X_k)^{-1}), then E over X_k.

    Given X_k, vec E_k ~ N(0, sigma^2 I_q (x) G_k^{-1}), G_k = X_k^T X_k, so
    E[||E_k||_F^2 | X_k] = sigma^2 q tr(G_k^{-1}). Hence d_k = ||E_k||_F^2 -
    sigma^2 q tr_k has mean 0 and the d_k are independent over clients and
    replicates (fresh X_k and eps_k; E_k does not involve Theta_k): their mean lies
    within 4 standard errors (sd of the d_k / sqrt(count)) of 0. Second, for
    Sigma = I, E tr(G^{-1}) = p / (n - p - 1) (inverse Wishart mean), the
    approximation of docs/model.md §2.3 (b): the mean of the stored traces lies within 4
    of its standard
    errors of it.
    """
    sigma, n, reps = 0.8, 30, 25
    model = make()
    d, traces = [], []
    for rep in range(reps):
        s = model.sample_regression(n=n, sigma=sigma, seed=100 + rep)
        err = np.sum((s.updates - s.truth) ** 2, axis=(1, 2))
        d.append(err - sigma**2 * Q * s.gram_inverse_trace)
        traces.append(s.gram_inverse_trace)
    d_all, t_all = np.concatenate(d), np.concatenate(traces)
    N = d_all.size
    assert abs(d_all.mean()) < 4 * d_all.std(ddof=1) / math.sqrt(N)
    expected = P / (n - P - 1)
    assert abs(t_all.mean() - expected) < 4 * t_all.std(ddof=1) / math.sqrt(N)


def test_sigma2_hat_unbiased_and_chi2() -> None:
    r"""q (n_k - p) sigma2_hat_k / sigma^2 ~ chi^2_{q (n_k - p)} exactly for OLS.

    The q residual columns are independent, each with RSS_j / sigma^2 ~
    chi^2_{n_k - p} given X_k. So E sigma2_hat_k = sigma^2 and
    sd(sigma2_hat_k) = sigma^2 sqrt(2 / (q (n_k - p))); with unequal n_k the
    standard error of the mean over N values is sqrt(sum_k sd_k^2) / N. The mean
    lies within 4 of them of sigma^2, and the scaled values pass a KS test.
    """
    sigma, reps = 1.7, 10
    sizes = np.array([P + 2, P + 5, 25, 40] * (K // 4))
    vals, sds, pvals = [], [], []
    for rep in range(reps):
        s = make().sample_regression(n=sizes, sigma=sigma, seed=200 + rep)
        vals.append(s.sigma2_hat)
        dof = Q * (sizes - P)
        sds.append(sigma**2 * np.sqrt(2.0 / dof))
        u = stats.chi2.cdf(dof * s.sigma2_hat / sigma**2, dof)  # ~ U(0, 1)
        pvals.append(u)
    v, sd = np.concatenate(vals), np.concatenate(sds)
    se = math.sqrt(float(np.sum(sd**2))) / v.size
    assert abs(v.mean() - sigma**2) < 4 * se
    assert stats.kstest(np.concatenate(pvals), "uniform").pvalue > 1e-3


def test_sigma2_hat_equals_statsmodels() -> None:
    """sigma2_hat = mean over the q columns of OLS(y_j, X).fit().scale."""
    s = make().sample_regression(n=[23] * K, sigma=0.9, seed=9, keep_data=True)
    X, Y = s.designs[3], s.responses[3]  # type: ignore[index]
    fits = [OLS(Y[:, j], X).fit() for j in range(Q)]
    pooled = float(np.mean([f.scale for f in fits]))
    assert s.sigma2_hat[3] == pytest.approx(pooled, rel=1e-10)
    np.testing.assert_allclose(
        s.updates[3], np.column_stack([f.params for f in fits]), rtol=1e-10
    )
    # tr((X^T X)^{-1}) from statsmodels' normalized covariance of the parameters.
    assert s.gram_inverse_trace[3] == pytest.approx(
        np.trace(fits[0].normalized_cov_params), rel=1e-10
    )


# -------------------------------------------------------------------------- ridge
def test_ridge_formula_and_df() -> None:
    """Ridge: (X^T X + a I)^{-1} X^T Y, sigma2_hat = RSS / (q (n - tr H))."""
    alpha = 3.0
    s = make().sample_regression(n=15, ridge=alpha, seed=10, keep_data=True)
    for k in (0, 7):
        X, Y = s.designs[k], s.responses[k]  # type: ignore[index]
        A_inv = np.linalg.inv(X.T @ X + alpha * np.eye(P))
        theta = A_inv @ X.T @ Y
        np.testing.assert_allclose(s.updates[k], theta, rtol=1e-9, atol=1e-12)
        df = np.trace(X @ A_inv @ X.T)
        rss = np.sum((Y - X @ theta) ** 2)
        assert s.sigma2_hat[k] == pytest.approx(rss / (Q * (15 - df)), rel=1e-9)
        var = np.trace(A_inv @ X.T @ X @ A_inv)
        assert s.gram_inverse_trace[k] == pytest.approx(var, rel=1e-9)


def test_ridge_shrinks_toward_zero() -> None:
    """Same seed, same data: ||ridge||_F < ||OLS||_F for every client."""
    model = make()
    ols = model.sample_regression(n=20, sigma=1.0, seed=11)
    ridge = model.sample_regression(n=20, sigma=1.0, ridge=5.0, seed=11)
    norm = np.linalg.norm
    assert np.all(norm(ridge.updates, axis=(1, 2)) < norm(ols.updates, axis=(1, 2)))
    assert np.all(ridge.gram_inverse_trace < ols.gram_inverse_trace)


def test_ridge_to_ols_as_alpha_vanishes() -> None:
    model = make()
    ols = model.sample_regression(n=20, sigma=1.0, seed=12)
    gaps = []
    for alpha in (1e-2, 1e-5, 1e-8):
        r = model.sample_regression(n=20, sigma=1.0, ridge=alpha, seed=12)
        gaps.append(float(np.max(np.abs(r.updates - ols.updates))))
    assert gaps[0] > gaps[1] > gaps[2]
    np.testing.assert_allclose(r.updates, ols.updates, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(r.sigma2_hat, ols.sigma2_hat, rtol=1e-6)
    np.testing.assert_allclose(r.gram_inverse_trace, ols.gram_inverse_trace, rtol=1e-6)


def test_ridge_allows_n_below_p() -> None:
    s = make().sample_regression(n=[1, 3, P, P + 1] * (K // 4), ridge=1.0, seed=13)
    assert np.all(np.isfinite(s.updates))
    assert np.all(np.isfinite(s.sigma2_hat))


# ----------------------------------------------------------------- design covariance
def test_design_cov_rows_have_covariance_sigma() -> None:
    """Pooled rows of X_k: sample covariance within 4.5 sd of Sigma entrywise.

    For Gaussian rows, the sample covariance entry ij has sd about
    sqrt((S_ii S_jj + S_ij^2) / N). A Sigma with unequal scales tells L L^T
    (right) from L^T L (a transposed Cholesky factor).
    """
    Sigma = ar1(P, 0.7)
    s = make().sample_regression(n=200, design_cov=Sigma, seed=14, keep_data=True)
    X = np.concatenate(s.designs)  # type: ignore[arg-type]
    N = X.shape[0]
    S_hat = X.T @ X / N  # mean zero known
    d = np.diag(Sigma)
    sd = np.sqrt((np.outer(d, d) + Sigma**2) / N)
    assert np.all(np.abs(S_hat - Sigma) < 4.5 * sd)
    L = np.linalg.cholesky(Sigma)
    assert np.any(np.abs(S_hat - L.T @ L) > 10 * sd)  # the test can tell them apart


def test_design_cov_error_scale() -> None:
    """E tr((X^T X)^{-1}) = tr(Sigma^{-1}) / (n - p - 1): 4 standard errors."""
    Sigma, n = ar1(P, 0.5), 40
    traces = np.concatenate(
        [
            make()
            .sample_regression(n=n, design_cov=Sigma, seed=300 + i)
            .gram_inverse_trace
            for i in range(10)
        ]
    )
    expected = np.trace(np.linalg.inv(Sigma)) / (n - P - 1)
    se = traces.std(ddof=1) / math.sqrt(traces.size)
    assert abs(traces.mean() - expected) < 4 * se


def test_fit_local_validates() -> None:
    X = np.random.default_rng(0).standard_normal((12, 4))
    fit = fit_local(X, X[:, :2] + 0.1)
    assert fit.estimate.shape == (4, 2)
    assert fit.df == pytest.approx(4.0)
    with pytest.raises(ValueError, match="same n"):
        fit_local(X, X[:5])
    with pytest.raises(ValueError, match="use ridge"):
        fit_local(X[:4], X[:4])
    with pytest.raises(ValueError, match="rank deficient"):
        fit_local(np.column_stack([X, X[:, 0]]), X)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n": P}, ValueError, r"OLS needs n_k > p = 10.*use ridge"),
        ({"n": 5}, ValueError, "use ridge=alpha > 0 or more samples"),
        ({"n": [30] * (K - 1) + [P]}, ValueError, r"client\(s\) \[19\] have n_k"),
        ({"n": [30] * (K - 1)}, ValueError, "n must have length K = 20"),
        ({"n": [[30] * K]}, ValueError, "n must have length K = 20"),
        ({"n": [30.0] * K}, TypeError, "n must hold ints"),
        ({"n": 30.0}, TypeError, "n must be an int or a sequence"),
        ({"n": True}, TypeError, "n must be an int or a sequence"),
        ({"n": "30"}, TypeError, "n must be an int or a sequence"),
        ({"n": 0, "ridge": 1.0}, ValueError, "ridge needs n_k >= 1"),
        ({"n": 30, "ridge": 0.0}, ValueError, "ridge=None for OLS"),
        ({"n": 30, "ridge": -1.0}, ValueError, "ridge must be finite and > 0"),
        ({"n": 30, "sigma": -1.0}, ValueError, "sigma must be finite and >= 0"),
        ({"n": 30, "sigma": float("nan")}, ValueError, "sigma must be finite"),
        ({"n": 30, "design_cov": np.eye(P + 1)}, ValueError, r"shape \(p, p\)"),
        (
            {"n": 30, "design_cov": np.diag([1.0] * (P - 1) + [-1.0])},
            ValueError,
            "symmetric positive definite",
        ),
        (
            {"n": 30, "design_cov": np.zeros((P, P))},
            ValueError,
            "symmetric positive definite",
        ),
        (
            {"n": 30, "design_cov": np.eye(P) + np.triu(np.ones((P, P)), 1)},
            ValueError,
            "design_cov must be symmetric",
        ),
        (
            {"n": 30, "design_cov": np.full((P, P), np.nan)},
            ValueError,
            "design_cov must be finite",
        ),
        ({"n": 30, "keep_data": 1}, TypeError, "keep_data must be True or False"),
    ],
)
def test_invalid_input(kwargs: dict[str, object], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        make().sample_regression(seed=0, **kwargs)  # type: ignore[arg-type]

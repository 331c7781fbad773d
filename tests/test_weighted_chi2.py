"""The weighted chi-square law and its ratio to a chi-square (pipeline.weighted_chi2).

References used below: scipy's chi2 and F laws (equal weights), the one-dimensional
integral over one chi-square of the other's survival function (two weights of any
signs), Imhof's integral on the real line by scipy.integrate.quad (many weights),
and Monte Carlo with a fixed seed.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import scipy.special
import scipy.stats

import clair_stats.pipeline.weighted_chi2 as wc
from clair_stats.pipeline.weighted_chi2 import (
    energy_sf,
    projected_eigenvalues,
    weighted_chi2_sf,
)

# quantile levels of the bulk: x runs from the 1e-6 to the 1 - 1e-6 quantile
BULK = np.concatenate(
    [[1e-6, 1e-4, 1e-2], np.linspace(0.05, 0.95, 19), [0.99, 1 - 1e-4]]
)


@pytest.fixture
def integral_rows(monkeypatch):
    """The number of rows that went through the inversion integral (no shortcut)."""
    calls = []
    original = wc._trapezoid

    def counting(x, *args):
        calls.append(x.size)
        return original(x, *args)

    monkeypatch.setattr(wc, "_trapezoid", counting)
    return calls


@pytest.mark.parametrize("dof", [1, 2, 3, 5, 10, 30, 100, 500])
def test_equal_weights_give_the_chi2_law(dof, integral_rows):
    """c chi^2_D: P(Q > x) = chi2.sf(x / c, D) to 1e-10 over the bulk, whether D
    is one weight's dof or split over three equal weights, and every value comes
    from the inversion integral (there is no equal-weight shortcut)."""
    c = 2.5
    t = scipy.stats.chi2.isf(BULK, dof)
    exact = scipy.stats.chi2.sf(t, dof)
    one = weighted_chi2_sf(c * t, [c], [dof])
    split = np.array([dof / 3, dof / 3, dof - 2 * dof / 3])
    three = weighted_chi2_sf(c * t, [c, c, c], split)
    np.testing.assert_allclose(one, exact, rtol=0, atol=1e-10)
    np.testing.assert_allclose(three, exact, rtol=0, atol=1e-10)
    assert sum(integral_rows) >= 2 * t.size


@pytest.mark.parametrize(
    ("d", "nu"), [(1, 1), (1, 5), (2, 1), (3, 7), (10, 2), (30, 40), (120, 500)]
)
def test_ratio_with_equal_eigenvalues_is_the_f_law(d, nu):
    """P(c chi^2_d / (chi^2_nu / nu) > e) = f.sf(e / (c d), d, nu) to 1e-10, with
    d eigenvalues c of multiplicity 1, or d / 2 of multiplicity 2 (when d is
    even): the mixed-sign weighted chi-square with x = 0 behind energy_sf."""
    c = 0.7
    e = c * d * scipy.stats.f.isf(BULK, d, nu)
    exact = scipy.stats.f.sf(e / (c * d), d, nu)
    p = energy_sf(e, np.full((e.size, d), c), 1, noise_df=nu)
    np.testing.assert_allclose(p, exact, rtol=0, atol=1e-10)
    if d % 2 == 0:
        p2 = energy_sf(e, np.full(d // 2, c), 2, noise_df=nu)
        np.testing.assert_allclose(p2, exact, rtol=0, atol=1e-10)


def _two_weight_sf(x: float, a: float, m: float, b: float, n: float) -> float:
    """P(a chi^2_m + b chi^2_n > x), b != 0, by conditioning on V ~ chi^2_n:
    E[P(a chi^2_m > x - b V)], a smooth one-dimensional integral."""
    log_norm = -scipy.special.gammaln(n / 2) - (n / 2) * np.log(2.0)
    side = scipy.special.chdtrc if a > 0 else scipy.special.chdtr

    def inner(v: float) -> float:
        density = np.exp(log_norm + (n / 2 - 1) * np.log(v) - v / 2)
        return density * side(m, max((x - b * v) / a, 0.0))

    points = scipy.stats.chi2.ppf([1e-12, 0.01, 0.5, 0.99], n).tolist()
    return scipy.integrate.quad(
        inner,
        0,
        scipy.stats.chi2.isf(1e-17, n),
        points=points,
        epsabs=1e-14,
        epsrel=1e-12,
        limit=400,
    )[0]


@pytest.mark.parametrize(
    ("a", "m", "b", "n"),
    [(1.0, 1, 0.3, 2), (1.0, 3, -0.5, 4), (-0.2, 2, 1.0, 5), (1.0, 0.5, -1.0, 7.5)],
)
def test_two_weights_of_any_sign_match_a_one_dimensional_integral(a, m, b, n):
    """Unequal and mixed-sign weights (integer or not dofs) against the
    conditional integral E_V[P(a chi^2_m > x - b V)]: within 1e-10 (the
    reference's own accuracy) from the lower to the upper tail."""
    mean = a * m + b * n
    sd = np.sqrt(2 * (a * a * m + b * b * n))
    for x in mean + sd * np.array([-2.0, -0.7, 0.0, 0.4, 1.5, 3.0, 5.0]):
        exact = _two_weight_sf(x, a, m, b, n)
        assert weighted_chi2_sf(x, [a, b], [m, n]) == pytest.approx(exact, abs=1e-10)


def _imhof_real_line(x: float, w: np.ndarray, h: np.ndarray) -> float:
    """Imhof's formula as printed, by scipy.integrate.quad:
    P(Q > x) = 1/2 + (1/pi) int_0^inf sin(theta(u)) / (u rho(u)) du,
    theta(u) = sum_j h_j arctan(w_j u) / 2 - x u / 2,
    rho(u) = prod_j (1 + w_j^2 u^2)^(h_j / 4);
    the integrand tends to (sum_j h_j w_j - x) / 2 as u -> 0. Truncated at U
    where the bound |tail| <= (1/pi) int_U^inf du / (u rho(u)) <= 2 U^(-D/2) /
    (pi D prod_j |w_j|^(h_j/2)) (D = sum_j h_j) is below 1e-13: fine for the
    large D used here, hopeless for D = 1 (U ~ 1e26)."""

    def integrand(u: float) -> float:
        if u == 0.0:
            return 0.5 * (np.sum(h * w) - x)
        theta = 0.5 * np.sum(h * np.arctan(w * u)) - 0.5 * x * u
        rho = np.exp(0.25 * np.sum(h * np.log1p((w * u) ** 2)))
        return np.sin(theta) / (u * rho)

    total = np.sum(h)
    log_u = (
        np.log(2 / (np.pi * total * 1e-13)) - 0.5 * np.sum(h * np.log(np.abs(w)))
    ) / (total / 2)
    upper = float(np.exp(log_u))
    value = scipy.integrate.quad(
        integrand, 0, upper, limit=2000, epsabs=1e-13, epsrel=1e-12
    )[0]
    return 0.5 + value / np.pi


def test_many_weights_match_imhofs_integral_on_the_real_line():
    """Imhof's formula is what the module computes (on a deformed path): against
    the printed real-line integral, within 1e-10, for 12 unequal weights of
    multiplicity 3 with and without a negative weight."""
    rng = np.random.default_rng(3)
    lam = rng.uniform(0.1, 1.0, 12)
    for weights in (lam, np.append(lam, -2.0)):
        h = np.full(weights.size, 3.0)
        mean, sd = np.sum(h * weights), np.sqrt(2 * np.sum(h * weights**2))
        for x in mean + sd * np.array([-1.5, 0.0, 1.0, 3.0]):
            reference = _imhof_real_line(x, weights, h)
            assert weighted_chi2_sf(x, weights, h) == pytest.approx(
                reference, abs=1e-10
            )


def _monte_carlo_check(weights, dofs, xs, seed):
    """p against the fraction p^ of N = 10^6 draws of Q above x.

    p^ is Binomial(N, p) / N, of standard deviation sqrt(p (1 - p) / N); the
    tolerance |p^ - p| <= 5 sqrt(p (1 - p) / N) + 1 / N fails by chance with
    probability about 6e-7 per value (the 1 / N covers p ~ 0), and the seed is
    fixed, so a failure means a wrong p.
    """
    n_draws = 10**6
    rng = np.random.default_rng(seed)
    q = sum(w * rng.chisquare(h, n_draws) for w, h in zip(weights, dofs, strict=True))
    p = weighted_chi2_sf(xs, weights, dofs)
    p_hat = np.mean(q[:, None] > xs[None, :], axis=0)
    tolerance = 5 * np.sqrt(p * (1 - p) / n_draws) + 1 / n_draws
    assert np.all(np.abs(p_hat - p) <= tolerance), (p, p_hat, tolerance)


def test_unequal_positive_weights_against_monte_carlo():
    weights = np.array([3.0, 1.0, 0.5, 0.1, 0.02])
    dofs = np.array([1, 2, 5, 3, 10])
    mean, sd = np.sum(weights * dofs), np.sqrt(2 * np.sum(weights**2 * dofs))
    _monte_carlo_check(
        weights, dofs, mean + sd * np.array([-1.0, 0.0, 1.0, 2.0, 4.0]), 7
    )


def test_mixed_sign_weights_against_monte_carlo():
    weights = np.array([2.0, 0.7, -1.5, -0.2])
    dofs = np.array([2, 3, 1, 4])
    mean, sd = np.sum(weights * dofs), np.sqrt(2 * np.sum(weights**2 * dofs))
    _monte_carlo_check(
        weights, dofs, mean + sd * np.array([-3.0, -1.0, 0.0, 1.0, 3.0]), 11
    )


@pytest.mark.parametrize("dof", [1, 4, 50, 400])
def test_far_tail_keeps_relative_accuracy_chi2(dof):
    """Between p = 1e-12 and 1e-30 the p-value keeps a relative error below
    1e-11 against chi2.sf, and below 1e-10 on to p = 1e-300 (measured: 2.2e-13
    and 1.8e-12): the integral runs through the saddlepoint, where the
    integrand has the size of the answer, so there is no absolute-error floor
    and no switch to an approximation."""
    levels = 10.0 ** -np.array([12, 15, 20, 25, 30, 100, 300])
    t = scipy.stats.chi2.isf(levels, dof)
    p = weighted_chi2_sf(1.3 * t, [1.3], [dof])
    exact = scipy.stats.chi2.sf(t, dof)
    np.testing.assert_allclose(p[:5], exact[:5], rtol=1e-11, atol=0)
    np.testing.assert_allclose(p[5:], exact[5:], rtol=1e-10, atol=0)


@pytest.mark.parametrize(("d", "nu"), [(1, 3), (5, 10), (40, 30), (300, 100)])
def test_far_tail_keeps_relative_accuracy_f(d, nu):
    """The ratio law between p = 1e-12 and 1e-30: relative error below 1e-11
    against f.sf (measured: below 1.5e-13)."""
    levels = 10.0 ** -np.array([12, 15, 20, 25, 30])
    # F quantiles from logsf (f.isf overflows there); f.sf is accurate to 1e-14
    # relative at 1e-30 (checked against mpmath's incomplete beta)
    t = [
        np.exp(
            scipy.optimize.brentq(
                lambda u, lv=lv: scipy.stats.f.logsf(np.exp(u), d, nu) - lv, -5, 300
            )
        )
        for lv in np.log(levels)
    ]
    e = 0.4 * d * np.array(t)
    p = energy_sf(e, np.full(d, 0.4), 1, noise_df=nu)
    np.testing.assert_allclose(p, scipy.stats.f.sf(e / (0.4 * d), d, nu), rtol=1e-11)
    np.testing.assert_allclose(p, levels, rtol=1e-6)


@pytest.mark.parametrize("factor", [1e-300, 1e300])
def test_scale_invariance(factor):
    """P(sum w_j chi^2 > x) = P(sum (a w_j) chi^2 > a x): identical p-values at
    a = 1e-300 and 1e300 (the computation divides by max |w_j| first)."""
    weights = np.array([2.0, 0.5, -0.8, 0.01])
    dofs = np.array([3, 1, 2, 6])
    xs = np.array([-4.0, 0.0, 1.0, 5.0, 20.0, 60.0])
    p = weighted_chi2_sf(xs, weights, dofs)
    scaled = weighted_chi2_sf(factor * xs, factor * weights, dofs)
    np.testing.assert_allclose(scaled, p, rtol=1e-12, atol=1e-300)
    assert np.all((p > 0) & (p < 1))


def test_rows_are_independent_and_shapes_broadcast():
    """(K, d) weights with K thresholds equal K separate calls; one weight vector
    against many thresholds keeps their shape; a scalar comes back a float."""
    rng = np.random.default_rng(5)
    weights = rng.uniform(-1, 1, (6, 4))
    dofs = rng.integers(1, 5, (6, 4))
    xs = rng.uniform(-2, 6, 6)
    batch = weighted_chi2_sf(xs, weights, dofs)
    single = [weighted_chi2_sf(xs[k], weights[k], dofs[k]) for k in range(6)]
    np.testing.assert_allclose(batch, single, rtol=1e-14, atol=1e-16)
    assert isinstance(single[0], float)
    grid = weighted_chi2_sf(np.linspace(0, 9, 12).reshape(3, 4), [1.0, 2.0])
    assert grid.shape == (3, 4)
    assert np.all(np.diff(grid.ravel()) < 0)  # decreasing in x


def test_zero_weights_drop_out_and_degenerate_laws():
    """Zero weights change nothing; with all weights zero Q = 0; with weights of
    one sign the far side of 0 has probability exactly 0 or 1."""
    xs = np.array([0.5, 2.0, 7.0])
    np.testing.assert_allclose(
        weighted_chi2_sf(xs, [1.0, 0.0, 2.0, 0.0], [2, 5, 3, 1]),
        weighted_chi2_sf(xs, [1.0, 2.0], [2, 3]),
        rtol=1e-14,
    )
    np.testing.assert_array_equal(
        weighted_chi2_sf([-1.0, 0.0, 1.0], [0.0, 0.0]), [1, 0, 0]
    )
    np.testing.assert_array_equal(weighted_chi2_sf([-1.0, 0.0], [1.0, 3.0]), [1, 1])
    np.testing.assert_array_equal(weighted_chi2_sf([0.0, 1.0], [-1.0, -3.0]), [0, 0])
    # beyond double precision in either direction: exactly 0 or 1, no warning
    np.testing.assert_array_equal(weighted_chi2_sf([1e5, 1e300], [1.0], [3]), [0, 0])
    assert weighted_chi2_sf(1e-200, [1.0], [4]) == 1.0


def test_energy_sf_known_variance_and_ratio():
    """noise_df None is the weighted chi-square of the eigenvalues with dof q
    (zero eigenvalues drop out); with noise_df the ratio law, whose upper tail
    is heavier and shrinks to the known-variance one as noise_df grows."""
    rng = np.random.default_rng(2)
    lam = np.c_[np.zeros((4, 2)), rng.uniform(0.1, 2, (4, 7))]  # r = 2 zeros
    e = rng.uniform(5, 60, 4)
    known = energy_sf(e, lam, 3)
    np.testing.assert_allclose(known, weighted_chi2_sf(e, lam[:, 2:], 3), rtol=1e-13)
    one = lam[0, 2:]
    e_tail = 3 * one.sum() + 5 * np.sqrt(2 * 3 * np.sum(one**2))  # p ~ 1e-4
    p_known = energy_sf(e_tail, one, 3)
    nus = np.array([5, 20, 80, 10**7])
    ratio = energy_sf(np.full(4, e_tail), one, 3, noise_df=nus)
    assert np.all(np.diff(ratio) < 0)
    assert np.all(ratio > p_known)
    assert ratio[-1] == pytest.approx(p_known, rel=1e-4)
    assert energy_sf(0.0, [1.0, 2.0], 2, noise_df=4) == 1.0


def test_projected_eigenvalues_are_those_of_the_projected_covariance():
    rng = np.random.default_rng(4)
    p, r, n_clients = 7, 2, 3
    basis = np.linalg.qr(rng.standard_normal((p, r)))[0]
    factors = rng.standard_normal((n_clients, p, p))
    cov = factors @ np.swapaxes(factors, 1, 2)
    lam = projected_eigenvalues(cov, basis)
    assert lam.shape == (n_clients, p - r)
    proj = np.eye(p) - basis @ basis.T
    for k in range(n_clients):
        full = np.linalg.eigvalsh(proj @ cov[k] @ proj)  # r zeros, then the rest
        np.testing.assert_allclose(np.sort(full)[r:], lam[k], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            projected_eigenvalues(cov[k], basis), lam[k], rtol=1e-12
        )
    # a singular covariance: round-off negatives come back as exact zeros
    low_rank = factors[0][:, :3] @ factors[0][:, :3].T
    assert np.all(projected_eigenvalues(low_rank, basis) >= 0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: weighted_chi2_sf(1.0, [1.0, 2.0], [1, -1]), "dofs must be > 0"),
        (lambda: weighted_chi2_sf(1.0, [1.0, 2.0], [1, 0]), "dofs must be > 0"),
        (lambda: weighted_chi2_sf(np.nan, [1.0]), "x must be finite"),
        (lambda: weighted_chi2_sf(1.0, [1.0, np.nan]), "weights must be finite"),
        (lambda: weighted_chi2_sf(1.0, [1.0, np.inf]), "weights must be finite"),
        (lambda: weighted_chi2_sf(1.0, 2.0), r"shape \(d,\) or \(K, d\)"),
        (lambda: weighted_chi2_sf(1.0, [1.0, 2.0], [1, 2, 3]), "do not broadcast"),
        (
            lambda: weighted_chi2_sf([1.0, 2.0, 3.0], np.ones((2, 4))),
            "does not broadcast",
        ),
        (lambda: energy_sf([1.0, 2.0], np.ones((3, 4)), 2), "does not match"),
        (lambda: energy_sf(1.0, np.ones((2, 2, 2)), 2), r"shape \(d,\) or \(K, d\)"),
        (lambda: energy_sf(1.0, [1.0, -0.5], 2), "must be >= 0"),
        (lambda: energy_sf(-1.0, [1.0], 2), "energy must be >= 0"),
        (lambda: energy_sf(1.0, [1.0], 0), "multiplicity must be finite and > 0"),
        (lambda: energy_sf(1.0, [1.0], 2, noise_df=-3), "noise_df must be > 0"),
        (
            lambda: energy_sf([1.0, 2.0], [1.0], 2, noise_df=[3, 4, 5]),
            "noise_df of shape",
        ),
        (lambda: projected_eigenvalues(np.ones((3, 2)), np.eye(3)[:, :1]), "square"),
        (
            lambda: projected_eigenvalues(
                np.array([[1.0, 0.5], [0.2, 1.0]]), np.eye(2)[:, :1]
            ),
            "must be symmetric",
        ),
        (
            lambda: projected_eigenvalues(np.diag([1.0, -1.0, 2.0]), np.eye(3)[:, :1]),
            "not positive semidefinite",
        ),
        (
            lambda: projected_eigenvalues(np.eye(3), np.ones((3, 1))),
            "orthonormal columns",
        ),
        (lambda: projected_eigenvalues(np.eye(3), np.eye(4)[:, :1]), "p = 3 rows"),
        (
            lambda: projected_eigenvalues(np.full((3, 3), np.nan), np.eye(3)[:, :1]),
            "NaN",
        ),
    ],
)
def test_input_errors_say_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()

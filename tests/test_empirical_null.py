"""The empirical-null test of the off-subspace energies (pipeline.empirical_null)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from clair_stats.pipeline.empirical_null import (
    NullLaw,
    energy_p_values,
    null_law,
    robust_z,
)


def test_rows_are_independent_families_and_the_score_is_scale_free():
    """A (M, K) call equals M calls on the rows; rescaling all energies changes
    nothing; raising one client's energy by 1000x shifts its z by log(1000) /
    (its others' scale) and lowers its p-value."""
    rng = np.random.default_rng(1)
    n_clients = 10
    batch = np.exp(rng.standard_normal((4, n_clients)))
    z_all, p_all = energy_p_values(batch)
    for i, row in enumerate(batch):
        z, p = energy_p_values(row)
        np.testing.assert_array_equal(z, z_all[i])
        np.testing.assert_array_equal(p, p_all[i])
    energies = batch[0].copy()
    z, p = energy_p_values(energies)
    z2, p2 = energy_p_values(1e-8 * energies)
    np.testing.assert_allclose(z2, z, rtol=1e-9)
    np.testing.assert_allclose(p2, p, rtol=1e-9)
    others = np.log(np.delete(energies, 3))
    scale = np.median(np.abs(others - np.median(others))) / scipy.stats.norm.ppf(0.75)
    energies[3] *= 1e3
    z3, p3 = energy_p_values(energies)
    assert z3[3] == pytest.approx(z[3] + np.log(1e3) / scale, rel=1e-4)
    assert p3[3] < p[3]


def test_robust_z_is_the_leave_one_out_formula():
    """z_k = (log E_k - med_{j != k} log E_j) / (1.4826 MAD_{j != k} log E_j),
    computed here client by client with numpy's median."""
    rng = np.random.default_rng(2)
    energies = np.exp(rng.standard_normal(7))
    logs = np.log(energies)
    expected = []
    for k in range(7):
        others = np.delete(logs, k)
        med = np.median(others)
        mad = np.median(np.abs(others - med)) / scipy.stats.norm.ppf(0.75)
        expected.append((logs[k] - med) / mad)
    np.testing.assert_allclose(robust_z(energies), expected, rtol=1e-12)


def test_null_law_matches_direct_simulation_of_the_score():
    """The tabulated P(Z >= z) (conditional Monte Carlo) agrees with the frequency
    of Z >= z in 100000 direct simulations of the score of one of K = 12 iid
    normals. The frequency is Binomial(n, P) / n with sd sqrt(P (1 - P) / n)
    (at most 0.0016); 4.5 sd bound a false failure at 1e-5 per point (normal
    approximation), and the table's own Monte Carlo error (50000 conditional
    draws) is far smaller. The law is also decreasing, 1/2 at 0 (Z is
    symmetric) and cached per (K, draws, seed)."""
    law = null_law(12)
    assert null_law(12) is law
    rng = np.random.default_rng(3)
    n = 100000
    x = rng.standard_normal((n, 12))
    others = x[:, 1:]
    med = np.median(others, axis=1)
    mad = np.median(np.abs(others - med[:, None]), axis=1) / scipy.stats.norm.ppf(0.75)
    z = (x[:, 0] - med) / mad
    points = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    table = law.sf(points)
    for point, value in zip(points, table, strict=True):
        sd = np.sqrt(value * (1 - value) / n)
        assert abs(np.mean(z >= point) - value) <= 4.5 * sd
    assert np.all(np.diff(law.sf(np.linspace(-10, 10, 201))) < 0)
    assert np.all(np.diff(law.sf(np.linspace(-1e4, 1e4, 2001))) <= 0)
    assert table[2] == pytest.approx(0.5, abs=4.5 * np.sqrt(0.25 / 50000))


@pytest.mark.parametrize(
    ("energies", "error", "message"),
    [
        (np.array([1.0, 0.0, 2.0, 3.0]), ValueError, "> 0"),
        (np.array([1.0, np.nan, 2.0, 3.0]), ValueError, "finite"),
        (np.array([1.0, 1.0, 1.0, 2.0]), ValueError, "MAD 0"),
        (np.array([1.0, 2.0]), ValueError, "K >= 3"),
        (np.array(["a", "b", "c"]), TypeError, "real numbers"),
    ],
)
def test_bad_energies_are_refused(energies, error, message):
    with pytest.raises(error, match=message):
        energy_p_values(energies)


def test_law_from_known_location_and_scale_is_normal_and_shifted():
    """With every draw at (m, s) = (0, 1), Z = X is N(0, 1); with (m, s) = (1, 2),
    P(Z >= z) = Phi-bar(1 + 2 z).

    Tolerance: sf interpolates f(u) = log P(Z >= sinh u) linearly on a grid of
    step h = asinh(1e4) / 120 = 0.0825, so |error of log P| <= h^2 / 8 max |f''|.
    With g = log Phi-bar and w = a + b sinh u, f'' = g''(w) b^2 cosh^2 u + g'(w) b
    sinh u; over z in [-3, 6] (a, b = 0, 1) |f''| <= 73.1, and over z in [-3, 3]
    (a, b = 1, 2, where P > 1e-12) |f''| <= 82.1 (both at the right end, where
    |g''| -> 1 and |g'(w)| ~ w). So the relative error is at most
    exp(0.0825^2 x 82.1 / 8) - 1 = 0.073.
    """
    z = np.linspace(-3.0, 6.0, 37)
    draws = np.ones(100)
    standard = NullLaw.from_draws(0 * draws, draws, n_clients=5, seed=0)
    shifted = NullLaw.from_draws(draws, 2 * draws, n_clients=5, seed=0)
    assert standard.draws == 100
    assert standard.n_clients == 5
    np.testing.assert_allclose(standard.sf(z), scipy.stats.norm.sf(z), rtol=0.073)
    keep = scipy.stats.norm.sf(1 + 2 * z) > 1e-12
    assert z[keep].max() >= 3.0
    np.testing.assert_allclose(
        shifted.sf(z[keep]), scipy.stats.norm.sf(1 + 2 * z[keep]), rtol=0.073
    )

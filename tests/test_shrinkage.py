"""Step 4's in-subspace pooling (shrink) and the A^ refitted on S^ (final_subspace).

docs/pipeline.md §3.4; the risk is checked against T4 in
theory_checks/test_t4_shrinkage.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from clair_stats import (
    LowRankUpdates,
    clair,
    refine,
    refine_clients,
    shrinkage_factors,
)
from clair_stats.core.linalg import top_subspace
from clair_stats.evaluation.metrics import projection_distance
from clair_stats.solvers.factored import refine_factored


def _federation(delta, tau=0.05, p=40, q=6, r=3, n_clients=40, seed=0, bad=0):
    """Benign Theta_k = A (Bbar + delta Z_k)^T, direct noise tau; ``bad``
    clients (the last ones) replaced by large random updates."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((p, r)))[0]
    common = rng.standard_normal((q, r))
    truth = np.stack(
        [
            basis @ (common + delta * rng.standard_normal((q, r))).T
            for _ in range(n_clients)
        ]
    )
    observed = truth + tau * rng.standard_normal(truth.shape)
    benign = np.ones(n_clients, dtype=bool)
    if bad:
        benign[-bad:] = False
        observed[-bad:] = 3 * rng.standard_normal((bad, p, q))
    return truth, observed, benign, basis


def _mse(refined, truth, benign):
    return float(np.mean(np.sum((refined - truth)[benign] ** 2, axis=(1, 2))))


# ----------------------------------------------------------- shrinkage_factors
def test_equal_weights_and_noise_give_the_lindley_james_stein_factor():
    rng = np.random.default_rng(1)
    n, dim = 12, 10
    y = rng.standard_normal((n, dim)) * 0.7
    v = np.full(n, dim * 0.25)  # sigma^2 = 0.25 per coordinate
    found = shrinkage_factors(y @ y.T, v, np.full(n, 1 / n), dim)
    spread = np.sum((y - y.mean(axis=0)) ** 2)
    dof = (n - 1) * dim
    expected = min(1.0, (dof - 2) * 0.25 / spread)
    np.testing.assert_allclose(found.factors, expected, rtol=1e-12)
    assert found.dof == pytest.approx(dof)


def test_factors_are_one_when_clients_agree_and_fall_with_their_spread():
    rng = np.random.default_rng(2)
    n, dim = 20, 6
    noise = rng.standard_normal((n, dim)) * 0.1
    factors = []
    for spread in (0.0, 0.1, 1.0, 10.0):
        y = noise + spread * rng.standard_normal((n, dim))
        found = shrinkage_factors(
            y @ y.T, np.full(n, dim * 0.01), np.full(n, 1 / n), dim
        )
        factors.append(found.factors[0])
    # pure noise: S' / (D sigma^2) ~ chi^2_D / D with D = 114, sd sqrt(2 / D) =
    # 0.13, so b = min(1, (D - 2) sigma^2 / S') > (112 / 114) / (1 + 3 * 0.13)
    assert factors[0] > 0.7
    assert np.all(np.diff(factors) < 0)
    assert factors[-1] < 1e-3


def test_noisier_clients_are_pooled_more():
    rng = np.random.default_rng(3)
    n, dim = 30, 8
    sd = np.where(np.arange(n) < 15, 0.1, 0.4)
    y = rng.standard_normal((n, dim)) * 0.3 + sd[:, None] * rng.standard_normal(
        (n, dim)
    )
    found = shrinkage_factors(y @ y.T, dim * sd**2, np.full(n, 1 / n), dim)
    assert np.all(found.factors[15:] > found.factors[:15])
    # b_k = v_k / (v_k + T^) for the one T^
    np.testing.assert_allclose(
        found.factors, found.noise / (found.noise + found.between)
    )


def test_too_few_clients_keep_their_parts():
    found = shrinkage_factors(np.eye(1), np.ones(1), np.ones(1), 1)
    assert found.factors.tolist() == [0.0]


# ---------------------------------------------------------------------- refine
def test_refine_interpolates_between_keep_and_the_mean():
    _, observed, benign, basis = _federation(0.1, bad=5)
    keep = refine(observed, basis, benign)
    pool = refine(observed, basis, benign, shrinkage=1.0)
    half = refine(observed, basis, benign, shrinkage=0.5)
    mean = observed[benign].mean(axis=0)
    np.testing.assert_allclose(pool[benign], np.broadcast_to(mean, pool[benign].shape))
    np.testing.assert_allclose(half, (keep + pool) / 2, atol=1e-12)
    np.testing.assert_array_equal(half[~benign], observed[~benign])


@pytest.mark.parametrize("bad", [1.5, -0.1, np.nan])
def test_refine_rejects_factors_outside_the_unit_interval(bad):
    _, observed, benign, basis = _federation(0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        refine(observed, basis, benign, shrinkage=bad)


def test_refine_rejects_a_boolean_factor():
    _, observed, benign, basis = _federation(0.1)
    with pytest.raises(TypeError, match="shrinkage"):
        refine(observed, basis, benign, shrinkage=True)


def test_factored_refinement_with_shrinkage_equals_the_dense_one():
    rng = np.random.default_rng(4)
    n_clients, p, q, rank = 8, 30, 20, 3
    factors_b = [rng.standard_normal((p, rank)) for _ in range(n_clients)]
    factors_a = [rng.standard_normal((rank, q)) for _ in range(n_clients)]
    updates = LowRankUpdates(factors_b, factors_a)
    dense = np.stack([b @ a for b, a in zip(factors_b, factors_a, strict=True)])
    subspace = np.linalg.qr(rng.standard_normal((p, 2)))[0]
    collaborative = np.arange(n_clients) != 3
    b = rng.uniform(0, 1, n_clients)
    weights = rng.uniform(0.5, 1.5, n_clients)
    expected = refine(dense, subspace, collaborative, weights, b)
    got = refine_factored(
        updates, subspace, collaborative, rank=p, weights=weights, shrinkage=b
    )
    product = np.stack([bb @ aa for bb, aa in zip(got.B, got.A, strict=True)])
    np.testing.assert_allclose(product, expected, atol=1e-10)


# ----------------------------------------------------------------------- clair
def test_clair_pools_identical_clients_like_fedavg_over_the_benign_set():
    truth, observed, benign, _ = _federation(0.0, bad=6)
    result = clair(observed)
    assert np.array_equal(result.collaborative, benign)
    fedavg = observed.copy()
    fedavg[benign] = observed[benign].mean(axis=0)
    keep = clair(observed, shrink="none")
    # b^ = 1 up to the chance that the spread of pure noise exceeds its mean by
    # the James-Stein factor D / (D - 2): then the MSE is FedAvg's exactly
    assert _mse(result.refined, truth, benign) <= 1.05 * _mse(fedavg, truth, benign)
    assert _mse(result.refined, truth, benign) < 0.5 * _mse(keep.refined, truth, benign)
    assert result.shrinkage.factors[benign].min() > 0.9
    assert np.all(result.shrinkage.factors[~benign] == 0)


def test_clair_keeps_clients_that_differ_much_more_than_their_noise():
    truth, observed, benign, _ = _federation(2.0, bad=6)
    result = clair(observed)
    keep = clair(observed, shrink="none")
    assert result.shrinkage.factors[benign].max() < 0.01
    # b^ ~ tau^2 / delta^2 = 6e-4: the two refinements differ by that share of
    # the in-subspace deviations
    np.testing.assert_allclose(
        _mse(result.refined, truth, benign),
        _mse(keep.refined, truth, benign),
        rtol=0.01,
    )


@pytest.mark.parametrize("delta", [0.0, 0.02, 0.05, 0.2, 1.0])
def test_clair_is_never_far_worse_than_the_better_of_keep_and_pool(delta):
    tau = 0.05
    truth, observed, benign, _ = _federation(delta, tau=tau, seed=5)
    auto = _mse(clair(observed, sigma=tau).refined, truth, benign)
    keep = _mse(clair(observed, sigma=tau, shrink="none").refined, truth, benign)
    pool = _mse(clair(observed, sigma=tau, shrink=1.0).refined, truth, benign)
    # T4's bound: 4 tau^2 / m per client above the best fixed b, in expectation;
    # one draw of 40 clients with r q = 18 coordinates each: the in-subspace
    # risk has relative sd about sqrt(2 / (m r q)) = 0.05, so allow 3 sd of it
    # on top of the bound
    m, rq = int(benign.sum()), 18
    slack = 4 * tau**2 / m + 3 * np.sqrt(2 / (m * rq)) * rq * tau**2
    assert auto <= min(keep, pool) + slack


def test_the_paper_refinement_is_one_option_away():
    _, observed, benign, _ = _federation(0.1, bad=6)
    result = clair(
        observed,
        refit="none",
        pooling="mean",
        shrink="none",
        final_subspace="detection",
    )
    expected = refine(observed, result.subspace, result.collaborative)
    np.testing.assert_allclose(result.refined, expected, atol=1e-12)
    assert result.detection_subspace is None


def test_the_final_subspace_is_the_oracle_when_the_test_finds_s():
    _, observed, benign, basis = _federation(1.0, tau=0.2, bad=8, seed=6)
    result = clair(observed, rank=3, sigma=0.2)
    assert np.array_equal(result.collaborative, benign)
    oracle = top_subspace(observed, 3, clients=benign)
    assert projection_distance(result.subspace, oracle) < 1e-8
    assert result.detection_subspace is not None
    assert "kept" in result.rules["final_subspace"]
    # and it is no further from the truth than the subspace the test ran at
    detection = projection_distance(result.detection_subspace, basis)
    assert projection_distance(result.subspace, basis) <= detection + 1e-12


def test_shrinkage_uses_a_given_noise_cov():
    truth, observed, benign, _ = _federation(0.0, tau=0.05, bad=4)
    n_clients, p, q = observed.shape
    cov = np.broadcast_to(0.05**2 * np.eye(p), (n_clients, p, p))
    result = clair(observed, noise_cov=cov)
    # v_k = q tr(A^T C_k A) = r q tau^2 in units of u^2 (u a power of two)
    ratio = result.shrinkage.noise[benign] / (3 * q * 0.05**2)
    assert np.allclose(ratio, ratio[0])
    assert np.log2(ratio[0]) == pytest.approx(round(np.log2(ratio[0])))
    assert result.shrinkage.factors[benign].min() > 0.9


def test_factored_updates_are_pooled_like_dense_ones():
    rng = np.random.default_rng(7)
    n_clients, p, q, rank = 30, 40, 30, 2
    basis = np.linalg.qr(rng.standard_normal((p, rank)))[0]
    common = rng.standard_normal((rank, q))
    factors_b, factors_a = [], []
    for _ in range(n_clients):
        noise_b = 0.05 * rng.standard_normal((p, 2))
        noise_a = rng.standard_normal((2, q)) / np.sqrt(q)
        factors_b.append(np.hstack([basis, noise_b]))
        factors_a.append(np.vstack([common, noise_a]))
    updates = LowRankUpdates(factors_b, factors_a)
    dense = updates.dense()
    factored = clair(updates, rank=rank, sigma=0.01)
    full = clair(dense, rank=rank, sigma=0.01)
    np.testing.assert_allclose(
        factored.shrinkage.factors, full.shrinkage.factors, rtol=1e-6, atol=1e-9
    )
    product = np.stack(
        [b @ a for b, a in zip(factored.refined.B, factored.refined.A, strict=True)]
    )
    truncated = factored.refined.truncation_error
    assert np.all(
        np.sqrt(np.sum((product - full.refined) ** 2, axis=(1, 2)))
        <= (truncated + 1e-8 * np.linalg.norm(full.refined, axis=(1, 2)))
    )


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"shrink": "james-stein"}, ValueError),
        ({"shrink": 1.5}, ValueError),
        ({"shrink": True}, TypeError),
        ({"final_subspace": "oracle"}, ValueError),
    ],
)
def test_bad_options_are_refused(kwargs, error):
    _, observed, _, _ = _federation(0.1)
    with pytest.raises(error):
        clair(observed, **kwargs)


# -------------------------------------------------------------- refine_clients
def test_refine_clients_pools_an_identical_federation():
    truth, observed, benign, basis = _federation(0.0, bad=5)
    out = refine_clients(observed, basis, benign)
    fedavg = observed.copy()
    fedavg[benign] = observed[benign].mean(axis=0)
    assert out.shrinkage.factors[benign].min() > 0.9
    assert _mse(out.refined, truth, benign) <= 1.05 * _mse(fedavg, truth, benign)
    np.testing.assert_array_equal(out.refined[~benign], observed[~benign])
    oracle = top_subspace(observed, 3, clients=benign)
    assert projection_distance(out.subspace, oracle) < 1e-8


def test_refine_clients_with_the_paper_options_is_refine():
    _, observed, benign, basis = _federation(0.3, bad=5)
    out = refine_clients(
        observed, basis, benign, shrink="none", final_subspace="detection"
    )
    np.testing.assert_allclose(out.refined, refine(observed, basis, benign))
    assert out.subspace is basis


def test_refine_clients_on_factors_equals_the_dense_refinement():
    rng = np.random.default_rng(8)
    n_clients, p, q = 12, 30, 24
    basis = np.linalg.qr(rng.standard_normal((p, 2)))[0]
    common = rng.standard_normal((2, q))
    factors_b = [
        np.hstack([basis, 0.1 * rng.standard_normal((p, 2))]) for _ in range(n_clients)
    ]
    factors_a = [
        np.vstack(
            [common + 0.05 * rng.standard_normal((2, q)), rng.standard_normal((2, q))]
        )
        for _ in range(n_clients)
    ]
    factored = LowRankUpdates(factors_b, factors_a, scaling=0.5)
    dense = factored.dense()
    collaborative = np.arange(n_clients) < 10
    start = top_subspace(dense, 2)
    weights = rng.uniform(0.5, 1.5, n_clients)
    want = refine_clients(dense, start, collaborative, weights=weights)
    got = refine_clients(
        factored, start, collaborative, weights=weights, refined_rank=p
    )
    assert projection_distance(got.subspace, want.subspace) < 1e-8
    np.testing.assert_allclose(
        got.shrinkage.factors, want.shrinkage.factors, atol=1e-10
    )
    product = np.stack(
        [b @ a for b, a in zip(got.refined.B, got.refined.A, strict=True)]
    )
    np.testing.assert_allclose(product, want.refined, atol=1e-9)

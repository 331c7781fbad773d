"""Tests of the study simulations/oracle_gain.py and the T4 formulas it draws.

``run`` is checked on small instances (seconds): documented keys with finite
values, determinism in the seed, the oracle's error identity at eta = 0, the
equality of CLAIR with and without the true S when the test finds S exactly, and
that the refinements rebuilt from one fit (b = 0, b = 1, version 1's) are what
``clair`` returns with those options. The homogeneous generator is checked
against its definition. The formulas of :mod:`clair_stats.theory.t4` are checked
through exact identities (the factorisation behind the zero-gain curve, the
pooled risk at b = 0 and b = 1); their agreement with Monte Carlo is
theory_checks/test_t4_oracle_gain.py's and test_t4_shrinkage.py's job.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import simulations.oracle_gain as study_script
from clair_stats import FederatedModel, clair
from clair_stats.theory.t4 import (
    heterogeneity_cost,
    local_mse,
    oracle_gain,
    oracle_mse,
    predicted_gain,
    shrinkage_factor,
    subspace_cost,
    zero_gain_heterogeneity,
)

CONFIG = {
    "family": "heterogeneous",
    "p": 12,
    "r": 2,
    "tau": 0.3,
    "gamma": 0.1,
    "q": 2,
    "K": 20,
    "eta_ratio": 0.5,
    "delta_ratio": 1 / 0.3,
    "common": 0.0,
}
HOMOGENEOUS = {
    **CONFIG,
    "family": "homogeneous",
    "q": 3,
    "eta_ratio": 0.0,
    "delta_ratio": 1.0,
    "common": 1.0,
}


def _sample(config, seed):
    """The instance that ``run(config, seed)`` draws (heterogeneous family)."""
    p, q, r, tau = config["p"], config["q"], config["r"], config["tau"]
    model = FederatedModel(
        p=p,
        q=q,
        rank=r,
        n_clients=config["K"],
        contamination=config["gamma"],
        contamination_type="random",
        heterogeneity=config["eta_ratio"] * zero_gain_heterogeneity(p, q, r, tau),
    )
    return model.sample(noise=tau, seed=seed)


@pytest.mark.parametrize("config", [CONFIG, HOMOGENEOUS], ids=["het", "hom"])
def test_run_returns_finite_documented_keys(config):
    rows = study_script.run(config, seed=1)
    assert [row["method"] for row in rows] == list(study_script.METHODS)
    scale = local_mse(config["p"], config["q"], config["tau"])
    for row in rows:
        assert row["m"] == 18  # K = 20, gamma = 0.1: two contaminated clients
        assert np.isfinite([row["mse"], row["mse_local"], row["gain"]]).all()
        assert row["mse"] >= 0
        assert row["mse_local"] > 0
        assert row["gain"] == pytest.approx((row["mse_local"] - row["mse"]) / scale)
        assert 0 <= row["b"] <= 1
        if row["method"].startswith("clair"):
            assert 0 <= row["benign_flagged"] <= row["m"]
            assert 0 <= row["missed"] <= config["K"] - row["m"]
            assert isinstance(row["converged"], bool)
    assert len({row["mse_local"] for row in rows}) == 1  # one local fit per replicate
    by = {row["method"]: row for row in rows}
    assert by["oracle"]["b"] == by["clair_paper"]["b"] == 0.0
    assert by["fedavg"]["b"] == by["clair_pool"]["b"] == 1.0


def test_homogeneous_sample_follows_its_definition():
    """Benign Theta_k = A (Bbar + Z_k)^T with Bbar^T Bbar = q I_r (exactly, at
    delta = 0 all benign clients are equal), contaminated clients at the benign
    RMS norm, noise of sd tau."""
    p, q, r, K, tau = 12, 3, 2, 20, 0.3
    same = study_script.homogeneous_sample(p, q, r, K, 0.1, 0.0, tau, seed=2)
    A, benign = same.subspace, same.benign
    assert benign.sum() == 18
    assert not benign[-2:].any()
    np.testing.assert_allclose(A.T @ A, np.eye(r), atol=1e-12)
    truth = same.truth[benign]
    np.testing.assert_allclose(truth, np.broadcast_to(truth[0], truth.shape))
    Bbar = (A.T @ truth[0]).T  # q x r
    np.testing.assert_allclose(Bbar.T @ Bbar, q * np.eye(r), atol=1e-12)
    np.testing.assert_allclose(truth[0], A @ Bbar.T, atol=1e-12)
    spread = study_script.homogeneous_sample(p, q, r, K, 0.1, 0.5, tau, seed=2)
    rms = np.sqrt(np.mean(np.sum(spread.truth[benign] ** 2, axis=(1, 2))))
    np.testing.assert_allclose(
        np.linalg.norm(spread.truth[~benign], axis=(1, 2)), rms, rtol=1e-12
    )
    noise = spread.updates - spread.truth
    assert np.std(noise) == pytest.approx(tau, rel=0.1)
    with pytest.raises(ValueError, match="q >= r"):
        study_script.homogeneous_sample(p, 1, 2, K, 0.1, 0.5, tau, seed=2)


@pytest.mark.parametrize("config", [CONFIG, HOMOGENEOUS], ids=["het", "hom"])
def test_rebuilt_refinements_are_clairs(config):
    """clair_paper, clair_keep and clair_pool are rebuilt with ``refine`` from the
    default fit; they equal clair(shrink="none", final_subspace="detection"),
    clair(shrink="none") and clair(shrink=1.0)."""
    seed = 3
    rows = {row["method"]: row for row in study_script.run(config, seed)}
    sample = study_script.draw(config, seed)
    r, tau = config["r"], config["tau"]
    benign = sample.benign

    def mse(options):
        out = clair(sample.updates, rank=r, detect="test", sigma=tau, **options)
        err = (out.refined - sample.truth)[benign]
        return float(np.mean(np.sum(err**2, axis=(1, 2))))

    expected = {
        "clair": {},
        "clair_paper": {"shrink": "none", "final_subspace": "detection"},
        "clair_keep": {"shrink": "none"},
        "clair_pool": {"shrink": 1.0},
    }
    for method, options in expected.items():
        assert rows[method]["mse"] == pytest.approx(mse(options), rel=1e-9), method


def test_run_is_deterministic_in_the_seed():
    first, again = study_script.run(CONFIG, seed=4), study_script.run(CONFIG, seed=4)
    assert first == again
    other = study_script.run(CONFIG, seed=5)
    assert [r["mse"] for r in other] != [r["mse"] for r in first]


def test_oracle_error_identity_without_heterogeneity():
    """At eta = 0, Theta~_k - Theta_k = P_A E_k + P_A^perp Ebar_S for k in S, so the
    oracle MSE is mean_k ||P_A E_k||_F^2 + ||P_A^perp Ebar_S||_F^2 exactly."""
    config = {**CONFIG, "eta_ratio": 0.0}
    seed = 9
    rows = {row["method"]: row for row in study_script.run(config, seed)}
    sample = _sample(config, seed)
    assert np.array_equal(study_script.draw(config, seed).updates, sample.updates)
    A = sample.subspace
    noise = (sample.updates - sample.truth)[sample.benign]
    inside = np.einsum("pr,krq->kpq", A, np.einsum("pr,kpq->krq", A, noise))
    mean = noise.mean(axis=0)
    outside = mean - A @ (A.T @ mean)
    expected = float(np.mean(np.sum(inside**2, axis=(1, 2)))) + float(
        np.sum(outside**2)
    )
    assert rows["oracle"]["mse"] == pytest.approx(expected, rel=1e-10)
    assert rows["oracle"]["mse_local"] == pytest.approx(
        float(np.mean(np.sum(noise**2, axis=(1, 2)))), rel=1e-12
    )


def test_clair_equals_known_s_when_the_test_finds_s():
    """With S^ = S the refinement of CLAIR (A^ refitted on S^, b^) is the one with
    the true S; with S^ != S the two differ. At eta = 0 the test (Holm, FWER
    0.05) finds S on most seeds."""
    exact, config = 0, {**CONFIG, "eta_ratio": 0.0}
    for seed in range(8):
        rows = {r["method"]: r for r in study_script.run(config, seed)}
        clair_row, known = rows["clair"], rows["known_s"]
        if clair_row["benign_flagged"] == 0 and clair_row["missed"] == 0:
            exact += 1
            assert clair_row["mse"] == pytest.approx(known["mse"], rel=1e-12)
        else:
            assert clair_row["mse"] != pytest.approx(known["mse"], rel=1e-12)
    assert exact >= 1


# ----------------------------------------------------------------- T4 formulas
SHAPES = [(20, 1, 2), (20, 3, 2), (12, 4, 1), (30, 2, 5)]


@pytest.mark.parametrize(("p", "q", "r"), SHAPES)
def test_predicted_gain_factorises(p, q, r):
    """G - het - sub = (1 - 1/m - r/(q m)) ((p - r) q tau^2 - eta^2)."""
    m = np.arange(1, 60)[:, None]
    tau, eta = 0.3, np.linspace(0.0, 3.0, 13)[None, :]
    got = predicted_gain(p, q, r, m, tau, eta)
    expected = (1 - 1 / m - r / (q * m)) * ((p - r) * q * tau**2 - eta**2)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    parts = (
        oracle_gain(p, q, r, m, tau)
        - heterogeneity_cost(m, eta)
        - subspace_cost(p, q, r, m, tau, eta)
    )
    np.testing.assert_allclose(got, parts, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("p", "q", "r"), SHAPES)
def test_zero_gain_curve(p, q, r):
    """The predicted gain and the oracle's G - het vanish at eta_0 for every m,
    are positive below it and negative above it when q (m - 1) > r."""
    tau = 0.7
    eta0 = zero_gain_heterogeneity(p, q, r, tau)
    assert eta0 == pytest.approx(tau * np.sqrt((p - r) * q))
    m = np.arange(2, 50)
    scale = local_mse(p, q, tau)
    at_zero = predicted_gain(p, q, r, m, tau, eta0)
    np.testing.assert_allclose(at_zero / scale, 0.0, atol=1e-12)
    oracle_net = oracle_gain(p, q, r, m, tau) - heterogeneity_cost(m, eta0)
    np.testing.assert_allclose(oracle_net / scale, 0.0, atol=1e-12)
    regular = q * (m - 1) > r
    below = predicted_gain(p, q, r, m, tau, 0.9 * eta0)
    above = predicted_gain(p, q, r, m, tau, 1.1 * eta0)
    assert np.all(below[regular] > 0)
    assert np.all(above[regular] < 0)
    assert np.all(below[q * (m - 1) < r] < 0)


@pytest.mark.parametrize(("p", "q", "r"), SHAPES)
def test_study_predictions_reduce_to_the_t4_formulas(p, q, r):
    """The study's predicted MSE: at b = 0 and common = 0, local - (G - het - sub)
    (version 1's prediction) and, with A known, the oracle's; at b = 1, FedAvg
    over S, p q tau^2 / m + r q delta^2 (1 - 1/m) + eta^2 (1 - 1/m); pooled with A
    known, the b* risk r q [tau^2 - (1 - 1/m) tau^4 / (tau^2 + delta^2)] + the
    oracle's off-subspace terms."""
    tau, m, eta, delta = 0.3, 17, 0.8, 0.5
    local = local_mse(p, q, tau)
    assert study_script.predicted_mse(
        "clair_paper", p, q, r, m, tau, eta, delta, 0.0
    ) == pytest.approx(local - predicted_gain(p, q, r, m, tau, eta))
    assert study_script.predicted_mse(
        "oracle", p, q, r, m, tau, eta, delta, 1.0
    ) == pytest.approx(oracle_mse(p, q, r, m, tau, eta))
    fedavg = p * q * tau**2 / m + (r * q * delta**2 + eta**2) * (1 - 1 / m)
    for method in ("fedavg", "clair_pool"):
        assert study_script.predicted_mse(
            method, p, q, r, m, tau, eta, delta, 1.0
        ) == pytest.approx(fedavg)
    inside = r * q * (tau**2 - (1 - 1 / m) * tau**4 / (tau**2 + delta**2))
    outside = (p - r) * q * tau**2 / m + eta**2 * (1 - 1 / m)
    assert study_script.predicted_mse(
        "oracle_pooled", p, q, r, m, tau, eta, delta, 1.0
    ) == pytest.approx(inside + outside)
    assert shrinkage_factor(tau, 0.0) == 1.0


def test_local_minus_oracle_is_gain_minus_heterogeneity():
    p, q, r, tau = 20, 3, 2, 0.4
    m, eta = np.array([3, 9, 40]), np.array([0.0, 0.5, 2.0])
    lhs = local_mse(p, q, tau) - oracle_mse(p, q, r, m, tau, eta)
    rhs = oracle_gain(p, q, r, m, tau) - heterogeneity_cost(m, eta)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
    assert isinstance(oracle_gain(p, q, r, 9, tau), float)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: oracle_gain(5, 2, 5, 10, 0.1), ValueError, "r must be < p"),
        (lambda: oracle_gain(5, 2, 1.0, 10, 0.1), TypeError, "r must be an integer"),
        (lambda: oracle_gain(5, 2, 1, 0, 0.1), ValueError, "m must be >= 1"),
        (lambda: oracle_gain(5, 2, 1, 7.5, 0.1), ValueError, "whole number"),
        (lambda: local_mse(5, 2, -0.1), ValueError, "tau must be >= 0"),
        (lambda: local_mse(5, 2, np.nan), ValueError, "tau must be finite"),
        (lambda: local_mse(5, 2, True), TypeError, "not a bool"),
        (lambda: heterogeneity_cost(4, "1"), TypeError, "eta must be real"),
    ],
)
def test_t4_formulas_reject_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_report_writes_figures_and_summary(quick_grid, tmp_path):
    grid = quick_grid(study_script)  # the quick grid, run once per session
    folder = tmp_path / "report"
    study_script.report(grid.frame.copy(), folder, grid.args)
    for name in (
        "gain_map.png",
        "gain_vs_eta.png",
        "benign_flagged.png",
        "gain_map_homogeneous.png",
        "gain_vs_delta.png",
    ):
        assert (folder / name).stat().st_size > 0
    cells = pd.read_csv(folder / "summary.csv")
    assert len(cells) == len(grid.study.configs) * len(study_script.METHODS)
    assert set(cells["family"]) == {"heterogeneous", "homogeneous"}
    # the prediction of a cell is the T4 formula at its m and eta, relative
    het = cells[cells["family"] == "heterogeneous"]
    rows = het[(het["method"] == "clair_paper") & (het["eta_ratio"] == 0.0)]
    assert len(rows) > 0
    for row in rows.itertuples():
        p, q, r, tau = int(row.p), int(row.q), int(row.r), float(row.tau)
        expected = predicted_gain(p, q, r, int(row.m), tau, 0.0) / local_mse(p, q, tau)
        assert row.predicted == pytest.approx(expected)
    # cells at eta_0 have a zero prediction at b = 0 and are never scored
    keep = het["method"].isin(("oracle", "clair_paper", "clair_keep"))
    assert set(het.loc[keep & (het["eta_ratio"] == 1.0), "sign"]) == {"band"}
    text = (folder / "summary.md").read_text()
    assert "Sign of the gain" in text
    assert "better of keep" in text
    excess = pd.read_csv(folder / "excess.csv")
    assert len(excess) == len(grid.study.configs) * len(study_script.EXCESS_PAIRS)
    assert set(excess["better"]) <= {"oracle", "fedavg", "clair_keep", "clair_pool"}

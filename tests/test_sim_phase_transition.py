"""The phase-transition study (simulations/phase_transition.py) and the T1 formulas
of clair_stats.theory.t1 it draws: one replicate, its scoring, and its report."""

from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import numpy as np
import pytest

import simulations.phase_transition as study
from clair_stats import DEFAULT_C_LAM, FederatedModel
from clair_stats.theory.t1 import (
    T1_CONSTANT,
    incoherence,
    right_singular_blocks,
    t1_c_lam,
    t1_condition,
    t1_lam,
    t1_max_gamma,
)

KEYS = {
    "lam_rule",
    "c",
    "success",
    "subspace_ok",
    "support_ok",
    "converged",
    "rank",
    "subspace_error",
    "false_pos",
    "false_neg",
    "iterations",
    "mu",
    "t1_holds",
    "t1_lhs",
    "t1_rhs",
    "n_solves",
}


# ------------------------------------------------------------------ T1 formulas
def _tight_instance(n_benign: int = 4, n_bad: int = 1) -> SimpleNamespace:
    """L0 = A B_k^T with q = r = 1 and equal |B_k|: every benign block carries the
    same share of V, so mu = 1 exactly."""
    K, p = n_benign + n_bad, 5
    A = np.eye(p)[:, :1]
    L0 = np.zeros((K, p, 1))
    L0[:n_benign] = A[None] * 2.0
    benign = np.arange(K) < n_benign
    return SimpleNamespace(
        low_rank_truth=L0, benign=benign, rank=1, gamma=n_bad / K, n_clients=K
    )


def test_incoherence_is_one_for_equal_blocks():
    inst = _tight_instance()
    assert incoherence(inst) == pytest.approx(1.0, rel=1e-12)
    U, sigma, V = right_singular_blocks(inst)
    assert U.shape == (5, 1)
    assert sigma.shape == (1,)
    assert V.shape == (5, 1)


def test_incoherence_is_at_least_one_on_model_draws():
    """Property: sum_{k in S} ||V_k||_F^2 = r and |S| = (1 - gamma) K, so mu >= 1."""
    model = FederatedModel(12, 2, 3, 15, contamination=3)
    for seed in range(5):
        assert incoherence(model.sample(seed=seed)) >= 1.0 - 1e-12


def test_t1_condition_and_lam_formulas():
    inst = _tight_instance(n_benign=40, n_bad=1)
    holds, lhs, rhs = t1_condition(inst)
    assert lhs == pytest.approx(1 / 40)
    assert rhs == pytest.approx(T1_CONSTANT)  # mu = 1, r = 1
    assert holds == (lhs <= rhs)
    assert t1_lam(inst) == pytest.approx(3 / (7 * math.sqrt(1.0)))  # gamma K = 1
    assert t1_c_lam(0.25) == pytest.approx(6 / 7)


@pytest.mark.parametrize(("mu", "rank"), [(1.0, 1), (3.7, 2), (10.0, 5)])
def test_t1_max_gamma_is_on_the_boundary(mu, rank):
    g = t1_max_gamma(mu, rank)
    assert g / (1 - g) == pytest.approx(T1_CONSTANT / (mu * rank), rel=1e-12)


def test_t1_formulas_reject_bad_input():
    inst = _tight_instance()
    with pytest.raises(ValueError, match="gamma must be in"):
        t1_lam(SimpleNamespace(gamma=0.0, n_clients=10))
    with pytest.raises(ValueError, match="rank below"):
        right_singular_blocks(
            SimpleNamespace(low_rank_truth=inst.low_rank_truth, rank=2)
        )
    with pytest.raises(ValueError, match="mu must be"):
        t1_max_gamma(0.0, 1)
    with pytest.raises(ValueError, match="rank must be"):
        t1_max_gamma(2.0, 0)


# ------------------------------------------------------------------ one replicate
def test_run_rows_have_documented_finite_values():
    config = {"contamination": "orthogonal", "gamma": 0.1, "r": 1}
    rows = study.run(config, seed=3)
    assert len(rows) == len(study.c_values(1)) + 2
    rules = ["grid"] * len(study.c_values(1)) + ["t1", "auto"]
    assert [r["lam_rule"] for r in rows] == rules
    for row in rows:
        assert set(row) == KEYS
        for key in KEYS - {"lam_rule"}:
            assert np.isfinite(float(row[key])), key
        assert row["t1_holds"] == (row["t1_lhs"] <= row["t1_rhs"])
        assert row["mu"] >= 1.0 - 1e-12
    assert rows[0]["c"] == float(DEFAULT_C_LAM)
    assert rows[-2]["c"] == pytest.approx(t1_c_lam(0.1))
    assert rows[-1]["n_solves"] >= 2
    assert all(r["n_solves"] == 1 for r in rows[:-1])
    # the instance's fields are the same on every row
    assert len({(r["mu"], r["t1_holds"]) for r in rows}) == 1


def test_auto_recovers_where_the_default_flags_benign_clients():
    """r = 8: sqrt(mu r / (1 - gamma)) = 4.35 >= 4, the largest benign ||V_k||_F
    exceeds 4 / sqrt(K); the default flags 4 benign clients, lam="auto" none."""
    rows = study.run({"contamination": "orthogonal", "gamma": 0.1, "r": 8}, seed=1)
    default, auto = rows[0], rows[-1]
    assert math.sqrt(default["mu"] * 8 / 0.9) >= DEFAULT_C_LAM
    assert not default["success"]
    assert default["false_pos"] > 0
    assert auto["lam_rule"] == "auto"
    assert auto["success"], auto
    assert auto["c"] > DEFAULT_C_LAM


def test_run_scans_c_at_the_scan_rank():
    rows = study.run(
        {"contamination": "random", "gamma": 0.05, "r": study.SCAN_RANK}, seed=0
    )
    grid = [r["c"] for r in rows if r["lam_rule"] == "grid"]
    assert grid == list(study.C_SCAN)
    assert float(DEFAULT_C_LAM) in grid


def test_run_is_deterministic_in_the_seed():
    config = {"contamination": "subspace", "gamma": 0.05, "r": 1}
    a, b = study.run(config, seed=11), study.run(config, seed=11)
    assert a == b
    assert study.run(config, seed=12)[0]["mu"] != a[0]["mu"]


def test_recovery_above_the_ceiling_flags_nobody():
    """Known limit: for lam > sqrt(q) (c > sqrt(qK)), (L, S) = (M, 0) is the only
    solution of P0, so every contaminated client is missed."""
    model = FederatedModel(
        study.P, study.Q, 2, study.K, contamination=0.1, contamination_type="random"
    )
    sample = model.sample(noise=0.0, seed=0)
    score = study.recovery(sample, lam=1.05 * math.sqrt(study.Q))
    assert score["false_neg"] == int(sample.contaminated.sum())
    assert score["false_pos"] == 0
    assert not score["success"]
    assert not score["support_ok"]


def test_inside_t1_condition_t1_lam_recovers_orthogonal_contamination():
    """Theorem T1 (docs/claims.md §4) with orthogonal contamination, Xu et al.'s
    setting:
    every instance meeting the condition is recovered exactly at T1's lam."""
    config = {"contamination": "orthogonal", "gamma": 0.01, "r": 1}
    inside = 0
    for seed in range(6):
        t1_row = next(r for r in study.run(config, seed) if r["lam_rule"] == "t1")
        if t1_row["t1_holds"]:
            inside += 1
            assert t1_row["success"], (seed, t1_row)
    assert inside >= 1  # the check is not vacuous


# ------------------------------------------------------------------------ report
@pytest.fixture(scope="module")
def grid(quick_grid):
    """The quick grid, run once per session (tests/conftest.py)."""
    return quick_grid(study)


@pytest.fixture
def small_frame(grid):
    return grid.frame.copy()


def test_boundary_uses_the_median_mu(small_frame):
    t1 = small_frame[small_frame["lam_rule"] == "t1"]
    for r, star in study.boundary(small_frame).items():
        mu = float(np.median(t1.loc[t1["r"] == r, "mu"]))
        assert star == pytest.approx(t1_max_gamma(mu, r))


def test_tables_and_report(grid, small_frame, tmp_path):
    axes = {k: {c[k] for c in grid.study.configs} for k in grid.study.configs[0]}
    table = study.largest_gamma_table(small_frame)
    assert len(table) == len(axes["contamination"]) * len(axes["r"])
    theory = study.t1_table(small_frame)
    # per type: every gamma and rank, every replicate
    per_type = len(axes["gamma"]) * len(axes["r"]) * grid.study.replicates
    assert set(theory["instances"]) == {per_type}
    assert (theory["inside_ok_t1"] <= theory["inside"]).all()
    comparison = study.auto_comparison(small_frame)
    default = study.default_rows(small_frame)
    per_type = default.groupby("contamination").size()
    assert comparison["instances"].sum() == per_type.drop("scaled").sum()
    assert (comparison["auto_exact"] <= comparison["instances"]).all()
    auto = study.auto_rows(small_frame)
    assert len(auto) == len(default)  # one auto row per instance
    study.report(small_frame, tmp_path, argparse.Namespace(quick=True))
    for name in (
        "success_gamma_r.png",
        "success_t1_lam.png",
        "success_auto.png",
        "success_gamma_lam.png",
        "summary.md",
        "summary.csv",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    text = (tmp_path / "summary.md").read_text()
    assert "T1's condition" in text
    assert "## lam='auto'" in text


def test_quick_grid_is_a_subset_of_the_full_grid():
    quick = study.build(argparse.Namespace(quick=True))
    full = study.build(argparse.Namespace(quick=False))
    assert all(c in full.configs for c in quick.configs)
    assert quick.replicates <= full.replicates
    assert full.version == study.VERSION == "2"

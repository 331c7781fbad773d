"""Tests of the robustness study (simulations/robustness.py): one replicate's rows,
determinism in the seed, the T4 (docs/claims.md §4.5) mean squared errors of local and
oracle CLAIR
under the regression generator, the grids and the report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import simulations.robustness as study
from clair_stats.experiments.study import derive_seed
from clair_stats.simulate.model import CONTAMINATION_TYPES
from clair_stats.theory.t4 import local_mse, oracle_mse

#: A small scenario: K = 12 clients, 3 of them contaminated (Krum needs K > 2f + 2).
SMALL = {"p": 10, "q": 2, "r": 2, "K": 12, "n": 40, "sigma": 1.0}
KEYS = {
    "method",
    "benign_error",
    "benign_mse",
    "local_error",
    "relative_change",
    "n_contaminated",
    "method_seconds",
    "converged",
    "warned",
    "n_flagged",
    "precision",
    "recall",
    "subspace_error",
}


def _numbers(row: dict) -> list[float]:
    return [
        row[k] for k in ("benign_error", "benign_mse", "local_error", "relative_change")
    ]


@pytest.mark.parametrize("kind", CONTAMINATION_TYPES)
def test_run_rows_have_documented_finite_values(kind: str) -> None:
    rows = study.run({**SMALL, "type": kind, "gamma": 0.25}, seed=3)
    assert [r["method"] for r in rows] == list(study.METHODS)
    for row in rows:
        assert set(row) == KEYS
        assert all(math.isfinite(x) for x in _numbers(row)), row
        assert row["benign_error"] > 0
        assert row["n_contaminated"] == 3  # round(0.25 * 12)
        # the relative change is the documented function of the two errors
        change = (row["benign_error"] - row["local_error"]) / row["local_error"]
        assert row["relative_change"] == pytest.approx(change, rel=1e-12)
        # mean of squares >= square of the mean (Jensen)
        assert row["benign_mse"] >= row["benign_error"] ** 2 * (1 - 1e-12)
        if row["method"] in study.CLAIR_METHODS:
            assert 0 <= row["n_flagged"] <= SMALL["K"]
            assert 0 <= row["precision"] <= 1
            assert 0 <= row["recall"] <= 1
            assert 0 <= row["subspace_error"] <= math.sqrt(2 * SMALL["r"]) + 1e-12
        else:
            assert row["n_flagged"] is None
            assert row["subspace_error"] is None
    local = rows[0]
    assert local["relative_change"] == 0.0
    assert local["benign_error"] == local["local_error"]


def test_run_is_deterministic_in_the_seed() -> None:
    config = {**SMALL, "type": "subspace", "gamma": 0.25}
    first, second = study.run(config, 11), study.run(config, 11)
    other = study.run(config, 12)
    drop = ("method_seconds",)
    strip = [{k: v for k, v in r.items() if k not in drop} for r in first]
    assert strip == [{k: v for k, v in r.items() if k not in drop} for r in second]
    assert first[0]["local_error"] != other[0]["local_error"]


def test_local_and_oracle_mse_match_spec_t4() -> None:
    """Monte Carlo check of the mean squared errors of T4 (docs/claims.md §4.5) under
    OLS fits.

    With Theta_k = A B_k^T on S (H_k = 0, no centre), OLS errors E_k with
    Cov(vec E_k | X_k) = sigma^2 I_q (x) (X_k^T X_k)^{-1} and
    E (X^T X)^{-1} = I_p / (n - p - 1) (inverse Wishart, Sigma = I):
    local: E ||E_k||_F^2 = sigma^2 p q / (n - p - 1);
    oracle CLAIR: the error P_A E_k + P_A^perp Ebar_S has two orthogonal parts,
    E = sigma^2 q (r + (p - r) / |S|) / (n - p - 1).
    Both hold for each benign client, so for the per-replicate mean over S: they
    are T4's local and oracle MSE (clair_stats.theory.t4) at the per-entry
    variance tau^2 = sigma^2 / (n - p - 1).
    """
    config = {**SMALL, "type": "random", "gamma": 0.25}
    p, q, r, K, n = (config[k] for k in ("p", "q", "r", "K", "n"))
    n_benign = K - 3
    tau = config["sigma"] / math.sqrt(n - p - 1)  # per-entry sd, in expectation
    expected = {
        "local": local_mse(p, q, tau),
        "oracle_clair": oracle_mse(p, q, r, n_benign, tau),
    }
    replicates = 16
    values = {m: [] for m in expected}
    for seed in range(replicates):
        for row in study.run(config, seed):
            if row["method"] in values:
                values[row["method"]].append(row["benign_mse"])
    for method, target in expected.items():
        x = np.asarray(values[method])
        # The MC mean of R iid replicates is approximately normal (CLT; the
        # inverse-Wishart errors have finite variance for n - p > 4): it lies
        # within 4 standard errors of its expectation with probability
        # 1 - 6e-5. The seeds are fixed, so the test is deterministic.
        se = x.std(ddof=1) / math.sqrt(replicates)
        assert abs(x.mean() - target) <= 4 * se, (method, x.mean(), target, se)
    # and the oracle gain is real: far below local on every replicate
    assert np.all(np.asarray(values["oracle_clair"]) < np.asarray(values["local"]))


def test_run_rejects_krum_condition_with_a_clear_error() -> None:
    config = {**SMALL, "K": 10, "type": "random", "gamma": 0.4}  # f = 4, 2f + 2 = 10
    with pytest.raises(ValueError, match="Krum's condition"):
        study.run(config, 0)


def test_quick_grid_is_a_subset_of_the_full_grid_with_the_same_seeds() -> None:
    full = study.build(study.parser().parse_args([]))
    quick = study.build(study.parser().parse_args(["--quick"]))
    assert len(full.configs) == len(CONTAMINATION_TYPES) * 10
    assert full.replicates == study.FULL_REPLICATES
    full_keys = {tuple(sorted(c.items())) for c in full.configs}
    assert all(tuple(sorted(c.items())) in full_keys for c in quick.configs)
    config = quick.configs[0]
    assert derive_seed(quick.name, config, 1) == derive_seed(full.name, config, 1)
    assert {c["gamma"] for c in full.configs} >= {0.0, 0.45}
    assert all(c["K"] > 2 * round(c["gamma"] * c["K"]) + 2 for c in full.configs)


def test_report_writes_figures_and_the_worst_case_table(quick_grid, tmp_path) -> None:
    grid = quick_grid(study)  # the quick grid, run once per session (conftest.py)
    frame = grid.frame.copy()
    study.report(frame, tmp_path, grid.args)
    for name in ("error_by_type.png", "worst_case.png", "worst_case.md"):
        assert (tmp_path / name).stat().st_size > 0
    worst = pd.read_csv(tmp_path / "worst_case.csv")
    gammas = {c["gamma"] for c in grid.study.configs}
    assert len(worst) == len(study.METHODS) * len(gammas)
    # the worst case is the maximum over types of the per-type Monte Carlo mean
    means = frame.groupby(["method", "gamma", "type"])["benign_error"].mean()
    for row in worst.itertuples():
        assert row.mean == pytest.approx(means.loc[(row.method, row.gamma)].max())
        assert row.mean == pytest.approx(means.loc[(row.method, row.gamma, row.type)])
    assert "| clair_test |" in (tmp_path / "worst_case.md").read_text()

"""The detection study (simulations/detection.py) and the T3 formulas of
clair_stats.theory.t3 it draws: one replicate, the multiple-testing adjustments,
the ROC and error-rate summaries, and the report."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

import simulations.detection as study
from clair_stats import FederatedModel, chi_square_test, clair
from clair_stats.core.linalg import off_subspace_energy
from clair_stats.pipeline.detection import empirical_energy_test
from clair_stats.pipeline.multitest import reject
from clair_stats.theory.t3 import (
    margin_for_ratio,
    predicted_power,
    ratio_threshold,
    separation_ratio,
)

KEYS = {
    "test",
    "subspace",
    "n",
    "delta",
    "p_values",
    "holm",
    "bh",
    "contaminated",
    "subspace_error",
    "converged",
    "power",
    "exact",
    "fwer_event",
    "fdp",
}


# ------------------------------------------------------------------ T3 formulas
def test_margin_for_ratio_inverts_separation_ratio():
    for rho in (0.0, 0.7, 2.5):
        delta = margin_for_ratio(rho, 1.3, 20, 2, 2, 80)
        assert separation_ratio(delta, 1.3, 20, 2, 2, 80) == pytest.approx(rho)
    assert margin_for_ratio(1.0, 1.0, 20, 2, 2, 36) == pytest.approx(1.0)


def test_predicted_power_limits():
    """At rho = 0, T_k ~ chi^2_df (central): the power is the level alpha / K of
    Holm's first step; R* solves predicted_power = 0.95."""
    assert predicted_power(0.0, 20, 2, 2, 80, 20, 0.05) == pytest.approx(
        0.05 / 20, rel=1e-6
    )
    r_star = ratio_threshold(20, 2, 2, 80, 20, 0.05, power=0.95)
    assert predicted_power(r_star, 20, 2, 2, 80, 20, 0.05) == pytest.approx(0.95)
    lev = predicted_power(r_star, 20, 2, 2, 80, 20, 0.05, leverage=True)
    assert lev < 0.95  # estimating A costs power


def test_t3_formulas_reject_bad_input():
    with pytest.raises(ValueError, match="n > p \\+ 1"):
        predicted_power(1.0, 20, 2, 2, 21, 20, 0.05)
    with pytest.raises(ValueError, match="r must be < p"):
        separation_ratio(1.0, 1.0, 2, 2, 2, 10)
    with pytest.raises(ValueError, match="sigma"):
        margin_for_ratio(1.0, 0.0, 20, 2, 2, 40)
    with pytest.raises(ValueError, match="alpha"):
        predicted_power(1.0, 20, 2, 2, 80, 20, 1.5)


# ------------------------------------------------------------------ one replicate
CONFIG = {"p": 10, "n_over_p": 4.0, "ratio": 2.0}


@pytest.fixture(scope="module")
def rows():
    return study.run(CONFIG, seed=5)


ORDER = [
    ("exact", "estimated"),
    ("chi2", "estimated"),
    ("empirical", "estimated"),
    ("exact", "true"),
    ("chi2", "true"),
]


def _row(rows, test, subspace):
    return rows[ORDER.index((test, subspace))]


def test_run_rows_have_documented_finite_values(rows):
    assert [(r["test"], r["subspace"]) for r in rows] == ORDER
    for row in rows:
        assert set(row) == KEYS
        assert row["n"] == 40
        for key in ("p_values", "holm", "bh", "contaminated"):
            assert len(row[key]) == study.K, key
        values = np.concatenate([row["p_values"], row["holm"], row["bh"]])
        assert np.all((values >= 0) & (values <= 1))
        for key in ("delta", "subspace_error", "power", "fdp"):
            assert np.isfinite(row[key]), key
        assert int(np.sum(row["contaminated"])) == study.N_BAD
    for row in rows[3:]:
        assert row["subspace_error"] == pytest.approx(0.0, abs=1e-12)


def test_run_rows_are_consistent_with_the_fits(rows):
    """Exact identities: the stored p-values are those of clair and of the test at
    the true A on the same sample; the summaries follow from the stored lists."""
    n = study.n_samples(CONFIG["p"], CONFIG["n_over_p"])
    delta = margin_for_ratio(CONFIG["ratio"], study.SIGMA, 10, study.Q, study.R, n)
    model = FederatedModel(
        10,
        study.Q,
        study.R,
        study.K,
        contamination=study.N_BAD,
        contamination_type="margin",
        margin=delta,
    )
    sample = model.sample_regression(n, sigma=study.SIGMA, seed=5)
    bad = sample.contaminated
    np.testing.assert_allclose(sample.margin[bad], delta, rtol=1e-12)
    cov, nu = sample.noise_cov, sample.noise_df
    result = clair(sample.updates, rank=study.R, noise_cov=cov, noise_df=nu)
    a_hat, a = result.subspace, sample.subspace
    expected = {
        ("exact", "estimated"): result.p_values,
        ("chi2", "estimated"): chi_square_test(
            sample.updates, a_hat, sigma=sample.local_sd
        ).p_values,
        ("empirical", "estimated"): empirical_energy_test(
            off_subspace_energy(sample.updates, a_hat)
        ).p_values,
        ("exact", "true"): chi_square_test(
            sample.updates, a, noise_cov=cov, noise_df=nu
        ).p_values,
        ("chi2", "true"): chi_square_test(
            sample.updates, a, sigma=sample.local_sd
        ).p_values,
    }
    for key, p_values in expected.items():
        np.testing.assert_allclose(_row(rows, *key)["p_values"], p_values, rtol=1e-12)
    # clair's own Holm decision is the stored one at alpha = 0.05
    np.testing.assert_array_equal(
        ~result.collaborative,
        np.asarray(_row(rows, "exact", "estimated")["holm"]) <= study.ALPHA,
    )
    for row in rows:
        flagged = np.asarray(row["holm"]) <= study.ALPHA
        bh = np.asarray(row["bh"]) <= study.ALPHA
        mask = np.asarray(row["contaminated"], dtype=bool)
        np.testing.assert_array_equal(mask, bad)
        assert row["power"] == pytest.approx(np.mean(flagged[mask]))
        assert row["exact"] == bool(np.array_equal(flagged, mask))
        assert row["fwer_event"] == bool(np.any(flagged & ~mask))
        assert row["fdp"] == pytest.approx(np.sum(bh & ~mask) / max(1, np.sum(bh)))


def test_run_is_deterministic_in_the_seed(rows):
    assert study.run(CONFIG, seed=5) == rows
    assert study.run(CONFIG, seed=6)[0]["p_values"] != rows[0]["p_values"]


def test_well_separated_clients_are_all_flagged():
    """At rho = 4, p = 10, n = 80, the first-order power of one contaminated client
    (noncentral chi^2, leverage-corrected) leaves a miss probability below 1e-12
    (computed below), so missing any of the 5 x 4 clients has probability below
    2e-11: the assertion fails only if the test lost its power."""
    config = {"p": 10, "n_over_p": 8.0, "ratio": 4.0}
    miss = 1 - predicted_power(4.0, 10, study.Q, study.R, 80, study.K, 0.05, True)
    assert miss < 1e-12
    for seed in range(5):
        chi2 = _row(study.run(config, seed), "chi2", "estimated")
        assert chi2["power"] == 1.0, seed


# ------------------------------------------------------------- summaries, report
@pytest.fixture(scope="module")
def grid(quick_grid):
    """The quick grid, run once per session (tests/conftest.py)."""
    return quick_grid(study)


@pytest.fixture
def small_frame(grid):
    return grid.frame.copy()


def test_roc_area_is_the_mann_whitney_statistic(small_frame):
    rows = small_frame[
        (small_frame["subspace"] == "estimated")
        & (small_frame["test"] == "exact")
        & (small_frame["ratio"] == 1.0)
    ]
    fpr, tpr, auc = study.roc_curve(rows)
    p = np.array(rows["p_values"].tolist())
    bad = np.array(rows["contaminated"].tolist(), dtype=bool)
    u = scipy.stats.mannwhitneyu(p[~bad], p[bad]).statistic  # benign p larger
    assert auc == pytest.approx(u / (bad.sum() * (~bad).sum()))
    assert fpr[-1] == 1
    assert tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0)
    assert np.all(np.diff(tpr) >= 0)


def test_error_rates_match_a_direct_count(small_frame):
    """The rates from the stored adjusted p-values equal a count of the decisions
    of the library's Holm and BH (tests/test_multitest.py checks them against
    statsmodels) on the raw p-values, replicate by replicate."""
    rows = small_frame[
        (small_frame["subspace"] == "true") & (small_frame["test"] == "exact")
    ]
    alphas = np.array([0.01, 0.05, 0.2])
    rates = study.error_rates(rows, alphas)
    p_values = np.stack([np.asarray(p, dtype=float) for p in rows["p_values"]])
    benign = ~np.stack([np.asarray(c, dtype=bool) for c in rows["contaminated"]])
    for alpha, fwer, fdr in zip(alphas, rates["fwer"], rates["fdr"], strict=True):
        holm = reject(p_values, alpha, "holm")[0]
        bh = reject(p_values, alpha, "fdr_bh")[0]
        events = np.any(holm & benign, axis=1)
        fdps = np.sum(bh & benign, axis=1) / np.maximum(1, np.sum(bh, axis=1))
        assert fwer == pytest.approx(np.mean(events))
        assert fdr == pytest.approx(np.mean(fdps))
    assert np.all(rates["fwer_lo"] <= rates["fwer"])
    assert np.all(rates["fwer"] <= rates["fwer_hi"])


def test_calibrated_from_reads_the_largest_run_of_calibrated_sizes():
    table = pd.DataFrame(
        {
            "p": [10] * 4 + [20] * 2,
            "test": ["exact"] * 6,
            "subspace": ["estimated"] * 6,
            "n_over_p": [1.5, 2.0, 4.0, 8.0, 2.0, 4.0],
            "calibrated": [True, False, True, True, False, False],
        }
    )
    start = study.calibrated_from(table)
    assert start[(10, "exact", "estimated")] == 4.0
    assert math.isnan(start[(20, "exact", "estimated")])


def test_summary_and_report(grid, small_frame, tmp_path):
    table = study.summary_table(small_frame)
    assert len(table) == len(grid.study.configs)
    for test in study.TESTS:
        assert table[f"power_{test}"].between(0, 1).all()
        assert table[f"fwer_{test}"].between(0, 1).all()
    calibration = study.calibration_table(small_frame)
    assert set(calibration["test"]) == set(study.TESTS)
    # pooled over rho: every ratio's replicates
    ratios = {c["ratio"] for c in grid.study.configs}
    assert set(calibration["replicates"]) == {len(ratios) * grid.study.replicates}
    study.report(small_frame, tmp_path, argparse.Namespace(quick=True))
    for name in (
        "power.png",
        "roc.png",
        "error_rates.png",
        "calibration.png",
        "summary.md",
        "summary.csv",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    text = (tmp_path / "summary.md").read_text()
    assert "Calibrated" in text
    assert "target [0.03, 0.07]" in text


def test_quick_grid_is_a_subset_of_the_full_grid():
    quick = study.build(argparse.Namespace(quick=True))
    full = study.build(argparse.Namespace(quick=False))
    assert all(c in full.configs for c in quick.configs)
    assert quick.replicates <= full.replicates

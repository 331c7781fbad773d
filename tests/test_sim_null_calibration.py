"""The null-calibration study (simulations/null_calibration.py): one replicate's
rows, its chi-square row against ``clair(..., test="chi2")``, the guard on the
recomputed energies, the grids, the tables and the report of the quick grid."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pandas as pd
import pytest

import simulations.null_calibration as study
from clair_stats import FederatedModel, clair
from clair_stats.experiments.study import derive_seed

KEYS = {
    "test",
    "n_contaminated",
    "n_flagged",
    "n_false",
    "fwer_event",
    "min_benign_adjusted",
    "power",
    "exact",
    "benign_rate_05",
    "benign_rate_tail",
    "subspace_error",
    "sigma_ratio",
    "converged",
    "assumption_warnings",
    "clair_seconds",
}
SHARED = (
    "n_contaminated",
    "subspace_error",
    "sigma_ratio",
    "converged",
    "assumption_warnings",
)
CONFIG = {"noise": "ols2", "K": 10, "type": "margin", "gamma": 0.2, "block": 0}


def _config(noise: str, kind: str = "margin", k: int = 10) -> dict:
    gamma = 0.0 if kind == "none" else study.GAMMA
    return {"noise": noise, "K": k, "type": kind, "gamma": gamma, "block": 0}


def _sample(noise: str, k: int, seed: int):
    """The margin federation of ``run``, drawn here from the public generator."""
    model = FederatedModel(
        study.P,
        study.Q,
        study.R,
        k,
        contamination=study.GAMMA,
        contamination_type="margin",
        margin=study.margin(noise),
    )
    n = study.n_samples(noise)
    if n is None:
        return model.sample(noise=study.TAU, seed=seed)
    return model.sample_regression(n, sigma=study.SIGMA, seed=seed)


# ------------------------------------------------------------------ one replicate
@pytest.fixture(scope="module")
def rows():
    return study.run(CONFIG, seed=3)


def test_run_rows_have_documented_values(rows):
    assert [r["test"] for r in rows] == list(study.TESTS)
    for row in rows:
        assert set(row) == KEYS
        assert row["n_contaminated"] == 2  # 0.2 * 10
        assert 0 <= row["n_false"] <= row["n_flagged"] <= CONFIG["K"]
        assert row["fwer_event"] == (row["n_false"] > 0)
        # Holm flags a benign client at alpha iff its adjusted p-value <= alpha
        assert row["fwer_event"] == (row["min_benign_adjusted"] <= study.ALPHA)
        for key in ("power", "benign_rate_05", "benign_rate_tail"):
            assert 0 <= row[key] <= 1, key
        assert row["sigma_ratio"] > 0
        assert 0 <= row["subspace_error"] <= np.sqrt(2 * study.R) + 1e-12
    for key in SHARED:  # one fit, two tests
        assert rows[0][key] == rows[1][key], key


def test_run_is_deterministic_in_the_seed(rows):
    drop = ("clair_seconds",)
    again = study.run(CONFIG, seed=3)
    strip = [{k: v for k, v in r.items() if k not in drop} for r in rows]
    assert strip == [{k: v for k, v in r.items() if k not in drop} for r in again]
    other = study.run(CONFIG, seed=4)
    assert other[0]["subspace_error"] != rows[0]["subspace_error"]


def test_benign_only_rows_have_no_power():
    for row in study.run(_config("iid", "none"), seed=0):
        assert row["n_contaminated"] == 0
        assert row["power"] is None
        assert row["exact"] == (not row["fwer_event"])
        assert row["exact"] == (row["n_flagged"] == 0)


@pytest.mark.parametrize("noise", sorted(study.NOISE_MODELS))
def test_rows_are_clairs_two_tests(noise):
    """With the rank given, clair's test does not change steps 1-2: the two calls
    test at the same A^ (bit for bit; step 4 then refits it on each call's own
    S^), and the study's rows are those of clair(test="auto") -- the empirical
    null -- and clair(test="chi2")."""
    seed = 11
    updates = np.asarray(_sample(noise, 10, seed).updates)
    auto = clair(updates, rank=study.R)
    chi2 = clair(updates, rank=study.R, test="chi2")
    assert auto.test.method == "empirical"
    assert chi2.test.method == "chi2"
    assert chi2.test.estimated_noise
    np.testing.assert_array_equal(auto.detection_subspace, chi2.detection_subspace)
    np.testing.assert_array_equal(auto.decomposition.sparse, chi2.decomposition.sparse)
    bad = _sample(noise, 10, seed).contaminated
    for row, fit in zip(study.run(_config(noise), seed), (auto, chi2), strict=True):
        assert row["test"] == fit.test.method
        flagged = ~fit.collaborative
        assert row["n_flagged"] == int(flagged.sum())
        assert row["power"] == pytest.approx(np.mean(flagged[bad]))
        assert row["min_benign_adjusted"] == pytest.approx(
            np.min(fit.test.adjusted_p_values[~bad]), rel=1e-9
        )


def test_run_refuses_energies_that_are_not_clairs(monkeypatch):
    """The guard: energies other than those clair tested raise."""
    original = study.off_subspace_energy

    def perturbed(updates, subspace):
        energy = original(updates, subspace)
        return energy * (1 + 1e-3 * np.arange(energy.size))

    monkeypatch.setattr(study, "off_subspace_energy", perturbed)
    with pytest.raises(AssertionError, match="not those clair tested"):
        study.run(CONFIG, seed=3)


# ------------------------------------------------------------------------- grids
def test_quick_grid_is_a_subset_of_the_full_grid_with_the_same_seeds():
    quick = study.build(argparse.Namespace(quick=True))
    full = study.build(argparse.Namespace(quick=False))
    full_keys = {tuple(sorted(c.items())) for c in full.configs}
    assert all(tuple(sorted(c.items())) in full_keys for c in quick.configs)
    assert quick.replicates <= full.replicates
    assert quick.name == full.name
    for config in quick.configs:
        assert derive_seed(quick.name, config, 1) == derive_seed(full.name, config, 1)


def test_full_grid_replicates_per_cell():
    """500 benign-only federations per (noise, K) (400 at K = 200), 60 per
    contaminated cell: 11,700 replicates."""
    full = study.build(argparse.Namespace(quick=False))
    configs = pd.DataFrame(full.configs)
    per_cell = configs.groupby(["noise", "K", "type"]).size() * full.replicates
    for (noise, k, kind), count in per_cell.items():
        if kind == "none":
            assert count == (400 if k == 200 else 500), (noise, k)
        else:
            assert count == 60, (noise, k, kind)
    assert set(configs["type"]) == {"none", *study.TYPES}
    assert set(configs["K"]) == set(study.FULL_K)
    assert len(full.tasks()) == 11_700


# ------------------------------------------------------------- tables and report
def _power(table: pd.DataFrame, noise: str, k: int, kind: str, test: str) -> float:
    """The power of one cell of the summary table."""
    row = table[
        (table["noise"] == noise)
        & (table["K"] == k)
        & (table["type"] == kind)
        & (table["test"] == test)
    ]
    return float(row.iloc[0]["power"])


@pytest.fixture(scope="module")
def grid(quick_grid):
    """The quick grid, run once per session (tests/conftest.py)."""
    return quick_grid(study)


def test_fwer_table_counts_the_events(grid):
    frame = grid.frame
    fwer = study.fwer_table(frame)
    for row in fwer.itertuples(index=False):
        cell = frame[
            (frame["noise"] == row.noise)
            & (frame["K"] == row.K)
            & (frame["test"] == row.test)
            & ((frame["type"] == "none") == (row.setting == "benign-only"))
        ]
        assert row.replicates == len(cell) == grid.study.replicates
        assert row.fwer == pytest.approx(cell["fwer_event"].mean())
        assert row.lo <= row.fwer <= row.hi
        assert row.above == (row.lo > study.ALPHA)
    # the stored adjusted p-values give the same events
    events = frame["min_benign_adjusted"] <= study.ALPHA
    assert (events == frame["fwer_event"]).all()


def test_report_writes_figures_and_the_tables_it_shows(grid, tmp_path):
    frame = grid.frame.copy()
    study.report(frame, tmp_path, grid.args)
    for name in ("fwer.png", "power.png", "summary.md", "summary.csv", "fwer.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    text = (tmp_path / "summary.md").read_text()
    table = study.summary_table(frame)
    fwer = study.fwer_table(frame)
    for noise in study.QUICK_NOISE:
        assert f"## {noise}: " in text
        for k in study.QUICK_K:
            # the row of K in the noise model's table: FWER and power as shown
            section = text.split(f"## {noise}: ")[1]
            line = next(x for x in section.splitlines() if x.startswith(f"| {k} | "))
            for test in study.TESTS:
                r = fwer[
                    (fwer["noise"] == noise)
                    & (fwer["K"] == k)
                    & (fwer["test"] == test)
                    & (fwer["setting"] == "benign-only")
                ].iloc[0]
                assert study._cell(r["fwer"], r["lo"], r["hi"]) in line
            pair = " / ".join(
                f"{_power(table, noise, k, 'margin', test):.3f}" for test in study.TESTS
            )
            assert line.rstrip(" |").endswith(pair)
    listed = re.findall(r"^- (\w+), K = (\d+), (\w+), ([\w-]+): FWER", text, re.M)
    above = study.not_calibrated(fwer)
    assert len(listed) == len(above)
    assert "Not calibrated" in text
    # the power of the margin clients is between 0 and 1 somewhere (informative)
    margin = table[table["type"] == "margin"]["power"]
    assert ((margin > 0) & (margin < 1)).any()

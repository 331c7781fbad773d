"""Tests of the study simulations/fig1_subspace_error.py and the rate formulas.

The study's ``run`` is checked on small instances (seconds): documented keys with
finite values in their ranges, determinism in the seed, the definition of the
oracle, the plain SVD and CLAIR's two subspaces (refitted on S^, and of step 3),
and the report's files on a tiny stored grid.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import simulations.fig1_subspace_error as fig1
from clair_stats import FederatedModel, clair
from clair_stats.evaluation.metrics import projection_distance
from clair_stats.theory.t4 import refined_prediction, spec_prediction

CONFIG = {"p": 12, "q": 2, "r": 2, "n": 40, "K": 12, "gamma": 0.2}


def _sample(config, seed):
    """The instance that ``run(config, seed)`` draws."""
    model = FederatedModel(
        p=config["p"],
        q=config["q"],
        rank=config["r"],
        n_clients=config["K"],
        contamination=config["gamma"],
        contamination_type=fig1.TYPES,
        signal_scale=fig1.SIGNAL_SCALE,
    )
    return model.sample_regression(config["n"], sigma=fig1.SIGMA, seed=seed)


def _top_left(blocks: np.ndarray, rank: int) -> np.ndarray:
    """Top-r left singular vectors of [B_1, ..., B_k], built with hstack."""
    return np.linalg.svd(np.hstack(list(blocks)), full_matrices=False)[0][:, :rank]


def test_run_returns_finite_documented_keys():
    rows = fig1.run(CONFIG, seed=3)
    assert [row["method"] for row in rows] == list(fig1.ROWS)
    n_bad = FederatedModel(
        p=12, q=2, rank=2, n_clients=12, contamination=0.2
    ).n_contaminated
    r = CONFIG["r"]
    for row in rows:
        assert row["m"] == CONFIG["K"] - n_bad
        # ||P - P'||_F <= sqrt(2 r) for two rank-r projectors; op norm <= 1
        assert 0 <= row["error"] <= math.sqrt(2 * r) + 1e-12
        assert 0 <= row["error_op"] <= 1 + 1e-12
        # ||.||_op <= ||.||_F <= sqrt(rank of P - P' <= 2r) ||.||_op
        assert row["error_op"] <= row["error"] + 1e-12
        assert row["error"] <= math.sqrt(2 * r) * row["error_op"] + 1e-12
    clair_row = rows[0]
    assert 0 <= clair_row["benign_flagged"] <= clair_row["m"]
    assert 0 <= clair_row["missed"] <= n_bad
    assert isinstance(clair_row["converged"], bool)


def test_run_is_deterministic_in_the_seed():
    first, again = fig1.run(CONFIG, seed=5), fig1.run(CONFIG, seed=5)
    assert first == again
    other = fig1.run(CONFIG, seed=6)
    assert [r["error"] for r in other] != [r["error"] for r in first]


def test_oracle_and_svd_follow_their_definitions():
    """oracle = top-r SVD of the benign clients' estimates, svd = of all clients."""
    seed = 11
    rows = {row["method"]: row for row in fig1.run(CONFIG, seed=seed)}
    sample = _sample(CONFIG, seed)
    r = CONFIG["r"]
    oracle = _top_left(sample.updates[sample.benign], r)
    plain = _top_left(sample.updates, r)
    assert rows["oracle"]["error"] == pytest.approx(
        projection_distance(oracle, sample.subspace), rel=1e-10
    )
    assert rows["svd"]["error"] == pytest.approx(
        projection_distance(plain, sample.subspace), rel=1e-10
    )


def test_clair_rows_are_the_refitted_and_the_step_3_subspace():
    """clair: result.subspace (A^ refitted on S^, the default); clair_detection:
    the A^ of clair(final_subspace="detection"); with S^ = S the refit is the
    oracle's SVD."""
    seed = 11
    rows = {row["method"]: row for row in fig1.run(CONFIG, seed=seed)}
    sample = _sample(CONFIG, seed)
    r = CONFIG["r"]
    fit = clair(sample.updates, rank=r, detect="test", sigma=sample.local_sd)
    old = clair(
        sample.updates,
        rank=r,
        detect="test",
        sigma=sample.local_sd,
        final_subspace="detection",
    )
    assert rows["clair"]["error"] == pytest.approx(
        projection_distance(fit.subspace, sample.subspace), rel=1e-10
    )
    assert rows["clair_detection"]["error"] == pytest.approx(
        projection_distance(old.subspace, sample.subspace), rel=1e-10
    )
    if np.array_equal(fit.collaborative, sample.benign):
        assert rows["clair"]["error"] == pytest.approx(
            rows["oracle"]["error"], rel=1e-8
        )


def test_oracle_equals_svd_without_contamination():
    """With gamma = 0 every client is benign: the two estimates coincide."""
    rows = {row["method"]: row for row in fig1.run({**CONFIG, "gamma": 0.0}, 2)}
    assert rows["oracle"]["m"] == CONFIG["K"]
    assert rows["oracle"]["error"] == rows["svd"]["error"]


def test_rate_predictions_scale_as_stated():
    """spec ~ (n K)^(-1/2); refined ~ ((n - p - 1) m)^(-1/2) (exact identities)."""
    p, q, r = 30, 3, 3
    assert spec_prediction(p, q, r, 100, 160) == pytest.approx(
        spec_prediction(p, q, r, 100, 40) / 2
    )
    assert spec_prediction(p, q, r, 400, 40) == pytest.approx(
        spec_prediction(p, q, r, 100, 40) / 2
    )
    assert refined_prediction(p, q, r, 120, 64) == pytest.approx(
        refined_prediction(p, q, r, 120, 16) / 2
    )
    ratio = refined_prediction(p, q, r, 480, 16) / refined_prediction(p, q, r, 120, 16)
    assert ratio == pytest.approx(math.sqrt((120 - p - 1) / (480 - p - 1)))
    # sigma / s scales both linearly
    assert refined_prediction(
        p, q, r, 120, 16, sigma=2.0, signal_scale=0.5
    ) == pytest.approx(4 * refined_prediction(p, q, r, 120, 16))
    # arrays broadcast
    many = spec_prediction(p, q, r, 100, np.array([10, 40]))
    assert many.shape == (2,)
    assert many[1] == pytest.approx(many[0] / 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 31}, "n must be > p \\+ 1"),
        ({"m": 0}, "m must be >= 1"),
        ({"m": 2.5}, "whole number"),
        ({"sigma": -1.0}, "sigma must be >= 0"),
        ({"signal_scale": 0.0}, "signal_scale must be > 0"),
    ],
)
def test_refined_prediction_rejects_bad_input(kwargs, message):
    args = {"n": 120, "m": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        refined_prediction(30, 3, 3, **args)


def test_report_writes_figures_and_summary(quick_grid, tmp_path):
    grid = quick_grid(fig1)  # the quick grid, run once per session (conftest.py)
    frame = grid.frame.copy()
    folder = tmp_path / "report"
    fig1.report(frame, folder, grid.args)
    for name in (
        "subspace_error.png",
        "error_ratio.png",
        "summary.md",
        "ratio_to_oracle.md",
    ):
        assert (folder / name).stat().st_size > 0
    table = pd.read_csv(folder / "summary.csv")
    regimes = frame[list(fig1.REGIME)].drop_duplicates()
    assert len(table) == len(regimes) * len(fig1.METHODS)
    assert sorted(set(table["method"])) == sorted(fig1.METHODS)
    assert np.isfinite(table[["slope", "slope_lo", "slope_hi"]].to_numpy()).all()
    assert (table["slope_lo"] <= table["slope"]).all()
    assert (table["slope"] <= table["slope_hi"]).all()
    # the ratio column is error / refined prediction, averaged at the largest K
    data = fig1.with_predictions(frame)
    k_max = data["K"].max()
    for row in table[table["method"] == "oracle"].itertuples():
        top = data[
            (data["K"] == k_max)
            & (data["method"] == "oracle")
            & (data["p"] == row.p)
            & (data["q"] == row.q)
            & (data["r"] == row.r)
            & (data["n"] == row.n)
        ]
        expected = float(np.mean(top["error"] / top["refined"]))
        assert row.ratio_at_K_max == pytest.approx(expected)
    # ratio to the oracle: mean error over the oracle's, per (regime, K, method)
    ratios = pd.read_csv(folder / "ratio_to_oracle.csv")
    n_points = len(frame[[*fig1.REGIME, "K"]].drop_duplicates())
    assert len(ratios) == n_points * (len(fig1.ROWS) - 1)
    for row in ratios.head(4).itertuples():
        point = data[
            (data["K"] == row.K)
            & (data["p"] == row.p)
            & (data["q"] == row.q)
            & (data["r"] == row.r)
            & (data["n"] == row.n)
        ]
        mean = point.groupby("method")["error"].mean()
        assert row.ratio == pytest.approx(mean[row.method] / mean["oracle"])
        assert row.lo <= row.ratio <= row.hi
    assert "clair_detection" in (folder / "summary.md").read_text()

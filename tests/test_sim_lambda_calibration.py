"""Tests of the calibration study (simulations/lambda_calibration.py): one
replicate's rows, determinism and common random numbers, the exact-recovery
criterion and the ceiling c >= sqrt(q K), the summary logic on a hand-made frame,
the grids and the report."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd
import pytest

import simulations.lambda_calibration as study
from clair_stats import DEFAULT_C_LAM, FederatedModel
from clair_stats.experiments.study import derive_seed
from clair_stats.theory.t1 import t1_c_lam

KEYS = {
    "c_kind",
    "c",
    "lam",
    "success",
    "subspace_ok",
    "converged",
    "iterations",
    "subspace_error",
    "support_ok",
    "false_pos",
    "false_neg",
    "rank",
    "solve_seconds",
    "error",
    "n_solves",
    "reference_seconds",
}
#: q = 1, K = 20: the ceiling sqrt(q K) = 4.47 lies inside the grid of c.
CEILING = {"p": 20, "q": 1, "K": 20, "r": 2, "gamma": 0.2, "type": "random"}
#: One contaminated client of five columns among 20: an easy regime.
EASY = {"p": 20, "q": 5, "K": 20, "r": 2, "gamma": 0.05, "type": "orthogonal"}


@pytest.fixture(scope="module")
def ceiling_rows() -> list[dict]:
    return study.run(CEILING, seed=derive_seed("lambda_calibration", CEILING, 0))


def test_run_returns_one_row_per_c_with_documented_values(ceiling_rows) -> None:
    rows = ceiling_rows
    kinds = ["grid"] * len(study.C_GRID) + ["theory", "auto"]
    assert [r["c_kind"] for r in rows] == kinds
    assert [r["c"] for r in rows[:-2]] == list(study.C_GRID)
    assert rows[-2]["c"] == pytest.approx(3 / (7 * math.sqrt(CEILING["gamma"])))
    for row in rows:
        assert set(row) == KEYS
        assert row["lam"] == pytest.approx(row["c"] / math.sqrt(CEILING["K"]))
        assert row["error"] is None
        assert math.isfinite(row["subspace_error"])
        assert math.isfinite(row["solve_seconds"])
        assert row["iterations"] >= 1
        # the criterion is the documented conjunction
        expected = (
            row["converged"]
            and row["subspace_error"] <= study.SUBSPACE_TOL
            and row["support_ok"]
            and row["rank"] == CEILING["r"]
        )
        assert row["success"] == expected
        sub = row["converged"] and row["subspace_error"] <= study.SUBSPACE_TOL
        assert row["subspace_ok"] == sub
        if row["c_kind"] == "auto":
            assert 2 <= row["n_solves"] <= 13
            assert row["reference_seconds"] > 0
            assert row["c"] < math.sqrt(CEILING["q"] * CEILING["K"])
        else:
            assert row["n_solves"] == 1
            assert row["reference_seconds"] is None


def test_auto_row_recovers_the_q1_ceiling_regime(ceiling_rows) -> None:
    """q = 1, K = 20: the window is a single grid value (c = 3, below the default
    and just under the ceiling's reach); lam="auto" finds it on this replicate."""
    by_kind = {r["c_kind"]: r for r in ceiling_rows if r["c_kind"] != "grid"}
    window = [r["c"] for r in ceiling_rows if r["c_kind"] == "grid" and r["success"]]
    assert window == [3.0]
    assert by_kind["auto"]["success"], by_kind["auto"]


def test_ceiling_no_client_is_flagged_above_sqrt_qK(ceiling_rows) -> None:
    """For lam >= sqrt(q), (L, S) = (M, 0) is optimal in P0: ||S||_* <=
    sqrt(q) sum_k ||S_k||_F. Above the ceiling S^ = 0, so every contaminated
    client is missed and no benign one is flagged."""
    n_bad = round(CEILING["gamma"] * CEILING["K"])
    above = [r for r in ceiling_rows if r["c"] > math.sqrt(CEILING["q"] * CEILING["K"])]
    assert len(above) == sum(c > math.sqrt(20) for c in study.C_GRID)
    for row in above:
        assert row["false_neg"] == n_bad
        assert row["false_pos"] == 0
        assert not row["success"]


def test_easy_regime_recovers_at_the_default_c() -> None:
    """A known-limit case: one contaminated client drawn off span(A) among 20
    with q = 5 columns each; P0 at c = DEFAULT_C_LAM recovers it exactly."""
    for rep in range(2):
        rows = study.run(EASY, seed=derive_seed("lambda_calibration", EASY, rep))
        row = next(r for r in rows if r["c"] == float(DEFAULT_C_LAM))
        assert row["success"], row
        assert row["subspace_error"] <= study.SUBSPACE_TOL


def test_run_is_deterministic_and_uses_one_instance_for_every_c() -> None:
    first = study.run(EASY, 5)
    second = study.run(EASY, 5)
    drop = ("solve_seconds", "reference_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in first] == [
        {k: v for k, v in r.items() if k not in drop} for r in second
    ]
    # common random numbers: a c run alone on the instance of seed 5 gives the
    # row of the full replicate
    model = FederatedModel(
        20, 5, 2, 20, contamination=0.05, contamination_type="orthogonal"
    )
    sample = model.sample(noise=0.0, seed=5)
    alone = study._solve(sample, 2, 3.0 / math.sqrt(20))
    row = next(r for r in first if r["c"] == 3.0)
    assert alone["subspace_error"] == row["subspace_error"]
    assert alone["iterations"] == row["iterations"]


def test_intervals_writes_runs_of_consecutive_grid_values() -> None:
    assert study.intervals([3.0, 3.5, 4.0, 6.0]) == "[3, 4], 6"
    assert study.intervals([]) == "none"
    assert study.intervals([7.0, 1.5]) == "1.5, 7"


def _hand_frame() -> tuple[pd.DataFrame, list[dict]]:
    """Three regimes, 2 replicates: windows {3, 3.5, 4}, {4, 4.5} and {}; auto
    recovers the first and the third on both replicates, the second on one."""
    configs = [
        {"p": 30, "q": 1, "K": 20, "r": 2, "gamma": 0.1, "type": "random"},
        {"p": 30, "q": 5, "K": 20, "r": 2, "gamma": 0.1, "type": "random"},
        {"p": 30, "q": 5, "K": 100, "r": 2, "gamma": 0.4, "type": "random"},
    ]
    windows = [{3.0, 3.5, 4.0}, {4.0, 4.5}, set()]
    rows = []
    for config, window in zip(configs, windows, strict=True):
        for rep in range(2):
            values = [("grid", c) for c in study.C_GRID]
            values.append(("theory", t1_c_lam(config["gamma"])))
            for kind, c in values:
                # in the window: success on both replicates; 5: one of two
                ok = kind == "grid" and (c in window or (c == 5.0 and rep == 0))
                rows.append(
                    {
                        **config,
                        "replicate": rep,
                        "c_kind": kind,
                        "c": c,
                        "success": ok,
                        "subspace_ok": ok or c == 2.0,
                        "solve_seconds": 0.01,
                        "n_solves": 1,
                        "reference_seconds": None,
                    }
                )
            auto_ok = not (window == {4.0, 4.5} and rep == 1)
            rows.append(
                {
                    **config,
                    "replicate": rep,
                    "c_kind": "auto",
                    "c": 4.2 + 0.1 * rep,  # varies by replicate
                    "success": auto_ok,
                    "subspace_ok": True,
                    "solve_seconds": 0.08,
                    "n_solves": 8,
                    "reference_seconds": 0.01,
                }
            )
    return pd.DataFrame(rows), configs


def test_summary_logic_on_a_hand_made_frame() -> None:
    frame, configs = _hand_frame()
    table = study.windows_table(frame, configs)
    assert [study.intervals(w) for w in table["window_values"]] == [
        "[3, 4]",
        "[4, 4.5]",
        "none",
    ]
    assert table["rate_5"].tolist() == [0.5, 0.5, 0.5]
    rec = study.recommendation(table)
    assert rec["best"] == 4.0
    assert rec["best_count"] == 2
    assert rec["uncovered"] == 1
    coverage = study.coverage_table(table).set_index("group")
    assert coverage.loc["all", "4"] == 2
    assert coverage.loc["q=5", "4.5"] == 1
    assert coverage.loc["all", "T1"] == 0
    assert coverage.loc["all", "auto"] == 2
    assert coverage.loc["q=5", "auto"] == 1
    assert table["rate_auto"].tolist() == [1.0, 0.5, 1.0]
    auto = study.auto_summary(frame, table)
    assert auto["recovered"] == 2
    assert auto["per_q"] == {1: (1, 1), 5: (1, 2)}
    assert auto["empty_recovered"] == 1
    assert auto["missed"] == ["p=30 q=5 K=20 r=2 gamma=0.1 random"]
    assert auto["solves"] == (8.0, 8)
    assert auto["time_ratio"][0] == pytest.approx(8.0)
    sub = study.coverage_table(table, subspace_only=True).set_index("group")
    assert sub.loc["all", "2"] == 3
    text = study.summarize(frame, configs, 2, "t")
    assert "Recommended c_lam = **4**: in the working window of 2 of 3" in text
    assert "every replicate in **2 of 3** regimes (q=1: 1/1, q=5: 1/2)" in text
    assert "empty window (no c of the grid works): 1" in text
    line = next(x for x in text.splitlines() if x.startswith("| p=30 q=5 K=20 "))
    cells = [x.strip() for x in line.strip("|").split("|")]
    assert cells[1] == "[4, 4.5]"
    assert cells[2 + study.C_GRID.index(5.0)] == "1/2"
    assert cells[2 + study.C_GRID.index(4.0)] == "1"
    # a partial run is declared as such
    partial = study.summarize(frame[frame["replicate"] == 0], configs, 2, "t")
    assert "**Partial run**" in partial
    # a run of --methods auto: the auto rows alone, summarised without the grid
    only = study.summarize(frame[frame["c_kind"] == "auto"], configs, 2, "t")
    assert "Runs: 6 of 6 planned" in only
    assert "**2 of 3**" in only
    assert "Recommended" not in only


def test_quick_grid_is_a_subset_of_the_full_grid() -> None:
    full = study.build(study.parser().parse_args([]))
    quick = study.build(study.parser().parse_args(["--quick"]))
    assert len(full.configs) == 288
    assert full.replicates == 8
    assert len(quick.configs) == 8
    keys = {tuple(sorted(c.items())) for c in full.configs}
    assert all(tuple(sorted(c.items())) in keys for c in quick.configs)
    # c is not in the configuration: every c shares the replicate's seed
    assert all("c" not in c for c in full.configs)
    more = study.build(study.parser().parse_args(["--replicates", "3"]))
    assert more.replicates == 3
    with pytest.raises(ValueError, match="replicates"):
        study.build(study.parser().parse_args(["--replicates", "0"]))
    assert full.version == study.VERSION
    auto = study.build(study.parser().parse_args(["--methods", "auto"]))
    assert auto.version == f"{study.VERSION}-auto"
    assert auto.run is study.run_auto
    assert auto.configs == full.configs  # the same instances (seeds)


def test_methods_auto_returns_the_auto_row_only() -> None:
    rows = study.run_auto(EASY, derive_seed("lambda_calibration", EASY, 0))
    assert [r["c_kind"] for r in rows] == ["auto"]
    assert set(rows[0]) == KEYS
    assert rows[0]["success"], rows[0]


def test_report_writes_summary_tables_and_figures(tmp_path) -> None:
    frame, configs = _hand_frame()
    frame = frame.assign(seconds=0.0, item=0)
    args = argparse.Namespace(quick=True, replicates=None)
    # the three hand-made regimes belong to the quick grid (the planned one)
    study.report(frame, tmp_path, args)
    text = (tmp_path / "summary.md").read_text()
    assert "## Recommendation" in text
    assert "## lam='auto'" in text
    for name in ("coverage.png", "success_rate.png", "windows.png"):
        assert (tmp_path / name).stat().st_size > 0
    windows = pd.read_csv(tmp_path / "windows.csv")
    assert np.all(windows["rate_4"].between(0, 1))
    assert "rate_auto" not in windows
    auto = pd.read_csv(tmp_path / "auto.csv")
    assert auto["rate_auto"].tolist() == [1.0, 0.5, 1.0]
    assert auto["auto_ok"].tolist() == [True, False, True]

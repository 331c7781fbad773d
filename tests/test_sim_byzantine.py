"""Tests of the Byzantine robustness study (simulations/byzantine.py): one
replicate's rows under every attack, local and oracle, determinism in the seed,
gamma = 0, Bulyan's condition, the worst case and the targets on constructed
frames, the grids and the report."""

from __future__ import annotations

import argparse
import math
from itertools import product

import pandas as pd
import pytest

import simulations.byzantine as study
from clair_stats.experiments.study import derive_seed

#: A small scenario: K = 16 clients; gamma = 0.25 gives f = 4 attackers (Krum
#: needs K > 2f + 2; Bulyan K >= 4f + 3 = 19, so it is skipped there).
SMALL = {"p": 12, "q": 3, "r": 2, "K": 16, "tau": 0.05}
METRICS = ("relative_mse", "max_client_ratio", "method_seconds")
CLAIR_KEYS = ("n_flagged", "precision", "recall", "rank", "subspace_error")


def _config(federation: str, attack: str, gamma: float) -> dict:
    return {**SMALL, "federation": federation, "attack": attack, "gamma": gamma}


def _by_method(rows: list[dict]) -> dict[str, dict]:
    return {row["method"]: row for row in rows}


@pytest.mark.parametrize("attack", study.ATTACKS)
def test_run_rows_have_documented_keys_and_finite_values(attack: str) -> None:
    federation = study.FEDERATIONS[study.ATTACKS.index(attack) % 3]
    rows = study.run(_config(federation, attack, 0.25), seed=5)
    assert [r["method"] for r in rows] == list(study.METHODS)
    for row in rows:
        assert tuple(row) == study.ROW_KEYS
        assert row["n_contaminated"] == 4  # round(0.25 * 16)
        if row["method"] == "flower_bulyan":  # K = 16 < 4 f + 3 = 19
            continue
        assert row["skipped"] is None
        assert all(math.isfinite(row[k]) for k in METRICS), row
        assert row["relative_mse"] > 0
        assert row["max_client_ratio"] > 0
        assert isinstance(row["warned"], bool)
        assert isinstance(row["converged"], bool)
        if row["method"] in study.CLAIR_METHODS:
            assert 0 <= row["n_flagged"] <= SMALL["K"]
            assert 0 <= row["precision"] <= 1
            assert 0 <= row["recall"] <= 1
            assert 0 <= row["rank"] <= SMALL["p"]
            # ||P - P'||_F of projectors of ranks r^ and r is at most sqrt(r^ + r)
            bound = math.sqrt(row["rank"] + SMALL["r"]) + 1e-12
            assert 0 <= row["subspace_error"] <= bound
            sources = ("none", "trimmed", "reweighted", "decomposition")
            assert row["refit_source"] in sources
            assert row["refit_source"] != "none" or row["method"] == "clair_paper"
        else:
            assert all(row[k] is None for k in (*CLAIR_KEYS, "refit_source"))
    local = rows[0]
    # the local estimates are the updates themselves: both ratios are exactly 1
    assert local["relative_mse"] == 1.0
    assert local["max_client_ratio"] == 1.0


def test_refit_source_of_the_trimmed_refit_is_recorded() -> None:
    rows = _by_method(study.run(_config("heterogeneous", "margin_4", 0.25), 2))
    assert rows["clair_paper"]["refit_source"] == "none"
    for method in ("clair", "clair_sigma"):
        assert rows[method]["refit_source"] in (
            "trimmed",
            "reweighted",
            "decomposition",
        )


def test_oracle_is_below_local_on_a_heterogeneous_replicate() -> None:
    """Oracle CLAIR averages the off-subspace noise over the benign clients: its
    error is about (r q + (p - r) q / m) tau^2 against local's p q tau^2."""
    rows = _by_method(study.run(_config("heterogeneous", "random", 0.25), 0))
    oracle = rows["oracle_clair"]
    p, q, r, m = SMALL["p"], SMALL["q"], SMALL["r"], SMALL["K"] - 4
    expected = (r * q + (p - r) * q / m) / (p * q)
    assert oracle["relative_mse"] < 1
    assert oracle["relative_mse"] == pytest.approx(expected, rel=0.5)
    assert oracle["max_client_ratio"] < 1
    # the aggregators give every client the benign mean: far above local here
    assert rows["flower_mean"]["relative_mse"] > 1


def test_run_is_deterministic_in_the_seed() -> None:
    config = _config("backbone", "adaptive", 0.25)
    first, second, other = (
        study.run(config, 11),
        study.run(config, 11),
        study.run(config, 12),
    )

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "method_seconds"} for r in rows]

    assert strip(first) == strip(second)
    assert first[1]["relative_mse"] != other[1]["relative_mse"]


@pytest.mark.parametrize("federation", study.FEDERATIONS)
def test_gamma_zero_has_no_attacker_and_every_method(federation: str) -> None:
    rows = study.run(_config(federation, study.NO_ATTACK, 0.0), 4)
    assert [r["method"] for r in rows] == list(study.METHODS)
    for row in rows:
        assert row["n_contaminated"] == 0
        assert row["skipped"] is None  # Bulyan runs: K >= 3
        assert math.isfinite(row["relative_mse"])
        if row["method"] in study.CLAIR_METHODS:
            assert row["recall"] == 1.0  # no contaminated client: nothing missed
            assert row["precision"] == (1.0 if row["n_flagged"] == 0 else 0.0)
    rows = _by_method(rows)
    # with f = 0 the trimmed mean (trim 0), multi-Krum (m = K) and Bulyan are the mean
    mean = rows["flower_mean"]["relative_mse"]
    for method in ("flower_trimmed_mean", "flower_multi_krum", "flower_bulyan"):
        assert rows[method]["relative_mse"] == pytest.approx(mean, rel=1e-9)


def test_run_rejects_an_attack_without_attackers_and_the_reverse() -> None:
    with pytest.raises(ValueError, match="exactly when there is no attacker"):
        study.run(_config("heterogeneous", study.NO_ATTACK, 0.25), 0)
    with pytest.raises(ValueError, match="exactly when there is no attacker"):
        study.run(_config("heterogeneous", "random", 0.0), 0)
    with pytest.raises(ValueError, match="Krum's condition"):
        study.run(_config("heterogeneous", "random", 0.45), 0)  # f = 7, 2f + 2 = 16
    with pytest.raises(ValueError, match="federation must be one of"):
        study.run(_config("flat", "random", 0.25), 0)


def test_bulyan_runs_only_where_k_is_at_least_4f_plus_3() -> None:
    # f = 3: 4 f + 3 = 15 <= 16, Bulyan runs
    ran = _by_method(study.run(_config("homogeneous", "ipm_2", 0.1875), 1))
    assert ran["flower_bulyan"]["n_contaminated"] == 3
    assert ran["flower_bulyan"]["skipped"] is None
    assert math.isfinite(ran["flower_bulyan"]["relative_mse"])
    # f = 4: 19 > 16, a row with None metrics and the reason
    skipped = _by_method(study.run(_config("homogeneous", "ipm_2", 0.25), 1))
    row = skipped["flower_bulyan"]
    assert row["skipped"] == "Bulyan needs K >= 4f + 3; K = 16, f = 4"
    assert all(row[k] is None for k in (*METRICS, "warned", "converged"))
    # in the study's scenario Bulyan runs up to gamma = 0.2 (f = 8), not from 0.25
    K = study.SCENARIO["K"]
    runs = [g for g in study.FULL_GAMMAS if K >= 4 * study.n_attackers(g, K) + 3]
    assert max(runs) == 0.2


# ------------------------------------------------------------ constructed frames
def _frame(values: dict[tuple, list[float]], ratio: float = 0.5) -> pd.DataFrame:
    """A study frame from {(federation, attack, gamma, method): relative_mse per
    replicate}; max_client_ratio is ``ratio`` unless the value is a tuple."""
    rows = []
    for (federation, attack, gamma, method), series in values.items():
        for rep, value in enumerate(series):
            mse, client = value if isinstance(value, tuple) else (value, ratio)
            clair_like = method in study.CLAIR_METHODS
            rows.append(
                {
                    "federation": federation,
                    "attack": attack,
                    "gamma": gamma,
                    "replicate": rep,
                    "method": method,
                    "relative_mse": mse,
                    "max_client_ratio": client,
                    "n_flagged": 1 if clair_like else None,
                    "precision": 1.0 if clair_like else None,
                    "recall": 0.5 if clair_like else None,
                }
            )
    return pd.DataFrame(rows)


def _met_values() -> dict[tuple, list[float]]:
    """Every target met: CLAIR at 0.2, Flower at 0.25 (homogeneous) or 30."""
    out = {}
    cells = [(0.0, study.NO_ATTACK)] + list(product((0.3, 0.45), ("mimic", "alie_1.5")))
    for federation, (gamma, attack) in product(study.FEDERATIONS, cells):
        for method in ("local", *study.CLAIR_METHODS, *study.FLOWER_METHODS):
            if method == "local":
                value = 1.0
            elif method in study.CLAIR_METHODS:
                value = 0.2
            else:
                value = 0.25 if federation == "homogeneous" else 30.0
            out[(federation, attack, gamma, method)] = [value, value]
    return out


def test_worst_case_is_the_largest_mean_over_attacks() -> None:
    values = _met_values()
    values[("backbone", "mimic", 0.45, "clair")] = [0.1, 0.3]  # mean 0.2
    values[("backbone", "alie_1.5", 0.45, "clair")] = [0.2, 0.6]  # mean 0.4
    values[("backbone", "mimic", 0.3, "clair")] = [0.5, 0.5]
    worst = study.worst_case(_frame(values)).set_index(
        ["federation", "method", "gamma"]
    )
    row = worst.loc[("backbone", "clair", 0.45)]
    assert row["attack"] == "alie_1.5"
    assert row["mean"] == pytest.approx(0.4)
    assert row["n"] == 2
    assert worst.loc[("backbone", "clair", 0.3), "attack"] == "mimic"
    assert worst.loc[("backbone", "clair", 0.0), "attack"] == study.NO_ATTACK
    # one row per federation, method and gamma, methods in the study's order
    assert len(worst) == 3 * (1 + 3 + 6) * 3
    methods = list(dict.fromkeys(worst.loc["backbone"].index.get_level_values(0)))
    assert methods == [m for m in study.METHODS if m != "oracle_clair"]


def test_targets_are_met_on_a_frame_that_meets_them() -> None:
    found = study.targets(_frame(_met_values()))
    assert found["met"].all()
    assert list(found["target"].value_counts().sort_index()) == [4, 9, 1]
    t3 = found[found["target"] == "T3"].iloc[0]
    assert "at most 0.8 over 5 cells; 0 cells above 1.1" in t3["detail"]


def test_targets_are_missed_where_the_frame_misses_them() -> None:
    values = _met_values()
    values[("heterogeneous", "mimic", 0.3, "clair")] = [0.4, 0.4]  # T1: > 0.3
    values[("backbone", "alie_1.5", 0.45, "clair_sigma")] = [1.2, 1.2]  # T1: >= 1
    values[("homogeneous", "mimic", 0.45, "clair_paper")] = [(0.2, 0.5), (0.3, 1.3)]
    values[("homogeneous", "alie_1.5", 0.3, "clair")] = [0.5, 0.5]  # T3: 2x 0.25
    found = study.targets(_frame(values)).set_index(["target", "federation", "method"])
    missed = found.index[~found["met"]].tolist()
    assert sorted(missed) == [
        ("T1", "backbone", "clair_sigma"),
        ("T1", "heterogeneous", "clair"),
        ("T2", "homogeneous", "clair_paper"),
        ("T3", "homogeneous", "clair"),
    ]
    detail = found["detail"]
    assert (
        "gamma=0.3: 0.4 under mimic (> 0.3)" in detail[("T1", "heterogeneous", "clair")]
    )
    assert (
        "gamma=0.45: 1.2 under alie_1.5 (>= 1)"
        in detail[("T1", "backbone", "clair_sigma")]
    )
    t2 = detail[("T2", "homogeneous", "clair_paper")]
    assert "largest max_client_ratio 1.3 (mimic, gamma=0.45, replicate 1)" in t2
    assert "1 of 10 replicates above 1.1" in t2
    assert (
        "alie_1.5 at gamma=0.3: clair 0.5 vs flower_mean 0.25 (2.00x)"
        in detail[("T3", "homogeneous", "clair")]
    )


# ------------------------------------------------------------------- grids, report
def test_quick_grid_is_a_subset_of_the_full_grid_with_the_same_seeds() -> None:
    full = study.build(study.parser().parse_args([]))
    quick = study.build(study.parser().parse_args(["--quick"]))
    n_attacks, n_feds = len(study.ATTACKS), len(study.FEDERATIONS)
    assert len(full.configs) == n_feds * (1 + 9 * n_attacks) == 354
    assert len(quick.configs) == n_feds * (1 + n_attacks) == 42
    assert (full.replicates, quick.replicates) == (10, 1)
    full_keys = {tuple(sorted(c.items())) for c in full.configs}
    assert all(tuple(sorted(c.items())) in full_keys for c in quick.configs)
    for config in quick.configs:
        assert derive_seed(quick.name, config, 0) == derive_seed(full.name, config, 0)
    assert {c["gamma"] for c in quick.configs} == {0.0, 0.45}
    assert {c["attack"] for c in full.configs if c["gamma"] == 0} == {"none"}
    K = study.SCENARIO["K"]
    assert all(K > 2 * study.n_attackers(c["gamma"], K) + 2 for c in full.configs)
    args = study.parser().parse_args(["--quick", "--replicates", "3"])
    assert study.build(args).replicates == 3


def test_report_writes_the_documented_files(tmp_path) -> None:
    configs = [
        _config(fed, attack, gamma)
        for fed in study.FEDERATIONS
        for attack, gamma in ((study.NO_ATTACK, 0.0), ("mimic", 0.25), ("ipm_2", 0.25))
    ]
    rows = []
    for config in configs:
        seed = derive_seed("byzantine", config, 0)
        for item, row in enumerate(study.run(config, seed)):
            rows.append(
                {**config, "replicate": 0, "seed": seed, "seconds": 0.1, "item": item}
                | row
            )
    frame = pd.DataFrame(rows)
    study.report(frame, tmp_path, argparse.Namespace(quick=True))
    files = ["summary.csv", "worst_case.csv", "worst_case.md", "worst_case.png"]
    files += [f"by_attack_{f}.png" for f in study.FEDERATIONS]
    for name in files:
        assert (tmp_path / name).stat().st_size > 0, name
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary.columns) == [*study.KEYS, "mean", "lo", "hi", "n", "ratio_max"]
    # Bulyan is skipped at gamma = 0.25 (K = 16 < 19): only its gamma = 0 cells
    bulyan = summary[summary["method"] == "flower_bulyan"]
    assert set(bulyan["gamma"]) == {0.0}
    assert len(summary) == len(configs) * len(study.METHODS) - 6
    worst = pd.read_csv(tmp_path / "worst_case.csv")
    means = frame.groupby(["federation", "method", "gamma"])["relative_mse"].max()
    for row in worst.itertuples():
        assert row.mean == pytest.approx(
            means.loc[(row.federation, row.method, row.gamma)]
        )
    page = (tmp_path / "worst_case.md").read_text()
    for heading in ("## heterogeneous", "## backbone", "## homogeneous"):
        assert heading in page
    assert "## Targets" in page
    assert "## Detection" in page
    assert "n/a |" in page.split("| flower_bulyan |")[1].splitlines()[0]
    # one line per target, each with its verdict
    verdicts = [line for line in page.splitlines() if line.startswith("- T")]
    assert len(verdicts) == len(study.targets(frame))
    assert all(": met." in v or ": **not met**." in v for v in verdicts)

"""Tests of the study simulations/verdict_rules.py.

``run`` is checked on small synthetic federations (seconds): documented keys,
determinism in the seed, and each rule equal to its definition on the stored
energies; the candidate's pooled-scale z-score is checked against its formula and
its null law by simulation; the report writes its figure and tables. The copying
branch trains a Transformer and is covered by the notebook's quick run.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import scipy.stats

import simulations.verdict_rules as study_script
from clair_stats.experiments.study import Study, run_study
from clair_stats.lora.verdict import client_verdict
from clair_stats.pipeline.detection import energy_test

CONFIG = {
    "source": "synthetic",
    "K": 8,
    "M": 3,
    "pattern": "one",
    "strength": 3.0,
    "federations": 2,
    "experiment": None,
    "training": None,
}


def test_run_rows_follow_the_two_rules():
    """Two rows per federation; the flags are the rules applied to the stored
    energies; the counts agree with the flags and the true contamination."""
    rows = study_script.run(CONFIG, seed=3)
    assert len(rows) == 2 * CONFIG["federations"]
    assert [r["rule"] for r in rows] == list(study_script.RULES) * 2
    for first, second in zip(rows[::2], rows[1::2], strict=True):
        energies = np.asarray(first["energies"])
        assert energies.shape == (CONFIG["M"], CONFIG["K"])
        assert second["energies"] is None
        bad = np.asarray(first["contaminated"])
        assert bad.sum() == round(0.2 * CONFIG["K"])
        verdict = client_verdict(energies, study_script.ALPHA)
        np.testing.assert_array_equal(first["flagged"], verdict.flagged)
        tests = [
            energy_test(e, df, alpha=study_script.ALPHA)
            for e, df in zip(energies, first["dfs"], strict=True)
        ]
        votes = np.sum([t.rejected for t in tests], axis=0)
        np.testing.assert_array_equal(second["flagged"], votes >= 1.5)
        np.testing.assert_array_equal(second["module_flags"], votes)
        for row in (first, second):
            flagged = np.asarray(row["flagged"])
            assert row["false_flag"] == bool(flagged[~bad].any())
            assert row["n_contaminated_flagged"] == int(flagged[bad].sum())
            assert row["n_benign"] + row["n_contaminated"] == CONFIG["K"]
            assert row["benign_pairs"] == CONFIG["M"] * row["n_benign"]
            assert np.all(np.diff(row["benign_pairs_below"]) >= 0)
    # df = (out - r) in for each module of lora.synthetic.MODULES, r = 4
    assert rows[0]["dfs"] == [(16 - 4) * 32, (24 - 4) * 16, (24 - 4) * 16]


def test_run_is_deterministic_in_the_seed():
    first, again = study_script.run(CONFIG, seed=4), study_script.run(CONFIG, seed=4)
    assert first == again
    other = study_script.run(CONFIG, seed=5)
    assert other[0]["energies"] != first[0]["energies"]


def test_pooled_scale_z_is_its_formula():
    """Location: the median of module m's other clients; scale: 1.4826 times the
    median of the residuals of the other modules (against their medians) and of
    module m's others (against their own median), computed here term by term."""
    rng = np.random.default_rng(0)
    energies = np.exp(rng.standard_normal((3, 6)))
    logs = np.log(energies)
    z = study_script.pooled_scale_z(energies)
    for m in range(3):
        for k in range(6):
            others = np.delete(logs[m], k)
            location = np.median(others)
            pool = [np.abs(others - location)]
            for j in range(3):
                if j != m:
                    pool.append(np.abs(logs[j] - np.median(logs[j])))
            scale = np.median(np.concatenate(pool)) / scipy.stats.norm.ppf(0.75)
            assert z[m, k] == pytest.approx((logs[m, k] - location) / scale, rel=1e-12)


def test_pooled_scale_p_values_are_uniform_under_the_null_model():
    """Log energies mu_m + s eps_km (one scale): P(p <= a) = a. One (client,
    module) per federation, n = 2000 federations: the rate has sd sqrt(a (1 - a)
    / n) (0.0049 at a = 0.05); 4 sd bound a false failure at 6e-5 per level
    (normal approximation); the law's own Monte Carlo error (20000 draws) is far
    below that."""
    rng = np.random.default_rng(1)
    n = 2000
    p = np.empty(n)
    for i in range(n):
        logs = 0.4 * rng.standard_normal((3, 8)) + rng.standard_normal((3, 1))
        p[i] = study_script.pooled_scale_p_values(np.exp(logs))[1, 2]
    for level in (0.01, 0.05, 0.2):
        sd = np.sqrt(level * (1 - level) / n)
        assert abs(np.mean(p <= level) - level) <= 4 * sd


def test_quick_grid_and_report(tmp_path):
    args = study_script.parser().parse_args(["--quick", "--source", "synthetic"])
    study = study_script.build(args)
    assert {c["pattern"] for c in study.configs} == {"none", "all"}
    full = study_script.build(study_script.parser().parse_args([]))
    assert len(full.configs) == 6 * 7 + 2
    assert full.replicates == study_script.REPLICATES
    small = Study(
        name="verdict_rules", run=study_script.run, configs=study.configs, replicates=1
    )
    with run_study(small, tmp_path / "results.sqlite", progress=False) as store:
        frame = store.frame(small)
    folder = tmp_path / "report"
    study_script.report(frame, folder, argparse.Namespace(quick=True))
    assert (folder / "verdict_rules.png").stat().st_size > 0
    text = (folder / "summary.md").read_text()
    for rule in study_script.ALL_RULES:
        assert rule in text
    table = study_script.summary_table(frame)
    assert set(table["rule"]) == set(study_script.RULES)
    assert (
        (table["fwer_lo"] <= table["fwer"]) & (table["fwer"] <= table["fwer_hi"])
    ).all()

"""The reports of notebooks/ execute and show what they promise.

Each report is executed as ``make report`` does (a fresh kernel, exported to
HTML; here with ``--mode quick``) on its study's quick grid, which the session stored
(``quick_grid`` and ``copying_grid`` of ``tests/conftest.py``): the report reads
the store and computes nothing, which the test checks. Then the files the report
writes, the columns and value ranges of its tables and the numbers it prints are
checked against what each quantity is (a rate lies in [0, 1], a subspace distance
in [0, sqrt(2 r)], a count of replicates equals the grid's), never against the
numbers of one run.

The copying report runs on the tiny copying grid of ``tests/conftest.py`` instead
of its quick grid (1.5 minutes of training): a first cell, added to a copy of the
notebook, sets the study's quick settings to the tiny ones before the report's own
first cell builds the grid.
"""

from __future__ import annotations

import html
import importlib
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from clair_stats.experiments.reports import execute_notebook, notebook_paths
from clair_stats.experiments.study import ResultStore

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = notebook_paths(ROOT / "notebooks")
HEADER = "#   jupytext:\n#     formats: py:percent"
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|nan"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_a_jupytext_report_of_a_study(path):
    text = path.read_text()
    assert HEADER in text, f"{path.name} is not in jupytext percent format"
    assert text.count("# %% [markdown]") >= 2, "a report reads its figures in prose"
    assert "load_or_run(" in text, "a report reads stored results or runs --quick"


# ----------------------------------------------------------------------- helpers
def printed(html_file: Path) -> str:
    """The text the report's cells printed (stdout and text/plain results)."""
    page = html_file.read_text(encoding="utf-8")
    blocks = re.findall(
        r'class="jp-RenderedText[^"]*"[^>]*>\s*<pre>(.*?)</pre>', page, re.S
    )
    return "\n".join(html.unescape(re.sub(r"<[^>]+>", "", b)) for b in blocks)


def numbers(pattern: str, text: str) -> list[tuple[str, ...]]:
    """Every match of ``pattern`` (``{x}`` stands for a number) with its groups."""
    found = re.findall(pattern.replace("{x}", f"({NUMBER})"), text)
    assert found, f"the report prints nothing like {pattern!r}"
    return [f if isinstance(f, tuple) else (f,) for f in found]


def read_table(folder: Path, name: str, columns: list[str]) -> pd.DataFrame:
    """A CSV of the report, with exactly the documented columns."""
    table = pd.read_csv(folder / name)
    assert list(table.columns) == columns, name
    assert len(table) > 0, name
    return table


def in_unit_interval(values: pd.Series | np.ndarray) -> bool:
    v = np.asarray(values, dtype=float)
    return bool(np.all((v >= 0) & (v <= 1)))


def ordered(lo, mid, hi, tol: float = 1e-12) -> bool:
    """lo <= mid <= hi wherever the three are defined (NaN: one replicate)."""
    lo, mid, hi = (np.asarray(x, dtype=float) for x in (lo, mid, hi))
    ok = np.isnan(lo) | np.isnan(hi) | ((lo <= mid + tol) & (mid <= hi + tol))
    return bool(np.all(ok))


def grid_values(grid, key: str) -> list:
    return sorted({c[key] for c in grid.study.configs})


# -------------------------------------------------------------- per report
def check_detection(grid, folder: Path, text: str, script) -> None:
    powers = [f"{k}_{t}" for t in script.TESTS for k in ("power", "fwer")]
    table = read_table(
        folder,
        "summary.csv",
        ["p", "n_over_p", "n", "ratio", "replicates", "predicted", *powers]
        + ["exact_S", "fdr", "auc"],
    )
    cells = {(c["p"], c["n_over_p"], c["ratio"]) for c in grid.study.configs}
    assert set(zip(table["p"], table["n_over_p"], table["ratio"], strict=True)) == cells
    assert len(table) == len(cells)
    assert (table["replicates"] == grid.study.replicates).all()
    assert (table["n"] == (table["n_over_p"] * table["p"]).round()).all()
    for col in ("predicted", "exact_S", "fdr", *powers):
        assert in_unit_interval(table[col]), col
    # the ROC area is a probability; at rho = 0 it is not computed
    assert in_unit_interval(table.loc[table["ratio"] > 0, "auc"])
    assert table.loc[table["ratio"] == 0, "auc"].isna().all()

    n_reps = len(grid.study.tasks())
    ps, ms, rhos = (grid_values(grid, k) for k in ("p", "n_over_p", "ratio"))
    assert (
        f"grid: quick; {n_reps} replicates; p in {ps}, n/p in {ms}, rho in {rhos}"
        in text
    )
    lines = numbers(
        r"p=\s*{x} n/p=\s*{x}: FWER at alpha 0.01/0.05/0.1/0.2 = {x}/{x}/{x}/{x}; "
        r"FDR = {x}/{x}/{x}/{x}",
        text,
    )
    assert len(lines) == len(ps) * len(ms)
    for p, m, *rates in lines:
        fwer, fdr = np.array(rates[:4], float), np.array(rates[4:], float)
        assert in_unit_interval(fwer)
        assert in_unit_interval(fdr)
        # Holm rejects more as alpha grows: the FWER is nondecreasing in alpha
        assert np.all(np.diff(fwer) >= 0), (p, m, fwer)
        # at alpha = 0.05 it is the summary's FWER pooled over rho (equal counts)
        pooled = table[(table["p"] == int(p)) & (table["n_over_p"] == float(m))]
        assert fwer[1] == pytest.approx(pooled["fwer_exact"].mean(), abs=5e-4)
    starts = numbers(
        r"p = {x}, (\w+), (estimated|true) A: FWER\(0.05\) Wilson interval reaches "
        r"0.05 (?:from n/p = {x} on|at no n/p of the grid)",
        text,
    )
    assert {(int(p), t, sub) for p, t, sub, _ in starts} == {
        (p, t, s)
        for p in ps
        for t in script.TESTS
        for s in ("estimated", "true")
        if s == "estimated" or t != "empirical"
    }
    assert all(m == "" or float(m) in ms for *_, m in starts)
    cells = numbers(r"(\w+) with A\^: FWER in \[0.03, 0.07\] in {x} of {x}", text)
    assert {c[0] for c in cells} == set(script.TESTS)
    assert all(int(c[2]) == len(ps) * len(ms) for c in cells)


def check_fig1_subspace_error(grid, folder: Path, text: str, script) -> None:
    table = read_table(
        folder,
        "summary.csv",
        ["p", "q", "r", "n", "method", "replicates", "slope", "slope_lo"]
        + ["slope_hi", "K_max", "error_at_K_max", "ratio_at_K_max"]
        + ["benign_flagged", "missed", "not_converged"],
    )
    regimes = {tuple(c[k] for k in script.REGIME) for c in grid.study.configs}
    ks = grid_values(grid, "K")
    assert len(table) == len(regimes) * len(script.METHODS)
    assert set(table["method"]) == set(script.METHODS)
    assert (table["replicates"] == grid.study.replicates).all()
    assert (table["K_max"] == max(ks)).all()
    # ||P - P'||_F of two rank-r projectors lies in [0, sqrt(2 r)]
    err = table["error_at_K_max"]
    assert ((err >= 0) & (err <= np.sqrt(2 * table["r"]) + 1e-12)).all()
    assert (table["ratio_at_K_max"] > 0).all()
    assert ordered(table["slope_lo"], table["slope"], table["slope_hi"])
    clair = table[table["method"] == "clair"]
    others = table[table["method"] != "clair"]
    k_max, reps = max(ks), grid.study.replicates
    assert clair["benign_flagged"].between(0, k_max).all()
    assert clair["missed"].between(0, k_max).all()
    assert clair["not_converged"].between(0, reps * len(ks)).all()
    assert others[["benign_flagged", "missed", "not_converged"]].isna().all().all()

    assert (
        f"quick grid: {len(regimes)} regimes, K in {ks}, {reps} replicates per "
        f"point, {len(grid.study.tasks())} replicates in all" in text
    )
    for lo, hi in numbers(r"{x}-{x} x oracle", text):
        assert 0 < float(lo) <= float(hi)
    ratios = numbers(r"(clair|svd|oracle) {x}-{x}", text)
    assert {m for m, _, _ in ratios} == set(script.METHODS)
    assert all(0 < float(lo) <= float(hi) for _, lo, hi in ratios)
    for _, inside in numbers(r"(clair|svd|oracle) {x}/" + str(len(regimes)), text):
        assert 0 <= int(inside) <= len(regimes)
    ((stopped,),) = numbers(r"replicates not converged: {x}", text)
    assert 0 <= int(stopped) <= reps * len(ks) * len(regimes)


def check_lambda_calibration(grid, folder: Path, text: str, script) -> None:
    c_cols = [f"rate_{c:g}" for c in script.C_GRID]
    windows = read_table(
        folder,
        "windows.csv",
        [*script.REGIME, "label", "replicates", "window", *c_cols]
        + ["c_T1", "rate_T1", "t1_ok", "sub_t1_ok"],
    )
    n_regimes = len(grid.study.configs)
    assert len(windows) == n_regimes
    assert (windows["replicates"] == grid.study.replicates).all()
    for col in [*c_cols, "rate_T1"]:
        assert in_unit_interval(windows[col]), col
    # T1's value c_T1 = lam_T1 sqrt(K) = 3 / (7 sqrt(gamma))
    np.testing.assert_allclose(windows["c_T1"], 3 / (7 * np.sqrt(windows["gamma"])))
    coverage = read_table(
        folder, "coverage.csv", ["group", "n", *[f"{c:g}" for c in script.C_GRID], "T1"]
    )
    counts = coverage.drop(columns=["group", "n"]).to_numpy()
    assert np.all((counts >= 0) & (counts <= coverage["n"].to_numpy()[:, None]))
    assert coverage.loc[coverage["group"] == "all", "n"].item() == n_regimes
    assert "## Recommendation" in (folder / "summary.md").read_text()

    # one row per (replicate, c of the grid), one for c_T1 and one for lam="auto"
    rows = len(grid.frame)
    assert rows == len(grid.study.tasks()) * (len(script.C_GRID) + 2)
    fixed = rows - len(grid.study.tasks())
    assert (
        f"quick grid: {n_regimes} regimes x ({len(script.C_GRID)} values of c + c_T1)"
        f" x {grid.study.replicates} replicates = {fixed} solves" in text
    )
    ((auto_ok, auto_regimes),) = numbers(
        r"lam='auto' recovered on every replicate in {x} of {x} regimes", text
    )
    assert int(auto_regimes) == n_regimes
    assert 0 <= int(auto_ok) <= n_regimes
    ((best, best_count),) = numbers(
        r"recommended c = {x}: in {x} of " + f"{n_regimes} windows", text
    )
    ((default, default_count),) = numbers(
        r"current DEFAULT_C_LAM = {x}: in {x} of " + f"{n_regimes} windows", text
    )
    assert float(best) in script.C_GRID
    # the recommended c is the one in the most windows
    assert 0 <= int(default_count) <= int(best_count) <= n_regimes
    ((empty,),) = numbers(r"regimes with an empty window: {x}", text)
    assert 0 <= int(empty) <= n_regimes
    for q, k, ceiling in numbers(r"q={x}, K={x}: {x}", text):
        assert float(ceiling) == pytest.approx(math.sqrt(int(q) * int(k)), abs=5e-3)


def _cell_keys(table: pd.DataFrame, keys: list[str]) -> list[tuple]:
    """Each row's values of ``keys``, floats rounded (CSV floats may lose an ulp)."""
    return [
        tuple(round(v, 9) if isinstance(v, float) else v for v in row)
        for row in table[keys].itertuples(index=False)
    ]


def check_oracle_gain(grid, folder: Path, text: str, script) -> None:
    keys = script.CELL
    cells = read_table(
        folder,
        "summary.csv",
        [*keys, "method", "eta", "delta", "m", "G", "predicted", "mean", "lo", "hi"]
        + ["n", "b", "sign", "benign_flagged"],
    )
    configs = pd.DataFrame(grid.study.configs)
    n_cells, reps = len(configs), grid.study.replicates
    # one row per cell (the study's cell key) and method
    assert len(cells) == n_cells * len(script.METHODS)
    assert set(_cell_keys(cells, [*keys, "method"])) == {
        (*cell, method)
        for cell in _cell_keys(configs, keys)
        for method in script.METHODS
    }
    assert (cells["n"] == reps).all()
    assert ordered(cells["lo"], cells["mean"], cells["hi"])
    # the mean gain is the stored replicates' (the report reads the store)
    stored = grid.frame.groupby([*keys, "method"], sort=True)["gain"].mean()
    shown = cells.sort_values([*keys, "method"])["mean"].to_numpy()
    np.testing.assert_allclose(shown, stored.to_numpy(), rtol=1e-9, atol=1e-12)
    # m = |S|, one number per cell, in [1, K]
    assert ((cells["m"] >= 1) & (cells["m"] <= cells["K"])).all()
    assert (cells.groupby(keys)["m"].nunique() == 1).all()
    # the two maps: heterogeneity (no common part) and homogeneous (a common
    # part, eta = 0, q >= r)
    assert set(cells["family"]) == {"heterogeneous", "homogeneous"}
    hom = cells[cells["family"] == "homogeneous"]
    assert (cells.loc[cells["family"] == "heterogeneous", "common"] == 0).all()
    assert (hom["common"] > 0).all()
    assert (hom["eta_ratio"] == 0).all()
    assert (hom["q"] >= hom["r"]).all()
    # eta = (eta / eta_0) tau sqrt((p - r) q), delta = (delta / tau) tau
    eta0 = cells["tau"] * np.sqrt((cells["p"] - cells["r"]) * cells["q"])
    np.testing.assert_allclose(cells["eta"], cells["eta_ratio"] * eta0, atol=1e-12)
    np.testing.assert_allclose(
        cells["delta"], cells["delta_ratio"] * cells["tau"], atol=1e-12
    )
    # G / (p q tau^2) = (1 - r / p)(1 - 1 / m) lies in [0, 1 - r / p)
    rel = 1 - cells["r"] / cells["p"]
    assert ((cells["G"] >= 0) & (cells["G"] < rel)).all()

    # the predictions, relative: (local - shrinkage_mse) / (p q tau^2)
    pred = cells.pivot_table(index=keys, columns="method", values="predicted")
    cols = ["p", "q", "r", "m", "tau", "eta", "delta", "G"]
    cell = cells.groupby(keys)[cols].first().loc[pred.index]
    unit = cell["p"] * cell["q"] * cell["tau"] ** 2
    spread = 1 - 1 / cell["m"]
    # the oracle (A and S known, b = 0): G - het, het = eta^2 (1 - 1/m)
    het = cell["eta"] ** 2 * spread / unit
    np.testing.assert_allclose(pred["oracle"], cell["G"] - het, atol=1e-12)
    # FedAvg over S (b = 1): p q tau^2 / m + (r q delta^2 + eta^2)(1 - 1/m); at
    # b = 1 nothing depends on A^, so CLAIR's b = 1 predicts the same
    fedavg_mse = (
        unit / cell["m"]
        + (cell["r"] * cell["q"] * cell["delta"] ** 2 + cell["eta"] ** 2) * spread
    )
    np.testing.assert_allclose(pred["fedavg"], 1 - fedavg_mse / unit, atol=1e-12)
    np.testing.assert_allclose(pred["clair_pool"], pred["fedavg"], atol=1e-12)
    # with A known the first-order risk is smallest at b*: the pooled oracle
    # predicts at least the better of keeping (b = 0) and pooling (b = 1)
    keep_or_pool = np.maximum(pred["oracle"], pred["fedavg"])
    assert (pred["oracle_pooled"] >= keep_or_pool - 1e-12).all()
    # b = 0 with A^: the costs (heterogeneity; subspace when q (m - 1) >= r) only
    # lower the gain; version 1's A^ and the refitted one predict alike
    regular = cell["q"] * (cell["m"] - 1) >= cell["r"]
    for method in ("clair_paper", "clair_keep"):
        assert (pred.loc[regular, method] <= cell.loc[regular, "G"] + 1e-12).all()
    np.testing.assert_allclose(pred["clair_keep"], pred["clair_paper"], atol=1e-12)

    # the sign of the Monte Carlo gain against the prediction
    assert set(cells["sign"]) <= {"agrees", "disagrees", "inconclusive", "band"}
    predicted, lo, hi = cells["predicted"], cells["lo"], cells["hi"]
    band = predicted.abs() < script.BAND * cells["G"]
    agree = ((predicted > 0) & (lo > 0)) | ((predicted < 0) & (hi < 0))
    disagree = ((predicted > 0) & (hi < 0)) | ((predicted < 0) & (lo > 0))
    assert ((cells["sign"] == "band") == band).all()
    assert ((cells["sign"] == "agrees") == (agree & ~band)).all()
    assert ((cells["sign"] == "disagrees") == (disagree & ~band)).all()
    # the oracles' predictions are exact (A and S known; the pooled one up to
    # the James-Stein excess <= 2 tau^2 / m, far inside the band of 0.25 G): an
    # interval wholly on the other side of 0 would be an error of the formula
    exact = cells[cells["method"].isin(("oracle", "oracle_pooled"))]
    assert (exact["sign"] != "disagrees").all()
    # summary.md counts the signs per method and predicted sign
    side = np.where(predicted > 0, "gain", "loss").astype(object)
    side[band.to_numpy()] = "~0 (band)"
    counts = (
        cells.assign(side=side)
        .groupby(["method", "side"])["sign"]
        .value_counts()
        .unstack(fill_value=0)
        .reindex(columns=["agrees", "disagrees", "inconclusive", "band"], fill_value=0)
    )
    rows = re.findall(
        r"(?m)^\| (\w+) \| (gain|loss|~0 \(band\)) \| (\d+) \| (\d+) \| (\d+) \| "
        r"(\d+) \|$",
        (folder / "summary.md").read_text(),
    )
    assert len(rows) == len(counts)
    for method, sign, *found in rows:
        assert [int(f) for f in found] == counts.loc[(method, sign)].tolist()

    # b: 0 for the paper's refinement and shrink="none", 1 for FedAvg, b^ in
    # [0, 1] for the pooled ones (NaN: CLAIR kept no benign client)
    b = cells.set_index("method")["b"]
    assert (b.loc[["oracle", "clair_paper", "clair_keep"]] == 0).all()
    assert (b.loc[["fedavg", "clair_pool"]] == 1).all()
    assert in_unit_interval(b.loc[["oracle_pooled", "known_s"]])
    assert in_unit_interval(b.loc["clair"].dropna())
    # the fraction of benign clients CLAIR's test flags, one value per cell
    assert in_unit_interval(cells["benign_flagged"])
    assert (cells.groupby(keys)["benign_flagged"].nunique() == 1).all()

    # excess.csv: each pooled refinement against the better of its keep (b = 0)
    # and pool (b = 1) on the same replicates, with the bound 4 tau^2 / m
    excess = read_table(
        folder,
        "excess.csv",
        [*keys, "m", "pooled", "better", "excess", "se", "bound", "t", "exceeds"],
    )
    pairs = {pooled: (keep, pool) for pooled, keep, pool in script.EXCESS_PAIRS}
    assert len(excess) == n_cells * len(pairs)
    assert set(_cell_keys(excess, [*keys, "pooled"])) == {
        (*cell, pooled) for cell in _cell_keys(configs, keys) for pooled in pairs
    }
    mse = grid.frame.pivot_table(
        index=[*keys, "replicate"], columns="method", values="mse"
    ).reset_index()
    mse["cell"] = _cell_keys(mse, keys)
    unit = excess["p"] * excess["q"] * excess["tau"] ** 2
    for row, where, scale in zip(
        excess.itertuples(index=False), _cell_keys(excess, keys), unit, strict=True
    ):
        keep, pool = pairs[row.pooled]
        paired = mse[mse["cell"] == where]
        assert len(paired) == reps
        # the better of the two: the smaller mean MSE
        better = keep if paired[keep].mean() <= paired[pool].mean() else pool
        assert row.better == better, (where, row.pooled)
        d = ((paired[row.pooled] - paired[better]) / scale).to_numpy()
        assert row.excess == pytest.approx(d.mean(), rel=1e-9, abs=1e-12)
        se = d.std(ddof=1) / np.sqrt(reps)
        assert row.se == pytest.approx(se, rel=1e-9, abs=1e-12)
    # 4 tau^2 / m relative to p q tau^2
    bound = 4 / (excess["m"] * excess["p"] * excess["q"])
    np.testing.assert_allclose(excess["bound"], bound, rtol=1e-9)
    # exceeds: (excess - bound) / SE above the Bonferroni one-sided quantile
    z = scipy.stats.norm.isf(script.EXCESS_LEVEL / n_cells)
    spread_ok = excess["se"] > 0
    t = (excess["excess"] - excess["bound"]) / excess["se"]
    np.testing.assert_allclose(excess.loc[spread_ok, "t"], t[spread_ok], rtol=1e-9)
    assert (excess["exceeds"] == (excess["t"] > z)).all()
    # with A, S and tau known the Stein/Lindley bound holds for every theta
    # (docs/claims.md §4.5): the oracle pair never exceeds it
    assert not excess.loc[excess["pooled"] == "oracle_pooled", "exceeds"].any()

    # what the report prints
    per_family = configs["family"].value_counts()
    header = re.search(
        rf"quick grid: {n_cells} cells \(([\w ,]+)\), {reps} replicates per cell "
        rf"\(({NUMBER}) s of computing\)\.",
        text,
    )
    assert header, "the report prints no grid line"
    found = dict(part.rsplit(" ", 1) for part in header.group(1).split(", "))
    assert {f: int(n) for f, n in found.items()} == per_family.to_dict()
    once = grid.frame.drop_duplicates(["replicate", *keys])
    assert float(header.group(2)) == pytest.approx(once["seconds"].sum(), abs=0.51)
    # CLAIR's default against version 1, per (family, q, K), over the cells
    # where the refinement is meant to be used
    wide = cells.pivot_table(index=keys, columns="method", values="mean")
    wide = wide.reset_index()
    useful = wide[(wide["family"] == "homogeneous") | (wide["eta_ratio"] < 1)]
    change = useful.groupby(["family", "q", "K"])[["clair", "clair_paper"]].mean()
    change = change["clair"] - change["clair_paper"]
    ((low, high),) = numbers(
        r"CLAIR's default - version 1 \(relative gain\), over the cells shown: "
        r"{x} to {x}",
        text,
    )
    assert float(low) == pytest.approx(change.min(), abs=5e-4)
    assert float(high) == pytest.approx(change.max(), abs=5e-4)
    # Monte Carlo - prediction in units of G, and the cells whose 95% interval
    # contains the prediction, per method
    gaps = numbers(
        r"(\w+): Monte Carlo - prediction from {x} G to {x} G; 95% interval "
        r"contains the prediction in {x} of {x} cells",
        text,
    )
    assert [g[0] for g in gaps] == list(script.METHODS)
    for method, low, high, inside, total in gaps:
        rows = cells[cells["method"] == method]
        gap = (rows["mean"] - rows["predicted"]) / rows["G"]
        covered = (rows["lo"] <= rows["predicted"]) & (rows["predicted"] <= rows["hi"])
        assert float(low) == pytest.approx(gap.min(), abs=5e-4), method
        assert float(high) == pytest.approx(gap.max(), abs=5e-4), method
        assert int(total) == n_cells
        assert int(inside) == int(covered.sum()), method
    # the pooled refinements against the bound, as excess.csv has them
    lines = numbers(
        r"(\w+): excess / bound at most {x} \(over {x} cells\); cells exceeding "
        r"the bound: {x}; better of the two is pooling in {x}",
        text,
    )
    assert [line[0] for line in lines] == list(pairs)
    for pooled, worst, over, exceeding, pooling in lines:
        rows = excess[excess["pooled"] == pooled]
        ratio = (rows["excess"] / rows["bound"]).max()
        assert float(worst) == pytest.approx(ratio, abs=5e-3), pooled
        assert int(over) == n_cells
        assert int(exceeding) == int(rows["exceeds"].sum())
        assert int(pooling) == int((rows["better"] == pairs[pooled][1]).sum())


def check_phase_transition(grid, folder: Path, text: str, script) -> None:
    table = read_table(
        folder,
        "summary.csv",
        ["contamination", "r", "gamma_max_exact", "gamma_max_subspace"]
        + ["t1_gamma_star"],
    )
    types, gammas, ranks = (
        grid_values(grid, k) for k in ("contamination", "gamma", "r")
    )
    assert len(table) == len(types) * len(ranks)
    for col in ("gamma_max_exact", "gamma_max_subspace"):
        found = table[col].dropna()
        assert found.isin(gammas).all(), col
    # exact recovery includes subspace recovery
    exact = table.dropna(subset=["gamma_max_exact"])
    assert (exact["gamma_max_subspace"] >= exact["gamma_max_exact"]).all()
    # gamma* / (1 - gamma*) = 9 / (121 mu r) with mu >= 1: gamma* <= 9 / (121 r + 9)
    star = table["t1_gamma_star"]
    assert ((star > 0) & (star <= 9 / (121 * table["r"] + 9) + 1e-12)).all()

    instances = len(grid.study.tasks())
    assert (
        f"grid: quick; {instances} instances, {len(grid.frame)} solves, "
        f"{grid.study.replicates} replicates per cell; gamma in {gammas}, r in {ranks}"
        in text
    )
    for _, mu, gamma_star in numbers(r"r={x}: {x} \(gamma\*={x}\)", text):
        assert float(mu) >= 1 - 5e-3
        assert 0 < float(gamma_star) <= 9 / 130 + 5e-5
    inside_pattern = (
        r"inside T1's condition: {x} of "
        + str(instances)
        + "; recovered at T1's lam: {x}"
    )
    ((inside, recovered),) = numbers(inside_pattern, text)
    assert 0 <= int(recovered) <= int(inside) <= instances
    ((ok, large),) = numbers(r"0.1: exact recovery in {x} of {x} instances", text)
    assert int(large) == instances * sum(g >= 0.1 for g in gammas) // len(gammas)
    assert 0 <= int(ok) <= int(large)
    ((default, cells),) = numbers(r"window in {x} of {x} \(type, gamma\)", text)
    assert int(cells) == len(types) * len(gammas)
    assert 0 <= int(default) <= int(cells)


def check_robustness(grid, folder: Path, text: str, script) -> None:
    keys = ["type", "gamma", "method"]
    table = read_table(
        folder,
        "summary.csv",
        [*keys, "mean", "lo", "hi", "n", "change", "change_lo", "change_hi"],
    )
    types, gammas = grid_values(grid, "type"), grid_values(grid, "gamma")
    assert len(table) == len(types) * len(gammas) * len(script.METHODS)
    assert (table["n"] == grid.study.replicates).all()
    # a mean error of noisy estimates is > 0; (e - e_local) / e_local >= -1
    assert (table["mean"] > 0).all()
    assert (table["change"] >= -1).all()
    assert ordered(table["lo"], table["mean"], table["hi"])
    assert ordered(table["change_lo"], table["change"], table["change_hi"])
    assert (table.loc[table["method"] == "local", "change"] == 0).all()
    # the rows of the summary that are the worst over the types
    worst = read_table(folder, "worst_case.csv", list(table.columns))
    assert len(worst) == len(script.METHODS) * len(gammas)
    largest = table.groupby(["method", "gamma"])["mean"].max()
    for row in worst.itertuples():
        assert row.mean == pytest.approx(largest.loc[(row.method, row.gamma)])
    assert "| clair_test |" in (folder / "worst_case.md").read_text()

    assert (
        f"quick grid: {len(types)} contamination types x {len(gammas)} fractions gamma"
        f" in [{min(gammas):g}, {max(gammas):g}], {grid.study.replicates}-"
        f"{grid.study.replicates} replicates each, {len(script.METHODS)} methods"
        in text
    )
    verdicts = numbers(r"(\w+): worst case below local (at every|for) gamma", text)
    assert {v[0] for v in verdicts} == {
        "svd_refine",
        *script.CLAIR_METHODS,
        "oracle_clair",
    }
    ((share, same),) = numbers(
        r"flags {x}% of the clients on average; its benign error equals local's in "
        r"{x}% of the replicates",
        text,
    )
    assert 0 <= float(share) <= 100
    assert 0 <= float(same) <= 100


def check_byzantine(grid, folder: Path, text: str, script) -> None:
    keys = ["federation", "attack", "gamma", "method"]
    table = read_table(
        folder, "summary.csv", [*keys, "mean", "lo", "hi", "n", "ratio_max"]
    )
    K = script.SCENARIO["K"]
    configs = grid.study.configs
    bulyan_off = sum(K < 4 * script.n_attackers(c["gamma"], K) + 3 for c in configs)
    # one row per configuration and method, but Bulyan where K < 4f + 3
    assert len(table) == len(configs) * len(script.METHODS) - bulyan_off
    assert (table["n"] == grid.study.replicates).all()
    # a ratio of sums of squares of noisy errors is > 0; local's is 1 exactly
    assert (table["mean"] > 0).all()
    assert (table.loc[table["method"] == "local", "mean"] == 1).all()
    assert ordered(table["lo"], table["mean"], table["hi"])
    # the worst case is the largest mean over the attacks, per federation, method
    # and gamma
    worst = read_table(
        folder,
        "worst_case.csv",
        ["federation", "method", "gamma", "attack", "mean", "lo", "hi", "n"]
        + ["ratio_max"],
    )
    largest = table.groupby(["federation", "method", "gamma"])["mean"].max()
    assert len(worst) == len(largest)
    for row in worst.itertuples():
        assert row.mean == pytest.approx(
            largest.loc[(row.federation, row.method, row.gamma)]
        )
    page = (folder / "worst_case.md").read_text()
    assert "## Targets" in page
    assert "| clair |" in page

    feds = grid_values(grid, "federation")
    attacked = [c for c in configs if c["gamma"] > 0]
    gammas = sorted({c["gamma"] for c in attacked})
    n_attacks = len({c["attack"] for c in attacked})
    reps = grid.study.replicates
    assert (
        f"quick grid: {len(feds)} federations x {n_attacks} attacks x {len(gammas)} "
        f"fractions gamma in [{min(gammas):g}, {max(gammas):g}] + gamma = 0 without "
        f"attacker, {reps}-{reps} replicates each, {len(script.METHODS)} methods"
        in text
    )
    lines = numbers(
        r"(\w+) at gamma = {x}: clair worst case {x} \((\S+)\); best Flower "
        r"aggregator (\w+) {x} \((\S+)\); oracle CLAIR {x}",
        text,
    )
    assert {line[0] for line in lines} == set(feds)
    for _, gamma, clair, _, best, flower, _, oracle in lines:
        assert float(gamma) == max(gammas)
        assert best in script.FLOWER_METHODS
        assert min(float(clair), float(flower), float(oracle)) > 0
    verdicts = numbers(r"(?m)^(T[123]) (\w+) (\w+): (met|NOT MET);", text)
    assert len(verdicts) == 4 + 3 * len(feds) + 1  # T1, T2, T3
    ((met, total),) = numbers(r"{x} of {x} target checks met", text)
    assert int(total) == len(verdicts)
    assert int(met) == sum(v[3] == "met" for v in verdicts)
    ((share, larger, rank),) = numbers(
        rf"rank r = {script.SCENARIO['r']} in {{x}}% of the replicates, larger in "
        r"{x}% \(largest {x}\)",
        text,
    )
    assert float(share) + float(larger) == pytest.approx(100, abs=1)
    assert int(rank) >= 1
    for _, warned, everyone in numbers(
        r"(\w+): AssumptionWarning in {x}% of the replicates; flags every client in "
        r"{x}%",
        text,
    ):
        assert 0 <= float(warned) <= 100
        assert 0 <= float(everyone) <= 100


def check_copying(grid, folder: Path, text: str, script) -> None:
    ends = ["", "_lo", "_hi"]
    table = read_table(
        folder,
        "summary.csv",
        ["experiment", "method"]
        + [f"benign_accuracy{e}" for e in ends]
        + ["n"]
        + [
            f"{v}{e}"
            for v in ("benign_relative_change", "contaminated_accuracy")
            for e in ends
        ]
        + [f"{v}{e}" for v in ("precision", "recall", "exact") for e in ends],
    )
    reps = grid.study.replicates
    assert len(table) == len(script.EXPERIMENTS) * len(script.STYLE)
    assert set(table["method"]) == set(script.STYLE)
    assert (table["n"] == reps).all()
    for value in ("benign_accuracy", "contaminated_accuracy"):
        assert in_unit_interval(table[value]), value
        cols = [f"{value}{e}" for e in ends]
        assert ordered(*(table[c] for c in (cols[1], cols[0], cols[2])))
    # (acc - acc_local) / acc_local >= -1; NaN where no client's local model scores
    change = table["benign_relative_change"].dropna()
    assert len(change) > 0
    assert (change >= -1).all()
    clair = table["method"] == "clair"
    for value in ("precision", "recall", "exact"):
        cols = table[[f"{value}{e}" for e in ends]]
        assert in_unit_interval(cols.loc[clair, value].dropna()), value
        assert cols.loc[~clair].isna().all().all(), value
    assert (
        "quick grid: "
        + ", ".join(f"{e}: {reps} replicates" for e in sorted(script.EXPERIMENTS))
        in text
    )
    wins_pattern = r"CLAIR above (.+?) in {x} of " + str(reps) + " replicates"
    for _, wins in numbers(wins_pattern, text):
        assert 0 <= int(wins) <= reps
    scores = numbers(
        r"(\w+): precision {x} \[{x}, {x}\], recall {x} \[{x}, {x}\], exact "
        r"recovery of the contaminated set in a fraction {x} \[{x}, {x}\]",
        text,
    )
    assert {s[0] for s in scores} == set(script.EXPERIMENTS)
    for _, *values in scores:
        v = np.array(values, dtype=float)
        assert in_unit_interval(v[~np.isnan(v)])
        for est, lo, hi in v.reshape(3, 3):
            assert ordered(lo, est, hi)


def check_verdict_rules(grid, folder: Path, text: str, script) -> None:
    table = read_table(
        folder,
        "summary.csv",
        ["source", "K", "M", "pattern", "strength", "federations", "experiment"]
        + ["training", "rule", "federations_run", "false_flags", "benign"]
        + ["benign_flagged", "contaminated", "contaminated_flagged", "pairs"]
        + ["pairs_005", "seconds", "fwer", "fwer_lo", "fwer_hi", "power"]
        + ["power_lo", "power_hi", "benign_flag_rate", "module_false_rate"],
    )
    # every configuration of the grid, once per rule (the two rules and the
    # candidate evaluated on the same energies)
    assert set(table["rule"]) == {"holm_any", "vote_half", "pooled_scale"}
    per_rule = table.groupby("rule").size()
    assert (per_rule == len(grid.study.configs)).all()
    # counts: flags never exceed what they count, federations as the grid says
    assert (table["false_flags"] <= table["federations_run"]).all()
    assert (table["benign_flagged"] <= table["benign"]).all()
    assert (table["contaminated_flagged"] <= table["contaminated"]).all()
    assert (table["pairs_005"] <= table["pairs"]).all()
    for col in ("fwer", "fwer_lo", "fwer_hi", "benign_flag_rate"):
        assert in_unit_interval(table[col]), col
    assert ordered(table["fwer_lo"], table["fwer"], table["fwer_hi"])
    has_power = table["contaminated"] > 0
    for col in ("power", "power_lo", "power_hi"):
        assert in_unit_interval(table.loc[has_power, col]), col
        assert table.loc[~has_power, col].isna().all(), col
    assert ordered(table["power_lo"], table["power"], table["power_hi"])

    stored = grid.frame.drop_duplicates([*script.KEYS, "replicate", "federation"])
    (n_fed, n_copy), *_ = numbers(
        r"quick grid: {x} federations \({x} trained copying ones\)", text
    )
    assert int(n_fed) == len(stored)
    assert int(n_copy) == int((stored["source"] == "copying").sum())
    # the worst family-wise error per rule, printed, is the table's
    for rule in ("holm_any", "vote_half", "pooled_scale"):
        assert re.search(rf"^{rule}\s+{NUMBER}\s+{NUMBER}\s*$", text, re.M), rule


CHECKS: dict[str, Callable] = {
    "byzantine": check_byzantine,
    "copying": check_copying,
    "detection": check_detection,
    "fig1_subspace_error": check_fig1_subspace_error,
    "lambda_calibration": check_lambda_calibration,
    "oracle_gain": check_oracle_gain,
    "phase_transition": check_phase_transition,
    "robustness": check_robustness,
    "verdict_rules": check_verdict_rules,
}
#: What each report writes into its folder, besides the tables checked above.
FILES = {
    "byzantine": ["worst_case.png", "worst_case.md"]
    + [f"by_attack_{f}.png" for f in ("heterogeneous", "backbone", "homogeneous")],
    "copying": ["copying_homogeneous.png", "copying_heterogeneous.png"]
    + ["copying_detection.png", "summary.md"],
    "detection": ["power.png", "roc.png", "error_rates.png", "calibration.png"]
    + ["summary.md"],
    "fig1_subspace_error": ["subspace_error.png", "error_ratio.png", "summary.md"],
    "lambda_calibration": ["coverage.png", "success_rate.png", "windows.png"]
    + ["summary.md"],
    "oracle_gain": ["gain_map.png", "gain_map_homogeneous.png", "gain_vs_eta.png"]
    + ["gain_vs_delta.png", "benign_flagged.png", "summary.md"],
    "phase_transition": ["success_gamma_r.png", "success_t1_lam.png"]
    + ["success_gamma_lam.png", "summary.md"],
    "robustness": ["error_by_type.png", "worst_case.png", "worst_case.md"],
    "verdict_rules": ["verdict_rules.png", "summary.md"],
}


def _tiny_copying_notebook(path: Path, grid, out: Path) -> Path:
    """A copy of the copying report whose quick grid is the stored tiny grid."""
    settings = {k: v for k, v in grid.study.configs[0].items() if k != "experiment"}
    cell = (
        "# %%\n"
        "# added by tests/test_notebooks.py: the quick grid is the tiny one\n"
        "import os\nimport sys\n\n"
        "sys.path.insert(0, os.getcwd())\n"
        "import simulations.copying.study as _study  # noqa: E402\n\n"
        f"_study.QUICK = {settings!r}\n"
        f"_study.QUICK_REPLICATES = {grid.study.replicates}\n\n"
    )
    text = path.read_text()
    first = text.index("\n# %%\n") + 1  # the first code cell
    out.mkdir(parents=True, exist_ok=True)
    copy = out / path.name
    copy.write_text(text[:first] + cell + text[first:])
    return copy


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_reports_the_stored_grid(path, request, tmp_path):
    """The report executes on the stored grid without computing a replicate, and
    writes, shows and prints what it promises (see the module docstring)."""
    pytest.importorskip("nbclient")
    name = path.stem
    assert name in CHECKS, f"add the checks of notebooks/{path.name} to CHECKS"
    if name == "copying":
        grid = request.getfixturevalue("copying_grid")
        script = importlib.import_module("simulations.copying.study")
        source = _tiny_copying_notebook(path, grid, tmp_path / "source")
    else:
        script = importlib.import_module(f"simulations.{name}")
        grid = request.getfixturevalue("quick_grid")(script)
        source = path
    shutil.rmtree(grid.report, ignore_errors=True)  # what is there, the report wrote
    with ResultStore(grid.store, grid.study.name, grid.study.version) as store:
        stored = len(store)
    page = execute_notebook(
        source, tmp_path / "html", root=ROOT, mode="quick", results=grid.results
    )
    with ResultStore(grid.store, grid.study.name, grid.study.version) as store:
        assert len(store) == stored, "the report ran replicates instead of reading"
    raw = page.read_text(encoding="utf-8")
    assert "Traceback" not in raw
    shown = path.read_text().count("display(Image(filename=")
    assert raw.count("<img") >= shown, f"{name} shows fewer figures than it names"
    for file in FILES[name]:
        assert (grid.report / file).stat().st_size > 0, file
    CHECKS[name](grid, grid.report, printed(page), script)

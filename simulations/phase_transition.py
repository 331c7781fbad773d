r"""
Phase transition of exact recovery: P0 over (gamma, r) and over lam sqrt(K)
==========================================================================

**Question.** On noiseless data, for which contamination fractions gamma, ranks r and
penalty levels lam does CLAIR's step 1 (the exact program P0 of docs/programs.md §3.1)
recover the shared subspace and the contaminated set *exactly*, and where does the
region guaranteed by Theorem T1 (docs/claims.md §4: gamma/(1 - gamma) <= 9/(121 mu r)
with lam = 3/(7 sqrt(gamma K))) lie inside the empirical region?

**Grid** (full mode). p = 30, q = 2, K = 100 (M is 30 x 200); contamination types
``random``, ``orthogonal``, ``subspace``, ``scaled`` and ``margin`` (delta = 1,
about half the benign block norm sqrt(q r)); ``in_subspace`` and ``sign_flip`` are
left out (delta_k = 0 for both, like ``scaled`` at eta = 0, see below).
gamma in {0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5} (1 to 50 contaminated
clients) and r in {1, 2, 3, 4, 6, 8, 10}: 315 configurations x 10 replicates.
Every replicate solves P0 at the default lam = 4 / sqrt(K) (``DEFAULT_C_LAM``)
and at T1's lam; at r = 2 it also scans c = lam sqrt(K) in {1, 2, 3, 4, 5, 6, 8,
10, 12} (sqrt(qK) = 14.1 is the ceiling above which P0 flags nobody; c = 14 was
dropped because ADMM needs its 3000 iterations that close to it). That is
10 x 5 x 9 x (6 x 2 + 10) = 9,900 solves. Measured (one BLAS thread, shared 2-core
machine at load 7-8): 4.4 minutes of CPU time (19 minutes of wall time under that
load). Every replicate also runs lam="auto" (:func:`clair_stats.select_lam`, a
path of a few solves and a reweighted solve, docs/programs.md §3.1.7): one more
row, ``lam_rule == "auto"`` (version 2 of the study; the rows of version 1 are
refused). ``--quick``: gamma in {0.02, 0.1, 0.3}, r in {1, 2, 4}, all five types, 1
replicate (45 instances, 12 s of CPU time with the auto rows), a subset of the full
grid with the same seeds.

**One replicate.** ``FederatedModel(30, 2, r, 100, contamination=gamma,
contamination_type=type, margin=1).sample(noise=0, seed)``; the incoherence mu of
L0 (:func:`clair_stats.theory.t1.incoherence`) and T1's condition are computed on
the instance; then ``decompose(updates, lam=c / sqrt(K), tol=1e-9,
max_iter=3000)`` (ADMM) for each c. Exact recovery, as in
``simulations/lambda_calibration.py``, means all of: the solver converged; the
top-r left singular vectors A^ of the stacked L^ have ||P_A^ - P_A||_F <= 1e-6;
the block support of S^ equals the contaminated set; the numerical rank of L^ is
r. *Subspace recovery* keeps only the first two. All values of c are solved on the
same instance (common random numbers).

``scaled`` clients are -3 (A B'^T + H') with H' = 0 here (eta = 0): they lie *in*
span(A) (delta_k = 0), so they are not identifiable (docs/model.md §2) and exact
recovery of the support is not expected; the subspace can still be recovered.

**Reading the figures.**

* ``success_gamma_r.png``: exact-recovery rate at the default lam (top row) and
  subspace-recovery rate (bottom row) over gamma (log axis) and r, one column per
  type. The white staircase is T1's boundary gamma*(r) = C/(mu r + C), C = 9/121,
  drawn for the *median* mu over all instances of rank r (mu is computed per
  instance; instances differ): T1 guarantees recovery to its left, at T1's lam.
* ``success_t1_lam.png``: the same map at T1's lam 3/(7 sqrt(gamma K)).
* ``success_auto.png``: the map of ``success_gamma_r.png`` at lam="auto".
* ``success_gamma_lam.png``: exact-recovery rate at r = 2 over gamma and
  c = lam sqrt(K); the curve is T1's c = 3/(7 sqrt(gamma)) with its own success
  rate as coloured dots, the dashed line the default c = 4, the dotted line the
  ceiling sqrt(qK), the vertical white line T1's gamma* at r = 2 (median mu).
* ``summary.md`` / ``summary.csv``: per type and r, the largest gamma of the grid
  at which the default lam recovered every replicate; per type, the instances that
  meet T1's condition and how many recovered at T1's lam and at the default lam;
  the same for lam="auto", and the default against lam="auto" on the instances
  whose largest benign ||V_k||_F exceeds 4 / sqrt(K) (:func:`auto_comparison`);
  the median mu per r.

**Full-grid results** (10 replicates). With Gaussian B_k the median mu is 4.7 at
r = 1 and 1.9 at r = 10, so T1's gamma* is 0.016 to 0.004: only gamma = 0.01 and
0.02 have instances inside the condition (85 of 3,150, at r <= 3). All of them were
recovered exactly at T1's lam for ``random``, ``orthogonal``, ``subspace`` and
``margin`` contamination; for ``scaled`` (in span(A)) the subspace was recovered on
all 19 but the support on 5. The default lam recovers exactly on every replicate up
to gamma = 0.5 at r <= 2 for ``random``, ``orthogonal`` and ``margin``, 30-45 times
T1's gamma*; for ``subspace`` only up to gamma = 0.05-0.1 (a second shared subspace
competes with span(A)). At r >= 8 (r >= 6 for ``margin``) no gamma is recovered on
every replicate: the default c = 4 then breaks the benign-leverage condition
c > sqrt(mu r / (1 - gamma)) (the largest benign ||V_k||_F exceeds lam) and flags
benign clients. Over the non-``scaled`` instances, where the condition held exact
recovery succeeded in 88% with no benign client flagged at all; where it failed, in
8%, with 10.2 benign clients flagged on average (``leverage_table``).

**lam="auto"** (version 2, full grid, 10 replicates; 66 minutes of wall time on
the shared machine next to another study). On the 954 instances (all types but
``scaled``) whose largest benign ||V_k||_F exceeds 4 / sqrt(K), exact recovery
at lam="auto" in 839, at the default in 78 (0.58 benign clients flagged per
instance against 10.2): ``margin`` 242 of 242, ``orthogonal`` 224 of 234,
``random`` 239 of 240, ``subspace`` 134 of 238. On the other 1,566 instances,
1,442 against 1,386. ``random``, ``orthogonal`` and ``margin`` are recovered on
every replicate up to gamma = 0.5 at every r (0.4 at r = 10 for the first two,
where the rule falls back to c = 4 on 11 instances at gamma = 0.5);
``subspace`` up to gamma = 0.1-0.2. ``scaled`` clients (in span(A)) are never
flagged by the rule (0 exact against 137 at the default; the subspace is
recovered on all). Median 9 solves per instance (at most 12).
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clair_stats import (
    DEFAULT_C_LAM,
    ConvergenceWarning,
    FederatedModel,
    decompose,
    select_lam,
)
from clair_stats.core.linalg import top_subspace
from clair_stats.evaluation.metrics import projection_distance
from clair_stats.experiments.study import Study, study_main, study_parser
from clair_stats.theory.t1 import (
    T1_CONSTANT,
    incoherence,
    t1_c_lam,
    t1_condition,
    t1_max_gamma,
)

#: Size of every instance: Theta_k is P x Q, K clients.
P, Q, K = 30, 2, 100
#: delta of the ``margin`` type (benign blocks have norm about sqrt(q r)).
MARGIN = 1.0
TYPES = ("random", "orthogonal", "subspace", "scaled", "margin")
FULL_GAMMAS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
FULL_RANKS = (1, 2, 3, 4, 6, 8, 10)
QUICK_GAMMAS = (0.02, 0.1, 0.3)
QUICK_RANKS = (1, 2, 4)
FULL_REPLICATES, QUICK_REPLICATES = 10, 1
#: The rank at which c = lam sqrt(K) is scanned, and the scanned values.
SCAN_RANK = 2
C_SCAN = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0)
#: Exact recovery: subspace tolerance; solver settings of every solve.
SUBSPACE_TOL = 1e-6
TOL, MAX_ITER = 1e-9, 3000
#: The study's version: 2 added the lam="auto" row (rows of version 1 are refused).
VERSION = "2"


# ------------------------------------------------------------------ one replicate
def c_values(r: int) -> tuple[float, ...]:
    """The grid values of c = lam sqrt(K) solved at rank r (besides T1's).

    Parameters
    ----------
    r : int
        The rank of the configuration.

    Returns
    -------
    tuple of float
        :data:`C_SCAN` at r = :data:`SCAN_RANK`, else ``(DEFAULT_C_LAM,)``.
    """
    return C_SCAN if r == SCAN_RANK else (float(DEFAULT_C_LAM),)


def recovery(sample: Any, lam: float) -> dict[str, Any]:
    """Solve P0 at ``lam`` on a noiseless sample and score exact recovery.

    Parameters
    ----------
    sample : FederatedSample
        A noiseless draw (``noise=0``).
    lam : float
        lam of P0.

    Returns
    -------
    dict
        ``success`` (exact recovery), ``subspace_ok``, ``support_ok``,
        ``converged``, ``rank`` (numerical rank of L^), ``subspace_error``
        (||P_A^ - P_A||_F, NaN if the solve failed), ``false_pos``, ``false_neg``
        (clients), ``iterations``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # recorded below
            res = decompose(sample.updates, lam=lam, tol=TOL, max_iter=MAX_ITER)
    except (np.linalg.LinAlgError, FloatingPointError):  # a failed solve
        return dict(_FAILED)
    return score(sample, res)


#: The fields of :func:`recovery` for a solve that raised.
_FAILED: dict[str, Any] = {
    "success": False,
    "subspace_ok": False,
    "support_ok": False,
    "converged": False,
    "rank": -1,
    "subspace_error": float("nan"),
    "false_pos": -1,
    "false_neg": -1,
    "iterations": -1,
}


def score(sample: Any, res: Any) -> dict[str, Any]:
    """Exact recovery of a decomposition of ``sample`` (the fields of
    :func:`recovery`)."""
    r = int(sample.rank)
    A_hat = top_subspace(res.low_rank, r)
    error = projection_distance(A_hat, sample.subspace)
    flagged, bad = res.support(), sample.contaminated
    converged = bool(res.info.converged)
    subspace_ok = converged and error <= SUBSPACE_TOL
    support_ok = bool(np.array_equal(flagged, bad))
    rank = int(res.rank())
    return {
        "success": bool(subspace_ok and support_ok and rank == r),
        "subspace_ok": bool(subspace_ok),
        "support_ok": support_ok,
        "converged": converged,
        "rank": rank,
        "subspace_error": float(error),
        "false_pos": int(np.sum(flagged & ~bad)),
        "false_neg": int(np.sum(~flagged & bad)),
        "iterations": int(res.info.iterations),
    }


def auto_recovery(sample: Any) -> tuple[float, int, dict[str, Any]]:
    """lam="auto" (:func:`clair_stats.select_lam`) on a noiseless sample.

    Returns
    -------
    c : float
        The chosen lam sqrt(K) (NaN if the selection raised).
    n_solves : int
        Solves of the rule (-1 if it raised).
    score : dict
        The fields of :func:`recovery` for the rule's final decomposition.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sel = select_lam(sample.updates, tol=TOL, max_iter=MAX_ITER)
    except (np.linalg.LinAlgError, FloatingPointError):
        return float("nan"), -1, dict(_FAILED)
    return sel.c, sel.n_solves, score(sample, sel.decomposition)


def run(config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One replicate: one noiseless instance, P0 at every c of the configuration.

    Parameters
    ----------
    config : dict
        ``contamination`` (a type of :data:`TYPES`), ``gamma`` (float) and ``r``
        (int).
    seed : int
        Seed of the instance (all randomness).

    Returns
    -------
    list of dict
        One row per solve: ``lam_rule`` (``"grid"`` for the values of
        :func:`c_values`, ``"t1"`` for T1's lam, ``"auto"`` for lam="auto",
        :func:`clair_stats.select_lam`), ``c`` (= lam sqrt(K), for "auto" the
        chosen one), the keys of :func:`recovery`, ``n_solves`` (1, or the
        rule's solves), and the instance's ``mu``, ``t1_holds``, ``t1_lhs``
        (gamma/(1 - gamma)) and ``t1_rhs`` (9/(121 mu r)).
    """
    kind, gamma, r = str(config["contamination"]), float(config["gamma"]), config["r"]
    model = FederatedModel(
        P, Q, int(r), K, contamination=gamma, contamination_type=kind, margin=MARGIN
    )
    sample = model.sample(noise=0.0, seed=seed)
    condition = t1_condition(sample)
    instance = {
        "mu": incoherence(sample),
        "t1_holds": condition.holds,
        "t1_lhs": condition.lhs,
        "t1_rhs": condition.rhs,
    }
    solves = [("grid", c) for c in c_values(int(r))]
    solves.append(("t1", t1_c_lam(sample.gamma)))
    rows = [
        {
            "lam_rule": rule,
            "c": float(c),
            **recovery(sample, c / math.sqrt(K)),
            "n_solves": 1,
            **instance,
        }
        for rule, c in solves
    ]
    c, n_solves, result = auto_recovery(sample)
    rows.append(
        {"lam_rule": "auto", "c": c, **result, "n_solves": n_solves, **instance}
    )
    return rows


# ------------------------------------------------------------------------- study
def parser() -> argparse.ArgumentParser:
    """The command line: the runner's options (see the module docstring)."""
    return study_parser(
        "Phase transition of exact recovery by P0 over (gamma, r) and lam sqrt(K), "
        "per contamination type, with T1's region (see the module docstring)."
    )


def build(args: argparse.Namespace) -> Study:
    """The study: the quick or the full grid.

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`parser` (``quick``).

    Returns
    -------
    Study
    """
    gammas = QUICK_GAMMAS if args.quick else FULL_GAMMAS
    ranks = QUICK_RANKS if args.quick else FULL_RANKS
    configs = [
        {"contamination": kind, "gamma": float(g), "r": int(r)}
        for kind in TYPES
        for g in gammas
        for r in ranks
    ]
    return Study(
        name="phase_transition",
        run=run,
        configs=configs,
        replicates=QUICK_REPLICATES if args.quick else FULL_REPLICATES,
        version=VERSION,
    )


# ------------------------------------------------------------------------ tables
def median_mu(frame: pd.DataFrame) -> dict[int, float]:
    """Median incoherence mu per rank r over all instances (types and gammas).

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    dict
        r -> median mu (one value per instance: the T1 rows).
    """
    rows = frame[frame["lam_rule"] == "t1"]
    return {int(r): float(g["mu"].median()) for r, g in rows.groupby("r")}


def boundary(frame: pd.DataFrame) -> dict[int, float]:
    """T1's gamma*(r) = C / (mu r + C) at the median mu of each rank.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    dict
        r -> gamma*.
    """
    return {r: t1_max_gamma(mu, r) for r, mu in median_mu(frame).items()}


def default_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The solves at the default c = lam sqrt(K) = ``DEFAULT_C_LAM``."""
    return frame[
        (frame["lam_rule"] == "grid") & np.isclose(frame["c"], float(DEFAULT_C_LAM))
    ]


def auto_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The lam="auto" rows (one per instance)."""
    return frame[frame["lam_rule"] == "auto"]


def largest_gamma_table(frame: pd.DataFrame, rule: str = "default") -> pd.DataFrame:
    """Per type and r: the largest gamma with exact recovery on every replicate.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.
    rule : {"default", "auto"}
        The solves at the default lam, or at lam="auto".

    Returns
    -------
    pandas.DataFrame
        Columns ``contamination``, ``r``, ``gamma_max_exact`` (NaN: none of the
        grid), ``gamma_max_subspace`` (the same for subspace recovery) and
        ``t1_gamma_star`` (T1's gamma* at the median mu of rank r).
    """
    rows_ = default_rows(frame) if rule == "default" else auto_rows(frame)
    star = boundary(frame)
    out = []
    for (kind, r), g in rows_.groupby(["contamination", "r"], sort=True):
        rates = g.groupby("gamma")[["success", "subspace_ok"]].mean()
        exact = rates.index[rates["success"] == 1.0]
        sub = rates.index[rates["subspace_ok"] == 1.0]
        out.append(
            {
                "contamination": kind,
                "r": int(r),
                "gamma_max_exact": float(exact.max()) if len(exact) else np.nan,
                "gamma_max_subspace": float(sub.max()) if len(sub) else np.nan,
                "t1_gamma_star": star[int(r)],
            }
        )
    return pd.DataFrame(out)


def t1_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per type: instances meeting T1's condition and their recovery.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``contamination``, ``instances``, ``inside`` (meeting the
        condition), ``inside_ok_t1`` and ``inside_ok_default`` (of those, exact
        recoveries at T1's lam and at the default lam), ``all_ok_t1`` (exact
        recoveries at T1's lam over all instances).
    """
    t1 = frame[frame["lam_rule"] == "t1"]
    key = ["contamination", "gamma", "r", "replicate"]
    default = default_rows(frame).set_index(key)["success"]
    out = []
    for kind, g in t1.groupby("contamination", sort=True):
        inside = g[g["t1_holds"].astype(bool)]
        matched = default.reindex(inside.set_index(key).index)
        out.append(
            {
                "contamination": kind,
                "instances": len(g),
                "inside": len(inside),
                "inside_ok_t1": int(inside["success"].sum()),
                "inside_ok_default": int(matched.fillna(False).astype(bool).sum()),
                "all_ok_t1": int(g["success"].sum()),
            }
        )
    return pd.DataFrame(out)


def leverage_table(frame: pd.DataFrame, rule: str = "default") -> pd.DataFrame:
    r"""Exact recovery at the default lam split by the benign-leverage condition.

    A benign client k stays out of S^ only if its block of the dual certificate,
    of norm about :math:`\|V_k\|_F`, stays below lam (README of theory_checks,
    T1). The largest :math:`\|V_k\|_F^2` is :math:`\mu r / ((1 - \gamma) K)`, so
    the condition reads :math:`c = \lambda \sqrt K > \sqrt{\mu r / (1 - \gamma)}`.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.
    rule : {"default", "auto"}
        The solves at the default lam, or at lam="auto". The split is by the
        default c in both cases (sqrt(mu r / (1 - gamma)) < DEFAULT_C_LAM, i.e.
        the largest benign ||V_k||_F below 4 / sqrt(K)), so that the two
        tables compare the same instances.

    Returns
    -------
    pandas.DataFrame
        Columns ``leverage_ok`` (sqrt(mu r / (1 - gamma)) < c), ``instances``,
        ``exact_rate`` and ``mean_benign_flagged`` (false positives per
        instance), over the types other than ``scaled`` (not identifiable).
    """
    rows = default_rows(frame) if rule == "default" else auto_rows(frame)
    rows = rows[rows["contamination"] != "scaled"]
    need = np.sqrt(rows["mu"] * rows["r"] / (1.0 - rows["gamma"]))
    grouped = rows.groupby(need < float(DEFAULT_C_LAM))
    out = grouped.agg(
        instances=("success", "size"),
        exact_rate=("success", "mean"),
        mean_benign_flagged=("false_pos", "mean"),
    )
    return out.rename_axis("leverage_ok").reset_index()


def _markdown(table: pd.DataFrame) -> list[str]:
    """A pandas table as markdown lines (NaN shown as '-')."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append("-" if np.isnan(v) else f"{v:.4g}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ----------------------------------------------------------------------- figures
def _edges(values: np.ndarray, log: bool) -> np.ndarray:
    """Cell edges around sorted grid values: midpoints (geometric if ``log``)."""
    v = np.log(values) if log else np.asarray(values, dtype=float)
    if v.size == 1:
        mid = np.array([v[0] - 0.5, v[0] + 0.5])
    else:
        inner = (v[1:] + v[:-1]) / 2
        mid = np.concatenate(
            [[v[0] - (inner[0] - v[0])], inner, [v[-1] + (v[-1] - inner[-1])]]
        )
    return np.exp(mid) if log else mid


def _heatmap(ax: Any, table: pd.DataFrame, x: str, y: str, value: str) -> Any:
    """pcolormesh of the mean of ``value`` over the (x, y) grid; x on a log axis."""
    rate = table.groupby([y, x])[value].mean().unstack(x)
    xs, ys = rate.columns.to_numpy(float), rate.index.to_numpy(float)
    mesh = ax.pcolormesh(
        _edges(xs, log=True),
        _edges(ys, log=False),
        rate.to_numpy(float),
        vmin=0.0,
        vmax=1.0,
        cmap="viridis",
        shading="flat",
    )
    ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{g:g}" for g in xs], rotation=90, fontsize=7)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{v:g}" for v in ys], fontsize=7)
    ax.minorticks_off()
    return mesh


def _outlined(color: str, lw: float) -> dict[str, Any]:
    """Line keywords: ``color``, width ``lw``, a thin halo (visible on any cell)."""
    from matplotlib import patheffects

    halo = "black" if color in ("white", "tab:red") else "white"
    return {
        "color": color,
        "lw": lw,
        "path_effects": [
            patheffects.Stroke(linewidth=lw + 1.4, foreground=halo),
            patheffects.Normal(),
        ],
    }


def _staircase(ax: Any, star: dict[int, float], ranks: np.ndarray) -> None:
    """T1's boundary gamma*(r) as a staircase over the rank cells."""
    ranks = np.sort(ranks)
    edges = _edges(ranks.astype(float), log=False)
    xs, ys = [], []
    for i, r in enumerate(ranks):
        xs += [star[int(r)], star[int(r)]]
        ys += [edges[i], edges[i + 1]]
    ax.plot(xs, ys, **_outlined("tab:red", 2.0))


def _panels(
    n_rows: int, n_cols: int, height: float
) -> tuple[Any, np.ndarray, Any, Any]:
    """A figure of n_rows x n_cols panels, a colour-bar axis on the right and a
    legend axis on top (``tight_layout`` makes room for all of them)."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2.7 * n_cols + 0.9, height * n_rows + 1.2))
    grid = fig.add_gridspec(
        n_rows + 1,
        n_cols + 1,
        width_ratios=[1] * n_cols + [0.07],
        height_ratios=[0.12 * n_rows] + [1] * n_rows,
    )
    axes = np.empty((n_rows, n_cols), dtype=object)
    for i in range(n_rows):
        for j in range(n_cols):
            share = axes[0, 0] if (i or j) else None
            axes[i, j] = fig.add_subplot(grid[i + 1, j], sharex=share, sharey=share)
    top = fig.add_subplot(grid[0, :])
    top.axis("off")
    return fig, axes, fig.add_subplot(grid[1:, -1]), top


#: Keywords of the one-row legends above the panels.
_LEGEND_STYLE: dict[str, Any] = {"fontsize": 8, "loc": "center", "frameon": False}


def _figures(frame: pd.DataFrame, folder: Path, note: str) -> list[Path]:
    """The figures of the module docstring, one function each; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    written = [
        _success_gamma_r_figure(frame, folder, note),
        _success_t1_lam_figure(frame, folder, note),
        _success_auto_figure(frame, folder, note),
    ]
    scan = _success_gamma_lam_figure(frame, folder, note)
    if scan is not None:
        written.append(scan)
    return written


def _kinds(frame: pd.DataFrame) -> list[str]:
    """The contamination types of the frame, in the order of :data:`TYPES`."""
    return [t for t in TYPES if t in set(frame["contamination"])]


def _gamma_floor(frame: pd.DataFrame, star: dict[int, float]) -> float:
    """The left end of the gamma axes: below every gamma and every gamma*(r)."""
    return min(float(frame["gamma"].min()), min(star.values())) / 1.6


def _boundary_handle() -> Any:
    """The legend entry of T1's boundary (red, outlined)."""
    from matplotlib.lines import Line2D

    return Line2D([], [], **_outlined("tab:red", 2.0))


def _success_gamma_r_figure(frame: pd.DataFrame, folder: Path, note: str) -> Path:
    """``success_gamma_r.png``: exact and subspace recovery over (gamma, r) at the
    default lam."""
    return _gamma_r_figure(
        frame,
        default_rows(frame),
        (("success", "exact recovery"), ("subspace_ok", "subspace recovery")),
        f"the default lam = {DEFAULT_C_LAM:g}/sqrt(K)",
        folder / "success_gamma_r.png",
        note,
    )


def _success_t1_lam_figure(frame: pd.DataFrame, folder: Path, note: str) -> Path:
    """``success_t1_lam.png``: exact recovery over (gamma, r) at T1's lam."""
    return _gamma_r_figure(
        frame,
        frame[frame["lam_rule"] == "t1"],
        (("success", "exact recovery"),),
        "T1's lam = 3/(7 sqrt(gamma K))",
        folder / "success_t1_lam.png",
        note,
    )


def _success_auto_figure(frame: pd.DataFrame, folder: Path, note: str) -> Path:
    """``success_auto.png``: exact and subspace recovery over (gamma, r) at
    lam="auto"."""
    return _gamma_r_figure(
        frame,
        auto_rows(frame),
        (("success", "exact recovery"), ("subspace_ok", "subspace recovery")),
        "lam='auto' (select_lam)",
        folder / "success_auto.png",
        note,
    )


def _gamma_r_figure(
    frame: pd.DataFrame,
    rows: pd.DataFrame,
    values: tuple[tuple[str, str], ...],
    title: str,
    path: Path,
    note: str,
) -> Path:
    """Heatmaps over (gamma, r) of the solves ``rows``: one row of panels per
    (column, description) of ``values``, one column per contamination type, with
    T1's boundary; ``title`` names the lam of the solves."""
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import save_figure

    kinds = _kinds(frame)
    fig, axes, cax, top = _panels(len(values), len(kinds), 2.7)
    for i, (value, what) in enumerate(values):
        for j, kind in enumerate(kinds):
            bottom, left = i == len(values) - 1, j == 0
            mesh = _gamma_r_panel(axes[i, j], frame, rows, kind, value, what)
            _label_panel(axes[i, j], bottom, left, "rank r of span(A)")
    fig.colorbar(mesh, cax=cax, label="rate over replicates (0-1)")
    top.legend(
        [_boundary_handle()],
        [f"T1 boundary gamma*(r) at the median mu; colours: P0 at {title}"],
        **_LEGEND_STYLE,
    )
    caption = (
        f"Rate of exact recovery (subspace error <= 1e-6, support = S^c, rank r, "
        f"converged) of P0 at {title}, over gamma and r, per contamination "
        f"type; noiseless, p = {P}, q = {Q}, K = {K}. Red staircase: T1's "
        "boundary gamma* = C/(mu r + C), C = 9/121, at the median mu of each r "
        "(T1 guarantees exact recovery to its left, at T1's lam); left of the "
        f"cells gamma < 1/K = {1 / K:g}, fewer than one contaminated client. "
        f"{note}."
    )
    if len(values) > 1:
        caption = caption.replace(
            "Rate of exact recovery",
            "Top row: rate of exact recovery; bottom row: of subspace recovery "
            "only (subspace error <= 1e-6, converged). Exact recovery",
        )
    written = save_figure(fig, path, caption)
    plt.close(fig)
    return written


def _gamma_r_panel(
    ax: Any, frame: pd.DataFrame, rows: pd.DataFrame, kind: str, value: str, what: str
) -> Any:
    """One type's heatmap of ``value`` over (gamma, r) with T1's staircase; returns
    the mesh (for the colour bar)."""
    star = boundary(frame)
    sub = rows[rows["contamination"] == kind]
    mesh = _heatmap(ax, sub, "gamma", "r", value)
    _staircase(ax, star, np.array(sorted(frame["r"].unique())))
    ax.set_xlim(_gamma_floor(frame, star), None)
    ax.set_title(f"{kind}: {what}", fontsize=9)
    return mesh


def _label_panel(ax: Any, bottom: bool, left: bool, ylabel: str) -> None:
    """The gamma label on the bottom row of panels, ``ylabel`` on the first column;
    the shared ticks are unlabelled elsewhere."""
    if bottom:
        ax.set_xlabel("contamination fraction gamma\n(log scale)")
    else:
        ax.tick_params(labelbottom=False)
    if left:
        ax.set_ylabel(ylabel)
    else:
        ax.tick_params(labelleft=False)


def _success_gamma_lam_figure(
    frame: pd.DataFrame, folder: Path, note: str
) -> Path | None:
    """``success_gamma_lam.png``: exact recovery over (gamma, c) at r = SCAN_RANK,
    with T1's lam, the default c, the ceiling sqrt(q K) and T1's gamma*; None (no
    file) when the frame scans a single c."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from clair_stats.experiments.plotting import save_figure

    scan = frame[(frame["r"] == SCAN_RANK) & (frame["lam_rule"] == "grid")]
    if scan["c"].nunique() <= 1:
        return None
    kinds = _kinds(frame)
    fig, axes, cax, top = _panels(1, len(kinds), 3.3)
    for j, kind in enumerate(kinds):
        mesh = _gamma_lam_panel(axes[0, j], frame, scan, kind)
        _label_panel(axes[0, j], True, j == 0, "c = lam sqrt(K) (unitless)")
    fig.colorbar(mesh, cax=cax, label="exact-recovery rate (0-1)")
    handles = [
        Line2D([], [], marker="o", mfc="0.6", mec="black", **_outlined("black", 1.5)),
        Line2D([], [], ls="--", **_outlined("white", 1.2)),
        Line2D([], [], ls=":", **_outlined("white", 1.2)),
        _boundary_handle(),
    ]
    top.legend(
        handles,
        [
            "T1's lam (dots: its rate)",
            f"default c = {DEFAULT_C_LAM:g}",
            "ceiling sqrt(qK)",
            f"T1 boundary gamma* (r = {SCAN_RANK}, median mu)",
        ],
        ncol=4,
        **_LEGEND_STYLE,
    )
    caption = (
        f"Exact-recovery rate of P0 over gamma and c = lam sqrt(K) at r = "
        f"{SCAN_RANK}; noiseless, p = {P}, q = {Q}, K = {K}, per contamination "
        "type. Black curve: T1's c = 3/(7 sqrt(gamma)), its dots coloured by "
        "the rate at that lam; dashed: the default c; dotted: the ceiling "
        "sqrt(qK), above which nobody is flagged; red vertical line: T1's "
        f"gamma* at the median mu of r = {SCAN_RANK}. {note}."
    )
    written = save_figure(fig, folder / "success_gamma_lam.png", caption)
    plt.close(fig)
    return written


def _gamma_lam_panel(
    ax: Any, frame: pd.DataFrame, scan: pd.DataFrame, kind: str
) -> Any:
    """One type's heatmap over (gamma, c) at r = SCAN_RANK, with T1's lam (curve,
    and dots coloured by its rate) and the reference lines; returns the mesh."""
    from clair_stats.experiments.plotting import proportion_summary

    star = boundary(frame)
    xmin = _gamma_floor(frame, star)
    t1 = proportion_summary(
        frame[(frame["r"] == SCAN_RANK) & (frame["lam_rule"] == "t1")],
        ["contamination", "gamma"],
        "success",
    )
    gam = np.geomspace(xmin, float(frame["gamma"].max()) * 1.3, 200)
    mesh = _heatmap(ax, scan[scan["contamination"] == kind], "gamma", "c", "success")
    ax.plot(gam, [t1_c_lam(g) for g in gam], **_outlined("black", 1.5))
    dots = t1[t1["contamination"] == kind]
    ax.scatter(
        dots["gamma"],
        [t1_c_lam(g) for g in dots["gamma"]],
        c=dots["rate"],
        cmap="viridis",
        vmin=0,
        vmax=1,
        edgecolors="black",
        s=30,
        zorder=3,
    )
    ax.axhline(float(DEFAULT_C_LAM), ls="--", **_outlined("white", 1.2))
    ax.axhline(math.sqrt(Q * K), ls=":", **_outlined("white", 1.2))
    ax.axvline(star[SCAN_RANK], **_outlined("tab:red", 2.0))
    ax.set_xlim(xmin, None)
    ax.set_ylim(0.5, math.sqrt(Q * K) + 1.0)
    ax.set_title(kind, fontsize=9)
    return mesh


def report(frame: pd.DataFrame, folder: Path, args: argparse.Namespace) -> None:
    """Write the figures, ``summary.csv`` and ``summary.md`` into ``folder``.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame (:meth:`clair_stats.experiments.study.ResultStore.frame`).
    folder : pathlib.Path
        Where to write.
    args : argparse.Namespace
        From :func:`parser` (``quick``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    reps = int(frame["replicate"].nunique())
    mode = "quick" if args.quick else "full"
    note = f"{mode} grid, {reps} replicates per cell"
    _figures(frame, folder, note)
    gamma_table = largest_gamma_table(frame)
    theory = t1_table(frame)
    mus = median_mu(frame)
    gamma_table.to_csv(folder / "summary.csv", index=False)
    seconds = frame.drop_duplicates(["contamination", "gamma", "r", "replicate"])
    lines = [
        "# Phase transition of exact recovery by P0",
        "",
        f"{note}; p = {P}, q = {Q}, K = {K}; {len(seconds)} instances, "
        f"{len(frame)} solves, {seconds['seconds'].sum():.0f} s of compute.",
        "",
        f"## Largest gamma with exact recovery on every replicate (default c = "
        f"{DEFAULT_C_LAM:g})",
        "",
        *_markdown(gamma_table),
        "",
        "## T1's condition: instances inside it and their recovery",
        "",
        *_markdown(theory),
        "",
        "## The benign-leverage condition sqrt(mu r / (1 - gamma)) < c at the "
        "default c",
        "",
        *_markdown(leverage_table(frame)),
        "",
        "## lam='auto' (clair_stats.select_lam)",
        "",
        *_auto_lines(frame),
        "",
        "Largest gamma with exact recovery on every replicate at lam='auto':",
        "",
        *_markdown(largest_gamma_table(frame, "auto")),
        "",
        "The benign-leverage split (by the default c) at lam='auto':",
        "",
        *_markdown(leverage_table(frame, "auto")),
        "",
        "## Median incoherence mu per rank (T1's boundary uses it)",
        "",
        *_markdown(
            pd.DataFrame(
                {
                    "r": list(mus),
                    "median_mu": list(mus.values()),
                    "gamma_star": [t1_max_gamma(m, r) for r, m in mus.items()],
                    "T1_constant": T1_CONSTANT,
                }
            )
        ),
        "",
    ]
    (folder / "summary.md").write_text("\n".join(lines))


def auto_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """Exact recovery at the default lam and at lam="auto", on the same instances,
    split by whether the largest benign ||V_k||_F exceeds 4 / sqrt(K).

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    pandas.DataFrame
        One row per group (``leverage_exceeds_default``: sqrt(mu r / (1 -
        gamma)) >= DEFAULT_C_LAM), over the types other than ``scaled``:
        ``instances``, ``default_exact`` and ``auto_exact`` (counts),
        ``default_benign_flagged`` and ``auto_benign_flagged`` (means), and
        ``auto_median_solves``.
    """
    key = ["contamination", "gamma", "r", "replicate"]
    default = default_rows(frame).set_index(key)
    auto = auto_rows(frame).set_index(key)
    both = default.join(auto.add_suffix("_auto"), how="inner")
    both = both[both.index.get_level_values("contamination") != "scaled"]
    r = both.index.get_level_values("r").to_numpy(float)
    gamma = both.index.get_level_values("gamma").to_numpy(float)
    need = np.sqrt(both["mu"].to_numpy(float) * r / (1.0 - gamma))
    both = both.assign(leverage_exceeds_default=need >= float(DEFAULT_C_LAM))
    out = both.groupby("leverage_exceeds_default").agg(
        instances=("success", "size"),
        default_exact=("success", "sum"),
        auto_exact=("success_auto", "sum"),
        default_benign_flagged=("false_pos", "mean"),
        auto_benign_flagged=("false_pos_auto", "mean"),
        auto_median_solves=("n_solves_auto", "median"),
    )
    return out.reset_index()


def _auto_lines(frame: pd.DataFrame) -> list[str]:
    """The auto-vs-default comparison as markdown, with one headline line."""
    table = auto_comparison(frame)
    out = _markdown(table)
    high = table[table["leverage_exceeds_default"]]
    if len(high):
        row = high.iloc[0]
        out = [
            "Instances (all types but `scaled`) whose largest benign ||V_k||_F "
            f"exceeds 4/sqrt(K): {int(row['instances'])}; exact recovery at the "
            f"default lam {int(row['default_exact'])}, at lam='auto' "
            f"{int(row['auto_exact'])}.",
            "",
            *out,
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the study and write its report (see :func:`parser` for the options)."""
    return study_main(build, report, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

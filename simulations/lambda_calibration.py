r"""
Calibrating c_lam: for which lam = c / sqrt(K) does P0 recover exactly?
=======================================================================

**Question.** When the contamination fraction gamma is unknown, CLAIR's step 1 (the
exact decomposition P0 of docs/programs.md §3.1) uses lam = c_lam / sqrt(K). The default
c_lam = 4 came from a first scan ("exact recovery held for lam sqrt(K) in about [3,
5]"), but the README's known limitations record that c = 4 fails in most q = 1 regimes.
This study maps, regime by regime, the set of c = lam sqrt(K) at which P0 recovers
*exactly* on every replicate (the regime's "working window"), and recommends the c
that lies in the most windows. It also runs, in every regime, the theory value of
Theorem T1 (docs/claims.md §4), c_T1 = lam_T1 sqrt(K) = 3 / (7 sqrt(gamma))
(:func:`clair_stats.theory.t1.t1_c_lam`), and the data-driven lam="auto"
(:func:`clair_stats.select_lam`, docs/programs.md §3.1.7), which chooses lam per
instance.

**Grid** (full mode). Regimes: p in {30, 80}, q in {1, 2, 5, 10}, K in {20, 50, 100},
r in {2, 5}, gamma in {0.1, 0.2, 0.4}, contamination type ``random`` and
``orthogonal`` (288 regimes); c in {1.5, 2, 2.5, ..., 7} (12 values) plus c_T1; 8
replicates, noiseless data (tau = 0), no centre. That is 288 x 8 = 2,304 replicates
of 13 solves each, 29,952 solves. This grid is the study behind the default c_lam
and is kept as it was, although it is over the ~10-minute budget of a full study:
on one core the full run took 23 minutes before the port to the study runner
(1333 s of it in the solver; 200 runs drawn at random from the grid took 0.047 s
each with one BLAS thread: 0.017-0.03 s at p = 30, 0.03-0.12 s at p = 80, up to 3 s
for a non-converged solve). Ported to the runner, with new seeds, the full run
took 52 minutes (2,981 s in the solver) on the same machine at load 4-8.
``--jobs 2`` halves it on two idle cores; an interrupted run resumes where it
stopped. ``--replicates`` changes the number of replicates (more can only shrink
the windows).

Version 2 of the study adds one row per replicate for lam="auto" (stored results
of version 1 are refused). ``--methods auto`` runs that row alone, on the same
instances (the seeds do not depend on the methods), into a store of its own
(version "2-auto", by default under ``results/auto_only/``): the grid's windows
are deterministic given the seeds, so its counts can be set against a full run's.

``--quick`` runs p = 30, q in {1, 5}, K in {20, 100}, r = 2, gamma in {0.1, 0.4},
``random`` only (8 regimes), 2 replicates, every c of the grid plus c_T1 (208
solves; 7 s of solver time, 10 s in all on the loaded machine). The quick regimes
are a subset of the full grid with the same seeds, so a quick run's replicates are
reused by a later full run.

**One replicate** (:func:`run`). ``FederatedModel(p, q, r, K, contamination=gamma,
contamination_type=type).sample(noise=0, seed=seed)``, then for *every* c of the
grid and for c_T1 ``decompose(updates, lam=c / sqrt(K), tol=1e-9, max_iter=3000)``
(ADMM), one result row per c, and one row for ``select_lam(updates, tol=1e-9,
max_iter=3000)`` (its final decomposition is scored; ``solve_seconds`` is the
whole selection, ``reference_seconds`` one plain solve at the chosen lam, timed
right after). Exact recovery means all of

* the solver converged (a ``ConvergenceWarning`` is suppressed and the run counted
  as a failure);
* ||P_A^ - P_A||_F <= 1e-6, A^ the top-r left singular vectors of the stacked L^
  (p x Kq);
* the block support of S^ (``Decomposition.support()``) equals the contaminated set;
* the numerical rank of L^ (``Decomposition.rank()``) equals r.

**Seeds: common random numbers.** The runner derives the seed of a replicate from
(study, regime, replicate); c is not part of the configuration but of the
replicate's work, so every c is tried on the *same* instances. A window is then a
property of one set of instances rather than of different draws per c, and the
comparison between c values is not blurred by instance-to-instance variation.
(The seeds differ from those of the study's first version, which drew them with
``numpy.random.SeedSequence``. Re-measured with the new ones, the full grid gives
c = 4.5 in 217 of 288 windows (tied with c = 5; 224 before), the default c = 4 in
203 (206 before), 29 empty windows (30 before) and all 72 q = 10 regimes covered
by c in [4, 4.5], as before.)

**Output.** ``summary.md`` (the same in ``quick/`` for the quick grid) gives

1. the recommendation: the grid c lying in the most working windows, with the
   number of regimes it covers, the regimes no c covers, and the same count for the
   current ``DEFAULT_C_LAM`` and for c_T1 (run per regime), and the ceiling
   c < sqrt(q K) above which P0 returns S^ = 0 whatever the data;
   lam="auto": the regimes it recovers on every replicate (per q), against the
   default and the best c, the regimes with an empty window it recovers, and its
   cost (solves, and time over one solve at the chosen lam);
2. the coverage table: per q (and per K, p, r, gamma, type), how many regimes have
   c in their window, for every c of the grid;
3. the intersection of the windows over all regimes, and per q and K;
4. per regime: the window (the grid values of c with success rate 1, written as
   intervals of consecutive grid values), the success rate at every c and at c_T1
   (also as ``windows.csv``).

A second coverage table counts *subspace-only* recovery (converged and
||P_A^ - P_A||_F <= 1e-6, support and rank not required): the subspace of step 2
can be right while the support of S^ is not (step 3 can then use the chi-square
test).

**Figures.** ``coverage.png``: for every c, the fraction of regimes whose window
contains it, per q (exact recovery left, subspace-only right); the dotted line is
the current default. ``success_rate.png``: the success rate pooled over the regimes
and replicates of each q, with 95% Wilson intervals (the regimes are a fixed design,
so the pooled count's binomial interval is conservative for their mean rate).
``windows.png``: the success rate of every regime (rows, grouped by q and K) at
every c (columns), at c_T1 and at lam="auto"; the window of a regime is its run of
full-rate cells. In ``coverage.png`` the dash-dot lines give, per q, the fraction
of regimes lam="auto" recovers on every replicate. A ``--methods auto`` run writes
``summary.md`` and ``auto.csv`` only (no grid to draw against). ``auto.csv``
holds lam="auto"'s rate per regime (``windows.csv`` and ``coverage.csv`` keep the
grid's columns; the coverage table of ``summary.md`` has an ``auto`` column).

**lam="auto", full grid** (``--methods auto``, version 2, the same 2,304
instances; 65 minutes of wall time, 3,283 s in the rule, on the shared 2-core
machine next to another study): exact recovery on every replicate in 287 of the
288 regimes (71 of 72 at q = 1, all 72 at q = 2, 5 and 10; 2,303 of 2,304
replicates), against 203 for c = 4 and 217 for the best single c, and including
the 29 regimes no c of the grid covers. The missed replicate (p = 80, q = 1,
K = 20, r = 5, gamma = 0.4, ``orthogonal``) flags a benign client at the path's
first point, so the rule falls back to c = 4. Chosen c: 3.7-8.7 (5-95%); cost:
median 9 solves (at most 12), 9.5 times one solve at the chosen lam (90th
percentile 28.5).

A window is an empirical statement about the replicates run: "success rate 1" with
n = 8 replicates is compatible with a true failure rate up to about 0.31 (one-sided
95% bound 1 - 0.05^(1/8)); the counts of covered regimes are the robust part.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Sequence
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
from clair_stats.experiments.study import (
    Study,
    grid,
    results_dir,
    study_main,
    study_parser,
)
from clair_stats.theory.t1 import t1_c_lam

#: Threshold of ||P_A^ - P_A||_F for exact (and subspace-only) recovery.
SUBSPACE_TOL = 1e-6
#: Solver settings of every solve.
TOL, MAX_ITER = 1e-9, 3000
#: Contamination types of the grid.
TYPES = ("random", "orthogonal")
#: The grid of c = lam sqrt(K), tried on every instance: 1.5, 2, ..., 7.
C_GRID: tuple[float, ...] = tuple(1.5 + 0.5 * i for i in range(12))
#: Configuration keys of a regime, in the order of the tables.
REGIME: tuple[str, ...] = ("p", "q", "K", "r", "gamma", "type")

FULL_AXES: dict[str, tuple] = {
    "p": (30, 80),
    "q": (1, 2, 5, 10),
    "K": (20, 50, 100),
    "r": (2, 5),
    "gamma": (0.1, 0.2, 0.4),
    "type": TYPES,
}
QUICK_AXES: dict[str, tuple] = {
    "p": (30,),
    "q": (1, 5),
    "K": (20, 100),
    "r": (2,),
    "gamma": (0.1, 0.4),
    "type": ("random",),
}
FULL_REPLICATES, QUICK_REPLICATES = 8, 2
#: The study's version: 2 added the lam="auto" row (rows of version 1 are refused).
VERSION = "2"
#: ``--methods``: every c of the grid, c_T1 and lam="auto"; or lam="auto" alone.
METHODS = ("all", "auto")
#: The ``c`` of the auto rows in :func:`cell_table` (their c varies by replicate).
AUTO_KEY = 0.0


# ------------------------------------------------------------------ one replicate
def _failed(start: float, exc: Exception) -> dict[str, Any]:
    """The row fields of a solve that raised."""
    return {
        "success": False,
        "subspace_ok": False,
        "converged": False,
        "iterations": None,
        "subspace_error": None,
        "support_ok": False,
        "false_pos": None,
        "false_neg": None,
        "rank": None,
        "solve_seconds": time.perf_counter() - start,
        "error": f"{type(exc).__name__}: {exc}".replace("\n", " "),
    }


def _score(sample: Any, r: int, res: Any, seconds: float) -> dict[str, Any]:
    """Exact recovery of one decomposition (the fields of one row)."""
    U = top_subspace(res.low_rank, r)
    A = sample.subspace
    error = float(np.linalg.norm(U @ U.T - A @ A.T))
    flagged, bad = res.support(), sample.contaminated
    rank = int(res.rank())
    converged = bool(res.info.converged)
    support_ok = bool(np.array_equal(flagged, bad))
    subspace_ok = converged and error <= SUBSPACE_TOL
    return {
        "success": bool(subspace_ok and support_ok and rank == r),
        "subspace_ok": bool(subspace_ok),
        "converged": converged,
        "iterations": int(res.info.iterations),
        "subspace_error": error,
        "support_ok": support_ok,
        "false_pos": int(np.sum(flagged & ~bad)),
        "false_neg": int(np.sum(~flagged & bad)),
        "rank": rank,
        "solve_seconds": seconds,
        "error": None,
    }


def _solve(sample: Any, r: int, lam: float) -> dict[str, Any]:
    """Solve P0 at ``lam`` and check exact recovery (the fields of one row)."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = decompose(sample.updates, lam=lam, tol=TOL, max_iter=MAX_ITER)
    except (np.linalg.LinAlgError, FloatingPointError) as exc:  # a failed solve
        return _failed(start, exc)
    return _score(sample, r, res, time.perf_counter() - start)


def _auto(sample: Any, r: int) -> dict[str, Any]:
    """The lam="auto" row: :func:`clair_stats.select_lam` and its cost.

    ``solve_seconds`` is the whole selection; ``reference_seconds`` one plain
    solve at the chosen lam (unit weights), timed right after it, so that their
    ratio is the rule's cost in solves' time on the same instance and load.
    """
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sel = select_lam(sample.updates, tol=TOL, max_iter=MAX_ITER)
    except (np.linalg.LinAlgError, FloatingPointError) as exc:
        row = _failed(start, exc)
        return {
            "c_kind": "auto",
            "c": None,
            "lam": None,
            **row,
            "n_solves": None,
            "reference_seconds": None,
        }
    seconds = time.perf_counter() - start
    reference = _solve(sample, r, sel.lam)["solve_seconds"]
    return {
        "c_kind": "auto",
        "c": sel.c,
        "lam": sel.lam,
        **_score(sample, r, sel.decomposition, seconds),
        "n_solves": sel.n_solves,
        "reference_seconds": reference,
    }


def run(
    config: dict[str, Any], seed: int, methods: str = "all"
) -> list[dict[str, Any]]:
    """One replicate: one noiseless instance, P0 at every c, c_T1 and lam="auto".

    Parameters
    ----------
    config : dict
        A regime: ``p``, ``q``, ``K``, ``r`` (ints), ``gamma`` (float in (0, 1))
        and ``type`` (a contamination type of :mod:`clair_stats.simulate.model`).
    seed : int
        Seed of the instance (the same for every c: common random numbers).
    methods : {"all", "auto"}
        Every row, or the lam="auto" row alone.

    Returns
    -------
    list of dict
        One row per c: ``c_kind`` ("grid", "theory" or "auto"), ``c``, ``lam`` =
        c / sqrt(K) (for "auto" the lam chosen by :func:`clair_stats.select_lam`),
        ``success`` (exact recovery), ``subspace_ok`` (converged and
        ||P_A^ - P_A||_F <= 1e-6), ``converged``, ``iterations``,
        ``subspace_error``, ``support_ok``, ``false_pos``, ``false_neg``,
        ``rank`` (numerical rank of L^), ``solve_seconds``, ``error`` (the
        exception of a failed solve, else None), ``n_solves`` (1, or the
        rule's solves) and ``reference_seconds`` (None, or for "auto" the time
        of one solve at the chosen lam).
    """
    p, q, K, r = (int(config[k]) for k in ("p", "q", "K", "r"))
    gamma = float(config["gamma"])
    model = FederatedModel(
        p, q, r, K, contamination=gamma, contamination_type=config["type"]
    )
    sample = model.sample(noise=0.0, seed=seed)
    values = [("grid", c) for c in C_GRID] + [("theory", t1_c_lam(gamma))]
    rows = []
    for kind, c in values if methods == "all" else ():
        lam = c / math.sqrt(K)
        rows.append(
            {
                "c_kind": kind,
                "c": c,
                "lam": lam,
                **_solve(sample, r, lam),
                "n_solves": 1,
                "reference_seconds": None,
            }
        )
    rows.append(_auto(sample, r))
    return rows


def run_auto(config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """:func:`run` with ``methods="auto"`` (the run function of ``--methods auto``)."""
    return run(config, seed, methods="auto")


# ---------------------------------------------------------------------- the study
def parser() -> argparse.ArgumentParser:
    """The command line: the runner's options and ``--replicates``."""
    out = study_parser(
        "Map exact recovery of P0 over c = lam sqrt(K) and recommend c_lam "
        "(see the module docstring)."
    )
    out.add_argument(
        "--replicates",
        type=int,
        default=None,
        help=f"replicates per regime (default {FULL_REPLICATES} full, "
        f"{QUICK_REPLICATES} quick)",
    )
    out.add_argument(
        "--methods",
        choices=METHODS,
        default="all",
        help="'all': every c of the grid, c_T1 and lam='auto' (default); 'auto': "
        "the lam='auto' row alone, on the same instances (same seeds), stored "
        "apart (version '2-auto'; default results folder ./results/auto_only)",
    )
    return out


def build(args: argparse.Namespace) -> Study:
    """The study: the quick or the full grid of regimes.

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`parser` (``quick``, ``replicates``).

    Returns
    -------
    Study
    """
    axes = QUICK_AXES if args.quick else FULL_AXES
    replicates = getattr(args, "replicates", None)
    if replicates is None:
        replicates = QUICK_REPLICATES if args.quick else FULL_REPLICATES
    if replicates < 1:
        raise ValueError(f"--replicates must be >= 1, got {replicates}")
    auto_only = getattr(args, "methods", "all") == "auto"
    return Study(
        name="lambda_calibration",
        run=run_auto if auto_only else run,
        configs=grid(**axes),
        replicates=replicates,
        version=f"{VERSION}-auto" if auto_only else VERSION,
    )


# ------------------------------------------------------------------------ tables
def _label(regime: Sequence[Any]) -> str:
    p, q, K, r, gamma, kind = regime
    return f"p={p} q={q} K={K} r={r} gamma={gamma:g} {kind}"


def cell_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (regime, c): replicates run, exact and subspace-only successes.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame (one row per replicate and c).

    Returns
    -------
    pandas.DataFrame
        Columns ``REGIME``, ``c_kind``, ``c``, ``n``, ``successes``,
        ``sub_successes``. The c_T1 rows have ``c_kind == "theory"``; the
        lam="auto" rows ``c_kind == "auto"`` and ``c`` = :data:`AUTO_KEY` (the
        chosen c varies by replicate).
    """
    data = frame.assign(
        success=frame["success"].astype(int),
        subspace_ok=frame["subspace_ok"].astype(int),
        c=frame["c"].where(frame["c_kind"] != "auto", AUTO_KEY).astype(float),
    )
    keys = [*REGIME, "c_kind", "c"]
    out = data.groupby(keys, sort=False).agg(
        n=("success", "size"),
        successes=("success", "sum"),
        sub_successes=("subspace_ok", "sum"),
    )
    return out.reset_index()


def windows_table(frame: pd.DataFrame, configs: Sequence[dict]) -> pd.DataFrame:
    """One row per regime run: its window and its success rate at every c.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.
    configs : sequence of dict
        The planned regimes (their order is the table's); regimes without any row
        are left out.

    Returns
    -------
    pandas.DataFrame
        ``REGIME`` columns, ``label``, ``replicates`` (run), ``window`` (text),
        ``window_values`` and ``sub_window_values`` (lists of c), ``rate_<c>``
        (exact-recovery rate at each grid c), ``c_T1``, ``rate_T1``,
        ``t1_ok`` (rate 1 at c_T1) and ``sub_t1_ok`` (subspace-only), and the
        same for lam="auto": ``rate_auto``, ``auto_ok``, ``sub_auto_ok``.
    """
    cells = cell_table(frame)
    index = {
        (tuple(row[k] for k in REGIME), row["c_kind"], row["c"]): row
        for row in cells.to_dict("records")
    }
    out = []
    for config in configs:
        regime = tuple(config[k] for k in REGIME)
        grid_cells = [index.get((regime, "grid", c)) for c in C_GRID]
        auto = index.get((regime, "auto", AUTO_KEY))
        if all(cell is None for cell in grid_cells) and auto is None:
            continue
        theory = index.get((regime, "theory", t1_c_lam(float(config["gamma"]))))
        row: dict[str, Any] = dict(zip(REGIME, regime, strict=True))
        row["label"] = _label(regime)
        row["replicates"] = max(
            cell["n"] for cell in [*grid_cells, auto] if cell is not None
        )
        full = [
            c
            for c, cell in zip(C_GRID, grid_cells, strict=True)
            if cell is not None and cell["successes"] == cell["n"]
        ]
        row["window"] = intervals(full)
        row["window_values"] = full
        row["sub_window_values"] = [
            c
            for c, cell in zip(C_GRID, grid_cells, strict=True)
            if cell is not None and cell["sub_successes"] == cell["n"]
        ]
        for c, cell in zip(C_GRID, grid_cells, strict=True):
            row[f"rate_{c:g}"] = (
                np.nan if cell is None else cell["successes"] / cell["n"]
            )
        row["c_T1"] = t1_c_lam(float(config["gamma"]))
        row["rate_T1"] = np.nan if theory is None else theory["successes"] / theory["n"]
        row["t1_ok"] = theory is not None and theory["successes"] == theory["n"]
        row["sub_t1_ok"] = theory is not None and theory["sub_successes"] == theory["n"]
        row["rate_auto"] = np.nan if auto is None else auto["successes"] / auto["n"]
        row["auto_ok"] = auto is not None and auto["successes"] == auto["n"]
        row["sub_auto_ok"] = auto is not None and auto["sub_successes"] == auto["n"]
        out.append(row)
    return pd.DataFrame(out)


def intervals(values: Sequence[float]) -> str:
    """A subset of :data:`C_GRID` as runs of consecutive grid values, e.g. "[3, 5]".

    Parameters
    ----------
    values : sequence of float
        Values of the grid.

    Returns
    -------
    str
        "none" for an empty subset.
    """
    chosen = sorted(set(values))
    if not chosen:
        return "none"
    runs: list[list[float]] = []
    for c in chosen:
        i = C_GRID.index(c)
        if runs and i > 0 and runs[-1][-1] == C_GRID[i - 1]:
            runs[-1].append(c)
        else:
            runs.append([c])
    return ", ".join(
        f"{r[0]:g}" if len(r) == 1 else f"[{r[0]:g}, {r[-1]:g}]" for r in runs
    )


def coverage_table(table: pd.DataFrame, subspace_only: bool = False) -> pd.DataFrame:
    """Per group of regimes, how many windows contain each c (and how many pass T1).

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`windows_table`.
    subspace_only : bool
        Count subspace-only windows instead of exact-recovery windows.

    Returns
    -------
    pandas.DataFrame
        Columns ``group``, ``n`` (regimes), one column per grid c, ``T1`` and
        ``auto`` (regimes in which c_T1, or lam="auto", recovered every
        replicate).
    """
    col = "sub_window_values" if subspace_only else "window_values"
    t1 = "sub_t1_ok" if subspace_only else "t1_ok"
    auto = "sub_auto_ok" if subspace_only else "auto_ok"
    out = []
    for attr in ("", "q", "K", "p", "r", "gamma", "type"):
        values = [None] if not attr else sorted(table[attr].unique())
        for v in values:
            group = table if not attr else table[table[attr] == v]
            if not attr:
                label = "all"
            elif attr == "type":
                label = str(v)
            else:
                label = f"{attr}={v:g}"
            row: dict[str, Any] = {"group": label, "n": len(group)}
            for c in C_GRID:
                row[f"{c:g}"] = int(sum(c in w for w in group[col]))
            row["T1"] = int(group[t1].sum())
            row["auto"] = int(group[auto].sum())
            out.append(row)
    return pd.DataFrame(out)


def recommendation(table: pd.DataFrame) -> dict[str, Any]:
    """The c of the grid in the most working windows (ties: highest mean rate,
    then closest to ``DEFAULT_C_LAM``), and the same counts for the default.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`windows_table`.

    Returns
    -------
    dict
        ``best``, ``best_count``, ``tied`` (list), ``default``,
        ``default_count`` (None when the default is off the grid), ``n_regimes``,
        ``mean_rate`` (dict c -> mean over regimes of the success rate),
        ``uncovered`` (number of regimes with an empty window).
    """
    counts = {c: int(sum(c in w for w in table["window_values"])) for c in C_GRID}
    mean_rate = {c: float(table[f"rate_{c:g}"].mean()) for c in C_GRID}
    best_count = max(counts.values())
    tied = [c for c in C_GRID if counts[c] == best_count]
    best = max(tied, key=lambda c: (round(mean_rate[c], 12), -abs(c - DEFAULT_C_LAM)))
    default = float(DEFAULT_C_LAM)
    return {
        "best": best,
        "best_count": best_count,
        "tied": tied,
        "default": default,
        "default_count": counts.get(default),
        "n_regimes": len(table),
        "mean_rate": mean_rate,
        "counts": counts,
        "uncovered": int(sum(len(w) == 0 for w in table["window_values"])),
    }


def _markdown(table: pd.DataFrame) -> list[str]:
    """A DataFrame as markdown rows (no index)."""
    head = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "---|" * len(table.columns)
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.values]
    return [head, rule, *body]


def _rate(rate: float, n: int) -> str:
    if np.isnan(rate):
        return "."
    s = round(rate * n)
    return "1" if s == n else ("0" if s == 0 else f"{s}/{n}")


def summarize(
    frame: pd.DataFrame, configs: Sequence[dict], replicates: int, title: str
) -> str:
    """The markdown summary of the runs of one grid.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame (rows of this grid only).
    configs : sequence of dict
        The planned regimes.
    replicates : int
        Replicates per regime planned.
    title : str
        First heading.

    Returns
    -------
    str
        Markdown: the runs, the recommendation, lam="auto", the coverage
        tables, the intersections of the windows and the per-regime table (see
        the module docstring, "Output"); for a run of ``--methods auto``, the
        runs and lam="auto" only.
    """
    table = windows_table(frame, configs)
    if table.empty:
        return f"# {title}\n\nNo runs yet.\n"
    out = [f"# {title}", ""]
    out += _runs_section(frame, table, configs, replicates)
    if _auto_only(frame):
        out += _auto_section(frame, table)
        return "\n".join(out) + "\n"
    out += _recommendation_section(table)
    out += _auto_section(frame, table)
    out += _coverage_sections(table)
    out += _intersection_section(table)
    out += _regime_section(table)
    return "\n".join(out) + "\n"


def _runs_section(
    frame: pd.DataFrame, table: pd.DataFrame, configs: Sequence[dict], replicates: int
) -> list[str]:
    """What was run against what was planned, the solver settings and the
    definitions; a warning when the run is partial."""
    per = 1 if _auto_only(frame) else len(C_GRID) + 2
    planned = len(configs) * replicates * per
    done = len(frame)
    n_reg = len(table)
    seconds = float(frame["solve_seconds"].sum())
    what = "lam='auto'" if per == 1 else f"{len(C_GRID)} grid values of c + c_T1 + auto"
    out = [
        f"Runs: {done} of {planned} planned ({len(configs)} regimes x "
        f"({what}) x {replicates} replicates); "
        f"replicates per regime: {table['replicates'].min()}-"
        f"{table['replicates'].max()}; solver time {seconds:.0f} s (tol = {TOL:g}, "
        f"max_iter = {MAX_ITER}). Exact recovery = converged, ||P_A^ - P_A||_F <= "
        f"{SUBSPACE_TOL:g}, support = contaminated set, rank = r. Window = grid "
        "values of c = lam sqrt(K) with success rate 1."
    ]
    if done < planned:
        out += [
            "",
            "**Partial run**: windows are computed from the replicates done so far "
            "and can only shrink as more arrive; "
            f"{len(configs) - n_reg} regimes without any run yet are left out of "
            f"every count below ({n_reg} regimes summarized).",
        ]
    return out


def _auto_only(frame: pd.DataFrame) -> bool:
    """Whether the frame holds lam="auto" rows only (``--methods auto``)."""
    return bool((frame["c_kind"] == "auto").all())


def auto_summary(frame: pd.DataFrame, table: pd.DataFrame) -> dict[str, Any]:
    """lam="auto" against the grid: regimes recovered, per q, and its cost.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.
    table : pandas.DataFrame
        From :func:`windows_table`.

    Returns
    -------
    dict
        ``regimes``, ``recovered`` (regimes recovered on every replicate),
        ``per_q`` (q -> (recovered, regimes)), ``empty_recovered`` (regimes with
        an empty window that auto recovers), ``missed`` (labels of regimes with
        a nonempty window that auto misses), ``default_count`` and ``best``,
        ``best_count`` (the grid's, None without grid rows), ``solves``
        (median, max), ``time_ratio`` (median and 90th percentile of the
        selection's time over one solve at the chosen lam) and ``c_range``
        (5th and 95th percentiles of the chosen c).
    """
    rows = frame[frame["c_kind"] == "auto"]
    per_q = {int(q): (int(g["auto_ok"].sum()), len(g)) for q, g in table.groupby("q")}
    has_grid = not _auto_only(frame)
    empty = [len(w) == 0 for w in table["window_values"]]
    rec = recommendation(table) if has_grid else None
    ratio = (rows["solve_seconds"] / rows["reference_seconds"]).dropna()
    return {
        "regimes": len(table),
        "recovered": int(table["auto_ok"].sum()),
        "per_q": per_q,
        "empty_recovered": int(table.loc[empty, "auto_ok"].sum()) if has_grid else None,
        "missed": [
            row.label
            for row in table.itertuples()
            if has_grid and row.window_values and not row.auto_ok
        ],
        "default_count": rec["default_count"] if rec else None,
        "best": rec["best"] if rec else None,
        "best_count": rec["best_count"] if rec else None,
        "solves": (float(rows["n_solves"].median()), int(rows["n_solves"].max())),
        "time_ratio": (
            float(ratio.median()) if len(ratio) else np.nan,
            float(ratio.quantile(0.9)) if len(ratio) else np.nan,
        ),
        "c_range": (float(rows["c"].quantile(0.05)), float(rows["c"].quantile(0.95))),
    }


def _auto_section(frame: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """lam="auto": the regimes it recovers (per q), against the default and
    the best c, and its cost."""
    a = auto_summary(frame, table)
    per_q = ", ".join(f"q={q}: {k}/{n}" for q, (k, n) in a["per_q"].items())
    out = [
        "",
        "## lam='auto' (clair_stats.select_lam)",
        "",
        f"- Exact recovery on every replicate in **{a['recovered']} of "
        f"{a['regimes']}** regimes ({per_q}); mean success rate "
        f"{table['rate_auto'].mean():.3f}.",
    ]
    if a["best"] is not None:
        out.append(
            f"- Against the grid: the default c = {DEFAULT_C_LAM:g} covers "
            f"{a['default_count']}, the best single c = {a['best']:g} covers "
            f"{a['best_count']}; auto recovers {a['empty_recovered']} regimes with "
            f"an empty window and misses {len(a['missed'])} with a nonempty one"
            + (":" if a["missed"] else ".")
        )
        out += [f"  - {label}" for label in a["missed"]]
    out.append(
        f"- Chosen c = lam sqrt(K): 5-95% range {a['c_range'][0]:.2f}-"
        f"{a['c_range'][1]:.2f}. Cost: median {a['solves'][0]:g} solves (max "
        f"{a['solves'][1]}); time of the whole selection over one solve at the "
        f"chosen lam on the same instance: median {a['time_ratio'][0]:.1f}, 90th "
        f"percentile {a['time_ratio'][1]:.1f}."
    )
    return out


def _recommendation_section(table: pd.DataFrame) -> list[str]:
    """The recommended c, the default's and c_T1's coverage, the regimes no c (or
    not the recommended c) covers, and the ceiling c < sqrt(q K)."""
    rec = recommendation(table)
    out = ["", "## Recommendation", ""]
    out += _recommended_lines(rec)
    out.append(_t1_line(table))
    out += _uncovered_lines(table, rec)
    out.append(_ceiling_line(table))
    return out


def _recommended_lines(rec: dict[str, Any]) -> list[str]:
    """The recommended c and the current default, with their coverage."""
    best, tied, n_reg = rec["best"], rec["tied"], rec["n_regimes"]
    out = [
        f"- Recommended c_lam = **{best:g}**: in the working window of "
        f"{rec['best_count']} of {n_reg} regimes (mean success rate "
        f"{rec['mean_rate'][best]:.3f})."
        + (
            f" Tied on coverage: {', '.join(f'{c:g}' for c in tied)}."
            if len(tied) > 1
            else ""
        )
    ]
    default = rec["default"]
    if rec["default_count"] is not None:
        out.append(
            f"- Current DEFAULT_C_LAM = {default:g}: in {rec['default_count']} of "
            f"{n_reg} windows (mean success rate {rec['mean_rate'][default]:.3f})."
        )
    else:
        out.append(f"- Current DEFAULT_C_LAM = {default:g} is not on this grid.")
    return out


def _t1_line(table: pd.DataFrame) -> str:
    """How often the T1 value c_T1 = 3 / (7 sqrt(gamma)) recovers, in all and per
    gamma."""
    by_gamma = ", ".join(
        f"gamma={gm:g}: c_T1={t1_c_lam(gm):.3f}, "
        f"{int(table.loc[table['gamma'] == gm, 't1_ok'].sum())}/"
        f"{int((table['gamma'] == gm).sum())}"
        for gm in sorted(table["gamma"].unique())
    )
    return (
        f"- T1 theory value c_T1 = 3/(7 sqrt(gamma)) (run in every regime): success "
        f"rate 1 in {int(table['t1_ok'].sum())} of {len(table)} regimes (mean success "
        f"rate {table['rate_T1'].mean():.3f}); by gamma: {by_gamma}."
    )


def _uncovered_lines(table: pd.DataFrame, rec: dict[str, Any]) -> list[str]:
    """The regimes with an empty window, and those whose window misses the
    recommended c."""
    best = rec["best"]
    empty = table[[len(w) == 0 for w in table["window_values"]]]
    out = [
        f"- Regimes with an empty window (no c of the grid works): {len(empty)}"
        + (":" if len(empty) else ".")
    ]
    out += [f"  - {label}" for label in empty["label"]]
    if rec["best_count"] < len(table):
        missed = table[[bool(w) and best not in w for w in table["window_values"]]]
        out.append(
            f"- Regimes with a nonempty window that c = {best:g} misses: "
            f"{len(missed)}" + (":" if len(missed) else ".")
        )
        out += [f"  - {row.label}: window {row.window}" for row in missed.itertuples()]
    return out


def _ceiling_line(table: pd.DataFrame) -> str:
    """The regimes in which the grid reaches the ceiling c >= sqrt(q K)."""
    # a structural ceiling: ||S||_* <= sum_k ||S_k||_* <= sqrt(q) sum_k ||S_k||_F, so
    # for lam >= sqrt(q) (c >= sqrt(q K)) the pair (L, S) = (M, 0) is optimal in P0
    cut = sorted(
        {
            (int(q), int(K))
            for q, K in zip(table["q"], table["K"], strict=True)
            if max(C_GRID) >= math.sqrt(q * K)
        }
    )
    n_cut = int(
        sum(
            max(C_GRID) >= math.sqrt(q * K)
            for q, K in zip(table["q"], table["K"], strict=True)
        )
    )
    return (
        "- Ceiling: for c >= sqrt(q K) (lam >= sqrt(q)) the objective of P0 is at "
        "least ||M||_*, so (L, S) = (M, 0) is optimal (the only optimum for "
        "c > sqrt(q K)) and no contaminated client can be flagged; "
        f"this cuts the grid in {n_cut} regimes"
        + (
            " ("
            + "; ".join(f"q={q}, K={K}: c >= {math.sqrt(q * K):.3f}" for q, K in cut)
            + ")."
            if cut
            else "."
        )
    )


def _coverage_sections(table: pd.DataFrame) -> list[str]:
    """The coverage tables of exact and of subspace-only recovery."""
    out: list[str] = []
    for heading, sub in (
        ("Coverage: regimes whose window contains c", False),
        (
            "Coverage of subspace-only recovery (converged, ||P_A^ - P_A||_F <= "
            "1e-6; support and rank not required)",
            True,
        ),
    ):
        out += ["", f"## {heading}", ""]
        out += _markdown(coverage_table(table, subspace_only=sub))
    return out


def _intersection_section(table: pd.DataFrame) -> list[str]:
    """The intersection of the windows over all regimes, per q and per (q, K)."""
    out = ["", "## Intersection of the working windows", ""]
    every = [c for c in C_GRID if all(c in w for w in table["window_values"])]
    out.append(f"- all {len(table)} regimes: {intervals(every)}")
    for q in sorted(table["q"].unique()):
        group = table[table["q"] == q]
        inter = [c for c in C_GRID if all(c in w for w in group["window_values"])]
        n_empty = int(sum(len(w) == 0 for w in group["window_values"]))
        n_in = {c: int(sum(c in w for w in group["window_values"])) for c in C_GRID}
        best_q = max(C_GRID, key=lambda c, n_in=n_in: n_in[c])
        out.append(
            f"- q = {q} ({len(group)} regimes): intersection {intervals(inter)}; "
            f"empty windows {n_empty}; the c in most windows {best_q:g} "
            f"({n_in[best_q]}/{len(group)})"
        )
        for K in sorted(group["K"].unique()):
            sub = group[group["K"] == K]
            inter = [c for c in C_GRID if all(c in w for w in sub["window_values"])]
            out.append(f"  - K = {K} ({len(sub)}): {intervals(inter)}")
    return out


def _regime_section(table: pd.DataFrame) -> list[str]:
    """Per regime: the window and the success rate at every c and at c_T1."""
    out = ["", "## Per regime: window and success rate at each c", ""]
    out.append(
        "| regime | window | "
        + " | ".join(f"{c:g}" for c in C_GRID)
        + " | c_T1 | rate at c_T1 | rate at auto |"
    )
    out.append("|" + "---|" * (len(C_GRID) + 5))
    for row in table.to_dict("records"):
        n = int(row["replicates"])
        out.append(
            f"| {row['label']} | {row['window']} | "
            + " | ".join(_rate(row[f"rate_{c:g}"], n) for c in C_GRID)
            + f" | {row['c_T1']:.3f} | {_rate(row['rate_T1'], n)} | "
            f"{_rate(row['rate_auto'], n)} |"
        )
    out += [
        "",
        "Rates: 1 = every replicate recovered exactly, 0 = none, s/n otherwise, "
        ". = not run yet.",
    ]
    return out


# ------------------------------------------------------------------------ figures
def _figures(frame: pd.DataFrame, table: pd.DataFrame, folder: Path, note: str):
    """The three figures of the module docstring, one function each."""
    import matplotlib

    matplotlib.use("Agg")
    _coverage_figure(table, folder, note)
    _success_rate_figure(frame, table, folder, note)
    _windows_figure(table, folder, note)


def _colour_by_q(table: pd.DataFrame) -> dict[int, Any]:
    """One viridis colour per q of the regimes."""
    import matplotlib.pyplot as plt

    qs = sorted(table["q"].unique())
    return dict(
        zip(qs, plt.get_cmap("viridis")(np.linspace(0, 0.85, len(qs))), strict=True)
    )


def _coverage_figure(table: pd.DataFrame, folder: Path, note: str) -> None:
    """``coverage.png``: per q, the fraction of regimes whose window contains c
    (exact recovery left, subspace-only right)."""
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import save_figure

    colors = _colour_by_q(table)
    default = recommendation(table)["default"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, col, title in zip(
        axes,
        ("window_values", "sub_window_values"),
        ("exact recovery", "subspace-only recovery"),
        strict=True,
    ):
        for q, colour in colors.items():
            group = table[table["q"] == q]
            frac = [np.mean([c in w for w in group[col]]) for c in C_GRID]
            ax.plot(C_GRID, frac, "o-", color=colour, label=f"q = {q} ({len(group)})")
            auto = "auto_ok" if col == "window_values" else "sub_auto_ok"
            ax.axhline(float(group[auto].mean()), color=colour, ls="-.", lw=1.2)
        frac = [np.mean([c in w for w in table[col]]) for c in C_GRID]
        ax.plot(C_GRID, frac, "k--", lw=2, label=f"all ({len(table)})")
        ax.axvline(default, color="grey", ls=":", label=f"default c = {default:g}")
        ax.plot([], [], color="grey", ls="-.", label="lam='auto' (per q)")
        ax.set_title(title)
        ax.set_xlabel(r"c = $\lambda\sqrt{K}$ (unitless)")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of regimes whose window contains c")
    axes[1].legend(
        title="regimes", fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1)
    )
    save_figure(
        fig,
        folder / "coverage.png",
        "Fraction of regimes in which P0 with lam = c/sqrt(K) recovers exactly "
        "(left) or recovers the subspace (right) on every replicate, per q; "
        "dash-dot lines: the same fraction for lam='auto' (select_lam), one per "
        f"q in its colour; {note}.",
    )
    plt.close(fig)


def _success_rate_figure(
    frame: pd.DataFrame, table: pd.DataFrame, folder: Path, note: str
) -> None:
    """``success_rate.png``: the exact-recovery rate against c pooled per q, with
    Wilson bands."""
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import proportion_summary, save_figure

    colors = _colour_by_q(table)
    default = recommendation(table)["default"]
    data = frame[frame["c_kind"] == "grid"].assign(success=frame["success"].astype(int))
    fig, ax = plt.subplots(figsize=(7, 4))
    summary = proportion_summary(data, ["q", "c"], "success")
    for q, colour in colors.items():
        s = summary[summary["q"] == q]
        ax.plot(s["c"], s["rate"], "o-", color=colour, label=f"q = {q}")
        ax.fill_between(s["c"], s["lo"], s["hi"], color=colour, alpha=0.2)
    total = proportion_summary(data.assign(all=1), ["all", "c"], "success")
    ax.plot(total["c"], total["rate"], "k--", lw=2, label="all")
    ax.fill_between(total["c"], total["lo"], total["hi"], color="k", alpha=0.1)
    ax.axvline(default, color="grey", ls=":", label=f"default c = {default:g}")
    ax.set_xlabel(r"c = $\lambda\sqrt{K}$ (unitless)")
    ax.set_ylabel("exact-recovery rate (fraction of solves)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(
        fig,
        folder / "success_rate.png",
        "Exact-recovery rate of P0 pooled over the regimes and replicates of each "
        f"q, with 95% Wilson bands; {note}.",
    )
    plt.close(fig)


def _windows_figure(table: pd.DataFrame, folder: Path, note: str) -> None:
    """``windows.png``: the success rate of every regime (rows, grouped by q and
    K) at every c, at c_T1 and at lam="auto" (columns)."""
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import save_figure

    ordered = table.sort_values(["q", "K", "p", "r", "gamma", "type"], kind="stable")
    columns = ["rate_T1", "rate_auto"] + [f"rate_{c:g}" for c in C_GRID]
    rates = ordered[columns].to_numpy(float)
    height = min(12.0, 2.5 + 0.03 * len(ordered))
    fig, ax = plt.subplots(figsize=(9, height))
    image = ax.imshow(
        rates, aspect="auto", cmap="RdYlGn", vmin=0, vmax=1, interpolation="nearest"
    )
    ax.set_xticks(range(len(C_GRID) + 2), ["c_T1", "auto"] + [f"{c:g}" for c in C_GRID])
    ax.set_xlabel(r"c = $\lambda\sqrt{K}$ (unitless; c_T1 = 3/(7$\sqrt{\gamma}$))")
    groups = ordered.groupby(["q", "K"], sort=False).size()
    starts = np.concatenate([[0], np.cumsum(groups.to_numpy())])
    ax.set_yticks(
        (starts[:-1] + starts[1:] - 1) / 2,
        [f"q={q}, K={K}" for q, K in groups.index],
        fontsize=8,
    )
    for y in starts[1:-1]:
        ax.axhline(y - 0.5, color="k", lw=0.6)
    ax.axvline(1.5, color="k", lw=1.2)
    ax.set_ylabel("regimes (one row each)")
    fig.colorbar(image, ax=ax, label="exact-recovery rate")
    save_figure(
        fig,
        folder / "windows.png",
        "Exact-recovery rate over the replicates of every regime (row; within a "
        "group sorted by p, r, gamma, type) at every c (column), at the T1 value "
        "c_T1 and at lam='auto' (the first two columns); a regime's window is its "
        f"run of full-rate cells; {note}.",
    )
    plt.close(fig)


def report(frame: pd.DataFrame, folder: Path, args: argparse.Namespace) -> None:
    """Write ``summary.md``, ``windows.csv``, ``coverage.csv``, ``auto.csv`` (per
    regime: lam="auto"'s success rate, and whether it recovered every replicate,
    exactly and subspace-only) and the figures.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.
    folder : pathlib.Path
        Where the files go (created).
    args : argparse.Namespace
        The parsed command line (``quick`` names the grid).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study = build(args)
    mode = "quick" if args.quick else "full"
    text = summarize(
        frame,
        study.configs,
        study.replicates,
        title=f"Calibration of c_lam = lam sqrt(K) ({mode} grid)",
    )
    (folder / "summary.md").write_text(text)
    table = windows_table(frame, study.configs)
    if table.empty:
        return
    auto_columns = ["rate_auto", "auto_ok", "sub_auto_ok"]
    table[[*REGIME, "label", "replicates", *auto_columns]].to_csv(
        folder / "auto.csv", index=False
    )
    if _auto_only(frame):  # --methods auto: no grid to draw against
        return
    # windows.csv and coverage.csv keep the grid's columns; auto.csv has auto's
    table.drop(columns=["window_values", "sub_window_values", *auto_columns]).to_csv(
        folder / "windows.csv", index=False
    )
    coverage_table(table).drop(columns=["auto"]).to_csv(
        folder / "coverage.csv", index=False
    )
    note = (
        f"{mode} grid, {len(table)} noiseless regimes, "
        f"{int(table['replicates'].max())} replicates each"
    )
    _figures(frame, table, folder, note)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study (its missing replicates) and write the report.

    ``--methods auto`` without ``--results`` stores in ``<results>/auto_only``,
    apart from the full study's store (a store holds one version).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.methods == "auto" and args.results is None:
        argv += ["--results", str(results_dir() / "auto_only")]
    return study_main(build, report, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

r"""
Figure 1: subspace error against the number of clients K
========================================================

**Question.** How fast does the error of the estimated shared subspace,
||P_A^ - P_A||_F, fall with the number of clients K in different (p, q, n) regimes
when some clients are contaminated, and how does CLAIR compare with a plain SVD of
all clients and with an oracle that knows the benign set S? (The paper's Figure 1;
docs/claims.md §4 "Rates".) Since version 2 CLAIR's A^ is refitted on the clients
its test keeps (``final_subspace="kept"``, the default): is it then within 5% of the
oracle's error at K = 320, where the A^ of step 3 (read off L^) was 1.12-1.29x?

**Grid.** Regimes (p, q, r, n): (20, 1, 2, 100), (20, 2, 2, 80), (30, 3, 3, 120),
(30, 3, 3, 480), (50, 5, 3, 200), (50, 5, 3, 800) -- the two pairs at p = 30 and
p = 50 differ only in n (x 4). K in {10, 20, 40, 80, 160, 320}; gamma = 0.2
contaminated clients, of types ``random`` and ``subspace`` in turn (norm matched to
the benign clients; the ``subspace`` clients share one other r-dim subspace, the
contamination that biases a plain SVD); 30 replicates. ``--quick``: the regimes
(20, 1, 2, 100), (30, 3, 3, 120) and (30, 3, 3, 480), K in {10, 40, 160}, 4
replicates -- a subset of the full grid (same seeds, rows reused by a full run).

Measured cost (one process, one BLAS thread, on the shared 2-core machine under a
load of 5-8): quick, 36 replicates, 12 s of replicate time (25 s wall with start-up
and report); full, 1,080 replicates, 164 s of CPU time (10.5 min wall at 26% of a
core). Version 2 under a load of 10-14 (a training run beside it): full, 3,695 s
of replicate time (wall), 32 min wall with ``--jobs 2``. The largest point, p =
50, n = 800, K = 320, dominates: drawing and fitting 320 OLS problems of 800 x 50
per replicate.

**One replicate.** ``FederatedModel(p, q, r, K, contamination=0.2,
contamination_type=("random", "subspace")).sample_regression(n, sigma=1, seed)``:
each client fits OLS on n observations (regression generator, docs/model.md §2.3 (b); s
= 1). Three subspace estimates of rank r, each scored by ||P_A^ - P_A||_F and
||P_A^ - P_A||_op (:func:`clair_stats.evaluation.metrics.projection_distance`):

* ``clair``: ``clair(updates, rank=r, detect="test", sigma=local_sd)`` with every
  other option at its default: ``mode="auto"`` (= P1, mu = max_k sigma_k (sqrt(p) +
  sqrt(Kq))), lam = c_lam / sqrt(K) with c_lam = ``DEFAULT_C_LAM`` = 4, the
  proximal (block-coordinate descent) solver, Holm at alpha = 0.05,
  ``final_subspace="kept"``: A^ = ``result.subspace``, the top-r left singular
  vectors of the clients of S^ (refitted after the test);
* ``clair_detection``: the A^ of step 3 of the same fit
  (``result.detection_subspace``: top-r left singular vectors of L^), CLAIR's
  subspace before version 2 (``final_subspace="detection"``);
* ``svd``: top-r left singular vectors of M = [Theta^_1, ..., Theta^_K] (the
  subspace of :func:`clair_stats.evaluation.baselines.svd_refine`, no robustness);
* ``oracle``: top-r left singular vectors of [Theta^_k, k in S] (S known, the
  benign clients' own noisy estimates): the best a method that finds S exactly
  can do, not the true A.

The clair row also records the benign clients flagged by the test, the
contaminated clients missed, and whether the solver converged.

Versions: 1, CLAIR's A^ read off L^ (now the ``clair_detection`` row); 2, A^
refitted on S^ (``clair``), and the ``clair_detection`` row.

**Reading the figures.** ``subspace_error.png``: one panel per regime, log-log,
Monte Carlo mean of ||P_A^ - P_A||_F with its 95% t band, and two reference lines
from :mod:`clair_stats.theory.t4`: the first-order prediction of docs/claims.md §4.6,
sigma sqrt(p r / (n q K)) / s and the refined prediction
sqrt(2 (p - r) r sigma^2 / ((n - p - 1) m q s^2)), m = |S| (the OLS noise level,
p - r and the factor sqrt(2) of the projector distance). A slope of -1/2 is the
parametric rate; an estimate whose curve flattens has a bias that more clients do
not remove. ``error_ratio.png``: the same errors divided by the refined
prediction (1 = on the prediction). ``summary.md`` / ``summary.csv``: per regime
and method, the OLS slope of log error on log K with its 95% interval, the mean
error at the largest K and its ratio to the refined prediction and to the
oracle's error, and CLAIR's detection (benign clients flagged, contaminated
clients missed per replicate); ``ratio_to_oracle.md`` / ``.csv``: the ratio of
the mean errors, method / oracle, at every (regime, K).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clair_stats import ConvergenceWarning, FederatedModel, clair
from clair_stats.core.linalg import top_subspace
from clair_stats.evaluation.metrics import projection_distance
from clair_stats.experiments.study import Study, study_main, study_parser
from clair_stats.theory.t4 import refined_prediction, spec_prediction

#: Regression noise sigma and the scale s of the entries of B_k.
SIGMA, SIGNAL_SCALE = 1.0, 1.0
#: Contamination fraction and types (taken in turn by the contaminated clients).
GAMMA = 0.2
TYPES = ("random", "subspace")
#: Regimes (p, q, r, n).
FULL_REGIMES: tuple[tuple[int, int, int, int], ...] = (
    (20, 1, 2, 100),
    (20, 2, 2, 80),
    (30, 3, 3, 120),
    (30, 3, 3, 480),
    (50, 5, 3, 200),
    (50, 5, 3, 800),
)
QUICK_REGIMES = ((20, 1, 2, 100), (30, 3, 3, 120), (30, 3, 3, 480))
FULL_K = (10, 20, 40, 80, 160, 320)
QUICK_K = (10, 40, 160)
FULL_REPLICATES, QUICK_REPLICATES = 30, 4
#: Methods of the summary table, in the order of its rows and of the legends.
METHODS = ("clair", "svd", "oracle")
#: The rows of a replicate: the methods, and CLAIR's step-3 subspace (version 1's
#: clair row) after the clair row, for the figures and the ratio to the oracle.
ROWS = ("clair", "clair_detection", "svd", "oracle")
LABELS = {
    "clair": r"CLAIR ($\hat A$, $\hat S$ estimated)",
    "clair_detection": r"CLAIR's step-3 $\hat A$ (of $\hat L$; version 1)",
    "svd": "plain SVD of all clients",
    "oracle": "oracle: SVD of the benign\nclients (S known)",
}
REGIME = ("p", "q", "r", "n")


# ------------------------------------------------------------------ one replicate
def _top_left(updates: np.ndarray, rank: int) -> np.ndarray:
    """Top-r left singular vectors of the stacked [Theta_1, ..., Theta_K] (p x Kq)."""
    return top_subspace(updates, rank)


def run(config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One replicate: one regression instance, four subspace estimates.

    Parameters
    ----------
    config : dict
        ``p``, ``q``, ``r``, ``n``, ``K`` (ints) and ``gamma`` (float).
    seed : int
        Seed of the instance (all randomness).

    Returns
    -------
    list of dict
        One row per entry of :data:`ROWS`: ``method``, ``m`` (|S|),
        ``error`` (||P_A^ - P_A||_F), ``error_op`` (operator norm); the clair row
        adds ``benign_flagged``, ``missed`` and ``converged``.
    """
    p, q, r, n, K = (int(config[k]) for k in ("p", "q", "r", "n", "K"))
    model = FederatedModel(
        p=p,
        q=q,
        rank=r,
        n_clients=K,
        contamination=float(config["gamma"]),
        contamination_type=TYPES,
        signal_scale=SIGNAL_SCALE,
    )
    sample = model.sample_regression(n, sigma=SIGMA, seed=seed)
    truth, benign = sample.subspace, sample.benign
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded below
        result = clair(sample.updates, rank=r, detect="test", sigma=sample.local_sd)
    detection = result.detection_subspace
    estimates = {
        "clair": result.subspace,
        "clair_detection": result.subspace if detection is None else detection,
        "svd": _top_left(sample.updates, r),
        "oracle": _top_left(sample.updates[benign], r),
    }
    m = int(benign.sum())
    rows = []
    for method in ROWS:
        row: dict[str, Any] = {
            "method": method,
            "m": m,
            "error": projection_distance(estimates[method], truth),
            "error_op": projection_distance(estimates[method], truth, norm="op"),
        }
        if method == "clair":
            flagged = ~result.collaborative
            row["benign_flagged"] = int(np.sum(flagged & benign))
            row["missed"] = int(np.sum(~flagged & ~benign))
            row["converged"] = bool(result.decomposition.info.converged)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------- study
def parser() -> argparse.ArgumentParser:
    """The command line: the runner's options (see the module docstring)."""
    return study_parser(
        "Figure 1: ||P_A^ - P_A||_F against K for several (p, q, n) regimes, "
        "CLAIR vs plain SVD vs oracle (see the module docstring)."
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
    regimes = QUICK_REGIMES if args.quick else FULL_REGIMES
    ks = QUICK_K if args.quick else FULL_K
    configs = [
        {"p": p, "q": q, "r": r, "n": n, "K": K, "gamma": GAMMA}
        for p, q, r, n in regimes
        for K in ks
    ]
    return Study(
        name="fig1_subspace_error",
        run=run,
        configs=configs,
        replicates=QUICK_REPLICATES if args.quick else FULL_REPLICATES,
        version="2",
    )


# ------------------------------------------------------------------------ tables
def _label(regime: Sequence[int]) -> str:
    p, q, r, n = (int(v) for v in regime)
    return f"p={p}, q={q}, r={r}, n={n}"


def with_predictions(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with the two predictions and ``ratio`` = error / refined one.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    pandas.DataFrame
        A copy with columns ``spec``, ``refined`` and ``ratio``.
    """
    out = frame.copy()
    out["spec"] = [
        spec_prediction(p, q, r, n, K, sigma=SIGMA, signal_scale=SIGNAL_SCALE)
        for p, q, r, n, K in out[["p", "q", "r", "n", "K"]].itertuples(index=False)
    ]
    out["refined"] = [
        refined_prediction(p, q, r, n, m, sigma=SIGMA, signal_scale=SIGNAL_SCALE)
        for p, q, r, n, m in out[["p", "q", "r", "n", "m"]].itertuples(index=False)
    ]
    out["ratio"] = out["error"] / out["refined"]
    return out


def _slope(K: np.ndarray, error: np.ndarray) -> tuple[float, float, float]:
    """OLS slope of log error on log K with its 95% interval (NaN if < 3 K)."""
    import statsmodels.api as sm

    if len(np.unique(K)) < 3:
        return np.nan, np.nan, np.nan
    fit = sm.OLS(np.log(error), sm.add_constant(np.log(K))).fit()
    lo, hi = fit.conf_int(0.05)[1]
    return float(fit.params[1]), float(lo), float(hi)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per regime and method: slope in log K, error and ratio at the largest K.

    Parameters
    ----------
    frame : pandas.DataFrame
        :func:`with_predictions` of the study's frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``p, q, r, n, method, replicates, slope, slope_lo, slope_hi,
        K_max, error_at_K_max, ratio_at_K_max, benign_flagged, missed,
        not_converged`` (the last three for clair only: means per replicate at
        K_max, and the count over all K).
    """
    rows = []
    for regime, group in frame.groupby(list(REGIME), sort=True):
        k_max = int(group["K"].max())
        for method in METHODS:
            g = group[group["method"] == method]
            if g.empty:
                continue
            top = g[g["K"] == k_max]
            slope, lo, hi = _slope(g["K"].to_numpy(float), g["error"].to_numpy())
            row = dict(zip(REGIME, (int(v) for v in regime), strict=True))
            row.update(
                method=method,
                replicates=int(top["replicate"].nunique()),
                slope=slope,
                slope_lo=lo,
                slope_hi=hi,
                K_max=k_max,
                error_at_K_max=float(top["error"].mean()),
                ratio_at_K_max=float(top["ratio"].mean()),
            )
            if method == "clair":
                row["benign_flagged"] = float(top["benign_flagged"].mean())
                row["missed"] = float(top["missed"].mean())
                row["not_converged"] = int((~g["converged"].astype(bool)).sum())
            rows.append(row)
    return pd.DataFrame(rows)


def oracle_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """Per regime, K and method: the mean error over the oracle's, with a 95% interval.

    The ratio of means R = mean(X) / mean(Y) of the paired errors X (method) and
    Y (oracle, same replicates); its interval is R +- t SE with the delta-method
    SE = sd(X - R Y) / (sqrt(n) mean(Y)) (t with n - 1 degrees of freedom).

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``p, q, r, n, K, method, replicates, ratio, lo, hi`` (methods other
        than the oracle).
    """
    import scipy.stats

    keys = [*REGIME, "K", "replicate"]
    wide = frame.pivot_table(index=keys, columns="method", values="error")
    rows = []
    for (regime_k), group in wide.groupby(level=[*REGIME, "K"], sort=True):
        y = group["oracle"].to_numpy()
        n = y.size
        for method in ROWS:
            if method == "oracle":
                continue
            x = group[method].to_numpy()
            ratio = float(x.mean() / y.mean())
            if n > 1:
                se = float(np.std(x - ratio * y, ddof=1) / (np.sqrt(n) * y.mean()))
                half = float(scipy.stats.t.ppf(0.975, n - 1)) * se
            else:
                half = np.nan
            row = dict(zip([*REGIME, "K"], (int(v) for v in regime_k), strict=True))
            row.update(
                method=method,
                replicates=n,
                ratio=ratio,
                lo=ratio - half,
                hi=ratio + half,
            )
            rows.append(row)
    return pd.DataFrame(rows)


def _ratio_markdown(ratios: pd.DataFrame, note: str) -> str:
    lines = [
        "# Figure 1: subspace error relative to the oracle",
        "",
        f"{note}. Ratio of the mean errors ||P_A^ - P_A||_F, method / oracle (top-r "
        "SVD of the benign clients, S known), same replicates, with a 95% "
        "delta-method interval. clair: A^ refitted on S^ (version 2); "
        "clair_detection: the A^ of step 3, read off L^ (version 1's clair).",
        "",
    ]
    methods = [m for m in ROWS if m != "oracle"]
    ks = sorted(ratios["K"].unique())
    lines += [
        "| regime | method | " + " | ".join(f"K={k}" for k in ks) + " |",
        "|---|---|" + "---|" * len(ks),
    ]
    for regime, group in ratios.groupby(list(REGIME), sort=True):
        for method in methods:
            g = group[group["method"] == method].set_index("K")
            cells = [
                f"{g.loc[k, 'ratio']:.3f} [{g.loc[k, 'lo']:.3f}, {g.loc[k, 'hi']:.3f}]"
                if k in g.index
                else ""
                for k in ks
            ]
            lines.append(f"| {_label(regime)} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _markdown(table: pd.DataFrame, ratios: pd.DataFrame, note: str) -> str:
    lines = [
        "# Figure 1: subspace error against K",
        "",
        f"{note}. Slope: OLS of log ||P_A^ - P_A||_F on log K over all replicates "
        "(95% interval); the first-order rate is -1/2. Ratio: mean of error / "
        "refined prediction at the largest K; / oracle: mean error over the "
        "oracle's mean error at the largest K (clair_detection: the A^ of step "
        "3, version 1's clair). CLAIR detection: benign clients "
        "flagged and contaminated clients missed, mean per replicate at the "
        "largest K.",
        "",
        "| regime | method | slope [95% CI] | error at K_max | ratio | / oracle | "
        "benign flagged | missed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    k_max = ratios.groupby(list(REGIME))["K"].transform("max")
    to_oracle = ratios[ratios["K"] == k_max].set_index([*REGIME, "method"])["ratio"]
    rows = table.to_dict("records")
    for row in list(rows):
        if row["method"] == "clair":  # version 1's clair row after the clair row
            rows.insert(rows.index(row) + 1, {**row, "method": "clair_detection"})
    for row in rows:
        regime = tuple(int(row[k]) for k in REGIME)
        if row["method"] == "clair_detection":
            lines.append(
                f"| {_label(regime)} | clair_detection | | | | "
                f"{to_oracle[(*regime, 'clair_detection')]:.3f} | | |"
            )
            continue
        ratio = (
            1.0 if row["method"] == "oracle" else to_oracle[(*regime, row["method"])]
        )
        slope = (
            "n/a (< 3 K)"
            if np.isnan(row["slope"])
            else f"{row['slope']:.3f} [{row['slope_lo']:.3f}, {row['slope_hi']:.3f}]"
        )
        clair_row = row["method"] == "clair"
        lines.append(
            f"| {_label([row[k] for k in REGIME])} | {row['method']} | {slope} | "
            f"{row['error_at_K_max']:.4f} (K={row['K_max']}) | "
            f"{row['ratio_at_K_max']:.2f} | {ratio:.3f} | "
            + (f"{row['benign_flagged']:.2f}" if clair_row else "")
            + " | "
            + (f"{row['missed']:.2f}" if clair_row else "")
            + " |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------- figures
#: Colour and marker of each method in the figures.
_COLORS = {"clair": "C0", "clair_detection": "C1", "svd": "C3", "oracle": "C2"}
_MARKERS = {"clair": "o", "clair_detection": "v", "svd": "s", "oracle": "^"}


def _figures(frame: pd.DataFrame, folder: Path, note: str) -> None:
    """The two figures of the module docstring, one function each."""
    import matplotlib

    matplotlib.use("Agg")
    _subspace_error_figure(frame, folder, note)
    _error_ratio_figure(frame, folder, note)


def _subspace_error_figure(frame: pd.DataFrame, folder: Path, note: str) -> None:
    """``subspace_error.png``: ||P_A^ - P_A||_F against K per regime, with the two
    first-order predictions."""
    _regime_figure(
        frame,
        "error",
        folder / "subspace_error.png",
        r"$\|P_{\hat A} - P_A\|_F$ (unitless)",
        "Subspace error against the number of clients K (log-log), Monte Carlo "
        "mean with 95% t bands; dashed: the first-order prediction "
        "sigma sqrt(p r / (n q K)) / s, dotted: the refined prediction "
        "sqrt(2 (p - r) r sigma^2 / ((n - p - 1) m q s^2)); " + note + ".",
    )


def _error_ratio_figure(frame: pd.DataFrame, folder: Path, note: str) -> None:
    """``error_ratio.png``: the error over the refined prediction against K per
    regime."""
    _regime_figure(
        frame,
        "ratio",
        folder / "error_ratio.png",
        "error / refined prediction (unitless)",
        "Subspace error divided by the refined first-order prediction "
        "sqrt(2 (p - r) r sigma^2 / ((n - p - 1) m q s^2)) against K, Monte "
        "Carlo mean with 95% t bands (1: on the prediction); " + note + ".",
    )


def _regime_figure(
    frame: pd.DataFrame, value: str, path: Path, ylabel: str, caption: str
) -> None:
    """One panel per regime (three to a row) of ``value`` against K, one curve per
    method; the legend right of the top-right panel."""
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import save_figure

    regimes = sorted({tuple(int(v) for v in t) for t in frame[list(REGIME)].values})
    ncols = min(3, len(regimes))
    nrows = int(np.ceil(len(regimes) / ncols))
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(4.2 * ncols, 3.4 * nrows),
        squeeze=False,
        sharey=value == "ratio",
    )
    groups = dict(list(frame.groupby(list(REGIME), sort=True)))
    for ax, regime in zip(axes.flat, regimes, strict=False):
        _regime_panel(ax, groups[regime], value, regime)
    for ax in axes.flat[len(regimes) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes[0, -1].legend(  # outside, right of the top-right panel
        handles,
        labels,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=8,
    )
    save_figure(fig, path, caption)
    plt.close(fig)


def _regime_panel(
    ax: Any, sub: pd.DataFrame, value: str, regime: tuple[int, ...]
) -> None:
    """One regime: the Monte Carlo mean of ``value`` per method against K with its
    band, and the predictions (``value = "error"``) or the line 1 (``"ratio"``)."""
    from clair_stats.experiments.plotting import mc_summary

    for method in ROWS:
        s = mc_summary(sub[sub["method"] == method], "K", value)
        ax.plot(
            s["K"],
            s["mean"],
            marker=_MARKERS[method],
            color=_COLORS[method],
            label=LABELS[method],
            ms=4,
        )
        lo = np.where(np.isfinite(s["lo"]), s["lo"], s["mean"])
        hi = np.where(np.isfinite(s["hi"]), s["hi"], s["mean"])
        ax.fill_between(
            s["K"],
            np.maximum(lo, 1e-3 * s["mean"]),
            hi,
            color=_COLORS[method],
            alpha=0.2,
            lw=0,
        )
    if value == "error":
        pred = sub[sub["method"] == "oracle"].groupby("K")[["spec", "refined"]].mean()
        ax.plot(pred.index, pred["spec"], "k--", lw=1, label="first-order\nprediction")
        ax.plot(pred.index, pred["refined"], "k:", lw=1.5, label="refined prediction")
        ax.set_yscale("log")
    else:
        ax.axhline(1.0, color="k", ls=":", lw=1.5, label="refined = 1")
    ax.set_xscale("log")
    ax.set_title(_label(regime), fontsize=10)
    ax.set_xlabel("number of clients K")
    ax.grid(alpha=0.3, which="both")


def report(frame: pd.DataFrame, folder: Path, args: argparse.Namespace) -> None:
    """Write ``subspace_error.png``, ``error_ratio.png``, ``summary.md``,
    ``summary.csv``, ``ratio_to_oracle.md`` and ``ratio_to_oracle.csv`` into
    ``folder``.

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
    data = with_predictions(frame)
    reps = int(data["replicate"].nunique())
    note = (
        f"{'quick' if args.quick else 'full'} grid: regression generator, sigma = "
        f"s = 1, gamma = {GAMMA:g} contaminated ({' and '.join(TYPES)} in turn), "
        f"{reps} replicates per point"
    )
    table = summary_table(data)
    table.to_csv(folder / "summary.csv", index=False)
    ratios = oracle_ratios(data)
    (folder / "summary.md").write_text(_markdown(table, ratios, note))
    ratios.to_csv(folder / "ratio_to_oracle.csv", index=False)
    (folder / "ratio_to_oracle.md").write_text(_ratio_markdown(ratios, note))
    _figures(data, folder, note)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study (its missing replicates) and write the report."""
    return study_main(build, report, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

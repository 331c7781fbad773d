r"""
Robustness: benign-client error of every method under each contamination type
============================================================================

**Question.** How does the error that a *benign* client ends up with,
||Theta~_k - Theta_k||_F averaged over k in S, change as a fraction gamma of the K
clients is contaminated, for CLAIR, oracle CLAIR and every baseline of docs/pipeline.md
§6 (local, FedAvg, coordinate median, trimmed mean, geometric median, Krum, multi-Krum,
plain SVD + refinement), under each contamination type of docs/model.md §2
(:data:`clair_stats.CONTAMINATION_TYPES`)? And which type is the worst case of each
method?

**Scenario** (fixed; the demo's, ``clair demo``). p = 30, q = 5, r = 3, K = 40 clients;
benign Theta_k = A B_k^T with B_k iid N(0, 1) entries (no heterogeneity off span(A), no
centre); local estimates by OLS on n = 200 observations with noise sd sigma = 1
(docs/model.md §2.3 (b), :meth:`FederatedModel.sample_regression`), so the local error
is about sigma sqrt(p q / (n - p - 1)) = 0.94 per client, while a benign client lies
about sqrt(q r) = 3.9 from the benign mean inside span(A): the error of any method that
gives every client the same matrix. Contaminated clients: ``random``, ``orthogonal``,
``subspace``, ``in_subspace`` (norm matched to the benign clients), ``scaled`` (-3 times
a benign-like draw), ``sign_flip`` (-1 times), ``margin`` (in-subspace plus an
off-subspace part of norm delta = 1, about the local error). With no benign
heterogeneity off span(A), ``scaled`` and ``sign_flip`` clients lie in span(A) (delta_k
= 0), as ``in_subspace`` ones do: they cannot be detected, and they do not need to be,
since the refinement only averages the part of the updates off span(A).

**Methods** (one row each per replicate):

* ``local``, ``fedavg``, ``coordinate_median``, ``trimmed_mean`` (trim 0.2, the
  default), ``geometric_median``: :mod:`clair_stats.evaluation.baselines` with default
  options;
* ``krum``, ``multi_krum``: told the true number of contaminated clients f = |S^c|
  (an oracle advantage; multi-Krum averages the K - f best-scored clients);
* ``svd_refine``: plain SVD subspace of rank r + the CLAIR refinement, no
  robustness;
* ``clair``: :func:`clair_stats.clair` with every default, ``clair(updates)``:
  the noise level estimated, P1 with mu at the noise operator norm, the rank by
  the rule of docs/pipeline.md §3.2, the trimmed refit and distinct pooling of
  §3.6 and §3.4 (since version 3), and the empirical-null test (Holm, alpha =
  0.05);
* ``clair_test``: ``clair(updates, rank=r, sigma=local_sd)``: P1 and the iid
  chi-square test, sigma_k the per-entry sd each client estimates from its own
  residuals (``RegressionSample.local_sd``);
* ``clair_exact``: ``clair(updates, rank=r, noise_cov=..., noise_df=...)``: P1
  and the exact weighted chi-square ratio test of the fits' error covariance;
* ``clair_test_median``: ``clair(updates, rank=r, test="chi2")``: P1 with the
  noise level estimated and the iid chi-square test with the median rule;
* ``oracle_clair``: the refinement with the true A and S.

**Grid.** Full: every contamination type x gamma in {0, 0.05, ..., 0.45} (70
configurations), 20 replicates (1,400 replicates of 12 methods). Quick: every type
x gamma in {0, 0.2, 0.45}, 2 replicates (42 replicates; a subset of the full grid
with the same seeds). At gamma = 0 the types do not differ: the seven configurations
are seven independent sets of uncontaminated replicates.

**One replicate** (:func:`run`): one instance, every method on it, one row per
method with ``benign_error`` (mean over k in S of ||Theta~_k - Theta_k||_F),
``benign_mse`` (the mean of the squares, for the formulas of T4, docs/claims.md §4.5),
``relative_change`` ((benign_error - local's) / local's: -0.5 = error halved),
and for the CLAIR variants ``n_flagged``, ``precision``, ``recall`` and
``subspace_error`` ||P_A^ - P_A||_F.

**Cost** (measured on the shared 2-core machine, one BLAS thread; no cvxpy). At low
load a replicate took about 0.2 s, nearly all of it in the three CLAIR solves
(aggregators, Krum and the SVD take milliseconds), so the full grid is about 5
minutes of one core. The stored full run took 20 minutes (1,186 s of replicate
time, median 0.83 s per replicate) on a machine at load 6-8; the quick grid took
40 s there (12 s of CPU).

**Result** (full grid, version 4, worst case over the types; 1,400 replicates, 5
minutes on 2 processes; version 3 in brackets where it differed). Every aggregator's
benign error is 3.8-4.6, +302% to +386% against local, at every gamma including 0. Plain
SVD + refinement is below local up to gamma = 0.3 (-15%) and +89% at 0.45. Every CLAIR
call is -56% to -64% (-45% to -63%) at every gamma up to 0.45 (oracle CLAIR: -62% to
-66%): the default ``clair``, and since the trimmed refit (docs/pipeline.md §3.6) also
``clair_test``, ``clair_exact`` and ``clair_test_median``, told r = 3, which in version
2 kept the direction a ``subspace`` group shares in A^ and were local fitting from gamma
= 0.35 (+83% for ``clair_test_median`` at 0.45). The weakest point is the ``subspace``
group at gamma = 0.25 for the calls told the rank (-56% to -58%; -45% to -57% at
0.2-0.25 in version 3, against -64% for the oracle) and at 0.45 for the default (-56%),
where the group's direction is about as strong as the benign ones. (Version 1, before
the safe defaults: the default ``clair(updates, rank=r)`` was P0 with the support rule,
flagged every client and *was* local.)

**Figures.** ``error_by_type.png``: one panel per contamination type, the benign
error (log scale) against gamma, one line per method with 95% Monte Carlo bands
(t interval over replicates). ``worst_case.png``: per method and gamma, the largest
mean benign error over the types (left) and the relative change against local of
that worst type (right); the band is that type's interval. ``worst_case.md`` /
``worst_case.csv``: the worst case as a table, with the type that attains it.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clair_stats import CONTAMINATION_TYPES, FederatedModel, clair
from clair_stats.core.exceptions import AssumptionWarning, ConvergenceWarning
from clair_stats.evaluation import baselines
from clair_stats.evaluation.metrics import (
    client_errors,
    detection_scores,
    projection_distance,
)
from clair_stats.experiments.plotting import log_axis
from clair_stats.experiments.study import Study, grid, study_main, study_parser

#: The methods, in the order of the tables and legends.
METHODS: tuple[str, ...] = (
    "local",
    "fedavg",
    "coordinate_median",
    "trimmed_mean",
    "geometric_median",
    "krum",
    "multi_krum",
    "svd_refine",
    "clair",
    "clair_test",
    "clair_exact",
    "clair_test_median",
    "oracle_clair",
)
#: CLAIR variants (rows with detection and subspace metrics).
CLAIR_METHODS: tuple[str, ...] = (
    "clair",
    "clair_test",
    "clair_exact",
    "clair_test_median",
)
#: The fixed scenario (part of every configuration, so of every seed).
SCENARIO: dict[str, Any] = {"p": 30, "q": 5, "r": 3, "K": 40, "n": 200, "sigma": 1.0}
FULL_GAMMAS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(10))
QUICK_GAMMAS: tuple[float, ...] = (0.0, 0.2, 0.45)
FULL_REPLICATES, QUICK_REPLICATES = 20, 2


# ------------------------------------------------------------------ one replicate
def _estimates(
    sample: Any, r: int
) -> dict[str, tuple[np.ndarray, Any]]:  # name -> (estimates, ClairResult or None)
    """Every method's (K, p, q) estimates on one sample."""
    U = sample.updates
    f = int(np.count_nonzero(sample.contaminated))
    builders: dict[str, Callable[[], Any]] = {
        "local": lambda: baselines.local(U),
        "fedavg": lambda: baselines.fedavg(U),
        "coordinate_median": lambda: baselines.coordinate_median(U),
        "trimmed_mean": lambda: baselines.trimmed_mean(U),
        "geometric_median": lambda: baselines.geometric_median(U),
        "krum": lambda: baselines.krum(U, f),
        "multi_krum": lambda: baselines.multi_krum(U, f),
        "svd_refine": lambda: baselines.svd_refine(U, r),
        "clair": lambda: clair(U),
        "clair_test": lambda: clair(U, rank=r, sigma=sample.local_sd),
        "clair_exact": lambda: clair(
            U, rank=r, noise_cov=sample.noise_cov, noise_df=sample.noise_df
        ),
        "clair_test_median": lambda: clair(U, rank=r, test="chi2"),
        "oracle_clair": lambda: baselines.oracle_clair(
            U, sample.subspace, sample.benign
        ),
    }
    out = {}
    for name in METHODS:
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            value = builders[name]()
        seconds = time.perf_counter() - start
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        warned = any(issubclass(w.category, AssumptionWarning) for w in caught)
        if name in CLAIR_METHODS:
            out[name] = (value.refined, value, seconds, converged, warned)
        else:
            out[name] = (value, None, seconds, converged, warned)
    return out


def run(config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One replicate: one federation, every method, one row per method.

    Parameters
    ----------
    config : dict
        ``type`` (a contamination type), ``gamma`` (fraction in [0, 0.5)), and
        the scenario ``p``, ``q``, ``r``, ``K``, ``n`` (ints) and ``sigma``
        (float); ``K`` must exceed 2 |S^c| + 2 (Krum's condition).
    seed : int
        Seed of the instance (truth, designs and noise).

    Returns
    -------
    list of dict
        One row per method of :data:`METHODS`: ``method``, ``benign_error``
        (mean over k in S of ||Theta~_k - Theta_k||_F), ``benign_mse`` (mean over
        k in S of ||Theta~_k - Theta_k||_F^2), ``local_error`` (``benign_error``
        of local fitting), ``relative_change`` ((benign_error - local_error) /
        local_error), ``n_contaminated``, ``method_seconds``, ``converged``
        (False when the method warned of non-convergence), ``warned`` (it
        issued an AssumptionWarning), and for the CLAIR
        variants ``n_flagged``, ``precision``, ``recall`` and
        ``subspace_error`` (||P_A^ - P_A||_F); None for the other methods.
    """
    p, q, r, K, n = (int(config[k]) for k in ("p", "q", "r", "K", "n"))
    model = FederatedModel(
        p,
        q,
        r,
        K,
        contamination=float(config["gamma"]),
        contamination_type=config["type"],
    )
    f = model.n_contaminated
    if not K > 2 * f + 2:
        raise ValueError(
            f"K = {K} with {f} contaminated clients breaks Krum's condition "
            f"K > 2 f + 2; lower gamma or raise K"
        )
    sample = model.sample_regression(n=n, sigma=float(config["sigma"]), seed=seed)
    benign = sample.benign
    results = _estimates(sample, r)
    local_error = float(client_errors(results["local"][0], sample.truth)[benign].mean())
    rows = []
    for name in METHODS:
        estimates, fit, seconds, converged, warned = results[name]
        errors = client_errors(estimates, sample.truth)[benign]
        error = float(errors.mean())
        row: dict[str, Any] = {
            "method": name,
            "benign_error": error,
            "benign_mse": float(np.mean(errors**2)),
            "local_error": local_error,
            "relative_change": (error - local_error) / local_error,
            "n_contaminated": f,
            "method_seconds": seconds,
            "converged": converged,
            "warned": warned,
            "n_flagged": None,
            "precision": None,
            "recall": None,
            "subspace_error": None,
        }
        if fit is not None:
            scores = detection_scores(~fit.collaborative, sample.contaminated)
            row.update(
                n_flagged=scores.n_flagged,
                precision=scores.precision,
                recall=scores.recall,
                subspace_error=projection_distance(fit.subspace, sample.subspace),
            )
        rows.append(row)
    return rows


# ---------------------------------------------------------------------- the study
def parser() -> argparse.ArgumentParser:
    """The command line: the runner's options and ``--replicates``."""
    out = study_parser(
        "Benign-client error of CLAIR and every baseline under each contamination "
        "type and fraction (see the module docstring)."
    )
    out.add_argument(
        "--replicates",
        type=int,
        default=None,
        help=f"replicates per configuration (default {FULL_REPLICATES} full, "
        f"{QUICK_REPLICATES} quick)",
    )
    return out


def build(args: argparse.Namespace) -> Study:
    """The study: every contamination type x gamma, quick or full.

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`parser` (``quick``, ``replicates``).

    Returns
    -------
    Study
    """
    gammas = QUICK_GAMMAS if args.quick else FULL_GAMMAS
    replicates = getattr(args, "replicates", None)
    if replicates is None:
        replicates = QUICK_REPLICATES if args.quick else FULL_REPLICATES
    if replicates < 1:
        raise ValueError(f"--replicates must be >= 1, got {replicates}")
    configs = grid(
        **{k: [v] for k, v in SCENARIO.items()},
        type=CONTAMINATION_TYPES,
        gamma=gammas,
    )
    # 4: rerun after clair()'s copy groups became complete-linkage clusters with
    # medoid representatives (CLAIR's errors moved by up to 2%)
    return Study(
        name="robustness", run=run, configs=configs, replicates=replicates, version="4"
    )


# ------------------------------------------------------------------------ tables
def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Monte Carlo mean and 95% interval per (type, gamma, method).

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``type``, ``gamma``, ``method``, ``mean``, ``lo``, ``hi``, ``n``
        of ``benign_error`` and ``change``, ``change_lo``, ``change_hi`` of
        ``relative_change``.
    """
    from clair_stats.experiments.plotting import mc_summary

    keys = ["type", "gamma", "method"]
    err = mc_summary(frame, keys, "benign_error")[[*keys, "mean", "lo", "hi", "n"]]
    change = mc_summary(frame, keys, "relative_change")[[*keys, "mean", "lo", "hi"]]
    change = change.rename(
        columns={"mean": "change", "lo": "change_lo", "hi": "change_hi"}
    )
    return err.merge(change, on=keys)


def worst_case(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (method, gamma): the contamination type with the largest mean error.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``method``, ``gamma``, ``type`` (the worst), ``mean``, ``lo``,
        ``hi``, ``n`` (its benign error, interval and replicate count),
        ``change``, ``change_lo``, ``change_hi`` (its relative change against
        local).
    """
    table = summary_table(frame)
    idx = table.groupby(["method", "gamma"])["mean"].idxmax()
    out = table.loc[idx].reset_index(drop=True)
    order = {m: i for i, m in enumerate(METHODS)}
    out = out.sort_values(
        ["method", "gamma"], key=lambda s: s.map(order) if s.name == "method" else s
    )
    return out.reset_index(drop=True)


def _worst_markdown(worst: pd.DataFrame) -> str:
    """The worst case as a markdown table: methods x gamma, 'error (type, change)'."""
    gammas = sorted(worst["gamma"].unique())
    lines = [
        "| method | " + " | ".join(f"gamma={g:g}" for g in gammas) + " |",
        "|" + "---|" * (len(gammas) + 1),
    ]
    for method in [m for m in METHODS if m in set(worst["method"])]:
        cells = []
        for g in gammas:
            row = worst[(worst["method"] == method) & (worst["gamma"] == g)]
            if row.empty:
                cells.append(".")
                continue
            row = row.iloc[0]
            cells.append(f"{row['mean']:.3g} ({row['type']}, {row['change']:+.0%})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------ figures
def _style() -> dict[str, dict[str, Any]]:
    """Colour, marker and line style of every method (fixed across figures)."""
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
    out = {}
    for i, name in enumerate(METHODS):
        out[name] = {
            "color": colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20],
            "marker": "os^v<>DphxX*P"[i],
            "ls": "-" if name in (*CLAIR_METHODS, "oracle_clair", "local") else "--",
            "lw": 2.0 if name in (*CLAIR_METHODS, "oracle_clair") else 1.2,
            "alpha": 1.0,
        }
    # local is drawn wide and pale so that a method equal to it (clair on noisy
    # data flags every client) stays visible on top of it
    out["local"].update(color="k", lw=4.0, alpha=0.35)
    out["clair"].update(color="tab:red", ls="--")
    out["clair_test"].update(color="tab:blue")
    out["clair_exact"].update(color="tab:purple")
    out["clair_test_median"].update(color="tab:cyan")
    out["oracle_clair"].update(color="tab:green", ls=":")
    return out


def _lines(ax: Any, table: pd.DataFrame, value: str, lo: str, hi: str) -> None:
    style = _style()
    for name in METHODS:
        s = table[table["method"] == name].sort_values("gamma")
        if s.empty:
            continue
        st = style[name]
        ax.plot(
            s["gamma"],
            s[value],
            marker=st["marker"],
            ms=4,
            color=st["color"],
            ls=st["ls"],
            lw=st["lw"],
            alpha=st["alpha"],
            label=name,
        )
        ax.fill_between(s["gamma"], s[lo], s[hi], color=st["color"], alpha=0.15, lw=0)


def report(frame: pd.DataFrame, folder: Path, args: argparse.Namespace) -> None:
    """Write the figures, ``summary.csv``, ``worst_case.csv`` and ``worst_case.md``.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.
    folder : pathlib.Path
        Where the files go (created).
    args : argparse.Namespace
        The parsed command line (``quick`` names the grid).
    """
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = summary_table(frame)
    worst = worst_case(frame)
    table.to_csv(folder / "summary.csv", index=False)
    worst.to_csv(folder / "worst_case.csv", index=False)
    mode = "quick" if args.quick else "full"
    note = _note(frame, mode)
    (folder / "worst_case.md").write_text(_worst_case_page(worst, mode, note))
    _error_by_type_figure(table, folder, note)
    _worst_case_figure(worst, folder, note)


def _note(frame: pd.DataFrame, mode: str) -> str:
    """The grid, the scenario and the replicates, for captions and pages."""
    reps = int(frame.groupby(["type", "gamma"])["replicate"].nunique().min())
    sc = SCENARIO
    return (
        f"{mode} grid; p={sc['p']}, q={sc['q']}, r={sc['r']}, K={sc['K']}, OLS on "
        f"n={sc['n']} observations with sigma={sc['sigma']:g}; {reps} or more "
        "replicates per point"
    )


def _worst_case_page(worst: pd.DataFrame, mode: str, note: str) -> str:
    """``worst_case.md``: the worst case over types, per method and gamma."""
    return (
        f"# Worst case over contamination types ({mode} grid)\n\n"
        "Largest mean benign-client error ||Theta~_k - Theta_k||_F over the "
        "contamination types, per method and gamma; in brackets the type that "
        "attains it and the relative change of that error against local fitting.\n\n"
        + _worst_markdown(worst)
        + f"\n\n{note}.\n"
    )


def _error_by_type_figure(table: pd.DataFrame, folder: Path, note: str) -> None:
    """``error_by_type.png``: the benign error against gamma, one panel per
    contamination type (four to a row), the legend in a spare panel or below."""
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import save_figure

    types = [t for t in CONTAMINATION_TYPES if t in set(table["type"])]
    ncols = 4
    nrows = -(-len(types) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4 * ncols, 3.3 * nrows), sharex=True, sharey=True
    )
    axes = np.atleast_1d(axes).ravel()
    for ax, kind in zip(axes, types, strict=False):
        _lines(ax, table[table["type"] == kind], "mean", "lo", "hi")
        ax.set_title(kind)
        log_axis(ax)
        ax.grid(alpha=0.3, which="both")
    for ax in axes[len(types) :]:
        ax.axis("off")
    for ax in axes[: len(types)]:
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(r"benign error $\|\tilde\Theta_k - \Theta_k\|_F$" + "\n(log)")
        if (
            ax.get_subplotspec().is_last_row()
            or ax in axes[len(types) - ncols : len(types)]
        ):
            ax.set_xlabel(r"contamination fraction $\gamma$ (unitless)")
            ax.xaxis.set_tick_params(labelbottom=True)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(types) < len(axes):
        axes[-1].legend(handles, labels, loc="center", fontsize=9, title="method")
    else:
        fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8)
    save_figure(
        fig,
        folder / "error_by_type.png",
        "Mean over benign clients of ||Theta~_k - Theta_k||_F against the "
        "contamination fraction, one panel per contamination type, with 95% Monte "
        f"Carlo bands; {note}.",
    )
    plt.close(fig)


def _worst_case_figure(worst: pd.DataFrame, folder: Path, note: str) -> None:
    """``worst_case.png``: the worst-case benign error (left) and its change
    against local fitting (right) against gamma."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    from clair_stats.experiments.plotting import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    _lines(axes[0], worst, "mean", "lo", "hi")
    log_axis(axes[0])
    axes[0].set_ylabel(
        r"worst-case benign error $\|\tilde\Theta_k - \Theta_k\|_F$ (log)"
    )
    _lines(axes[1], worst, "change", "change_lo", "change_hi")
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[1].set_ylabel("relative change of the error against local (%)")
    for ax in axes:
        ax.set_xlabel(r"contamination fraction $\gamma$ (unitless)")
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(
        fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), title="method"
    )
    save_figure(
        fig,
        folder / "worst_case.png",
        "Worst case over the contamination types: per method and gamma the largest "
        "mean benign error (left) and its relative change against local fitting "
        "(right; -50% = error halved), with the 95% Monte Carlo band of the worst "
        f"type; {note}.",
    )
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study (its missing replicates) and write the report."""
    return study_main(build, report, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

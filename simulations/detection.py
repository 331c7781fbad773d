r"""
Detection: power, ROC and error rates of CLAIR's chi-square test
================================================================

**Question.** How reliably does ``clair(..., detect="test")`` (step 3, docs/pipeline.md
§3.3) flag contaminated clients as a function of the separation ratio rho = delta_min /
(sigma sqrt((p - r) q / n)) of Theorem T3 (docs/claims.md §4), does it keep its nominal
error rates -- the family-wise error rate (FWER) under Holm and the false discovery rate
(FDR) under Benjamini-Hochberg -- and from which sample size per client n / p is the
test calibrated? ``theory_checks/README.md`` records FWER 0.54 at n = 40, p = 20 at the
nominal 0.05 and attributes it to a poor chi-square law of T_k at n <= 2p. This study
maps the calibration over n / p rather than hiding it.

**Grid** (full mode). The regression generator (docs/model.md §2.3 (b)): K = 20 clients,
4 of them contaminated of type ``margin`` (in-subspace part plus an off-subspace part of
Frobenius norm exactly delta, so delta_min = delta), q = 2, r = 2, sigma = 1, OLS fits
on n samples per client. p in {10, 20, 40}, n / p in {1.5, 2, 4, 8, 16}, rho in {0, 0.5,
1, 1.5, 2, 2.5, 3, 4} (delta = rho sigma sqrt((p - r) q / n); rho = 0 puts the
contaminated clients inside span(A), where they are not identifiable): 120
configurations x 250 replicates = 30,000 replicates. Measured for an earlier grid of 100
replicates per configuration (one BLAS thread, shared 2-core machine at load 7-8): 3
minutes of CPU time (13 minutes of wall time under that load); the 250 replicates of
version 3 took about 20 minutes on 2 workers. ``--quick``: p = 20, n / p in {2, 8}, rho
in {0, 1, 2, 3}, 25 replicates (200 replicates; 5 s of CPU time, 13 s wall under load),
a subset of the full grid with the same seeds.

**One replicate.** ``FederatedModel(p, 2, 2, 20, contamination=4,
contamination_type="margin", margin=delta).sample_regression(n, sigma=1, seed)``,
then ``clair(updates, rank=2, alpha=0.05, noise_cov=sample.noise_cov,
noise_df=sample.noise_df)`` (the exact weighted chi-square law of the fits' energies;
P1, Holm). Rows: the exact test, the iid chi-square with sigma = ``local_sd`` (the
fits' own standard errors) and the empirical null, each with CLAIR's A^
(``subspace="estimated"``), and the exact and chi-square tests with the true A
(``subspace="true"``, :func:`clair_stats.chi_square_test`), which separate the cost
of estimating A from the law of the test itself. Each
row keeps the K raw p-values, their Holm and BH adjustments and the true S^c, so
that every alpha and threshold is evaluated afterwards from the same replicates.

**Reading the figures.**

* ``power.png``: per-client detection probability (Holm, alpha = 0.05, A^) against
  rho, one panel per p, one colour per n / p, Wilson 95% bands; dashed: the
  first-order power of :func:`clair_stats.theory.t3.predicted_power` with the
  leverage correction for A^. Bottom row: P(S^ = S), the exact recovery of the
  contaminated set.
* ``roc.png``: ROC curves of the raw p-values (threshold t: contaminated clients
  with p <= t against benign clients with p <= t, pooled over replicates), at
  p = 20, one panel per n / p, one curve per rho; the diagonal is chance.
* ``error_rates.png``: FWER of Holm and FDR of BH against alpha (A^), one panel per
  n / p, one colour per p, pooled over rho; the diagonal is the nominal level (BH
  controls the FDR at alpha m0 / m = 0.8 alpha, dotted).
* ``calibration.png``: FWER at alpha = 0.05 against n / p, A^ (solid) and the true A
  (dashed), with Wilson bands: where the curves meet 0.05 the test is calibrated.
* ``summary.md`` / ``summary.csv``: per (p, n / p, rho) the detection probability,
  P(S^ = S), FWER and FDR at alpha = 0.05 and the ROC area; the n / p from which the
  FWER is calibrated, per p.

**Full-grid results** (version 4: 250 replicates per point; FWER pooled over rho,
2,000 per (p, n / p) cell). Holm's FWER at the nominal 0.05 with CLAIR's A^: the
exact test 0.034-0.065, in the target [0.03, 0.07] in all 15 cells (0.036-0.053 with
the true A); the iid chi-square 0.76-0.83 at n / p = 1.5, 0.50-0.59 at 2, 0.15-0.19
at 4, 0.069-0.096 at 8 and 0.061-0.068 at 16 (worse with the true A: the law, not
A^); the empirical null 0.004-0.033 (conservative). Version 2, without the leverage
correction of the exact test's weights, gave 0.020-0.034 with A^ for n / p >= 2.
Power at rho = 2 (range over p), exact / iid chi-square / empirical: 0.04-0.21 /
0.47-0.86 / 0-0.06 at n / p = 1.5, 0.73-1.00 / 0.90-1.00 / 0.17-0.95 at 4,
0.96-1.00 / 0.98-1.00 / 0.26-0.99 at 8. About 13 minutes on 2 workers (1,449 s of
replicate time) on the shared machine.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clair_stats import ClairWarning, FederatedModel, chi_square_test, clair
from clair_stats.core.linalg import off_subspace_energy
from clair_stats.evaluation.metrics import projection_distance
from clair_stats.experiments.study import Study, study_main, study_parser
from clair_stats.pipeline.detection import empirical_energy_test
from clair_stats.pipeline.multitest import adjusted_p_values
from clair_stats.theory.t3 import margin_for_ratio, predicted_power

#: Fixed parts of the model: q, r, K, contaminated clients, noise sd, level.
Q, R, K, N_BAD, SIGMA, ALPHA = 2, 2, 20, 4, 1.0, 0.05
FULL_P = (10, 20, 40)
FULL_N_OVER_P = (1.5, 2.0, 4.0, 8.0, 16.0)
FULL_RATIOS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
QUICK_P = (20,)
QUICK_N_OVER_P = (2.0, 8.0)
QUICK_RATIOS = (0.0, 1.0, 2.0, 3.0)
#: 250 replicates x 8 ratios = 2000 per (p, n / p) cell of the calibration table:
#: a Wilson 95% interval of about +-0.01 around an FWER of 0.05.
FULL_REPLICATES, QUICK_REPLICATES = 250, 25
#: The tests of a replicate; MAIN is the one of the power, ROC and error-rate
#: figures (the test clair() runs on regression fits with noise_cov).
TESTS = ("exact", "chi2", "empirical")
MAIN = "exact"
#: The target band of the calibration table: Holm's FWER at a nominal 0.05.
TARGET = (0.03, 0.07)
#: The p of the ROC figure; the levels alpha of the error-rate curves.
ROC_P = 20
ALPHAS = np.round(np.linspace(0.01, 0.3, 30), 4)


# ------------------------------------------------------------------ one replicate
def n_samples(p: int, n_over_p: float) -> int:
    """n = round(n_over_p * p), the samples per client of a configuration."""
    return int(round(n_over_p * p))


def run(config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One replicate: one regression instance, three tests with A^ and two with A.

    Parameters
    ----------
    config : dict
        ``p`` (int), ``n_over_p`` (float, n = round(n_over_p p)) and ``ratio``
        (float, rho >= 0).
    seed : int
        Seed of the instance (all randomness).

    Returns
    -------
    list of dict
        Five rows, one per (``test``, ``subspace``): ``test`` in TESTS (``"exact"``:
        the weighted chi-square ratio law of ``noise_cov`` and ``noise_df``;
        ``"chi2"``: the iid chi-square with sigma = ``local_sd``; ``"empirical"``:
        the empirical null), ``subspace`` = ``"estimated"`` (CLAIR's A^, from
        ``clair(updates, rank=2, noise_cov=..., noise_df=...)``) or ``"true"``
        (A; exact and chi2 only). Each: ``n``, ``delta``, ``p_values``, ``holm``,
        ``bh`` (K values each: raw, Holm-adjusted and BH-adjusted p-values),
        ``contaminated`` (K bools), ``subspace_error`` (||P_A^ - P_A||_F; 0 for
        the true A), ``converged`` (of step 1), and at alpha = 0.05: ``power``
        (fraction of S^c flagged by Holm), ``exact`` (Holm's S^ = S),
        ``fwer_event`` (a benign client flagged by Holm), ``fdp`` (false
        discovery proportion of BH).
    """
    p, ratio = int(config["p"]), float(config["ratio"])
    n = n_samples(p, float(config["n_over_p"]))
    delta = margin_for_ratio(ratio, SIGMA, p, Q, R, n)
    model = FederatedModel(
        p, Q, R, K, contamination=N_BAD, contamination_type="margin", margin=delta
    )
    sample = model.sample_regression(n, sigma=SIGMA, seed=seed)
    updates, bad = np.asarray(sample.updates), np.asarray(sample.contaminated)
    cov, nu = sample.noise_cov, sample.noise_df
    with warnings.catch_warnings():
        # convergence is recorded below; the study measures the tests, whatever
        # the guards of clair() would say about an instance
        warnings.simplefilter("ignore", ClairWarning)
        result = clair(updates, rank=R, alpha=ALPHA, noise_cov=cov, noise_df=nu)
    A_hat, A = result.subspace, sample.subspace
    energy = off_subspace_energy(updates, A_hat)
    p_values = {
        ("exact", "estimated"): result.p_values,
        ("chi2", "estimated"): chi_square_test(
            updates, A_hat, sigma=sample.local_sd
        ).p_values,
        ("empirical", "estimated"): empirical_energy_test(energy).p_values,
        ("exact", "true"): chi_square_test(
            updates, A, noise_cov=cov, noise_df=nu
        ).p_values,
        ("chi2", "true"): chi_square_test(updates, A, sigma=sample.local_sd).p_values,
    }
    rows = []
    for (test, name), raw in p_values.items():
        holm = adjusted_p_values(raw, "holm")
        bh = adjusted_p_values(raw, "fdr_bh")
        flagged, flagged_bh = holm <= ALPHA, bh <= ALPHA
        rows.append(
            {
                "test": test,
                "subspace": name,
                "n": n,
                "delta": delta,
                "p_values": np.asarray(raw).tolist(),
                "holm": holm.tolist(),
                "bh": bh.tolist(),
                "contaminated": bad.tolist(),
                "subspace_error": projection_distance(
                    A_hat if name == "estimated" else A, A
                ),
                "converged": bool(result.decomposition.info.converged),
                "power": float(np.mean(flagged[bad])),
                "exact": bool(np.array_equal(flagged, bad)),
                "fwer_event": bool(np.any(flagged & ~bad)),
                "fdp": float(np.sum(flagged_bh & ~bad) / max(1, np.sum(flagged_bh))),
            }
        )
    return rows


# ------------------------------------------------------------------------- study
def parser() -> argparse.ArgumentParser:
    """The command line: the runner's options (see the module docstring)."""
    return study_parser(
        "Power, ROC, FWER and FDR of CLAIR's tests against the separation "
        "ratio of T3 (see the module docstring)."
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
    ps = QUICK_P if args.quick else FULL_P
    ratios = QUICK_RATIOS if args.quick else FULL_RATIOS
    n_over_p = QUICK_N_OVER_P if args.quick else FULL_N_OVER_P
    configs = [
        {"p": int(p), "n_over_p": float(m), "ratio": float(rho)}
        for p in ps
        for m in n_over_p
        for rho in ratios
    ]
    return Study(
        name="detection",
        run=run,
        configs=configs,
        replicates=QUICK_REPLICATES if args.quick else FULL_REPLICATES,
        # 4: rerun with today's code; four stored replicates of version 3 were run
        # again, and two differed (p-values from the 8th digit, an exact flag)
        version="4",
    )


# ------------------------------------------------------------------------ tables
def _arrays(rows: pd.DataFrame, column: str) -> np.ndarray:
    """A list column of the frame as an (R, K) array."""
    return np.array(rows[column].tolist(), dtype=float)


def client_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per contaminated client: was it flagged by Holm at alpha = 0.05?

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``p``, ``n_over_p``, ``ratio``, ``test``, ``subspace``,
        ``flagged``.
    """
    out = []
    keys = ["p", "n_over_p", "ratio", "test", "subspace"]
    for key, rows in frame.groupby(keys, sort=True):
        holm, bad = _arrays(rows, "holm"), _arrays(rows, "contaminated").astype(bool)
        flagged = holm[bad] <= ALPHA
        out.append(
            pd.DataFrame({**dict(zip(keys, key, strict=True)), "flagged": flagged})
        )
    return pd.concat(out, ignore_index=True)


def roc_curve(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, float]:
    """ROC of the raw p-values pooled over replicates, and its area.

    Parameters
    ----------
    rows : pandas.DataFrame
        Rows of one configuration and subspace.

    Returns
    -------
    fpr, tpr : numpy.ndarray
        Fractions of benign and of contaminated clients with p <= t, for t over
        every observed p-value (and 0).
    auc : float
        P(p of a contaminated client < p of a benign one) + 1/2 P(tie): the area
        under the curve (Mann-Whitney).
    """
    p, bad = _arrays(rows, "p_values"), _arrays(rows, "contaminated").astype(bool)
    pos, neg = np.sort(p[bad]), np.sort(p[~bad])
    thresholds = np.concatenate([[0.0], np.unique(np.concatenate([pos, neg]))])
    tpr = np.searchsorted(pos, thresholds, side="right") / pos.size
    fpr = np.searchsorted(neg, thresholds, side="right") / neg.size
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    auc = float(np.mean((neg.size - below - ties + 0.5 * ties) / neg.size))
    return fpr, tpr, auc


def error_rates(rows: pd.DataFrame, alphas: np.ndarray) -> pd.DataFrame:
    """FWER of Holm and FDR of BH at each alpha, from the stored adjustments.

    Parameters
    ----------
    rows : pandas.DataFrame
        Replicate rows (one subspace).
    alphas : numpy.ndarray
        Levels.

    Returns
    -------
    pandas.DataFrame
        Columns ``alpha``, ``fwer`` (P(some benign client flagged by Holm)),
        ``fwer_lo``, ``fwer_hi`` (Wilson 95%), ``fdr`` (mean false discovery
        proportion of BH), ``fdr_lo``, ``fdr_hi`` (mean -+ 1.96 SE), ``n``.
    """
    from clair_stats.experiments.plotting import wilson_interval

    holm, bh = _arrays(rows, "holm"), _arrays(rows, "bh")
    benign = ~_arrays(rows, "contaminated").astype(bool)
    # Holm flags a benign client at alpha iff the smallest benign adjusted p <= alpha
    smallest = np.where(benign, holm, np.inf).min(axis=1)
    events = smallest[:, None] <= alphas[None, :]
    rejected = bh[:, :, None] <= alphas[None, None, :]
    false = np.sum(rejected & benign[:, :, None], axis=1)
    fdp = false / np.maximum(1, np.sum(rejected, axis=1))
    n = holm.shape[0]
    hits = events.sum(axis=0)
    lo, hi = wilson_interval(hits, n)
    fdr, se = fdp.mean(axis=0), fdp.std(axis=0, ddof=1) / np.sqrt(n)
    return pd.DataFrame(
        {
            "alpha": alphas,
            "fwer": hits / n,
            "fwer_lo": lo,
            "fwer_hi": hi,
            "fdr": fdr,
            "fdr_lo": fdr - 1.96 * se,
            "fdr_hi": fdr + 1.96 * se,
            "n": n,
        }
    )


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (p, n / p, rho), CLAIR's A^: the rates of each test at alpha = 0.05.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``p``, ``n_over_p``, ``n``, ``ratio``, ``replicates``,
        ``predicted`` (leverage-corrected first-order power of the chi-square
        test), then per test t in TESTS ``power_t`` (per client), ``fwer_t``,
        and for the main test ``exact_S`` (P(S^ = S)), ``fdr`` and ``auc``.
    """
    out = []
    for (p, m, rho), rows in frame.groupby(["p", "n_over_p", "ratio"], sort=True):
        est = rows[rows["subspace"] == "estimated"]
        main = est[est["test"] == MAIN]
        n = int(main["n"].iloc[0])
        row = {
            "p": int(p),
            "n_over_p": float(m),
            "n": n,
            "ratio": float(rho),
            "replicates": len(main),
            "predicted": predicted_power(
                float(rho), int(p), Q, R, n, K, ALPHA, leverage=True
            ),
        }
        for test in TESTS:
            these = est[est["test"] == test]
            row[f"power_{test}"] = float(these["power"].mean())
            row[f"fwer_{test}"] = float(these["fwer_event"].mean())
        row["exact_S"] = float(main["exact"].mean())
        row["fdr"] = float(main["fdp"].mean())
        row["auc"] = roc_curve(main)[2] if rho > 0 else np.nan
        out.append(row)
    return pd.DataFrame(out)


def calibration_table(frame: pd.DataFrame) -> pd.DataFrame:
    """FWER at alpha = 0.05 per (p, n / p, subspace), pooled over rho, Wilson 95%.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``p``, ``n_over_p``, ``n`` (samples per client), ``test``,
        ``subspace``, ``successes``, ``replicates``, ``fwer``, ``lo``, ``hi``
        (Wilson 95%), ``calibrated`` (the Wilson interval reaches down to 0.05
        or below) and ``in_target`` (the FWER lies in TARGET = [0.03, 0.07]).
    """
    from clair_stats.experiments.plotting import proportion_summary

    keys = ["p", "n_over_p", "test", "subspace"]
    table = proportion_summary(frame, keys, "fwer_event")
    table = table.rename(columns={"n": "replicates", "rate": "fwer"})
    sizes = table[["p", "n_over_p"]].itertuples(index=False)
    table.insert(2, "n", [n_samples(int(p), m) for p, m in sizes])
    table["calibrated"] = table["lo"] <= ALPHA
    table["in_target"] = (table["fwer"] >= TARGET[0]) & (table["fwer"] <= TARGET[1])
    return table


def calibrated_from(table: pd.DataFrame) -> dict[tuple[int, str, str], float]:
    """Per (p, test, subspace): the smallest n / p from which every larger n / p
    of the grid is calibrated (NaN if the largest is not)."""
    out = {}
    for (p, test, sub), rows in table.groupby(["p", "test", "subspace"], sort=True):
        rows = rows.sort_values("n_over_p")
        ok = rows["calibrated"].to_numpy(bool)
        start = np.nan
        for i in range(len(ok) - 1, -1, -1):
            if not ok[i]:
                break
            start = float(rows["n_over_p"].iloc[i])
        out[(int(p), str(test), str(sub))] = start
    return out


def _markdown(table: pd.DataFrame) -> list[str]:
    """A pandas table as markdown lines (floats to 3 significant digits)."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float | np.floating):
                cells.append("-" if np.isnan(v) else f"{v:.3g}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ----------------------------------------------------------------------- figures
def _figures(frame: pd.DataFrame, folder: Path, note: str) -> None:
    """The four figures of the module docstring, one function each."""
    import matplotlib

    matplotlib.use("Agg")
    _power_figure(frame, folder, note)
    _roc_figure(frame, folder, note)
    _error_rate_figure(frame, folder, note)
    _calibration_figure(frame, folder, note)


def _estimated(frame: pd.DataFrame, test: str = MAIN) -> pd.DataFrame:
    """The rows of ``test`` with CLAIR's A^."""
    return frame[(frame["subspace"] == "estimated") & (frame["test"] == test)]


def _colour_by_n_over_p(n_over_p: list[float]) -> dict[float, Any]:
    """One viridis colour per n / p (the power figure)."""
    import matplotlib.pyplot as plt

    return {
        m: plt.cm.viridis(i / max(1, len(n_over_p) - 1) * 0.9)
        for i, m in enumerate(n_over_p)
    }


def _colour_by_p(ps: list[int]) -> dict[int, Any]:
    """One tab10 colour per p (the error-rate and calibration figures)."""
    import matplotlib.pyplot as plt

    return {p: plt.cm.tab10(i) for i, p in enumerate(ps)}


def _power_figure(frame: pd.DataFrame, folder: Path, note: str) -> None:
    """``power.png``: detection probability (top) and P(S^ = S) (bottom) against
    rho, one column per p."""
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import save_figure

    ps = sorted(frame["p"].unique())
    ratios = sorted(frame["ratio"].unique())
    clients = client_rows(frame)
    clients = _estimated(clients)
    fig, axes = plt.subplots(
        2,
        len(ps),
        figsize=(3.6 * len(ps) + 0.6, 6.4),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    grid = np.linspace(0, max(ratios), 100)
    for j, p in enumerate(ps):
        _power_column(axes[:, j], frame, clients, p, grid)
    axes[0, 0].plot(
        [], [], "k--", lw=1, label="predicted (T3, leverage-\ncorrected), same colour"
    )
    axes[0, 0].set_ylabel("P(contaminated client flagged)")
    axes[1, 0].set_ylabel("P(S^ = S)")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    for ax in axes.flat:
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    save_figure(
        fig,
        folder / "power.png",
        "Top: per-client detection probability of CLAIR's exact test (weighted "
        "chi-square ratio law of noise_cov and noise_df; Holm, alpha = 0.05, "
        "estimated A^) against the "
        "separation ratio rho = delta_min / (sigma sqrt((p - r) q / n)), Wilson 95% "
        "bands; dashed: the first-order power of theory.t3.predicted_power with "
        "the leverage correction (of the iid chi-square test). Bottom: "
        "P(S^ = S) (every contaminated client "
        f"flagged, no benign one). K = {K}, {N_BAD} margin clients, q = {Q}, "
        f"r = {R}; {note}.",
    )
    plt.close(fig)


def _power_column(
    axes: np.ndarray,
    frame: pd.DataFrame,
    clients: pd.DataFrame,
    p: int,
    grid: np.ndarray,
) -> None:
    """One p of ``power.png``: per n / p, the measured detection probability and
    its prediction (``axes[0]``) and P(S^ = S) (``axes[1]``)."""
    from clair_stats.experiments.plotting import proportion_summary

    n_over_p = sorted(frame["n_over_p"].unique())
    colour = _colour_by_n_over_p(n_over_p)
    est = _estimated(frame)
    power = proportion_summary(
        clients[clients["p"] == p], ["n_over_p", "ratio"], "flagged"
    )
    exact = proportion_summary(est[est["p"] == p], ["n_over_p", "ratio"], "exact")
    for m in n_over_p:
        n = n_samples(int(p), m)
        for ax, table in ((axes[0], power), (axes[1], exact)):
            t = table[table["n_over_p"] == m]
            ax.plot(
                t["ratio"],
                t["rate"],
                "o-",
                ms=3,
                color=colour[m],
                label=f"n/p = {m:g} (n = {n})",
            )
            ax.fill_between(
                t["ratio"], t["lo"], t["hi"], color=colour[m], alpha=0.2, lw=0
            )
        axes[0].plot(
            grid,
            [
                predicted_power(g, int(p), Q, R, n, K, ALPHA, leverage=True)
                for g in grid
            ],
            "--",
            color=colour[m],
            lw=1,
        )
    axes[0].set_title(f"p = {p}", fontsize=10)
    axes[1].set_xlabel("separation ratio rho (unitless)")


def _roc_figure(frame: pd.DataFrame, folder: Path, note: str) -> None:
    """``roc.png``: ROC curves at p = ROC_P, one panel per n / p, one curve per
    rho > 0."""
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import save_figure

    ps = sorted(frame["p"].unique())
    n_over_p = sorted(frame["n_over_p"].unique())
    shown = [rho for rho in sorted(frame["ratio"].unique()) if rho > 0]
    est = _estimated(frame)
    roc_p = ROC_P if ROC_P in ps else ps[0]
    fig, axes = plt.subplots(
        1,
        len(n_over_p),
        figsize=(2.9 * len(n_over_p) + 0.6, 3.4),
        squeeze=False,
        sharey=True,
    )
    shade = {
        rho: plt.cm.plasma(i / max(1, len(shown) - 1) * 0.85)
        for i, rho in enumerate(shown)
    }
    for j, m in enumerate(n_over_p):
        ax = axes[0, j]
        for rho in shown:
            rows = est[
                (est["p"] == roc_p) & (est["n_over_p"] == m) & (est["ratio"] == rho)
            ]
            fpr, tpr, auc = roc_curve(rows)
            ax.step(
                fpr,
                tpr,
                where="post",
                color=shade[rho],
                lw=1.2,
                label=f"rho = {rho:g} (AUC {auc:.2f})",
            )
        ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=1, label="chance")
        ax.set_title(
            f"p = {roc_p}, n/p = {m:g} (n = {n_samples(roc_p, m)})", fontsize=9
        )
        ax.set_xlabel("false-positive rate\n(benign clients with p <= t)")
        ax.legend(fontsize=6, loc="lower right")
    axes[0, 0].set_ylabel("true-positive rate\n(contaminated with p <= t)")
    save_figure(
        fig,
        folder / "roc.png",
        "ROC of the raw p-values of CLAIR's exact test (estimated A^), the "
        "threshold t running over [0, 1], pooled over replicates and clients; one "
        "curve per separation ratio rho, AUC in the legend; dotted: chance. "
        f"{note}.",
    )
    plt.close(fig)


def _error_rate_figure(frame: pd.DataFrame, folder: Path, note: str) -> None:
    """``error_rates.png``: FWER of Holm and FDR of BH against alpha, one panel per
    n / p, pooled over rho."""
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import save_figure

    n_over_p = sorted(frame["n_over_p"].unique())
    fig, axes = plt.subplots(
        1,
        len(n_over_p),
        figsize=(2.9 * len(n_over_p) + 0.6, 3.4),
        squeeze=False,
        sharey=True,
    )
    top = 0.0
    for j, m in enumerate(n_over_p):
        top = max(top, _error_rate_panel(axes[0, j], frame, m))
    axes[0, 0].set_ylabel("error rate (probability)")
    axes[0, 0].set_ylim(0, min(1.0, max(0.35, top * 1.05)))
    axes[0, -1].legend(fontsize=6, loc="upper left")
    save_figure(
        fig,
        folder / "error_rates.png",
        "Family-wise error rate of Holm (solid, Wilson 95% bands) and false "
        "discovery rate of BH (dashed, mean -+ 1.96 SE) of CLAIR's exact test "
        "(estimated A^) against the level alpha, pooled over the separation ratios; "
        "solid black: the diagonal (nominal), dotted: BH's bound alpha m0 / m. "
        f"{note}.",
    )
    plt.close(fig)


def _error_rate_panel(ax: Any, frame: pd.DataFrame, m: float) -> float:
    """One n / p of ``error_rates.png``: FWER and FDR curves per p and the nominal
    lines; returns the highest upper FWER band drawn (for the y range)."""
    ps = sorted(frame["p"].unique())
    pal = _colour_by_p(ps)
    est = _estimated(frame)
    top = 0.0
    for p in ps:
        rates = error_rates(est[(est["p"] == p) & (est["n_over_p"] == m)], ALPHAS)
        top = max(top, float(rates["fwer_hi"].max()))
        ax.plot(
            rates["alpha"],
            rates["fwer"],
            color=pal[p],
            lw=1.4,
            label=f"FWER, Holm, p = {p}",
        )
        ax.fill_between(
            rates["alpha"],
            rates["fwer_lo"],
            rates["fwer_hi"],
            color=pal[p],
            alpha=0.2,
            lw=0,
        )
        ax.plot(
            rates["alpha"],
            rates["fdr"],
            color=pal[p],
            lw=1.2,
            ls="--",
            label=f"FDR, BH, p = {p}",
        )
        ax.fill_between(
            rates["alpha"],
            rates["fdr_lo"],
            rates["fdr_hi"],
            color=pal[p],
            alpha=0.12,
            lw=0,
        )
    ax.plot(ALPHAS, ALPHAS, color="black", lw=1, label="nominal (diagonal)")
    ax.plot(
        ALPHAS,
        ALPHAS * (K - N_BAD) / K,
        color="black",
        ls=":",
        lw=1,
        label="BH bound alpha m0/m",
    )
    ax.set_title(f"n/p = {m:g}", fontsize=10)
    ax.set_xlabel("level alpha")
    ax.grid(alpha=0.3)
    return top


_TEST_TITLES = {
    "exact": "exact: weighted chi^2 ratio (noise_cov, noise_df)",
    "chi2": "iid chi^2, sigma = local_sd (before)",
    "empirical": "empirical null (no noise level)",
}


def _calibration_figure(frame: pd.DataFrame, folder: Path, note: str) -> None:
    """``calibration.png``: FWER at alpha = 0.05 against n / p, one panel per
    test, with A^ and (exact, chi2) the true A."""
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import save_figure

    ps = sorted(frame["p"].unique())
    n_over_p = sorted(frame["n_over_p"].unique())
    pal = _colour_by_p(ps)
    table = calibration_table(frame)
    fig, axes = plt.subplots(
        1, len(TESTS), figsize=(4.2 * len(TESTS) + 0.6, 3.9), squeeze=False
    )
    for ax, test in zip(axes[0], TESTS, strict=True):
        for p in ps:
            for sub, ls in (("estimated", "-"), ("true", "--")):
                t = table[
                    (table["p"] == p)
                    & (table["subspace"] == sub)
                    & (table["test"] == test)
                ]
                if t.empty:
                    continue
                label = f"p = {p}, {'A^' if sub == 'estimated' else 'true A'}"
                ax.plot(
                    t["n_over_p"], t["fwer"], "o" + ls, ms=3, color=pal[p], label=label
                )
                if sub == "estimated":
                    ax.fill_between(
                        t["n_over_p"], t["lo"], t["hi"], color=pal[p], alpha=0.2, lw=0
                    )
        ax.axhline(ALPHA, color="black", lw=1, label=f"nominal {ALPHA:g}")
        ax.axhspan(*TARGET, color="0.85", zorder=0, label="target [0.03, 0.07]")
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_xticks(n_over_p)
        ax.set_xticklabels([f"{m:g}" for m in n_over_p])
        ax.minorticks_off()
        ax.set_ylim(0, 1)
        ax.set_title(_TEST_TITLES[test], fontsize=9)
        ax.set_xlabel("samples per client / p  (n / p, log scale)")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("FWER at alpha = 0.05 (symlog scale)")
    axes[0, 0].legend(fontsize=6, ncol=2 if len(ps) > 1 else 1, loc="upper right")
    save_figure(
        fig,
        folder / "calibration.png",
        "Family-wise error rate of Holm at alpha = 0.05 against the sample size per "
        "client n / p, one panel per test, with CLAIR's A^ (solid, Wilson 95% "
        "bands) and with the true A (dashed), pooled over the separation ratios; "
        "black: the nominal level, grey: the target band. The y axis is linear "
        f"below 0.1 and logarithmic above. {note}.",
    )
    plt.close(fig)


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
    note = f"{'quick' if args.quick else 'full'} grid, {reps} replicates per point"
    _figures(frame, folder, note)
    table = summary_table(frame)
    table.to_csv(folder / "summary.csv", index=False)
    calibration = calibration_table(frame)
    start = calibrated_from(calibration)
    cost = frame.drop_duplicates(["p", "n_over_p", "ratio", "replicate"])["seconds"]
    lines = [
        "# Detection by CLAIR's tests: exact, iid chi-square, empirical null",
        "",
        f"{note}; K = {K}, {N_BAD} margin clients, q = {Q}, r = {R}, sigma = "
        f"{SIGMA:g}; {len(cost)} replicates, {cost.sum():.0f} s of compute.",
        "",
        "## Calibration: FWER of Holm at alpha = 0.05, pooled over rho",
        "",
        *_markdown(
            calibration[
                ["p", "n_over_p", "n", "test", "subspace", "replicates", "fwer"]
                + ["lo", "hi", "calibrated", "in_target"]
            ]
        ),
        "",
        f"The target [{TARGET[0]:g}, {TARGET[1]:g}] holds for the exact test with "
        "A^ in "
        + _target_count(calibration, MAIN, "estimated")
        + "; for the iid chi-square in "
        + _target_count(calibration, "chi2", "estimated")
        + "; for the empirical null in "
        + _target_count(calibration, "empirical", "estimated")
        + ".",
        "",
        "Calibrated (Wilson interval reaches 0.05) from n / p = "
        + "; ".join(
            f"{v:g} at p = {p} ({test}, {sub} A)"
            if np.isfinite(v)
            else f"never at p = {p} ({test}, {sub} A)"
            for (p, test, sub), v in start.items()
        )
        + " onward.",
        "",
        "## Per configuration (CLAIR's A^), alpha = 0.05: power and FWER of each test",
        "",
        *_markdown(table),
        "",
    ]
    (folder / "summary.md").write_text("\n".join(lines))


def _target_count(table: pd.DataFrame, test: str, subspace: str) -> str:
    """'a of b (p, n / p) cells' in the target band, for one test and subspace."""
    rows = table[(table["test"] == test) & (table["subspace"] == subspace)]
    return f"{int(rows['in_target'].sum())} of {len(rows)} (p, n / p) cells"


def main(argv: list[str] | None = None) -> int:
    """Run the study and write its report (see :func:`parser` for the options)."""
    return study_main(build, report, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

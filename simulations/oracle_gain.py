r"""
Oracle gain: where does CLAIR beat local fitting?
=================================================

**Question.** T4 (docs/claims.md §4) says that refining a benign client's estimate with
the shared subspace gains G = (p - r) q tau^2 (1 - 1/m) over local fitting when A and S
are known, and loses the costs of benign heterogeneity, het = eta^2 (1 - 1/m), and of
estimating A, sub = r (p - r) tau^2 / m - r eta^2 / (q m) (first order;
:mod:`clair_stats.theory.t4`). Over a map of the heterogeneity eta and the number of
clients K (which sets m = |S| and so the subspace-estimation cost), where does CLAIR
beat local, and does the T4 prediction draw the boundary? The prediction factorises, G -
het - sub = (1 - 1/m - r/(q m)) ((p - r) q tau^2 - eta^2): its zero-gain curve is eta_0
= tau sqrt((p - r) q) for every m with q (m - 1) > r (all of this grid), the same curve
as the oracle's G - het.

**Grid.** Direct-noise generator (docs/model.md §2.3 (a)): p = 20, r = 2, s = 1, tau =
0.3, q in {1, 3}, K in {5, 10, 20, 40, 80}, eta / eta_0 in {0, 0.25, ..., 2} (9 values),
gamma = 0.1 contaminated clients of type ``random`` (norm matched to the benign
clients); 24 replicates (2,160 in all). ``--quick``: K in {10, 40}, eta / eta_0 in {0,
0.5, 1, 1.5, 2}, 4 replicates (80), a subset of the full grid (same seeds).

Measured cost (one process, one BLAS thread, on the shared 2-core machine under a
load of 5-9): quick, 80 replicates, 20 s of replicate time (25 s wall with start-up
and report); full, 2,160 replicates, 131 s of CPU time (6.8 min wall at 33% of a
core).

**One replicate.** ``FederatedModel(p, q, r, K, contamination=0.1,
contamination_type="random", heterogeneity=eta).sample(noise=tau, seed)``, then
``clair(updates, rank=r, detect="test", sigma=tau)`` (defaults otherwise: P1 with
mu = tau (sqrt(p) + sqrt(Kq)), lam = 4 / sqrt(K), Holm at 0.05). MSE = mean over
the benign clients of ||Theta~_k - Theta_k||_F^2, for

* ``local``: Theta^_k;
* ``clair``: CLAIR as used, A^ and S^ estimated (benign clients flagged by the
  test keep their local estimate);
* ``clair_known_s``: the refinement with CLAIR's A^ and the true S -- the setting
  of the T4 prediction G - het - sub;
* ``oracle``: the refinement with the true A and S (prediction G - het, exact).

The relative gain of a method is (local MSE - its MSE) / (p q tau^2), the MSE gain
in units of the expected local MSE (a constant, so the Monte Carlo mean is unbiased
for the prediction divided by p q tau^2). Positive: the method beats local.

**Reading the figures.** ``gain_map.png``: rows q, columns the three methods; the
colour and the number in each cell are the Monte Carlo mean relative gain (blue:
beats local, red: loses), the black dashed line is the T4 zero-gain curve
eta = eta_0. ``gain_vs_eta.png``: the same gains against eta, one colour per K,
solid with 95% t bands = Monte Carlo, dashed = T4 prediction ((G - het) / (p q
tau^2) for the oracle, (G - het - sub) / (p q tau^2) for the others).
``benign_flagged.png``: the fraction of benign clients CLAIR's test flags (they
then keep their local estimate), which explains why CLAIR with S^ does not pay the
predicted loss above eta_0. ``summary.md`` / ``summary.csv``: per cell the
prediction and the Monte Carlo means with their intervals, and the count of cells
where the sign of the gain agrees with the prediction.
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
from clair_stats.evaluation.baselines import oracle_clair
from clair_stats.experiments.study import Study, grid, study_main, study_parser
from clair_stats.pipeline.refine import refine
from clair_stats.theory.t4 import (
    heterogeneity_cost,
    local_mse,
    oracle_gain,
    predicted_gain,
    zero_gain_heterogeneity,
)

#: Fixed parameters of every configuration.
P, R, TAU, GAMMA = 20, 2, 0.3, 0.1
FULL_AXES: dict[str, tuple] = {
    "q": (1, 3),
    "K": (5, 10, 20, 40, 80),
    "eta_ratio": tuple(0.25 * i for i in range(9)),
}
QUICK_AXES: dict[str, tuple] = {
    "q": (1, 3),
    "K": (10, 40),
    "eta_ratio": (0.0, 0.5, 1.0, 1.5, 2.0),
}
FULL_REPLICATES, QUICK_REPLICATES = 24, 4
#: Methods compared with local fitting, in the order of the figures' columns.
METHODS = ("oracle", "clair_known_s", "clair")
TITLES = {
    "oracle": "oracle: true A and S",
    "clair_known_s": r"CLAIR's $\hat A$, true S (T4 setting)",
    "clair": r"CLAIR: $\hat A$ and $\hat S$ (test)",
}
#: Half-width of the band around the zero-gain curve where the sign is not
#: scored, in units of G (as in theory_checks/test_t4_oracle_gain.py).
BAND = 0.25


# ------------------------------------------------------------------ one replicate
def _mse(estimates: np.ndarray, truth: np.ndarray, clients: np.ndarray) -> float:
    """Mean over ``clients`` of ||estimate_k - Theta_k||_F^2."""
    return float(np.mean(np.sum((estimates - truth)[clients] ** 2, axis=(1, 2))))


def run(config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One replicate: one direct-noise instance, local vs three refinements.

    Parameters
    ----------
    config : dict
        ``p``, ``q``, ``r``, ``K`` (ints), ``tau``, ``gamma`` and ``eta_ratio``
        (floats; eta = eta_ratio tau sqrt((p - r) q)).
    seed : int
        Seed of the instance (all randomness).

    Returns
    -------
    list of dict
        One row per method of :data:`METHODS`: ``method``, ``m`` (|S|), ``mse``,
        ``mse_local`` and ``gain`` = (mse_local - mse) / (p q tau^2); the clair
        row adds ``benign_flagged`` and ``missed`` (clients) and ``converged``.
    """
    p, q, r, K = (int(config[k]) for k in ("p", "q", "r", "K"))
    tau = float(config["tau"])
    eta = float(config["eta_ratio"]) * zero_gain_heterogeneity(p, q, r, tau)
    model = FederatedModel(
        p=p,
        q=q,
        rank=r,
        n_clients=K,
        contamination=float(config["gamma"]),
        contamination_type="random",
        heterogeneity=eta,
    )
    sample = model.sample(noise=tau, seed=seed)
    updates, truth, benign = sample.updates, sample.truth, sample.benign
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded below
        result = clair(updates, rank=r, detect="test", sigma=tau)
    estimates = {
        "oracle": oracle_clair(updates, sample.subspace, benign),
        "clair_known_s": refine(updates, result.subspace, benign),
        "clair": result.refined,
    }
    mse_local = _mse(updates, truth, benign)
    scale = local_mse(p, q, tau)
    rows = []
    for method in METHODS:
        mse = _mse(estimates[method], truth, benign)
        row: dict[str, Any] = {
            "method": method,
            "m": int(benign.sum()),
            "mse": mse,
            "mse_local": mse_local,
            "gain": (mse_local - mse) / scale,
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
        "Oracle gain (T4): Monte Carlo gain of CLAIR over local fitting on a map "
        "of heterogeneity eta x number of clients K, with the T4 prediction "
        "(see the module docstring)."
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
    axes = QUICK_AXES if args.quick else FULL_AXES
    configs = [{"p": P, "r": R, "tau": TAU, "gamma": GAMMA, **c} for c in grid(**axes)]
    return Study(
        name="oracle_gain",
        run=run,
        configs=configs,
        replicates=QUICK_REPLICATES if args.quick else FULL_REPLICATES,
        version="1",
    )


# ------------------------------------------------------------------------ tables
def predictions(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with the T4 predictions of each row's method, relative.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    pandas.DataFrame
        A copy with ``eta``, ``G`` (relative oracle gain) and ``predicted``: the
        relative predicted gain, (G - het) / (p q tau^2) for the oracle and
        (G - het - sub) / (p q tau^2) for the other methods.
    """
    out = frame.copy()
    cols = ["p", "q", "r", "m", "tau", "eta_ratio", "method"]
    eta, G, pred = [], [], []
    for p, q, r, m, tau, ratio, method in out[cols].itertuples(index=False):
        p, q, r, m = int(p), int(q), int(r), int(m)
        e = float(ratio) * zero_gain_heterogeneity(p, q, r, tau)
        scale = local_mse(p, q, tau)
        gain = oracle_gain(p, q, r, m, tau)
        if method == "oracle":
            value = gain - heterogeneity_cost(m, e)
        else:
            value = predicted_gain(p, q, r, m, tau, e)
        eta.append(e)
        G.append(gain / scale)
        pred.append(value / scale)
    out["eta"], out["G"], out["predicted"] = eta, G, pred
    return out


def cell_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell (q, K, eta_ratio) and method: prediction, Monte Carlo mean, interval.

    Parameters
    ----------
    frame : pandas.DataFrame
        :func:`predictions` of the study's frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``p, r, tau, gamma, q, K, eta_ratio, method, eta, m, G,
        predicted, mean, lo, hi, n, sign`` and ``benign_flagged`` (clair:
        mean fraction of benign clients flagged). ``sign`` is ``"agrees"``
        when the 95% interval lies strictly on the predicted side of 0,
        ``"disagrees"`` when it lies strictly on the other side,
        ``"inconclusive"`` otherwise, and ``"band"`` when
        |predicted| < 0.25 G (not scored).
    """
    from clair_stats.experiments.plotting import mc_summary

    keys = ["p", "r", "tau", "gamma", "q", "K", "eta_ratio", "method"]
    stats = mc_summary(frame, keys, "gain")
    first = frame.groupby(keys, sort=True)[["eta", "m", "G", "predicted"]].first()
    out = stats.merge(first.reset_index(), on=keys)
    flagged = frame[frame["method"] == "clair"].assign(
        frac=lambda d: d["benign_flagged"] / d["m"]
    )
    cell = keys[:-1]
    frac = flagged.groupby(cell)["frac"].mean().rename("benign_flagged")
    out = out.merge(frac.reset_index(), on=cell, how="left")
    sign = np.full(len(out), "inconclusive", dtype=object)
    pred = out["predicted"].to_numpy()
    lo, hi = out["lo"].to_numpy(), out["hi"].to_numpy()
    sign[((pred > 0) & (lo > 0)) | ((pred < 0) & (hi < 0))] = "agrees"
    sign[((pred > 0) & (hi < 0)) | ((pred < 0) & (lo > 0))] = "disagrees"
    sign[np.abs(pred) < BAND * out["G"].to_numpy()] = "band"
    out["sign"] = sign
    return out[
        [
            "p",
            "r",
            "tau",
            "gamma",
            "q",
            "K",
            "eta_ratio",
            "method",
            "eta",
            "m",
            "G",
            "predicted",
            "mean",
            "lo",
            "hi",
            "n",
            "sign",
            "benign_flagged",
        ]
    ]


def sign_counts(cells: pd.DataFrame) -> pd.DataFrame:
    """Per method and predicted sign: cells that agree, disagree, are inconclusive.

    Parameters
    ----------
    cells : pandas.DataFrame
        From :func:`cell_table`.

    Returns
    -------
    pandas.DataFrame
        Index (method, predicted sign), columns the ``sign`` categories.
    """
    predicted = np.where(cells["predicted"] > 0, "gain", "loss").astype(object)
    predicted[cells["sign"].to_numpy() == "band"] = "~0 (band)"
    scored = cells.assign(predicted_sign=predicted)
    keys = ["method", "predicted_sign", "sign"]
    table = scored.groupby(keys).size().unstack(fill_value=0)
    for col in ("agrees", "disagrees", "inconclusive", "band"):
        if col not in table.columns:
            table[col] = 0
    return table[["agrees", "disagrees", "inconclusive", "band"]]


def _markdown(cells: pd.DataFrame, counts: pd.DataFrame, note: str) -> str:
    lines = [
        "# Oracle gain (T4): CLAIR against local fitting",
        "",
        f"{note}. Gains are relative: (local MSE - MSE) / (p q tau^2). Prediction: "
        "(G - het) / (p q tau^2) for the oracle, (G - het - sub) / (p q tau^2) "
        "otherwise. Sign: the 95% interval lies on the predicted side of 0 "
        f"(agrees), on the other side (disagrees), or contains 0 (inconclusive); "
        f"cells with |prediction| < {BAND:g} G are not scored (band).",
        "",
        "## Sign of the gain against the prediction (cells)",
        "",
        "| method | predicted | agrees | disagrees | inconclusive | band |",
        "|---|---|---|---|---|---|",
    ]
    for (method, predicted), row in counts.iterrows():
        lines.append(
            f"| {method} | {predicted} | {row['agrees']} | {row['disagrees']} | "
            f"{row['inconclusive']} | {row['band']} |"
        )
    lines += [
        "",
        "## Cells",
        "",
        "| q | K | m | eta/eta_0 | method | predicted | Monte Carlo [95% CI] | sign | "
        "benign flagged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in cells.to_dict("records"):
        flagged = f"{row['benign_flagged']:.2f}" if row["method"] == "clair" else ""
        lines.append(
            f"| {row['q']} | {row['K']} | {row['m']} | {row['eta_ratio']:g} | "
            f"{row['method']} | {row['predicted']:.3f} | {row['mean']:.3f} "
            f"[{row['lo']:.3f}, {row['hi']:.3f}] | {row['sign']} | {flagged} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------- figures
def _edges(values: np.ndarray, log: bool = False) -> np.ndarray:
    """Cell edges around sorted centres: midpoints (geometric when ``log``)."""
    v = np.log(values) if log else np.asarray(values, float)
    if v.size == 1:
        edges = np.array([v[0] - 0.5, v[0] + 0.5])
    else:
        mid = (v[1:] + v[:-1]) / 2
        edges = np.concatenate(
            [[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]]
        )
    return np.exp(edges) if log else edges


def _fixed(frame: pd.DataFrame, column: str) -> float:
    """The one value of ``column`` in ``frame`` (a clear error if several)."""
    values = frame[column].unique()
    if len(values) != 1:
        raise ValueError(
            f"the report draws one panel per q and expects one value of {column!r} "
            f"in it, got {sorted(values)}; report each value separately"
        )
    return float(values[0])


def _eta0(frame: pd.DataFrame) -> float:
    """eta_0 = tau sqrt((p - r) q) of the rows of one panel."""
    p, q, r = (int(_fixed(frame, c)) for c in ("p", "q", "r"))
    return zero_gain_heterogeneity(p, q, r, _fixed(frame, "tau"))


def _gain_map(cells: pd.DataFrame, folder: Path, note: str) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Patch

    from clair_stats.experiments.plotting import save_figure

    qs = sorted(cells["q"].unique())
    low = min(float(cells["mean"].min()), -0.05)
    high = max(float(cells["mean"].max()), 0.05)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=low, vmax=high)
    fig, axes = plt.subplots(
        len(qs), len(METHODS), figsize=(13, 3.3 * len(qs) + 0.4), squeeze=False
    )
    for i, q in enumerate(qs):
        for j, method in enumerate(METHODS):
            ax = axes[i, j]
            sub = cells[(cells["q"] == q) & (cells["method"] == method)]
            table = sub.pivot(index="K", columns="eta", values="mean")
            etas, ks = table.columns.to_numpy(float), table.index.to_numpy(float)
            image = ax.pcolormesh(
                _edges(etas),
                _edges(ks, log=True),
                table.to_numpy(),
                cmap="RdBu",
                norm=norm,
            )
            for (K, eta), value in table.stack().items():
                shade = abs(norm(value) - 0.5) > 0.35
                ax.text(
                    eta,
                    K,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="white" if shade else "black",
                    zorder=3,  # above the zero-gain line, on a patch of the cell
                    bbox={
                        "boxstyle": "square,pad=0.15",
                        "facecolor": plt.get_cmap("RdBu")(norm(value)),
                        "edgecolor": "none",
                    },
                )
            eta0 = _eta0(sub)
            ax.axvline(
                eta0,
                color="k",
                ls="--",
                lw=1.6,
                label=r"T4 zero-gain curve $\eta_0 = \tau\sqrt{(p - r) q}$",
            )
            ax.set_yscale("log")
            ax.set_yticks(ks, [f"{int(k)}" for k in ks])
            ax.set_xticks(etas, [f"{e:.2f}" for e in etas], fontsize=7)
            ax.minorticks_off()
            ax.set_xlabel(r"heterogeneity $\eta = \|H_k\|_F$ (units of $\Theta_k$)")
            if j == 0:
                ax.set_ylabel(f"q = {q}\nnumber of clients K")
            ax.set_title(TITLES[method], fontsize=10)
        fig.colorbar(
            image,
            cax=axes[i, -1].inset_axes((1.04, 0.0, 0.035, 1.0)),
            label="relative gain over local\n(local MSE - MSE) / (p q $\\tau^2$)",
        )
    handles, labels = axes[-1, 0].get_legend_handles_labels()
    handles.append(Patch(facecolor=plt.get_cmap("RdBu")(0.8), edgecolor="none"))
    labels.append("cell: Monte Carlo mean gain (blue: beats local)")
    axes[-1, len(METHODS) // 2].legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.25),
        ncol=1,
        fontsize=8,
    )
    save_figure(
        fig,
        folder / "gain_map.png",
        "Monte Carlo mean relative gain over local fitting (colour and number; "
        "blue: beats local) on a map of heterogeneity eta and number of clients "
        "K; dashed: the T4 zero-gain curve eta_0 = tau sqrt((p - r) q) of both "
        f"G - het and G - het - sub; {note}.",
    )
    plt.close(fig)


def _gain_lines(frame: pd.DataFrame, folder: Path, note: str) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from clair_stats.experiments.plotting import mc_summary, save_figure

    qs = sorted(frame["q"].unique())
    ks = sorted(frame["K"].unique())
    colors = dict(
        zip(ks, plt.get_cmap("viridis")(np.linspace(0, 0.9, len(ks))), strict=True)
    )
    fig, axes = plt.subplots(
        len(qs), len(METHODS), figsize=(13, 3.3 * len(qs)), squeeze=False, sharey=True
    )
    for i, q in enumerate(qs):
        for j, method in enumerate(METHODS):
            ax = axes[i, j]
            sub = frame[(frame["q"] == q) & (frame["method"] == method)]
            stats = mc_summary(sub, ["K", "eta"], "gain")
            pred = sub.groupby(["K", "eta"])["predicted"].first().reset_index()
            for K in ks:
                s, pr = stats[stats["K"] == K], pred[pred["K"] == K]
                ax.plot(s["eta"], s["mean"], "o-", ms=3, color=colors[K])
                lo = np.where(np.isfinite(s["lo"]), s["lo"], s["mean"])
                hi = np.where(np.isfinite(s["hi"]), s["hi"], s["mean"])
                ax.fill_between(s["eta"], lo, hi, color=colors[K], alpha=0.2, lw=0)
                ax.plot(pr["eta"], pr["predicted"], "--", color=colors[K], lw=1)
            ax.axhline(0, color="grey", lw=0.8)
            ax.axvline(_eta0(sub), color="k", ls=":")
            ax.set_xlabel(r"heterogeneity $\eta = \|H_k\|_F$ (units of $\Theta_k$)")
            if j == 0:
                ax.set_ylabel(f"q = {q}\nrelative gain over local (unitless)")
            ax.set_title(TITLES[method], fontsize=10)
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[K], marker="o", ms=3) for K in ks]
    labels = [f"K = {K}" for K in ks]
    handles += [
        Line2D([], [], color="k", marker="o", ms=3),
        Line2D([], [], color="k", ls="--"),
        Line2D([], [], color="k", ls=":"),
    ]
    labels += ["Monte Carlo (95% band)", "T4 prediction", r"$\eta_0$ (zero gain)"]
    axes[0, -1].legend(
        handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8
    )
    save_figure(
        fig,
        folder / "gain_vs_eta.png",
        "Relative gain over local fitting, (local MSE - MSE) / (p q tau^2), against "
        "heterogeneity eta, one colour per K: Monte Carlo mean with 95% t bands "
        "(solid) and T4 prediction (dashed: G - het for the oracle, G - het - sub "
        f"otherwise); dotted: eta_0; {note}.",
    )
    plt.close(fig)


def _flagged(frame: pd.DataFrame, folder: Path, note: str) -> None:
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import mc_summary, save_figure

    data = frame[frame["method"] == "clair"].assign(
        frac=lambda d: d["benign_flagged"] / d["m"]
    )
    qs = sorted(data["q"].unique())
    ks = sorted(data["K"].unique())
    colors = dict(
        zip(ks, plt.get_cmap("viridis")(np.linspace(0, 0.9, len(ks))), strict=True)
    )
    fig, axes = plt.subplots(1, len(qs), figsize=(9, 3.4), squeeze=False, sharey=True)
    for ax, q in zip(axes[0], qs, strict=True):
        stats = mc_summary(data[data["q"] == q], ["K", "eta"], "frac")
        for K in ks:
            s = stats[stats["K"] == K]
            ax.plot(s["eta"], s["mean"], "o-", ms=3, color=colors[K], label=f"K = {K}")
            lo = np.where(np.isfinite(s["lo"]), s["lo"], s["mean"])
            hi = np.where(np.isfinite(s["hi"]), s["hi"], s["mean"])
            ax.fill_between(
                s["eta"],
                np.clip(lo, 0, 1),
                np.clip(hi, 0, 1),
                color=colors[K],
                alpha=0.2,
                lw=0,
            )
        ax.axvline(
            _eta0(data[data["q"] == q]),
            color="k",
            ls=":",
            label=r"$\eta_0$ (T4 zero gain)",
        )
        ax.set_title(f"q = {q}", fontsize=10)
        ax.set_xlabel(r"heterogeneity $\eta = \|H_k\|_F$ (units of $\Theta_k$)")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("benign clients flagged (fraction)")
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    save_figure(
        fig,
        folder / "benign_flagged.png",
        "Fraction of benign clients flagged by CLAIR's chi-square test (Holm, "
        "alpha = 0.05) against heterogeneity eta, Monte Carlo mean with 95% t "
        f"bands (clipped to [0, 1]); dotted: eta_0; {note}.",
    )
    plt.close(fig)


def report(frame: pd.DataFrame, folder: Path, args: argparse.Namespace) -> None:
    """Write ``gain_map.png``, ``gain_vs_eta.png``, ``benign_flagged.png``,
    ``summary.md`` and ``summary.csv`` into ``folder``.

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
    data = predictions(frame)
    reps = int(data["replicate"].nunique())
    fixed = {c: _fixed(data, c) for c in ("p", "r", "tau", "gamma")}
    note = (
        f"{'quick' if args.quick else 'full'} grid: direct noise, "
        f"p = {fixed['p']:g}, r = {fixed['r']:g}, tau = {fixed['tau']:g}, s = 1, "
        f"gamma = {fixed['gamma']:g} random contamination, {reps} replicates per "
        "cell"
    )
    cells = cell_table(data)
    cells.to_csv(folder / "summary.csv", index=False)
    counts = sign_counts(cells)
    (folder / "summary.md").write_text(_markdown(cells, counts, note))
    _gain_map(cells, folder, note)
    _gain_lines(data, folder, note)
    _flagged(data, folder, note)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study (its missing replicates) and write the report."""
    return study_main(build, report, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Oracle gain (T4): CLAIR with and without pooling, FedAvg, local fitting
#
# T4 (docs/claims.md §4.5) splits the gain of CLAIR's refinement over local fitting
# into an oracle gain $G = (p - r) q \tau^2 (1 - 1/m)$ (m = |S|) minus the cost of
# benign heterogeneity, $\eta^2 (1 - 1/m)$, and the cost of estimating the
# subspace (first order). The paper's refinement keeps each client's part inside
# span(A^) and with it $r q \tau^2$ of noise. CLAIR's default (since the study's
# version 2) pools that part too: $\tilde\Theta_k = \bar\Theta + (1 - b)
# P_{\hat A} (\hat\Theta_k - \bar\Theta)$, with b estimated by empirical Bayes
# (James-Stein), near 1 (FedAvg over S^) when the clients do not differ inside
# span(A) and near 0 (the paper's) when they differ much more than their noise.
# Its first-order risk is `clair_stats.theory.t4.shrinkage_mse`.
#
# The study (`simulations/oracle_gain.py`) draws direct-noise instances (p = 20,
# r = 2, tau = 0.3, 10% `random` contamination) on two maps:
#
# - **heterogeneity map**: benign B_k iid N(0, 1) (spread delta = 1 = 3.3 tau
#   inside span(A), no common part) and off-subspace heterogeneity eta, q = 1
#   and 3;
# - **homogeneous map**: a common part $\bar B$ ($\bar B^\top \bar B = q I_r$) and
#   a spread delta / tau in {0, ..., 20} around it, eta = 0, q = 3.
#
# Methods: the oracle (true A and S, b = 0) and its pooled version (b^); FedAvg
# over the true S; CLAIR as in version 1 (`clair_paper`: A^ of step 3, b = 0);
# CLAIR with A^ refitted and b = 0 (`clair_keep`) or b = 1 (`clair_pool`); and
# CLAIR's default (`clair`). Gains are relative: (local MSE - MSE) / (p q
# tau^2). This report loads the stored full grid when all of it is there and
# runs the quick grid otherwise.

# %%
import sys
from pathlib import Path

ROOT = Path.cwd() if (Path.cwd() / "simulations").is_dir() else Path.cwd().parent
sys.path.insert(0, str(ROOT))
import simulations.oracle_gain as script  # noqa: E402
from clair_stats.experiments.study import load_or_run  # noqa: E402

frame, folder, args = load_or_run(script)

# %%
import pandas as pd  # noqa: E402
from IPython.display import Image, display  # noqa: E402

cells = pd.read_csv(folder / "summary.csv")
excess = pd.read_csv(folder / "excess.csv")
keys = script.CELL
n_cells = cells[keys].drop_duplicates().shape[0]
per_family = cells.drop_duplicates(keys)["family"].value_counts()
replicates = frame.drop_duplicates(["replicate", *keys])
seconds = replicates["seconds"].sum()
print(
    f"{'quick' if args.quick else 'full'} grid: {n_cells} cells ("
    + ", ".join(f"{family} {n}" for family, n in per_family.items())
    + f"), {frame['replicate'].nunique()} replicates per cell ({seconds:.0f} s of "
    "computing)."
)

# %% [markdown]
# ## The heterogeneity map
#
# Colour and number: the Monte Carlo mean relative gain of each cell (blue: beats
# local fitting), for CLAIR as in version 1, CLAIR's default and FedAvg over the
# benign set. Dashed: the T4 zero-gain curve $\eta = \eta_0$ of the paper's
# refinement.

# %%
display(Image(filename=str(folder / "gain_map.png")))

# %% [markdown]
# ## The homogeneous map
#
# The same methods when the clients share a common part and spread by delta
# inside span(A). At delta = 0 FedAvg over S is the best there is; at delta >>
# tau the paper's refinement is.

# %%
display(Image(filename=str(folder / "gain_map_homogeneous.png")))

# %% [markdown]
# ## Before and after: CLAIR's gain with and without pooling
#
# Per family, q and K: the mean relative gain of CLAIR as in version 1 and of
# CLAIR's default, averaged over the cells of the varied axis (eta / eta_0 below
# 1 for the heterogeneity map, where the refinement is meant to be used), with
# FedAvg over S for reference.

# %%
wide = cells.pivot_table(index=[*keys], columns="method", values="mean").reset_index()
useful = wide[(wide["family"] == "homogeneous") | (wide["eta_ratio"] < 1)]
before_after = useful.groupby(["family", "q", "K"])[
    ["clair_paper", "clair_keep", "clair", "fedavg", "oracle", "oracle_pooled"]
].mean()
before_after["clair - clair_paper"] = (
    before_after["clair"] - before_after["clair_paper"]
)
print(
    "CLAIR's default - version 1 (relative gain), over the cells shown: "
    f"{before_after['clair - clair_paper'].min():.3f} to "
    f"{before_after['clair - clair_paper'].max():.3f}"
)
before_after.round(3)

# %%
homogeneous = wide[wide["family"] == "homogeneous"].pivot_table(
    index="K",
    columns="delta_ratio",
    values=["clair_paper", "clair", "fedavg"],
)
homogeneous.round(3)

# %% [markdown]
# ## Gain against the axis, with the prediction
#
# Solid: Monte Carlo mean with 95% t bands, one colour per K; dashed: the T4
# first-order prediction (`shrinkage_mse` at b = 0, b* or 1).

# %%
display(Image(filename=str(folder / "gain_vs_eta.png")))
display(Image(filename=str(folder / "gain_vs_delta.png")))

# %%
cells["gap / G"] = (cells["mean"] - cells["predicted"]) / cells["G"]
cells["covered"] = (cells["lo"] <= cells["predicted"]) & (
    cells["predicted"] <= cells["hi"]
)
for method in script.METHODS:
    sub = cells[cells["method"] == method]
    print(
        f"{method}: Monte Carlo - prediction from {sub['gap / G'].min():.3f} G "
        f"to {sub['gap / G'].max():.3f} G; 95% interval contains the prediction "
        f"in {int(sub['covered'].sum())} of {len(sub)} cells"
    )

# %% [markdown]
# ## Never much worse than the better of keep and pool
#
# The Stein/Lindley bound (docs/claims.md §4.5): with A, S and tau known, the
# pooled refinement's MSE exceeds the better of b = 0 and b = 1 by at most
# 4 tau^2 / m per client. Per cell, the paired excess against the better of the
# two, relative, and whether it exceeds the bound beyond Monte Carlo error
# (one-sided, Bonferroni over the cells).

# %%
for pooled, group in excess.groupby("pooled", sort=False):
    worst = (group["excess"] / group["bound"]).max()
    print(
        f"{pooled}: excess / bound at most {worst:.2f} (over {len(group)} cells); "
        "cells exceeding the bound: "
        f"{int(group['exceeds'].sum())}; better of the two is pooling in "
        f"{int(group['better'].isin(('fedavg', 'clair_pool')).sum())}"
    )
excess.sort_values("t", ascending=False).head(8)

# %% [markdown]
# ## Why CLAIR does not pay the predicted loss above eta_0
#
# The fraction of benign clients that CLAIR's chi-square test flags on the
# heterogeneity map: under "k benign" the statistic T_k has noncentrality
# $\eta^2 / \tau^2$, as large as its degrees of freedom at $\eta_0$; flagged
# clients keep their local estimate.

# %%
display(Image(filename=str(folder / "benign_flagged.png")))

# %%
het = cells[(cells["method"] == "clair") & (cells["family"] == "heterogeneous")]
het.pivot_table(index=["q", "K"], columns="eta_ratio", values="benign_flagged").round(2)

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
# # Phase transition of exact recovery by P0
#
# Where does CLAIR's step 1, the exact program P0 (docs/programs.md §3.1), recover the
# shared
# subspace span(A) *and* the contaminated set exactly on noiseless data, and where does
# the region guaranteed by Theorem T1 (docs/claims.md §4) lie inside it? The study
# (`simulations/phase_transition.py`, its docstring has the grid and the cost) solves
# P0 on instances of `FederatedModel(p=30, q=2, r, K=100)` for five contamination
# types, over the contamination fraction gamma and the rank r at the default
# lam = 4 / sqrt(K), and over gamma and c = lam sqrt(K) at r = 2. *Exact recovery*:
# the solver converged, ||P_A^ - P_A||_F <= 1e-6, the block support of S^ is the
# contaminated set and the numerical rank of L^ is r. This notebook reads the stored
# results (or runs the quick grid when the full one is not stored).

# %%
import sys
from pathlib import Path

ROOT = Path.cwd() if (Path.cwd() / "simulations").is_dir() else Path.cwd().parent
sys.path.insert(0, str(ROOT))
import simulations.phase_transition as script  # noqa: E402
from clair_stats.experiments.study import load_or_run  # noqa: E402

frame, folder, args = load_or_run(script)

# %%
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from IPython.display import Image, display  # noqa: E402

from clair_stats import DEFAULT_C_LAM  # noqa: E402

instances = frame.drop_duplicates(["contamination", "gamma", "r", "replicate"])
print(
    f"grid: {'quick' if args.quick else 'full'}; {len(instances)} instances, "
    f"{len(frame)} solves, {frame['replicate'].nunique()} replicates per cell; "
    f"gamma in {sorted(frame['gamma'].unique().tolist())}, "
    f"r in {sorted(frame['r'].unique().tolist())}"
)
print(f"figures and tables in {folder}")

# %% [markdown]
# ## Exact recovery over (gamma, r) at the default lam
#
# Top row: exact recovery; bottom row: subspace recovery only. The red staircase is
# T1's boundary gamma*(r) = C / (mu r + C), C = 9/121, drawn at the **median**
# incoherence mu of the instances of each rank (mu is computed on every instance and
# varies between them). T1 promises exact recovery to the left of it, at its own lam.

# %%
display(Image(filename=str(folder / "success_gamma_r.png")))

# %%
default = script.default_rows(frame)
cells = default.groupby(["contamination", "gamma", "r"])[["success", "subspace_ok"]]
rates = cells.mean().reset_index()
counts = rates.groupby("contamination").agg(
    cells=("success", "size"),
    exact_every_replicate=("success", lambda s: int((s == 1).sum())),
    subspace_every_replicate=("subspace_ok", lambda s: int((s == 1).sum())),
    mean_exact_rate=("success", "mean"),
)
display(counts)

# %% [markdown]
# **Reading.** The table counts, per contamination type, the (gamma, r) cells in
# which the default lam recovered exactly on every replicate, and those in which it
# recovered the subspace on every replicate. The gap between the two columns is
# where the subspace is right but the support is not. It is largest for `scaled`:
# those clients are -3 times a benign-like update with H = 0, so they lie *in*
# span(A) (delta_k = 0, docs/model.md §2); they are not identifiable, and P0 cannot be
# asked to
# flag them, while the shared subspace stays recoverable. `subspace` contamination (a
# second shared r-dimensional subspace) is the one that breaks the subspace itself
# once enough clients share it, since together they form a competing low-rank
# component. The printed numbers below give the largest gamma of the grid recovered on
# every replicate, per type and rank, next to T1's gamma*.

# %%
largest = script.largest_gamma_table(frame)
print(largest.to_string(index=False))
ratio = largest["gamma_max_exact"] / largest["t1_gamma_star"]
print(
    "\nlargest gamma recovered exactly / T1's gamma*: median "
    f"{np.nanmedian(ratio):.1f}, range {np.nanmin(ratio):.1f}-{np.nanmax(ratio):.1f} "
    f"({int(ratio.isna().sum())} type-rank pairs recovered at no gamma of the grid)"
)

# %% [markdown]
# **Reading.** Where the default lam works at all, it works far beyond T1's region:
# the printed ratio compares the largest gamma recovered on every replicate with the
# boundary gamma* of T1 at the median mu. T1's condition is sufficient, not necessary;
# with Gaussian client factors mu is well above 1 (printed below), and gamma* lies
# near or below 1/K.

# %% [markdown]
# ## Why the default lam fails at large r
#
# A benign client k stays out of S^ only if its block of the dual certificate, of
# norm about ||V_k||_F, stays below lam (see T1 in `theory_checks/README.md`). The
# largest ||V_k||_F^2 is mu r / ((1 - gamma) K), so the default c = lam sqrt(K) = 4
# needs sqrt(mu r / (1 - gamma)) < 4. The table splits the default-lam solves (all
# types but `scaled`, whose support is not identifiable) by this condition, computed
# on each instance.

# %%
print(script.leverage_table(frame).to_string(index=False))

# %% [markdown]
# **Reading.** Compare the exact-recovery rate and the mean number of benign clients
# put in S^ between the rows (a single row means the grid never crosses the
# condition; the quick grid stops at r = 4). mu falls more slowly than r rises, so
# mu r grows with r (median mu per r is printed in the next section) and a fixed c
# fails beyond some rank. mu is also a maximum over the benign clients, so it grows
# slowly with their number.

# %% [markdown]
# ## lam="auto" where the default fails
#
# Every instance is also solved with lam="auto" (`clair_stats.select_lam`,
# docs/programs.md §3.1.7): a path over lam from the ceiling down, the widest
# plateau of the flagged set, and a second solve with the flagged clients'
# weights reduced. Its lam follows the instance, so the benign-leverage floor
# of the previous section does not bind it. The map and the table compare it
# with the default on the same instances, split by whether the largest benign
# ||V_k||_F exceeds 4 / sqrt(K).

# %%
display(Image(filename=str(folder / "success_auto.png")))
comparison = script.auto_comparison(frame)
print(comparison.to_string(index=False))
auto = script.auto_rows(frame)
print(
    f"lam='auto': exact recovery in {int(auto['success'].sum())} of {len(auto)} "
    f"instances (default: {int(default['success'].sum())}); median solves "
    f"{auto['n_solves'].median():g}; chosen c = lam sqrt(K) from "
    f"{auto['c'].min():.2f} to {auto['c'].max():.2f}"
)
print(
    "largest gamma recovered on every replicate at lam='auto':\n"
    + script.largest_gamma_table(frame, "auto").to_string(index=False)
)

# %% [markdown]
# **Reading.** The row `leverage_exceeds_default = True` holds the instances the
# default c = 4 cannot recover (a benign block of V outweighs lam and is
# flagged); compare its two exact-recovery counts. The row `False` shows what
# the rule costs where the default already works. `subspace` contamination (a
# second shared subspace) and `scaled` clients (in span(A)) stay the hard cases
# for any lam.

# %% [markdown]
# ## The theory lam of T1
#
# The same map at T1's lam = 3 / (7 sqrt(gamma K)), and the instances that meet T1's
# condition.

# %%
display(Image(filename=str(folder / "success_t1_lam.png")))

# %%
theory = script.t1_table(frame)
print(theory.to_string(index=False))
mus = script.median_mu(frame)
print(
    "\nmedian mu per r: "
    + ", ".join(
        f"r={r}: {m:.2f} (gamma*={script.t1_max_gamma(m, r):.4f})"
        for r, m in mus.items()
    )
)
t1_rows = frame[frame["lam_rule"] == "t1"]
inside = t1_rows[t1_rows["t1_holds"].astype(bool)]
print(
    f"instances inside T1's condition: {len(inside)} of {len(t1_rows)}; recovered at "
    f"T1's lam: {int(inside['success'].sum())}; smallest gamma of the grid: "
    f"{frame['gamma'].min():g}"
)
print(
    "inside the condition, per (gamma, r): "
    + ", ".join(f"{k}: {v}" for k, v in inside.groupby(["gamma", "r"]).size().items())
)
orth = inside[inside["contamination"] == "orthogonal"]
print(
    f"orthogonal contamination (the setting T1 is checked in): {len(orth)} inside, "
    f"{int((~orth['success'].astype(bool)).sum())} not recovered at T1's lam"
)
print(
    "inside the condition, subspace recovered at T1's lam, per type: "
    + ", ".join(
        f"{k} {int(g['subspace_ok'].sum())}/{len(g)}"
        for k, g in inside.groupby("contamination")
    )
)
outside = t1_rows[(t1_rows["gamma"] >= 0.1)]
print(
    f"T1's lam at gamma >= 0.1: exact recovery in {int(outside['success'].sum())} of "
    f"{len(outside)} instances; benign clients put in S^ per instance: mean "
    f"{outside['false_pos'].mean():.1f}"
)

# %% [markdown]
# **Reading.** T1's condition needs gamma / (1 - gamma) <= 9 / (121 mu r); the printed
# gamma* and the count of instances inside it per (gamma, r) show how small the
# guaranteed region is at this size (K = 100, where the smallest possible gamma is
# 0.01): one or two contaminated clients, small r. Inside the condition T1's lam must
# recover exactly; the printed counts check it on every such instance. A failure with
# `orthogonal` contamination would contradict the theorem (and be reported as a
# finding). `scaled` clients lie in span(A) (delta_k = 0): there the subspace is still
# recovered, but their support cannot be, and T1's support statement does not apply to
# clients that are not identifiable. Outside the condition T1's lam is small:
# lam sqrt(K) = 3 / (7 sqrt(gamma)) is below 1.4 for gamma >= 0.1, and P0 then moves
# benign clients into S^ (the printed mean count; see also the next figure).

# %% [markdown]
# ## Exact recovery over (gamma, lam sqrt(K)) at r = 2

# %%
display(Image(filename=str(folder / "success_gamma_lam.png")))

# %%
scan = frame[(frame["r"] == script.SCAN_RANK) & (frame["lam_rule"] == "grid")]
window = scan.groupby(["contamination", "gamma", "c"])["success"].mean().reset_index()
rows = []
for (kind, gamma), g in window.groupby(["contamination", "gamma"]):
    good = g.loc[g["success"] == 1.0, "c"]
    rows.append(
        {
            "contamination": kind,
            "gamma": gamma,
            "window of c": f"{good.min():g}-{good.max():g}" if len(good) else "none",
            f"c = {DEFAULT_C_LAM:g} inside": bool(
                np.isclose(good, DEFAULT_C_LAM).any()
            ),
            "T1 c inside": bool(
                len(good) and good.min() <= script.t1_c_lam(gamma) <= good.max()
            ),
        }
    )
windows = pd.DataFrame(rows)
windows.pivot(index="gamma", columns="contamination", values="window of c")

# %% [markdown]
# **Reading.** Each entry is the smallest and the largest grid value of
# c = lam sqrt(K) at which P0 recovered exactly on every replicate ("none": no value
# of the grid did). The window narrows as gamma grows; it is empty for `scaled`
# clients (they lie in span(A)) and closes early for `subspace` contamination. The
# dotted ceiling sqrt(qK) bounds it from above (beyond it P0 flags nobody). The
# counts below say in how many (type, gamma) cells the default c = 4 lies in the
# window, and at which gamma T1's c = 3 / (7 sqrt(gamma)) (the black curve) lies
# between the window's ends.

# %%
inside_default = int(windows[f"c = {DEFAULT_C_LAM:g} inside"].sum())
print(
    f"default c = {DEFAULT_C_LAM:g} inside the window in {inside_default} of "
    f"{len(windows)} (type, gamma) cells at r = {script.SCAN_RANK}"
)
t1_inside = windows[windows["T1 c inside"]]
print(
    "T1's c between the window's ends at: "
    + (
        ", ".join(
            f"{k} gamma={g:g}" for k, g in t1_inside[["contamination", "gamma"]].values
        )
        or "no (type, gamma) cell"
    )
)

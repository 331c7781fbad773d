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
# # Figure 1: subspace error against the number of clients K
#
# How fast does the error of the estimated shared subspace, $\|P_{\hat A} - P_A\|_F$,
# fall with the number of clients K, in several (p, q, n) regimes, when 20% of the
# clients are contaminated? Three estimates of rank r (details in the docstring of
# `simulations/fig1_subspace_error.py`):
#
# - **CLAIR**: `clair(updates, rank=r, detect="test", sigma=local_sd)`, other
#   options at their defaults (P1, lam = 4 / sqrt(K), Holm at 0.05); its A^ is
#   refitted on the clients the test keeps (`final_subspace="kept"`, the
#   default since the study's version 2). The figures also show the A^ of step 3
#   of the same fit (`result.detection_subspace`, read off L^: CLAIR's subspace in
#   version 1);
# - **plain SVD**: the top-r left singular vectors of all clients' stacked estimates;
# - **oracle**: the same SVD on the benign clients only (S known).
#
# Local estimates come from OLS fits on n observations per client (regression
# generator, sigma = s = 1); contaminated clients are `random` and `subspace` in
# turn. This report loads the stored full grid when all of it is there and runs
# the quick grid otherwise.

# %%
import sys
from pathlib import Path

ROOT = Path.cwd() if (Path.cwd() / "simulations").is_dir() else Path.cwd().parent
sys.path.insert(0, str(ROOT))
import simulations.fig1_subspace_error as script  # noqa: E402
from clair_stats.experiments.study import load_or_run  # noqa: E402

frame, folder, args = load_or_run(script)

# %%
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from IPython.display import Image, display  # noqa: E402

regimes = frame[list(script.REGIME)].drop_duplicates().sort_values(list(script.REGIME))
print(
    f"{'quick' if args.quick else 'full'} grid: {len(regimes)} regimes, "
    f"K in {sorted(frame['K'].unique().tolist())}, "
    f"{frame['replicate'].nunique()} replicates per point, "
    f"{frame.groupby(['replicate', *script.REGIME, 'K']).ngroups} replicates in all "
    f"({frame.drop_duplicates(['replicate', *script.REGIME, 'K'])['seconds'].sum():.0f}"
    " s of computing)."
)
regimes.reset_index(drop=True)

# %% [markdown]
# ## The subspace error against K
#
# One panel per regime, log-log axes; lines are Monte Carlo means with 95% t
# bands. The dashed line is the first-order prediction (docs/claims.md §4.6)
# $\sigma\sqrt{p r / (n q K)} / s$, the dotted line its refined form
# $\sqrt{2 (p - r) r \sigma^2 / ((n - p - 1) m q s^2)}$ (m = |S|; from
# `clair_stats.theory.t4`). A slope of -1/2 is the parametric rate; a curve that
# flattens carries a bias that more clients do not remove.

# %%
display(Image(filename=str(folder / "subspace_error.png")))

# %% [markdown]
# **Reading.** The numbers printed below come from `summary.csv` (slope of log
# error on log K by OLS over all replicates, 95% interval; error at the largest K).
# The contaminated `subspace` clients share one wrong r-dimensional subspace, which
# tilts a plain SVD by an amount that does not shrink with K, so its slope is
# expected to be flatter than -1/2 and its error to lie above the oracle's. CLAIR
# refits A^ on the clients of S^: when the test finds S, this is the oracle's
# SVD exactly, so the ratio to the oracle printed below is what the detection
# errors cost. The A^ of step 3 (the low-rank part L^ of step 1) is shown after
# it.

# %%
table = pd.read_csv(folder / "summary.csv")
wide = table.pivot_table(
    index=list(script.REGIME), columns="method", values="error_at_K_max"
)
wide["clair / oracle"] = wide["clair"] / wide["oracle"]
wide["svd / oracle"] = wide["svd"] / wide["oracle"]
slopes = table.pivot_table(index=list(script.REGIME), columns="method", values="slope")
print("error at the largest K, relative to the oracle:")
print(
    f"  CLAIR {wide['clair / oracle'].min():.2f}-{wide['clair / oracle'].max():.2f}"
    f" x oracle, plain SVD {wide['svd / oracle'].min():.2f}-"
    f"{wide['svd / oracle'].max():.2f} x oracle"
)
if slopes.notna().all().all():
    for method in script.METHODS:
        print(
            f"  slope in log K, {method}: {slopes[method].min():.3f} to "
            f"{slopes[method].max():.3f}"
        )
    within = (table["slope_lo"] <= -0.5) & (-0.5 <= table["slope_hi"])
    counts = table.assign(within=within).groupby("method")["within"].sum()
    print(
        "  regimes whose 95% slope interval contains -1/2: "
        + ", ".join(f"{m} {int(counts[m])}/{len(regimes)}" for m in script.METHODS)
    )
wide.round(4)

# %% [markdown]
# ## CLAIR against the oracle at every K
#
# The ratio of the mean errors, method / oracle, on the same replicates, with a
# 95% delta-method interval (`ratio_to_oracle.csv`): CLAIR's refitted A^ and the
# A^ of step 3. The target of the refit is a ratio within 1.05 at the largest K.

# %%
to_oracle = pd.read_csv(folder / "ratio_to_oracle.csv")
at_top = to_oracle[to_oracle["K"] == to_oracle["K"].max()]
for method, label in (("clair", "refitted A^"), ("clair_detection", "step 3's A^")):
    r = at_top[at_top["method"] == method]["ratio"]
    print(
        f"error / oracle's at K = {to_oracle['K'].max()}, CLAIR's {label}: from "
        f"{r.min():.3f} to {r.max():.3f}"
    )
to_oracle.pivot_table(
    index=[*script.REGIME, "K"], columns="method", values="ratio"
).round(3)

# %% [markdown]
# ## Against the refined prediction
#
# The same errors divided by the refined first-order prediction: 1 means on the
# prediction. The oracle is the estimate the prediction describes (the top-r SVD
# of the m benign clients' OLS estimates), so its ratio tests the formula; the
# other two show what not knowing S costs.

# %%
display(Image(filename=str(folder / "error_ratio.png")))

# %%
ratios = table.pivot_table(
    index=list(script.REGIME), columns="method", values="ratio_at_K_max"
)
print(
    "error / refined prediction at the largest K: "
    + ", ".join(
        f"{m} {ratios[m].min():.2f}-{ratios[m].max():.2f}" for m in script.METHODS
    )
)
ratios.round(3)

# %% [markdown]
# ## CLAIR's detection
#
# Benign clients flagged by the test keep their local estimate and do not enter
# A^ (a small loss of efficiency); contaminated clients that are missed can tilt
# A^. Means per replicate at the largest K, and the number of replicates (over
# all K) where the solver stopped before its tolerance.

# %%
detection = table[table["method"] == "clair"][
    [*script.REGIME, "K_max", "benign_flagged", "missed", "not_converged"]
]
print(
    f"benign clients flagged per replicate at the largest K: "
    f"{detection['benign_flagged'].min():.2f}-{detection['benign_flagged'].max():.2f}"
    f"; contaminated clients missed: {detection['missed'].min():.2f}-"
    f"{detection['missed'].max():.2f}; replicates not converged: "
    f"{int(detection['not_converged'].sum())}"
)
detection.reset_index(drop=True)

# %% [markdown]
# **Where CLAIR equals the plain SVD.** With lam = 4 / sqrt(K), lam > sqrt(q)
# whenever K < 16 / q. Since $\|S\|_* \le \sqrt{q} \sum_k \|S_k\|_F$, step 1 (P0
# or P1) then returns S^ = 0 (the README's "ceiling"), L^ shares the singular
# vectors of M, and A^ is the plain SVD's subspace, whatever the test flags
# afterwards; S^ can be 0 at larger K too. The table gives, at the smallest K of
# the grid, the share of replicates where the two errors coincide.

# %%
small = frame[frame["K"] == frame["K"].min()]
same = small.pivot_table(
    index=[*script.REGIME, "replicate"], columns="method", values="error"
)
identical = np.isclose(same["clair"], same["svd"], rtol=1e-6, atol=0)
summary = (
    same.assign(identical=identical)
    .groupby(list(script.REGIME))["identical"]
    .mean()
    .rename(f"share of replicates with CLAIR = SVD at K = {frame['K'].min()}")
)
summary.to_frame()

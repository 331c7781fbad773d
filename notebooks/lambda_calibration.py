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
# # Calibrating c_lam: where does P0 recover exactly?
#
# Study `simulations/lambda_calibration.py`, the study behind the default
# lam = c_lam / sqrt(K) of CLAIR's step 1 (docs/programs.md §3.1). On noiseless
# federations
# (random or orthogonal contamination), P0 is solved at every c = lam sqrt(K) of
# a grid *on the same instances* (common random numbers) and at T1's theory
# value c_T1 = 3 / (7 sqrt(gamma)), and lam="auto" (`clair_stats.select_lam`,
# docs/programs.md §3.1.7), which picks lam per instance from a path over lam
# and reweights the flagged clients. Exact recovery: converged, subspace error
# ||P_A^ - P_A||_F <= 1e-6, block support of S^ = the contaminated set and rank
# of L^ = r. A regime's *working window* is the set of c with success on every
# replicate. The report reads the stored full grid (288 regimes, 8 replicates)
# when it is complete and runs the quick grid otherwise; every number quoted
# below is computed from the results shown.

# %%
import sys
from pathlib import Path

ROOT = Path.cwd() if (Path.cwd() / "simulations").is_dir() else Path.cwd().parent
sys.path.insert(0, str(ROOT))
import simulations.lambda_calibration as script  # noqa: E402
from clair_stats.experiments.study import load_or_run  # noqa: E402

frame, folder, args = load_or_run(script)  # full results if all stored, else --quick

# %%
from IPython.display import Image, display  # noqa: E402

from clair_stats import DEFAULT_C_LAM  # noqa: E402
from clair_stats.theory.t1 import t1_max_gamma  # noqa: E402

study = script.build(args)
table = script.windows_table(frame, study.configs)
rec = script.recommendation(table)
mode = "quick" if args.quick else "full"
fixed = frame[frame["c_kind"] != "auto"]
print(
    f"{mode} grid: {len(table)} regimes x ({len(script.C_GRID)} values of c + c_T1)"
    f" x {table['replicates'].max()} replicates = {len(fixed)} solves; solver time "
    f"{fixed['solve_seconds'].sum():.0f} s; plus {len(frame) - len(fixed)} runs of "
    "lam='auto'"
)
print(
    f"recommended c = {rec['best']:g}: in {rec['best_count']} of "
    f"{rec['n_regimes']} windows (tied: {', '.join(f'{c:g}' for c in rec['tied'])})"
)
print(
    f"current DEFAULT_C_LAM = {DEFAULT_C_LAM:g}: in {rec['default_count']} of "
    f"{rec['n_regimes']} windows"
)
print(f"regimes with an empty window: {rec['uncovered']}")
print(
    f"T1's c_T1 recovered on every replicate in {int(table['t1_ok'].sum())} of "
    f"{len(table)} regimes"
)
auto = script.auto_summary(frame, table)
print(
    f"lam='auto' recovered on every replicate in {auto['recovered']} of "
    f"{auto['regimes']} regimes ("
    + ", ".join(f"q={q}: {k}/{n}" for q, (k, n) in auto["per_q"].items())
    + f"), {auto['empty_recovered']} of them with an empty window; it misses "
    f"{len(auto['missed'])} regimes with a nonempty window"
)
print(
    f"its cost: median {auto['solves'][0]:g} solves (max {auto['solves'][1]}); "
    f"time over one solve at the chosen lam: median {auto['time_ratio'][0]:.1f}, "
    f"90th percentile {auto['time_ratio'][1]:.1f}"
)

# %% [markdown]
# ## How many regimes does each c cover?
#
# Left: the fraction of regimes whose exact-recovery window contains c, per q
# (the number of columns of each client's update); right: the same for recovery
# of the subspace alone (the support of S^ may be wrong; step 3 can then use the
# chi-square test). The dotted line is the current default.

# %%
display(Image(filename=str(folder / "coverage.png")))
coverage = script.coverage_table(table).set_index("group")
display(coverage)

# %%
qs = sorted(table["q"].unique())
for q in qs:
    group = table[table["q"] == q]
    counts = {c: sum(c in w for w in group["window_values"]) for c in script.C_GRID}
    best = max(counts, key=counts.get)
    default = counts.get(float(DEFAULT_C_LAM))
    print(
        f"q = {q}: {len(group)} regimes; the best c = {best:g} covers "
        f"{counts[best]}, the default covers {default}, lam='auto' "
        f"{int(group['auto_ok'].sum())}; empty windows "
        f"{sum(len(w) == 0 for w in group['window_values'])}"
    )
sub = script.coverage_table(table, subspace_only=True).set_index("group")
c0 = f"{float(DEFAULT_C_LAM):g}"
print(
    f"at c = {c0}: exact recovery in {coverage.loc['all', c0]} regimes, subspace "
    f"recovery in {sub.loc['all', c0]} of {len(table)}"
)

# %% [markdown]
# **Reading.** The per-q lines compare the best c of each q with the default:
# the gap between them, and the number of regimes without any working c, is
# what a single c_lam gives up. The `auto` column of the table (and the
# dash-dot lines of the figure, one per q) counts the regimes lam="auto"
# recovers on every replicate: it chooses lam per instance, so it is not bound
# to any one window, and its reweighting recovers regimes whose window is
# empty. The last line separates the two requirements of
# exact recovery: where the subspace count exceeds the exact count, the default
# finds span(A) but not the contaminated set.

# %% [markdown]
# ## Pooled success rate
#
# The exact-recovery rate over all regimes and replicates of each q, with 95%
# Wilson bands (conservative for the mean rate of a fixed design of regimes).

# %%
display(Image(filename=str(folder / "success_rate.png")))

# %% [markdown]
# ## Every regime's window
#
# Rows: regimes, grouped by q and K (within a group by p, r, gamma, type);
# columns: c_T1, lam="auto" and the grid of c. Green cells are full success; a
# window is a run of green cells.

# %%
display(Image(filename=str(folder / "windows.png")))


def median(values: list) -> float:
    return sorted(values)[len(values) // 2] if values else float("nan")


for (q, K), group in table.groupby(["q", "K"]):
    lo = [min(w) for w in group["window_values"] if w]
    hi = [max(w) for w in group["window_values"] if w]
    print(
        f"q = {q:2d}, K = {K:3d}: median window [{median(lo):g}, {median(hi):g}] "
        f"(lower ends {min(lo, default=float('nan')):g}-"
        f"{max(lo, default=float('nan')):g}); empty "
        f"{sum(len(w) == 0 for w in group['window_values'])}/{len(group)}"
    )
bound = {r: t1_max_gamma(1.0, r) for r in sorted(table["r"].unique())}
print(
    "largest gamma T1's condition allows even at the least coherence mu = 1: "
    + ", ".join(f"r = {r}: {g:.3f}" for r, g in bound.items())
    + f"; smallest gamma of the grid: {table['gamma'].min():g}"
)
ceiling = sorted({(q, K) for q, K in zip(table["q"], table["K"], strict=True)})
print(
    "ceiling sqrt(q K) (above it P0 returns S^ = 0): "
    + ", ".join(f"q={q}, K={K}: {(q * K) ** 0.5:.2f}" for q, K in ceiling)
)

# %% [markdown]
# **Reading.** The lines give, per (q, K), the median window (median lower and
# upper ends over the regimes with a nonempty window): a window that moves with K
# means no c = lam sqrt(K) suits every K. Above the
# ceiling sqrt(q K) no client can be flagged (P0's optimum is (L, S) = (M, 0)),
# which closes the windows of small q K from above. The c_T1 column shows the
# theory value of T1, below the grid; the printed bound says why T1 does not
# cover these regimes: its condition gamma / (1 - gamma) <= 9 / (121 mu r) fails
# for every gamma of the grid whatever the incoherence mu >= 1.

# %% [markdown]
# ## The full summary
#
# `summary.md` holds the recommendation, both coverage tables, the
# intersections of the windows and the per-regime rates; its first section
# (without the lists of regimes):

# %%
text = (folder / "summary.md").read_text().split("## Coverage")[0]
print("\n".join(line for line in text.splitlines() if not line.startswith("  ")))

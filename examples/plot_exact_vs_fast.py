"""
The fast solvers against the exact cvxpy reference
==================================================

Step 1 of CLAIR is a convex program, so any correct solver reaches the same
optimum. ``decompose(..., solver="proximal")`` (the default) runs ADMM for P0 and
exact block-coordinate descent for P1; ``solver="cvxpy"`` writes the same program
in cvxpy and hands it to a conic solver, SCS (``cvxpy_solver="SCS"``, the
default) or the interior-point Clarabel (``cvxpy_solver="CLARABEL"``). The
nuclear norm makes the cvxpy program a semidefinite one of size p + Kq, so the
reference is only for small instances. This example solves one instance of P0
and one of P1 with all three, compares the objectives, the solutions and the
times, and checks that they agree to within their certified duality gaps; then
it times the proximal solver and SCS as the problem grows.

The solvers are described in docs/programs.md §5 (cvxpy in
docs/programs.md §5.4, ADMM in docs/programs.md §5.5, block-coordinate descent
in docs/programs.md §5.6), the certificate and the bounds used below in
docs/programs.md §5.2, and the cross-validation in the tests in
docs/programs.md §5.7.
"""

# %%
# One small instance, P0
# ----------------------
# Fifteen clients, p x q = 12 x 2, a shared subspace of rank 2, three clients
# contaminated; no noise, so the program is P0 (exact decomposition
# :math:`L + S = M`). Every solve carries a certificate (docs/programs.md §5.2):
# its objective is above the optimum by at most its duality gap, so two
# certified solutions have objectives within the larger of their gaps.
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

from clair_stats import FederatedModel, decompose
from clair_stats.core.linalg import top_subspace
from clair_stats.evaluation.metrics import projection_distance

SOLVERS = {
    "proximal": {"solver": "proximal"},
    "cvxpy/SCS": {"solver": "cvxpy", "cvxpy_solver": "SCS"},
    "cvxpy/CLARABEL": {"solver": "cvxpy", "cvxpy_solver": "CLARABEL"},
}


def solve_all(updates, **problem):
    """Decompose with every solver; the results and wall-clock times by name."""
    results, seconds = {}, {}
    for name, options in SOLVERS.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            # cvxpy may warn about its own settings; the certificate is the check
            warnings.simplefilter("ignore", UserWarning)
            results[name] = decompose(updates, **problem, **options)
        seconds[name] = time.perf_counter() - start
    return results, seconds


model = FederatedModel(p=12, q=2, rank=2, n_clients=15, contamination=0.2)
sample = model.sample(noise=0.0, seed=3)
exact, exact_seconds = solve_all(sample.updates)
for name, res in exact.items():
    print(f"{name:<15} {res.info!r}")

# %%
# The reference is ``solver="cvxpy"`` as called without options (SCS). The
# objectives agree to within the certified gaps, and so do the solutions: the
# distance of each :math:`\hat L` to the reference, the distance of the column
# spaces of :math:`\hat L`, and the block norms of :math:`\hat S`. P0 is not
# strongly convex, so a difference of :math:`10^{-7}` in the objective may
# come with a larger one in :math:`\hat L`: here Clarabel stopped a little
# earlier than the two others (its objective is the highest, by about its gap).
# The proximal solver returns exact zeros outside the support; the conic
# solvers return entries at the level of their tolerance there.
ref = exact["cvxpy/SCS"]
ref_subspace = top_subspace(ref.low_rank, model.rank)
print(f"{'solver':<15} {'objective':>16} {'|diff|':>9} {'bound':>9} {'seconds':>8}")
for name, res in exact.items():
    diff = abs(res.info.objective - ref.info.objective)
    bound = max(res.info.duality_gap, ref.info.duality_gap)
    print(
        f"{name:<15} {res.info.objective:16.10f} {diff:9.2e} {bound:9.2e} "
        f"{exact_seconds[name]:8.3f}"
    )
print(f"\n{'solver':<15} {'||L - L_ref||/||L_ref||':>24} {'||P - P_ref||_F':>16}")
for name, res in exact.items():
    rel = np.linalg.norm(res.low_rank - ref.low_rank) / np.linalg.norm(ref.low_rank)
    dist = projection_distance(top_subspace(res.low_rank, model.rank), ref_subspace)
    print(f"{name:<15} {rel:24.2e} {dist:16.2e}")
print("\nblock norms ||S^_k||_F outside the true support (largest):")
for name, res in exact.items():
    print(f"  {name:<15} {res.block_norms[sample.benign].max():.1e}")
print(
    "support (1e-3 ||M||_F threshold) equal to the contaminated set:",
    {
        name: bool(np.array_equal(res.support(tol=1e-3), sample.contaminated))
        for name, res in exact.items()
    },
)

# %%
# One noisy instance, P1
# ----------------------
# With noise the program is P1,
# :math:`\tfrac12\|M - L - S\|_F^2 + \mu(\|L\|_* + \lambda\sum_k\|S_k\|_F)`,
# with :math:`\mu` at the noise operator norm :math:`\tau(\sqrt p + \sqrt{Kq})`.
# P1 is 1-strongly convex in the fitted value :math:`F = L + S`, which turns the
# gaps into a bound on the distance of two solutions:
# :math:`\|F_1 - F_2\|_F \le \sqrt{2\,\mathrm{gap}_1} + \sqrt{2\,\mathrm{gap}_2}`.
tau = 0.05
noisy = model.sample(noise=tau, seed=3)
mu = tau * (np.sqrt(model.p) + np.sqrt(model.n_clients * model.q))
penalized, penalized_seconds = solve_all(noisy.updates, mode="penalized", mu=mu)
ref1 = penalized["cvxpy/SCS"]
fitted_ref = ref1.low_rank + ref1.sparse
print(f"mu = {mu:.4f}")
print(
    f"{'solver':<15} {'objective':>14} {'rel. gap':>9} {'||F - F_ref||':>14} "
    f"{'bound':>9} {'seconds':>8}"
)
for name, res in penalized.items():
    dist = np.linalg.norm(res.low_rank + res.sparse - fitted_ref)
    bound = np.sqrt(2 * res.info.duality_gap) + np.sqrt(2 * ref1.info.duality_gap)
    print(
        f"{name:<15} {res.info.objective:14.9f} {res.info.relative_gap:9.1e} "
        f"{dist:14.2e} {bound:9.2e} {penalized_seconds[name]:8.3f}"
    )

# %%
# Time against size
# -----------------
# The proximal solvers cost a few thin SVDs per iteration; the conic solvers
# work on a semidefinite cone of size p + Kq. Here both are timed (P0, default
# tolerances) on instances with p x Kq from 10 x 20 to 40 x 120; Clarabel only
# on the two smallest, where it already takes seconds. At these sizes the
# proximal solver's time is mostly fixed overhead (milliseconds); the measured
# times depend on the load of the machine that builds the gallery.
sizes = [(10, 10), (16, 20), (24, 30), (32, 40), (40, 60)]
timing = {name: [] for name in SOLVERS}
entries = []
for p, n_clients in sizes:
    instance = FederatedModel(
        p=p, q=2, rank=2, n_clients=n_clients, contamination=0.2
    ).sample(seed=3)
    entries.append(p * n_clients * 2)
    for name, options in SOLVERS.items():
        if name == "cvxpy/CLARABEL" and p > 16:
            timing[name].append(np.nan)
            continue
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            decompose(instance.updates, **options)
        timing[name].append(time.perf_counter() - start)
print(f"{'entries of M':>12}" + "".join(f"{name:>16}" for name in SOLVERS))
for i, size in enumerate(entries):
    cells = "".join(f"{timing[name][i]:16.3f}" for name in SOLVERS)
    print(f"{size:12d}{cells}")

# %%
# The figure: left, the block norms of :math:`\hat S` of P0 from the three
# solvers (on a log scale, so that the conic solvers' near-zeros show);
# middle, the differences that the certificates bound; right, the times.
fig, (ax_blocks, ax_diff, ax_time) = plt.subplots(1, 3, figsize=(15, 4.3))
floor = 1e-14  # exact zeros are drawn at this floor
clients = np.arange(model.n_clients)
for (name, res), marker in zip(exact.items(), "osx", strict=True):
    ax_blocks.semilogy(
        clients, np.maximum(res.block_norms, floor), marker, ms=7, label=name
    )
ax_blocks.set_xlabel("client k")
ax_blocks.set_ylabel(r"$\|\hat S_k\|_F$ (P0; exact zeros at $10^{-14}$)")
ax_blocks.set_title("Block norms: contaminated clients on top")
ax_blocks.legend(fontsize=8, loc="center right")

names = ["proximal", "cvxpy/CLARABEL"]
x = np.arange(len(names))
obj_diff = [
    max(abs(exact[n].info.objective - ref.info.objective), floor) for n in names
]
obj_bound = [max(exact[n].info.duality_gap, ref.info.duality_gap) for n in names]
fit_diff = [
    max(np.linalg.norm(penalized[n].low_rank + penalized[n].sparse - fitted_ref), floor)
    for n in names
]
fit_bound = [
    np.sqrt(2 * penalized[n].info.duality_gap) + np.sqrt(2 * ref1.info.duality_gap)
    for n in names
]
w = 0.2
bars = (
    (obj_diff, "C0", 1.0, "P0: |objective - reference|"),
    (obj_bound, "C0", 0.4, "P0: bound max(gap, gap_ref)"),
    (fit_diff, "C1", 1.0, r"P1: $\|F - F_{ref}\|_F$"),
    (fit_bound, "C1", 0.4, r"P1: bound $\sqrt{2 gap} + \sqrt{2 gap_{ref}}$"),
)
for j, (values, colour, alpha, label) in enumerate(bars):
    ax_diff.bar(x + (j - 1.5) * w, values, w, color=colour, alpha=alpha, label=label)
ax_diff.set_yscale("log")
ax_diff.set_xticks(x, [f"{n}\nvs cvxpy/SCS" for n in names])
ax_diff.set_ylabel("absolute difference or bound")
ax_diff.set_title("Differences stay below the certified bounds")
ax_diff.legend(fontsize=7, loc="upper left")
ax_diff.set_ylim(top=1e2)

for (name, values), marker in zip(timing.items(), "osx", strict=True):
    ax_time.loglog(entries, values, marker=marker, ls="-", label=name)
ax_time.xaxis.set_minor_formatter(NullFormatter())
ax_time.set_xlabel("entries of M (p x Kq)")
ax_time.set_ylabel("wall-clock seconds")
ax_time.set_title("Time of one P0 solve")
ax_time.legend(fontsize=8)
fig.tight_layout()
plt.show()

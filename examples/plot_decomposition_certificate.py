"""
Step 1: low rank plus block sparse, and its certificate
=======================================================

:func:`~clair_stats.decompose` splits the stacked updates
:math:`M = [\\hat\\Theta_1, \\dots, \\hat\\Theta_K]` (p x Kq) into a low-rank part
:math:`\\hat L` (the shared subspace) and a block-sparse part :math:`\\hat S` (one
block per client, nonzero for the contaminated ones) by the convex program P0,

.. math::

    \\min_{L, S} \\|L\\|_* + \\lambda \\sum_k \\|S_k\\|_F
    \\quad \\text{s.t.} \\quad L + S = M .

Every solve returns a duality-gap certificate: a feasible primal point, a
feasible dual point and the gap between their objectives, which bounds how far
the returned objective can be above the optimum, whatever solver produced it.
This example solves P0 on a noiseless federation, looks at :math:`\\hat L` and
:math:`\\hat S` against the truth, and shows what the certificate does and does
not say. The programs are in docs/programs.md §3.1, the certificate in
docs/programs.md §5.2, and exact recovery (T1) in docs/claims.md §4.2.
"""

# %%
# A noiseless federation
# ----------------------
# Thirty clients, p x q = 30 x 4, a shared subspace of rank 3 and six clients
# contaminated by random matrices of the benign clients' norm. Without noise,
# :math:`M = L_0 + S_0` exactly: ``sample.low_rank_truth`` holds the blocks
# :math:`L_{0,k} = A B_k^\top` of the benign clients (zero for the others) and
# ``sample.sparse_truth`` the contaminated blocks.
import warnings

import matplotlib.pyplot as plt
import numpy as np

from clair_stats import ConvergenceWarning, FederatedModel, decompose, duality_gap
from clair_stats.core.linalg import stack, top_subspace
from clair_stats.evaluation.metrics import projection_distance

model = FederatedModel(p=30, q=4, rank=3, n_clients=30, contamination=0.2)
sample = model.sample(noise=0.0, seed=1)
M = stack(sample.updates)  # p x Kq, block k = client k
print(sample)
print("stacked M:", M.shape)
print("contaminated clients:", np.flatnonzero(sample.contaminated).tolist())

# %%
# Solve P0
# --------
# With no options, ``decompose`` solves P0 by ADMM with
# :math:`\lambda = c_\lambda / \sqrt K` (:math:`c_\lambda = 4`) and stops when
# the relative duality gap and the relative primal residual are below
# ``tol = 1e-7``. ``summary()`` reports the program, the rank of
# :math:`\hat L`, the nonzero blocks of :math:`\hat S` and the solver's
# statistics; ``info`` is the :class:`~clair_stats.SolverInfo` itself.
result = decompose(sample.updates)
print(result.summary())
info = result.info
print(
    f"\n{info.solver} on {info.problem}: converged={info.converged}, "
    f"{info.iterations} iterations, objective {info.objective:.10f}, "
    f"duality gap {info.duality_gap:.2e} (relative {info.relative_gap:.2e})"
)

# %%
# :math:`\hat L` and :math:`\hat S` against the truth
# ---------------------------------------------------
# Exact recovery (T1) is a statement about the column space of :math:`\hat L`
# and the block support of :math:`\hat S`: both are right here, and
# :math:`\hat L` equals :math:`L_0` on the benign clients. On a contaminated
# client, :math:`\hat L_k` keeps a part of its update that lies inside
# :math:`\mathrm{span}(A)` (cheaper for the objective than putting all of it
# into :math:`\hat S_k`), so the values of the contaminated blocks differ.
A_hat = top_subspace(result.low_rank, model.rank)
benign = sample.benign
true_norms = np.linalg.norm(sample.sparse_truth, axis=(1, 2))
print(f"rank of L^: {result.rank()} (true {model.rank})")
print(f"||P_A^ - P_A||_F = {projection_distance(A_hat, sample.subspace):.2e}")
print(
    "support of S^ equals the contaminated set:",
    bool(np.array_equal(result.support(), sample.contaminated)),
)
err_benign = np.linalg.norm(result.low_rank[benign] - sample.low_rank_truth[benign])
print(
    "relative error of L^ on the benign clients: "
    f"{err_benign / np.linalg.norm(sample.low_rank_truth[benign]):.1e}"
)
in_span = np.linalg.norm(result.low_rank[~benign], axis=(1, 2))
print("||L^_k||_F on the contaminated clients:", np.round(in_span, 3).tolist())

# %%
# What the certificate certifies
# ------------------------------
# :func:`~clair_stats.duality_gap` takes *any* candidate :math:`(L, S)` and any
# candidate dual matrix :math:`Y`, makes both feasible (the primal residual is
# moved into :math:`S`; :math:`Y` is scaled into the dual constraints
# :math:`\|Y\|_{op} \le 1`, :math:`\|Y_k\|_F \le \lambda`) and returns a
# :class:`~clair_stats.Certificate`. By weak duality
#
# .. math::
#
#     \text{primal} - \text{optimum} \le \text{primal} - \text{dual} = \text{gap},
#
# so the gap certifies the objective, not the distance to the truth. Recomputed
# from the returned arrays with the exact :math:`\|Y\|_{op}`, it is a little
# smaller than ``info.duality_gap``: ADMM uses a cheap upper bound of
# :math:`\|Y\|_{op}` instead of an SVD (docs/programs.md §5.5). Its primal is
# the objective at the feasible point :math:`(\hat L, \hat S + R)`, slightly
# above ``info.objective``, which is taken at the returned point, feasible only
# up to the primal residual :math:`R`. Applied to the truth
# :math:`(L_0, S_0)` (feasible, with the solver's dual), it certifies that the
# truth is *not* a minimiser of P0 here: its objective is above the optimum by
# about the gap, which is why the contaminated blocks of :math:`\hat L` above are
# not zero.
problem = result.problem
mine = duality_gap(
    problem,
    M,
    stack(result.low_rank),
    stack(result.sparse),
    result.center,
    stack(result.dual),
)
print("certificate of the solution:", mine)
truth = duality_gap(
    problem,
    M,
    stack(sample.low_rank_truth),
    stack(sample.sparse_truth),
    None,
    stack(result.dual),
)
print("certificate of the truth:   ", truth)
print(
    f"objective of the truth - objective of the solution = "
    f"{truth.primal - mine.primal:.4f} (gap of the truth {truth.gap:.4f})"
)

# %%
# The certificate as a stopping rule
# ----------------------------------
# The fast solvers stop on this certificate. Stopping ADMM after 1, 2, ...
# iterations (each stop warns, so the warnings are silenced here) shows the
# relative gap falling to the tolerance, and the actual excess of the feasible
# primal objective over the optimum (measured against a solve at ``tol =
# 1e-11``) staying below it at every iteration. ADMM's dual iterate is nearly
# optimal too, so here the bound is almost tight: the two curves nearly meet.
reference = decompose(sample.updates, tol=1e-11)
optimum = duality_gap(
    problem,
    M,
    stack(reference.low_rank),
    stack(reference.sparse),
    None,
    stack(reference.dual),
).primal
iterations = np.arange(1, 23)
gaps, excess = [], []
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    for n_iter in iterations:
        partial = decompose(sample.updates, max_iter=int(n_iter), tol=1e-12)
        cert = duality_gap(
            problem,
            M,
            stack(partial.low_rank),
            stack(partial.sparse),
            None,
            stack(partial.dual),
        )
        gaps.append(cert.relative_gap)
        excess.append(max(cert.primal - optimum, 0.0) / optimum)
gaps, excess = np.array(gaps), np.array(excess)
print(
    "relative gap >= relative excess at every iteration:", bool(np.all(gaps >= excess))
)
print(f"iterations to a relative gap below 1e-7: {iterations[gaps < 1e-7][0]}")

# %%
# The figure: the singular values of :math:`M` (rank 27 = 3 + 6 x 4: the shared
# subspace plus the six contaminated blocks) and of :math:`\hat L` (three above
# round-off), the block norms of :math:`\hat S` against those of :math:`S_0`,
# and the certificate along the iterations.
fig, (ax_sv, ax_blocks, ax_gap) = plt.subplots(1, 3, figsize=(14, 4.2))
floor = 1e-16  # singular values at round-off are drawn at this floor
sv_m = np.linalg.svd(M, compute_uv=False)
sv_l = result.singular_values()
index = np.arange(1, sv_m.size + 1)
ax_sv.semilogy(index, np.maximum(sv_m, floor), "o-", ms=4, label="M (data)")
ax_sv.semilogy(index, np.maximum(sv_l, floor), "s-", ms=4, label=r"$\hat L$")
ax_sv.set_xlabel("index i")
ax_sv.set_ylabel(r"singular value $\sigma_i$")
ax_sv.set_title(r"$\hat L$ has rank 3")
ax_sv.legend()

clients = np.arange(model.n_clients)
width = 0.4
ax_blocks.bar(clients - width / 2, true_norms, width, label=r"truth $\|S_{0,k}\|_F$")
ax_blocks.bar(clients + width / 2, result.block_norms, width, label=r"$\|\hat S_k\|_F$")
ax_blocks.set_xlabel("client k")
ax_blocks.set_ylabel("block norm")
ax_blocks.set_ylim(0, 1.35 * true_norms.max())
ax_blocks.set_title(r"$\hat S$: nonzero on the contaminated clients")
ax_blocks.legend(loc="upper center", ncol=2)

ax_gap.semilogy(iterations, gaps, "o-", ms=4, label="certified relative gap")
ax_gap.semilogy(
    iterations,
    np.maximum(excess, floor),
    "s--",
    ms=4,
    label="(primal - optimum) / optimum",
)
ax_gap.axhline(1e-7, color="k", ls=":", label="default tol = 1e-7")
ax_gap.set_xlabel("ADMM iterations")
ax_gap.set_ylabel("relative to the optimum")
ax_gap.set_title("The gap bounds the excess objective")
ax_gap.legend()
fig.tight_layout()
plt.show()

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
# # Byzantine robustness: CLAIR and Flower's aggregators under every attack
#
# Study `simulations/byzantine.py`. A fraction gamma of K = 40 clients attacks
# with one of the attacks of `clair_stats.simulate.attacks` (omniscient attackers:
# they see the benign updates as sent, the true subspace A, the backbone and the
# noise level). Three federations: `heterogeneous` (benign Theta_k = A B_k^T),
# `backbone` (Theta_0 + A B_k^T, Theta_0 unknown, CLAIR with `center=True`) and
# `homogeneous` (B_k = B + 0.1 Z_k, where one aggregate fits everyone well). We
# measure the *relative MSE* of the benign clients, the sum of
# ||Theta~_k - Theta_k||_F^2 over benign k divided by local fitting's (1 = local,
# 0.1 keeps a tenth of its error), for three CLAIR calls, oracle CLAIR and
# Flower's own server-side aggregators, and rank the methods by their worst case
# over the attacks. The report reads the stored full grid when it is complete and
# runs the quick grid otherwise; every number quoted below is computed from the
# results shown.

# %%
import sys
from pathlib import Path

ROOT = Path.cwd() if (Path.cwd() / "simulations").is_dir() else Path.cwd().parent
sys.path.insert(0, str(ROOT))
import simulations.byzantine as script  # noqa: E402
from clair_stats.experiments.study import load_or_run  # noqa: E402

frame, folder, args = load_or_run(script)  # full results if all stored, else --quick

# %%
from IPython.display import Image, Markdown, display  # noqa: E402

mode = "quick" if args.quick else "full"
cells = ["federation", "attack", "gamma"]
reps = frame.groupby(cells)["replicate"].nunique()
attacked = frame[frame["gamma"] > 0]
print(
    f"{mode} grid: {frame['federation'].nunique()} federations x "
    f"{attacked['attack'].nunique()} attacks x {attacked['gamma'].nunique()} "
    f"fractions gamma in [{attacked['gamma'].min():g}, {attacked['gamma'].max():g}]"
    f" + gamma = 0 without attacker, {reps.min()}-{reps.max()} replicates each, "
    f"{frame['method'].nunique()} methods; scenario {script.SCENARIO}"
)
per_replicate = frame.groupby([*cells, "replicate"])["seconds"].first()
print(
    f"seconds per replicate (all methods): median {per_replicate.median():.2f}, "
    f"largest {per_replicate.max():.2f}"
)
worst = script.worst_case(frame)
found = script.targets(frame)
top = frame["gamma"].max()

# %% [markdown]
# ## Worst case over the attacks
#
# For each method and gamma, the attack with the largest mean relative MSE: the
# error a benign client should expect when it does not know how it is attacked.
# The aggregators give every client one matrix, so a benign client keeps its whole
# distance to the others inside span(A) as error (30 times local's in the
# heterogeneous federations); CLAIR keeps each client's part in span(A) and
# averages only the rest. Bulyan needs K >= 4f + 3 and stops at gamma = 0.2.

# %%
display(Image(filename=str(folder / "worst_case.png")))
display(Markdown((folder / "worst_case.md").read_text()))

# %%
flower = list(script.FLOWER_METHODS)
for federation in script.FEDERATIONS:
    part = worst[(worst["federation"] == federation) & (worst["gamma"] == top)]
    part = part.set_index("method")
    best = part.reindex(flower)["mean"].dropna()
    clair = part.loc["clair"]
    print(
        f"{federation} at gamma = {top:g}: clair worst case {clair['mean']:.3g} "
        f"({clair['attack']}); best Flower aggregator {best.idxmin()} "
        f"{best.min():.3g} ({part.loc[best.idxmin(), 'attack']}); oracle CLAIR "
        f"{part.loc['oracle_clair', 'mean']:.3g}"
    )

# %% [markdown]
# **Reading.** Each line puts the default `clair` next to the best of Flower's
# aggregators, both at their worst attack, and next to oracle CLAIR (true A and
# S), the ceiling of what the refinement can give.

# %% [markdown]
# ## The targets
#
# T1: in the heterogeneous and backbone federations `clair`'s worst case is at
# most 0.3 for gamma <= 0.3 and below 1 up to gamma = 0.45 (`clair_sigma`
# separately). T2: no benign client ends above 1.1 times its local error in any
# replicate (a flagged client is at exactly 1; the study's docstring shows that
# the noise of the ratio of a kept client does not come near 1.1, so every
# replicate above it counts). T3: in the homogeneous federation `clair`'s mean is
# within 1.1 times the best Flower aggregator's in every (attack, gamma) cell.

# %%
for row in found.itertuples():
    verdict = "met" if row.met else "NOT MET"
    print(f"{row.target} {row.federation} {row.method}: {verdict}; {row.detail}")
print(f"\n{int(found['met'].sum())} of {len(found)} target checks met")

# %% [markdown]
# ## Relative MSE per attack
#
# One figure per federation, one panel per attack; the gamma = 0 point (no
# attacker) is the same in every panel. Lines are Monte Carlo means, bands 95% t
# intervals (none in the quick grid, which has one replicate).

# %%
for federation in script.FEDERATIONS:
    display(Image(filename=str(folder / f"by_attack_{federation}.png")))

# %%
table = script.summary_table(frame)
at_top = table[(table["gamma"] == top) & (table["method"].isin(flower))]
for federation, part in at_top.groupby("federation", sort=False):
    # per attack the Flower aggregator that does best against it, then the attack
    # that leaves even that one worst off
    best = part.loc[part.groupby("attack")["mean"].idxmin()].set_index("attack")
    attack = best["mean"].idxmax()
    print(
        f"{federation} at gamma = {top:g}: with the best Flower aggregator for each "
        f"attack, {attack} still leaves {best.loc[attack, 'method']} at "
        f"{best.loc[attack, 'mean']:.3g}"
    )

# %% [markdown]
# **Reading.** The worst-case tables rank each aggregator by its own worst
# attack; the lines above instead let the server pick, for each attack, the
# Flower aggregator that does best against it (an oracle choice), and name the
# attack that defeats even that choice. Attacks that copy one matrix to every
# attacker (`alie`, `ipm`, `mimic`) move the medians and Krum; in the homogeneous
# federation, where one aggregate is nearly right for everyone, they are what
# takes the aggregators towards or above local fitting.

# %% [markdown]
# ## What the CLAIR calls detect and choose
#
# `clair` is `clair(M)` with every default (the rank by its rule, the empirical
# null, the trimmed refit, distinct pooling); `clair_sigma` is told r = 3 and
# sigma = tau; `clair_paper` is the paper's estimator (the iid chi-square test,
# no trimmed refit, plain mean pooling). Precision is 1 when nothing is flagged;
# a low recall is harmless for attackers whose part off span(A) is benign-like
# (`in_subspace`, `sign_flip`, `adaptive` by design).

# %%
detection = script.detection_table(frame)
display(detection.round(2))
clair_rows = frame[frame["method"].isin(script.CLAIR_METHODS)]
default = clair_rows[clair_rows["method"] == "clair"]
r = script.SCENARIO["r"]
above = default[default["rank"] > r]
print(
    f"default clair: rank r = {r} in {(default['rank'] == r).mean():.0%} of the "
    f"replicates, larger in {len(above) / len(default):.0%} (largest "
    f"{int(default['rank'].max())})"
)
for method, rows in clair_rows.groupby("method", sort=False):
    everyone = (rows["n_flagged"] == script.SCENARIO["K"]).mean()
    print(
        f"{method}: AssumptionWarning in {rows['warned'].mean():.0%} of the "
        f"replicates; flags every client in {everyone:.0%}"
    )
skipped = frame[frame["skipped"].notna()]
print(
    f"flower_bulyan skipped (K < 4f + 3) in {len(skipped)} of "
    f"{int((frame['method'] == 'flower_bulyan').sum())} replicates, from gamma = "
    f"{skipped['gamma'].min() if len(skipped) else float('nan'):g}"
)

# %% [markdown]
# **Reading.** A rank above r means the default rank rule counted a coordinated
# attack as shared directions (a common offset D spans up to q column directions):
# the attackers are then inside A^ and not flagged, and benign clients keep their
# own noise along those directions, a cost of about q tau^2 per extra direction
# against local's p q tau^2. Flagging every client returns everyone to local
# fitting (relative MSE 1): safe, but the gain is lost.

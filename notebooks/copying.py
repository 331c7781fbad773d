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
# # Federated LoRA on a small Transformer: sequence copying (Figures 2 and 3)
#
# K = 10 clients fine-tune rank-4 LoRA adapters (on $W_q, W_k, W_v, W_o$ of both
# layers) of one pretrained attention-only Transformer on their own copying task
# (Song, Xu and Zhong 2025): a segment of a Zipf-distributed token sequence appears
# twice, and the model predicts the second copy. The benign clients' task is
# *swap-copy*: the second copy swaps tokens 0 <-> 1 and 2 <-> 3. Clients 7 and 9 are
# contaminated with another map (8 <-> 9, 10 <-> 11, 12 <-> 13), client 8 with label
# noise (a random second copy).
#
# - **Homogeneous** experiment: every benign client swaps every sequence.
# - **Heterogeneous** experiment: benign client j swaps a fraction $\pi_j$ of its
#   sequences ($\pi_j$ evenly spaced on [0.2, 1], rising with j) and copies the rest
#   exactly, so each client's best adapter is the shared swap update at its own
#   strength: variation *inside* the shared subspace, which CLAIR's refinement keeps
#   (up to its empirical-Bayes pooling) and FedAvg averages away.
#
# Each client ends up with $\Delta W$ merged into the pretrained weights and is
# scored by masked next-token accuracy on fresh sequences of its own task. Methods:
# local LoRA, FedAvg over all clients, FedAvg over the true benign set, plain SVD +
# refinement, CLAIR (per module; a client is flagged when Holm over the 10 x 8
# (client, module) empirical-null p-values rejects any of its modules,
# `clair_stats.lora.verdict`; step 4 as in `clair()`: the subspace refitted on the
# kept clients and each client's in-subspace part pooled towards the mean by the
# empirical-Bayes factor $b_k$), the same verdict with the paper's refinement, and
# oracle CLAIR (true benign set) with the paper's and with the pooled step 4. The
# study is `simulations/copying/study.py` (`python -m simulations.copying`); this report
# loads the stored full run when all of it is there and runs the quick grid
# otherwise.

# %%
import sys
from pathlib import Path

ROOT = Path.cwd() if (Path.cwd() / "simulations").is_dir() else Path.cwd().parent
sys.path.insert(0, str(ROOT))
import simulations.copying.study as script  # noqa: E402
from clair_stats.experiments.study import load_or_run  # noqa: E402

frame, folder, args = load_or_run(script)

# %%
import pandas as pd  # noqa: E402
from IPython.display import Image, Markdown, display  # noqa: E402

per_replicate = frame.drop_duplicates(["experiment", "replicate"])
counts = per_replicate.groupby("experiment")["replicate"].nunique()
print(
    f"{'quick' if args.quick else 'full'} grid: "
    + ", ".join(f"{e}: {n} replicates" for e, n in counts.items())
    + f"; {per_replicate['seconds'].mean():.0f} s per replicate on average "
    f"({per_replicate['seconds'].sum() / 60:.0f} min of computing in all)."
)
table = pd.read_csv(folder / "summary.csv")
labels = {m: script.STYLE[m][0] for m in script.STYLE}


def benign_means(experiment):
    """Mean benign accuracy and relative change per method (one experiment)."""
    part = table[table["experiment"] == experiment].set_index("method")
    return part


def compare(experiment):
    """Print the comparisons the figures are about, from the stored numbers."""
    part = benign_means(experiment)
    acc = part["benign_accuracy"]
    change = part["benign_relative_change"]
    print(f"{experiment}: mean benign accuracy by method")
    for method in script.STYLE:
        print(
            f"  {labels[method]:26s} {acc[method]:.3f} "
            f"[{part.loc[method, 'benign_accuracy_lo']:.3f}, "
            f"{part.loc[method, 'benign_accuracy_hi']:.3f}]   relative change vs "
            f"local {change[method]:+.3f}"
        )
    best = acc.drop(["pretrained"]).idxmax()
    print(f"  highest benign accuracy: {labels[best]}")
    for other in ("local", "fedavg", "fedavg_benign", "svd_refine"):
        verdict = "above" if acc["clair"] > acc[other] else "below"
        print(f"  CLAIR is {verdict} {labels[other]} ({acc[other]:.3f})")
    # paired comparison replicate by replicate (same clients, same test sets)
    wide = frame[frame["experiment"] == experiment].pivot(
        index="replicate", columns="method", values="benign_accuracy"
    )
    for other in ("local", "fedavg", "fedavg_benign"):
        wins = int((wide["clair"] > wide[other]).sum())
        print(
            f"  CLAIR above {labels[other]} in {wins} of {len(wide)} replicates "
            "(mean benign accuracy)"
        )


# %% [markdown]
# ## Homogeneous benign clients (Figure 2)
#
# Top: per-client accuracy by method (mean over replicates with 95% Monte Carlo
# intervals); bottom: relative change against local LoRA, per client. Shaded
# columns are the contaminated clients (they are scored on their own task, so their
# accuracy says how much each method imposes on them, not how well it serves the
# benign ones).

# %%
display(Image(filename=str(folder / "copying_homogeneous.png")))

# %% [markdown]
# **Reading.** In this design every benign client has the same task, so averaging
# the benign updates (FedAvg over the true benign set) is the natural best: it
# removes each client's estimation noise entirely. The paper's refinement keeps each
# client's own component in the rank-2 shared subspace and averages only the rest;
# the pooled step 4 shrinks that component towards the mean only as far as the
# clients' spread looks like noise, and a LoRA update's noise is much stronger
# inside the shared subspace than outside it, so $b_k$ stays near 0.1 in both
# designs: CLAIR sits between local and FedAvg over the benign set when detection
# works.
# FedAvg over all clients mixes in the contaminated updates. The numbers:

# %%
compare("homogeneous")

# %% [markdown]
# ## Heterogeneous benign clients (Figure 3)
#
# Same layout. Benign client j swaps a fraction $\pi_j$ of its sequences, rising
# with j; client 0 mostly copies exactly, client 6 always swaps.

# %%
display(Image(filename=str(folder / "copying_heterogeneous.png")))

# %% [markdown]
# **Reading.** Here one average cannot serve every benign client: clients with a
# small $\pi_j$ want (almost) no swap and clients with a large one the full swap.
# This is where FedAvg, even over the benign set only, should fall behind CLAIR,
# which keeps each client's strength along the shared subspace. Whether it does,
# and for which clients, the numbers say:

# %%
compare("heterogeneous")

# %% [markdown]
# Per benign client (rising $\pi_j$): mean relative change against local of FedAvg
# over the benign set, CLAIR and oracle CLAIR. One average sits near the middle
# clients' strength; if keeping each client's own component pays, it should pay
# for the clients far from that average, at both ends of $\pi$. The last line says
# for which clients CLAIR is above FedAvg over the benign set.

# %%
clients = script.client_frame(frame)
benign = clients[
    (clients["experiment"] == "heterogeneous") & (clients["kind"] == "benign")
]
by_client = benign.pivot_table(
    index=["client", "swap_fraction"], columns="method", values="relative_change"
)[["fedavg_benign", "clair", "oracle_clair"]]
display(by_client.rename(columns=labels).round(3))
better = by_client["clair"] > by_client["fedavg_benign"]
print(
    "CLAIR above FedAvg (true benign set) for clients "
    f"{by_client.index.get_level_values('client')[better].tolist()}, below for "
    f"{by_client.index.get_level_values('client')[~better].tolist()}"
)

# %% [markdown]
# ## Detection
#
# How often CLAIR flags each client, and the mean fraction of the 8 modules in which
# it is rejected (a client is flagged when any module is rejected).

# %%
display(Image(filename=str(folder / "copying_detection.png")))

# %%
clair_rows = table[table["method"] == "clair"].set_index("experiment")
for experiment, row in clair_rows.iterrows():
    print(
        f"{experiment}: precision {row['precision']:.3f} "
        f"[{row['precision_lo']:.3f}, {row['precision_hi']:.3f}], recall "
        f"{row['recall']:.3f} [{row['recall_lo']:.3f}, {row['recall_hi']:.3f}], "
        f"exact recovery of the contaminated set in a fraction {row['exact']:.3f} "
        f"[{row['exact_lo']:.3f}, {row['exact_hi']:.3f}] of the replicates"
    )
flags = (
    clients[clients["method"] == "clair"]
    .groupby(["experiment", "kind"])["flagged"]
    .mean()
    .unstack()
)
display(flags.round(3))

# %% [markdown]
# **Reading.** The table gives the fraction of (replicate, client) pairs flagged,
# by the kind of client: "benign" is the false-positive rate per benign client, the
# two contamination kinds are the recall per kind. A missed contaminated client
# enters the average of CLAIR's refinement; a flagged benign client keeps its local
# update.

# %% [markdown]
# ## Summary table
#
# Mean benign accuracy and mean relative change against local over the benign
# clients, with 95% Monte Carlo intervals, and CLAIR's detection scores
# (`summary.md` in the results folder).

# %%
display(Markdown((folder / "summary.md").read_text()))

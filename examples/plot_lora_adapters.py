"""
LoRA adapters: ``clair adapters`` on PEFT folders
=================================================

Each client of a federated LoRA fine-tuning sends a PEFT adapter folder: per
adapted module m a pair of factors :math:`B_{km}` (out x R) and
:math:`A_{km}` (R x in), the update being :math:`\\Delta W_{km} = s B_{km}
A_{km}`. The command ``clair adapters DIR... --out OUT`` reads K such folders,
runs CLAIR per module on the factors (never multiplying them out), combines the
modules into one verdict per client, writes one refined adapter per client and a
JSON report. This example draws a synthetic federation with known
contamination, writes it as PEFT folders in a temporary directory, runs the
command in-process, reads the report and checks the refined adapters against
the truth.

The per-module verdict rule is in docs/pipeline.md §3.3.5, multiple testing over
clients x modules in docs/pipeline.md §3.3.6, the solve on the factors in
docs/programs.md §5.8, and what the studies found on adapters in
docs/findings.md §F8.
"""

# %%
# A synthetic LoRA federation
# ---------------------------
# :func:`clair_stats.lora.synthetic.synthetic_federation` draws K clients' factors
# on three modules of one decoder layer. A benign client's :math:`B_{km}` lies in
# a shared R-dimensional subspace :math:`U_m` plus a little noise; a contaminated
# (client, module) has a :math:`B_{km}` off that subspace, 30 times the benign
# noise. Client 3 is contaminated in one module only, client 8 in all three.
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from clair_stats.__main__ import main
from clair_stats.lora import read_adapter, write_adapter
from clair_stats.lora.synthetic import MODULES, synthetic_federation

K, R, LORA_ALPHA = 12, 4, 8.0
modules = list(MODULES)
contaminated = {3: [modules[1]], 8: modules}
federation = synthetic_federation(
    K, contaminated=contaminated, rank=R, lora_alpha=LORA_ALPHA, seed=0
)
print(federation)
for m, (out, inp) in MODULES.items():
    print(f"  {m}: Delta W is {out} x {inp}, LoRA rank {R}")
print("contaminated (client -> modules):", contaminated)

# %%
# The noiseless truth. The generator draws, in a fixed order, the shared
# subspaces, then per client and module the coefficients and the noise of
# :math:`B_{km}` and then :math:`A_{km}`; the noise level only scales its draw.
# The same seed with a negligible noise therefore gives the same federation
# without noise: the true update :math:`s U_m G_{km} A_{km}` of every benign
# client, and the shared subspaces (the column spaces of the benign updates).
twin = synthetic_federation(
    K, contaminated=contaminated, rank=R, lora_alpha=LORA_ALPHA, noise=1e-12, seed=0
)
scaling = LORA_ALPHA / R


def delta(factors, k):
    """Client k's dense update s B_k A_k of one module."""
    b, a = factors
    return scaling * b[k] @ a[k]


truth = {m: [delta(twin.factors[m], k) for k in range(K)] for m in modules}
shared = {}
for j, m in enumerate(modules):
    benign_b = twin.factors[m][0][~federation.contaminated[:, j]]
    u, _, _ = np.linalg.svd(np.concatenate(list(benign_b), axis=1))
    shared[m] = u[:, :R]  # an orthonormal basis of U_m

# %%
# PEFT folders
# ------------
# :func:`clair_stats.lora.write_adapter` writes one adapter folder
# (``adapter_config.json`` and ``adapter_model.safetensors``) from the factors
# of every module and a template config. It stores :math:`\Delta W = B A` with
# scaling 1, so the scaling :math:`s` = lora_alpha / R goes into B. Everything
# is written under a temporary directory, removed at the end.
template = {
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "base_model_name_or_path": "tiny-llama",
    "r": R,
    "lora_alpha": LORA_ALPHA,
    "target_modules": sorted({m.rsplit(".", 1)[-1] for m in modules}),
}
tmp = tempfile.TemporaryDirectory()
root = Path(tmp.name)
folders = []
for k in range(K):
    factors = {m: (scaling * b[k], a[k]) for m, (b, a) in federation.factors.items()}
    folders.append(write_adapter(root / f"client{k}", factors, template))
print(sorted(p.name for p in folders[0].iterdir()))

# %%
# The command, in-process
# -----------------------
# ``clair adapters DIR... --out OUT`` is
# :func:`clair_stats.__main__.main` with the same arguments. It prints the
# client table (flagged, combined p-value, the modules with the smallest
# p-values) and the module table (shape, rank, the clients each module
# flags, the relative truncation error of the refined factors, the solver).
out = root / "refined"
argv = ["adapters", *map(str, folders), "--out", str(out), "--no-progress"]
exit_code = main(argv)
print("exit code:", exit_code)

# %%
# The JSON report
# ---------------
# ``OUT/clair_report.json`` holds everything printed and more: per client the
# verdict, the combined p-value (the smallest Holm-adjusted :math:`p_{km}` over
# the modules) and the modules that reject it; per module the energies, the
# robust z-scores, raw and adjusted p-values and the solver's statistics.
report = json.loads((out / "clair_report.json").read_text())
print("format:", report["format"], "| clients:", report["n_clients"])
print("settings:", report["settings"])
for client in report["clients"]:
    if client["flagged"] or client["name"] in ("client0", "client1"):
        print(
            f"  {client['name']:<9} flagged={client['flagged']!s:<5} "
            f"p={client['p_value']:.2e} rejected in {client['rejected_modules']}"
        )
flagged = np.array([c["flagged"] for c in report["clients"]])
print("flagged overall:", [c["name"] for c in report["clients"] if c["flagged"]])
print("truly contaminated:", [f"client{k}" for k in sorted(contaminated)])
for module in report["modules"]:
    print(f"  {module['name']}: rejects {module['rejected_clients']}")

# %%
# The refined adapters
# --------------------
# One adapter per client, readable by PEFT. A flagged client keeps its own
# update in every module (its folder holds the input factors); every other
# client's update is replaced by its refined one, written at the client's own
# LoRA rank (``--out-rank`` sets another; the module table gives the relative
# truncation error). Against the noiseless truth, the refined updates of the
# benign clients are about half as far off as their local ones: the refinement
# keeps each client's part inside the estimated subspace and replaces the part
# outside it by the average of the kept clients (docs/pipeline.md §3.4), so what
# remains outside the true subspace is mostly that average of their noise.
names = [c["name"] for c in report["clients"]]
error_local = np.zeros((K, len(modules)))
error_refined = np.zeros((K, len(modules)))
off_local = np.zeros((K, len(modules)))
off_refined = np.zeros((K, len(modules)))
change = np.zeros((K, len(modules)))
for k, name in enumerate(names):
    refined_adapter = read_adapter(out / name)
    for j, m in enumerate(modules):
        local = delta(federation.factors[m], k)
        refined = refined_adapter.module(m).delta()
        u = shared[m]
        error_local[k, j] = np.linalg.norm(local - truth[m][k])
        error_refined[k, j] = np.linalg.norm(refined - truth[m][k])
        off_local[k, j] = np.linalg.norm(local - u @ (u.T @ local))
        off_refined[k, j] = np.linalg.norm(refined - u @ (u.T @ refined))
        change[k, j] = np.linalg.norm(refined - local) / np.linalg.norm(local)
benign = federation.benign
print(
    "largest relative change of a flagged client's update: "
    f"{change[flagged].max():.1e} (float32 storage)"
)
print("medians over the benign clients (error: ||Delta W - truth||_F; off U:")
print("||P_U^perp Delta W||_F, the part outside the true subspace)")
print(f"{'module':<32} {'error':>16} {'off U':>16}")
print(f"{'':<32} {'local  refined':>16} {'local  refined':>16}")
for j, m in enumerate(modules):
    med = [np.median(x[benign, j]) for x in (error_local, error_refined)]
    off = [np.median(x[benign, j]) for x in (off_local, off_refined)]
    print(f"{m:<32} {med[0]:8.3f}{med[1]:8.3f} {off[0]:8.3f}{off[1]:8.3f}")

# %%
# The figure: left, the Holm-adjusted p-value of every (client, module) from
# the report, with the cells each module rejects outlined and the truly
# contaminated ones crossed; right, each benign (client, module) update's error
# before and after the refinement.
adjusted = np.array([m["adjusted_p_values"] for m in report["modules"]]).T  # (K, M)
rejected = np.array(
    [[name in m["rejected_clients"] for m in report["modules"]] for name in names]
)
fig, (ax_map, ax_err) = plt.subplots(
    1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.4, 1]}
)
score = -np.log10(np.maximum(adjusted, 1e-16)).T  # modules x clients
image = ax_map.imshow(score, cmap="viridis", aspect="auto", vmin=0)
fig.colorbar(image, ax=ax_map, label=r"$-\log_{10}$ Holm-adjusted $p_{km}$")
short = [m.split(".", 3)[-1] for m in modules]
ax_map.set_yticks(range(len(modules)), short)
ax_map.set_xticks(range(K), range(K))
ax_map.set_xlabel("client k")
bad_j, bad_k = np.nonzero(federation.contaminated.T)
ax_map.plot(bad_k, bad_j, "wx", ms=12, mew=2)
rej_j, rej_k = np.nonzero(rejected.T)
ax_map.plot(rej_k, rej_j, "s", mfc="none", mec="r", ms=22, mew=2)
ax_map.set_title(
    "Per-module tests (flagged clients: "
    + ", ".join(str(k) for k in np.flatnonzero(flagged))
    + ")"
)
handles = [  # legend entries drawn small and dark, unlike the marks on the map
    Line2D(
        [], [], ls="none", marker="x", color="k", mew=2, label="contaminated (truth)"
    ),
    Line2D(
        [],
        [],
        ls="none",
        marker="s",
        mfc="none",
        mec="r",
        mew=2,
        ms=9,
        label="rejected by CLAIR",
    ),
]
ax_map.legend(
    handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8
)

for j, m in enumerate(short):
    ax_err.scatter(
        error_local[benign, j], error_refined[benign, j], s=25, label=m, alpha=0.8
    )
top = 1.1 * error_local[benign].max()
ax_err.plot([0, top], [0, top], "k:", lw=1, label="no change")
ax_err.set_xlim(0, top)
ax_err.set_ylim(0, top)
ax_err.set_xlabel(r"local $\|\Delta W_{km} - \mathrm{truth}\|_F$")
ax_err.set_ylabel(r"refined $\|\Delta W_{km} - \mathrm{truth}\|_F$")
ax_err.set_title("Benign clients: error before and after")
ax_err.legend(fontsize=8)
fig.tight_layout()
plt.show()

tmp.cleanup()

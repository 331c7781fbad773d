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
# # Verdict rules for LoRA federations
#
# A LoRA federation is one CLAIR problem per adapted module, but the refinement
# needs one collaborative set for all modules. Which rule turns the per-module
# evidence into one verdict per client? The study (`simulations/verdict_rules.py`;
# its docstring has the grid and the cost) measures, at alpha = 0.05, the
# family-wise error (a client benign in every module is flagged) and the power
# (share of contaminated clients flagged) of
#
# * `holm_any`: empirical-null p-value per (client, module), Holm over all K x M,
#   a client flagged iff any module is rejected (`clair_stats.lora.verdict`);
# * `vote_half`: the chi-square test of step 3 per module with the median rule and
#   Holm over K, a client flagged iff at least half of the modules flag it (the
#   copying experiment's former rule);
# * `pooled_scale`: a candidate fix of `holm_any`, evaluated on the same stored
#   energies: the log-energy scale is pooled over the modules,
#
# on synthetic LoRA federations (K in {8, 20, 50}, M in {3, 8}) and on the trained
# updates of the sequence-copying experiment (K = 10, M = 8). This report reads the
# stored full run, or runs the quick grid when the full one is not stored.

# %%
import sys
from pathlib import Path

ROOT = Path.cwd() if (Path.cwd() / "simulations").is_dir() else Path.cwd().parent
sys.path.insert(0, str(ROOT))
import simulations.verdict_rules as script  # noqa: E402
from clair_stats.experiments.study import load_or_run  # noqa: E402

frame, folder, args = load_or_run(script)

# %%
import pandas as pd  # noqa: E402
from IPython.display import Image, display  # noqa: E402

table = pd.read_csv(folder / "summary.csv")
federations = frame.drop_duplicates([*script.KEYS, "replicate", "federation"])
print(
    f"{'quick' if args.quick else 'full'} grid: {len(federations)} federations "
    f"({(federations['source'] == 'copying').sum()} trained copying ones); "
    f"{frame.drop_duplicates([*script.KEYS, 'replicate'])['seconds'].sum() / 60:.0f}"
    " min of computing in all."
)

# %% [markdown]
# ## Family-wise error and power
#
# Top left: benign-only synthetic federations and the copying experiment; top
# middle: contaminated synthetic federations; top right: the calibration of the
# per-module p-values of benign pairs. Bottom: power.

# %%
display(Image(filename=str(folder / "verdict_rules.png")))

# %%
columns = ["source", "K", "M", "pattern", "strength", "experiment", "rule"]
shown = table[[*columns, "federations_run", "fwer", "fwer_hi", "power"]]
print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))

# %% [markdown]
# ## Which rule keeps its level?
#
# The largest family-wise error of each rule over the benign-only synthetic
# federations and the copying experiment, with the largest upper Wilson bound, and
# its mean power over the contaminated configurations.

# %%
null_like = table[(table["pattern"] == "none") | (table["source"] == "copying")]
worst = null_like.groupby("rule")[["fwer", "fwer_hi"]].max()
power = table.dropna(subset=["power"]).groupby(["source", "rule"])["power"].mean()
print(worst.to_string(float_format=lambda v: f"{v:.3f}"))
print(power.unstack("source").to_string(float_format=lambda v: f"{v:.3f}"))

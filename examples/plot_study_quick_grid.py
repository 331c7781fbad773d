"""
A study's quick grid through the study runner
=============================================

Every study in ``simulations/`` is a grid of configurations times replicates, a
function that runs one replicate, and a report that turns the stored results
into tables and figures. The runner (:mod:`clair_stats.experiments.study`)
derives every seed from the study, the configuration and the replicate, stores
one row per replicate in SQLite as soon as it finishes, skips what is stored
when run again, and runs in parallel with joblib or dask. This example runs the
quick grid of the subspace-error study (the paper's Figure 1,
``simulations/fig1_subspace_error.py``) with its results in a temporary folder,
and shows the figure its report writes.

The rate the study checks is in docs/claims.md §4.6, and what its full grid
found in docs/findings.md §F4.
"""

# %%
# Import the study script
# -----------------------
# The scripts of ``simulations/`` are modules of the repository, not of the
# installed package: the repository root has to be on ``sys.path``. It is found
# from this file's folder (or the working directory, where the gallery runs
# the examples) by looking upwards for ``simulations/``.
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt

from clair_stats.experiments.study import (
    derive_seed,
    report_folder,
    results_dir,
    run_study,
)

try:
    HERE = Path(__file__).resolve().parent
except NameError:  # sphinx-gallery executes the script without __file__
    HERE = Path.cwd().resolve()
ROOT = next(
    folder
    for folder in (HERE, *HERE.parents)
    if (folder / "simulations" / "fig1_subspace_error.py").is_file()
)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from simulations import fig1_subspace_error as fig1  # noqa: E402

# %%
# Build the quick grid
# --------------------
# Every study script has ``parser()`` (the runner's common options plus its
# own), ``build(args)`` (the :class:`~clair_stats.experiments.study.Study`) and
# ``report(frame, folder, args)``. ``--quick`` selects the small grid and
# ``--results`` the folder for the store and the report; here a temporary one,
# so that nothing is written into the repository.
tmp = tempfile.TemporaryDirectory()
args = fig1.parser().parse_args(["--quick", "--results", tmp.name, "--no-progress"])
quick = fig1.build(args)
full = fig1.build(fig1.parser().parse_args([]))
print(f"{quick.name} (version {quick.version})")
print(
    f"quick grid: {len(quick.configs)} configurations x {quick.replicates} "
    f"replicates = {len(quick.tasks())} runs"
)
print(
    f"full grid:  {len(full.configs)} configurations x {full.replicates} "
    f"replicates = {len(full.tasks())} runs"
)
print("first configuration:", quick.configs[0])

# %%
# The seeds are a function of (study, configuration, replicate) only, so the
# quick grid's runs are runs of the full grid: a later full run reuses them.
config = quick.configs[0]
print("seed of replicate 0:", derive_seed(quick.name, config, 0))
full_runs = {(key, rep, seed) for key, rep, seed in full.tasks()}
print("every quick run is a run of the full grid:", set(quick.tasks()) <= full_runs)

# %%
# Run it
# ------
# :func:`~clair_stats.experiments.study.run_study` runs what is missing from the
# store and returns it open; ``store.frame(study)`` is a pandas DataFrame with
# one row per method and replicate. Running it again finds everything stored
# and does nothing, which is how a killed run resumes.
store_path = results_dir(args.results) / quick.name / "results.sqlite"
start = time.perf_counter()
with run_study(quick, store_path, progress=False) as store:
    frame = store.frame(quick)
print(f"first run: {time.perf_counter() - start:.1f} s, {len(frame)} rows")
start = time.perf_counter()
with run_study(quick, store_path, progress=False) as store:
    again = store.frame(quick)
print(
    f"second run: {time.perf_counter() - start:.2f} s, the same {len(again)} rows "
    "(nothing left to run)"
)
columns = ["p", "q", "r", "n", "K", "replicate", "method", "error"]
print(frame[columns].head(8).to_string(index=False))

# %%
# The report
# ----------
# ``report`` writes the figures and tables into ``<results>/<study>/quick/``
# (the full grid's go one level up). Its summary table gives, per regime and
# method, the slope of the log error against log K (the parametric rate is
# -1/2), the error at the largest K and its ratio to the oracle that knows the
# benign set.
folder = report_folder(quick.name, True, args.results)
fig1.report(frame, folder, args)
print(sorted(path.name for path in folder.iterdir()))
print((folder / "summary.md").read_text())

# %%
# The figure the report writes: the subspace error of CLAIR, of CLAIR's
# step-3 subspace, of a plain SVD of all clients and of the oracle against K,
# one panel per regime, with the first-order predictions. CLAIR follows the
# oracle down at the rate -1/2; the plain SVD, pulled by the contaminated
# clients that share another subspace, flattens.
image = matplotlib.image.imread(folder / "subspace_error.png")
fig, ax = plt.subplots(figsize=(12, 12 * image.shape[0] / image.shape[1]))
ax.imshow(image)
ax.set_axis_off()
ax.set_title("subspace_error.png, written by the report of the quick grid")
fig.tight_layout()
plt.show()

# %%
# The full grid
# -------------
# From the repository root, the full grid (1,080 runs; the script's docstring
# records 10 to 32 minutes of wall time on a shared 2-core machine, depending on
# its load) is run, resumed after an interruption, and reported with::
#
#     python simulations/fig1_subspace_error.py --jobs 2
#     python simulations/fig1_subspace_error.py --dask ADDRESS
#     python simulations/fig1_subspace_error.py --report-only
#
# ``--jobs 2`` runs two local worker processes, ``--dask ADDRESS`` uses a
# dask.distributed scheduler (``local`` starts one on this machine), and
# ``--report-only`` rewrites the report from the stored results. Results go to
# ``$CLAIR_RESULTS`` or ``./results`` unless ``--results`` says otherwise;
# ``--fresh`` discards them first.
tmp.cleanup()

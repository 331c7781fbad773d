r"""
Federated LoRA on a small Transformer: the sequence-copying experiments
=======================================================================

**Question.** Does CLAIR help federated LoRA fine-tuning of a real (small) network?
K = 10 clients fine-tune rank-4 LoRA adapters of the same pretrained attention-only
Transformer on their own sequence-copying task (Song, Xu and Zhong 2025); 3 of them
are contaminated. Per replicate we compare, client by client, the masked next-token
accuracy of local LoRA fine-tuning, FedAvg over all clients, FedAvg over the true
benign set, plain SVD + refinement, CLAIR (per module; a client is flagged when
Holm over the 10 x 8 (client, module) empirical-null p-values rejects any of its
modules, :mod:`clair_stats.lora.verdict`) and oracle CLAIR, and CLAIR's
detection precision and recall. These are the paper's Figures 2 (homogeneous
benign clients) and 3 (heterogeneous benign clients); the heterogeneous design is
the one where FedAvg should lose to CLAIR.

**Set-up** (:mod:`simulations.copying.federation` has the details). Tasks: V = 32
tokens, T = 48, Zipf law p_i ~ 1 / (i + 2.7), a segment of length 6-10 written
twice; scored positions are the second copy after its first b + 1 = 2 tokens (the
corrected mask of :mod:`simulations.copying.tasks`). Model: 2 attention-only layers
of 1 head, d = 32, pre-LayerNorm, RoPE, about 10.5k parameters, pretrained on the
base copy task (cached checkpoint under ``<results>/copying/checkpoints/``; after
1500 steps its masked accuracy is 0.97 on Zipf and on uniform tokens, 0.30 on
swap-copy; after the quick grid's 600 steps 0.96, 0.95 and 0.33).
Benign task: swap-copy (0 <-> 1, 2 <-> 3 in the second copy). Contaminated
clients 7, 9: another map (8 <-> 9, 10 <-> 11, 12 <-> 13); client 8: label noise
(the second copy replaced by random tokens). Heterogeneous experiment: benign client
j swaps a fraction pi_j of its sequences (evenly spaced on [0.2, 1]) and copies the
rest exactly. LoRA rank 4 on W_q, W_k, W_v, W_o of both layers, common adapter
initialisation, n_k = 128 sequences, AdamW lr 1e-2, minibatches of 32. Everyone is
evaluated on 512 fresh sequences of its own task. CLAIR, SVD + refinement and the
oracle use a shared subspace of rank r = 2 per module (the two swaps; the reasons
and measurements are in :mod:`simulations.copying.federation`).

**Grid.** The configurations are the two experiments (a config axis
``experiment``); ``--experiment`` runs one of them.

* Full: pretraining 1500 steps, 300 fine-tuning steps per client, 100 replicates
  per experiment (200 replicates).
* ``--quick``: pretraining 600 steps, 150 fine-tuning steps, 256 test sequences, 2
  replicates per experiment. Its configurations differ from the full ones (fewer
  steps), so quick rows are not reused by the full run.

**Cache of the clients' updates** (:mod:`simulations.copying.clients`). Each
replicate's fine-tuned updates go to ``<results>/copying/clients/<key>.npz``
(0.66 MB each, 130 MB for the full grid), the key a hash of what the training reads
(pretraining, fine-tuning, the clients' tasks, n_k, the seed) and not of CLAIR's
settings or ``n_test``. A rerun after a change of CLAIR, of a baseline or of the
evaluation (bump ``VERSION``, run with ``--fresh``) reads them and gives the rows
an uncached run would (tested bit for bit, and checked on full replicates). The
seeds come from the grid's configurations: a new key in them (a CLAIR setting as
an axis) changes every seed and misses the cache, a changed default of
:class:`~simulations.copying.federation.Settings` does not.

**Cost** (one core, one thread, measured on the shared 2-core machine). A full
replicate fine-tunes 10 clients for 300 AdamW steps each (about 3 s CPU per
client), runs CLAIR on 8 modules (about 0.06 s each) and evaluates 7 methods x 10
clients: median 31 s, mean 32 s, at most 69 s under load; the full grid of 200
replicates took 107 minutes with ``--jobs 1`` (``--jobs 2`` about halves it on an
idle machine). Pretraining (once, then cached): 39 s CPU for the full grid's 1500
steps. ``--quick``: 95 s CPU in all, pretraining included
(about 1.5 minutes on a free core). With the client cache filled (above) a full
replicate costs 5.6-7.0 s CPU (median 5.8 s over 8 replicates, the first of a
process the dearest; nearly all of it the evaluation of 7 methods x 10 clients),
against 44 s CPU uncached in the same run on the overloaded machine: a rerun of
the full grid takes about 20 core-minutes instead of 107.

**One replicate** (:func:`run`). Fine-tune the K clients (their data, minibatches
and the common adapter initialisation come from the replicate's seed; the
pretrained model is the same for every replicate), stack the dense updates
Delta W_k = s B_k A_k per module, apply every method, merge each client's
Delta W~_k into W_0 and measure its masked accuracy on its own test sequences.
One row per method: per-client accuracy and relative change against local
(lists of K), their means over the benign clients, and CLAIR's detection.

**Reading the figures.** ``copying_homogeneous.png`` and
``copying_heterogeneous.png``: top panel, per-client accuracy by method (mean over
replicates with 95% Monte Carlo intervals; shaded columns are the contaminated
clients, labelled with their kind); bottom panel, relative change against local
LoRA fine-tuning, (acc - acc_local) / acc_local, per client. ``copying_detection.png``:
how often CLAIR flags each client (Wilson 95% intervals), and in how many of the 8
modules. ``summary.md`` / ``summary.csv``: mean benign accuracy and relative change
per method with 95% Monte Carlo intervals, and CLAIR's detection precision, recall
and exact-recovery rate.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from clair_stats.experiments.plotting import (  # noqa: E402
    mc_summary,
    proportion_summary,
    save_figure,
)
from clair_stats.experiments.study import (  # noqa: E402
    Study,
    results_dir,
    study_main,
    study_parser,
)

NAME = "copying"
#: Bump when a change alters the results of :func:`run`.
#: 2: CLAIR's verdict is clair_stats.lora.verdict (was a vote); 3: A^ checked
#: against the trimmed fit, step 4 refits A^ on S^ and pools in-subspace parts
#: (clair_paper and oracle_pooled added)
VERSION = "3"
EXPERIMENTS = ("homogeneous", "heterogeneous")
FULL = {"replicates": 100}
#: The quick grid's settings (the full grid uses the defaults of ``Settings``).
QUICK = {"pretrain_steps": 600, "ft_steps": 150, "n_test": 256}
QUICK_REPLICATES = 2
#: Methods drawn in the figures, with their labels and colours.
STYLE = {
    "pretrained": ("pretrained (no update)", "0.6"),
    "local": ("local LoRA", "k"),
    "fedavg": ("FedAvg (all)", "tab:red"),
    "fedavg_benign": ("FedAvg (true benign set)", "tab:orange"),
    "svd_refine": ("SVD + refinement", "tab:purple"),
    "clair_paper": ("CLAIR, the paper's refinement", "tab:cyan"),
    "clair": ("CLAIR", "tab:blue"),
    "oracle_clair": ("oracle CLAIR", "tab:green"),
    "oracle_pooled": ("oracle CLAIR, step 4 pooled", "tab:olive"),
}
KIND_LABELS = {"other_swap": "other swap", "label_noise": "label noise"}


def run(config: dict, seed: int) -> list[dict]:
    """One replicate (see :func:`simulations.copying.federation.run_replicate`).

    Parameters
    ----------
    config : dict
        Fields of :class:`~simulations.copying.federation.Settings` (at least
        ``experiment``); unknown keys raise.
    seed : int
        All randomness of the replicate.

    Returns
    -------
    list of dict
        One row per method.

    Notes
    -----
    The pretrained model and the clients' fine-tuned updates are cached under
    ``<results>/copying/checkpoints/`` and ``<results>/copying/clients/``.
    """
    from simulations.copying.federation import Settings, run_replicate

    settings = Settings.from_config(config)
    folder = results_dir() / NAME
    return run_replicate(
        settings, seed, str(folder / "checkpoints"), str(folder / "clients")
    )


def parser() -> argparse.ArgumentParser:
    """The study's command line: the runner's options plus ``--experiment`` and
    ``--replicates``."""
    out = study_parser(
        "Federated LoRA on a small Transformer (sequence copying): local, FedAvg, "
        "SVD + refinement, CLAIR and oracle CLAIR per client."
    )
    out.add_argument(
        "--experiment",
        choices=(*EXPERIMENTS, "both"),
        default="both",
        help="which experiment to run (default both)",
    )
    out.add_argument(
        "--replicates",
        type=int,
        default=None,
        help=f"replicates per experiment (default {FULL['replicates']}, quick "
        f"{QUICK_REPLICATES})",
    )
    return out


def build(args: argparse.Namespace) -> Study:
    """The grid: one configuration per experiment; ``args.quick`` picks the small one.

    With ``--results DIR`` the environment variable ``CLAIR_RESULTS`` is set to DIR
    so that the workers find the pretraining cache there.
    """
    if args.results is not None:
        os.environ["CLAIR_RESULTS"] = str(args.results)
    experiments = EXPERIMENTS if args.experiment == "both" else (args.experiment,)
    extra = QUICK if args.quick else {}
    replicates = args.replicates or (
        QUICK_REPLICATES if args.quick else FULL["replicates"]
    )
    if replicates < 1:
        raise SystemExit(f"--replicates must be >= 1, got {replicates}")
    configs = [{"experiment": e, **extra} for e in experiments]
    return Study(
        name=NAME, run=run, configs=configs, replicates=replicates, version=VERSION
    )


# ----------------------------------------------------------------------- report
def client_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (replicate, method, client) from the per-method rows.

    Parameters
    ----------
    frame : pandas.DataFrame
        :meth:`clair_stats.experiments.study.ResultStore.frame` of the study.

    Returns
    -------
    pandas.DataFrame
        Columns ``experiment``, ``replicate``, ``method``, ``client``, ``kind``,
        ``swap_fraction`` (pi_k of a benign client, else NaN), ``accuracy``,
        ``relative_change``, and for CLAIR's rows (else NaN) ``flagged`` (0/1),
        ``module_share`` (the fraction of the modules in which the verdict's Holm
        procedure rejects the client) and
        ``n_modules``.
    """
    rows = []
    for record in frame.itertuples(index=False):
        flagged = record.flagged if isinstance(record.flagged, list) else None
        modules = record.module_flags if isinstance(record.module_flags, list) else None
        for k, (acc, change, kind, fraction) in enumerate(
            zip(
                record.accuracy,
                record.relative_change,
                record.kinds,
                record.swap_fractions,
                strict=True,
            )
        ):
            rows.append(
                {
                    "experiment": record.experiment,
                    "replicate": record.replicate,
                    "method": record.method,
                    "client": k,
                    "kind": kind,
                    "swap_fraction": np.nan if fraction is None else fraction,
                    "accuracy": acc,
                    "relative_change": np.nan if change is None else change,
                    "flagged": np.nan if flagged is None else float(flagged[k]),
                    "module_share": (
                        np.nan if modules is None else modules[k] / record.n_modules
                    ),
                    "n_modules": np.nan if modules is None else record.n_modules,
                }
            )
    return pd.DataFrame(rows)


def _bar(centre: pd.Series, lo: pd.Series, hi: pd.Series) -> np.ndarray:
    """Error-bar lengths (2, n): NaN (one replicate) as 0, and rounding below 0
    (a Wilson bound of 1e-17 above a rate of 0) cut at 0."""
    err = np.vstack((centre - lo, hi - centre)).astype(float)
    return np.clip(np.nan_to_num(err), 0.0, None)


def _clients(part: pd.DataFrame) -> pd.DataFrame:
    """Kind and pi of each client (one row per client, sorted)."""
    return (
        part.drop_duplicates("client")
        .sort_values("client")[["client", "kind", "swap_fraction"]]
        .reset_index(drop=True)
    )


def _mark_contaminated(
    ax: plt.Axes, kinds: list[str], label: bool, short: bool = False
) -> None:
    """Shade the contaminated clients' columns and name their kind on top."""
    for k, kind in enumerate(kinds):
        if kind == "benign":
            continue
        ax.axvspan(k - 0.45, k + 0.45, color="0.9", zorder=0)
        if label:
            text = KIND_LABELS.get(kind, kind)
            ax.text(
                k,
                1.01,
                text.replace(" ", "\n") if short else text,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
            )


def _tick_labels(clients: pd.DataFrame, experiment: str) -> list[str]:
    """Client numbers, with pi_k under the benign ones (heterogeneous)."""
    labels = []
    for row in clients.itertuples(index=False):
        text = str(row.client)
        if experiment == "heterogeneous" and not np.isnan(row.swap_fraction):
            text += f"\npi={row.swap_fraction:.2f}"
        labels.append(text)
    return labels


def _client_figure(
    clients: pd.DataFrame, experiment: str, folder: Path, n_reps: int, quick: bool
) -> Path:
    """Top: per-client accuracy by method; bottom: relative change against local."""
    sub = clients[clients["experiment"] == experiment]
    info = _clients(sub)
    kinds = info["kind"].tolist()
    n_clients = len(kinds)
    methods = [m for m in STYLE if m in set(sub["method"])]
    acc = mc_summary(sub, ["method", "client"], "accuracy")
    change = mc_summary(sub, ["method", "client"], "relative_change")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True)
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        label, colour = STYLE[method]
        offset = (i - (len(methods) - 1) / 2) * width
        for ax, table in ((top, acc), (bottom, change)):
            if ax is bottom and method in ("local", "pretrained"):
                continue
            rows = table[table["method"] == method].sort_values("client")
            err = _bar(rows["mean"], rows["lo"], rows["hi"])
            ax.errorbar(
                rows["client"] + offset,
                rows["mean"],
                yerr=err,
                fmt="o",
                ms=4,
                capsize=2,
                color=colour,
                label=label,
            )
    _mark_contaminated(top, kinds, label=True)
    _mark_contaminated(bottom, kinds, label=False)
    bottom.axhline(0.0, color="k", lw=0.8)
    top.set_ylim(0.0, 1.0)
    shown = change[~change["method"].isin(["local", "pretrained"])]["mean"]
    low, high = float(np.nanmin(shown)), float(np.nanmax(shown))
    pad = 0.1 * max(high - low, 0.1)
    # the axis follows the means; intervals longer than that run off the panel
    bottom.set_ylim(max(low - pad, -1.0), min(high + pad, 1.0))
    top.set_ylabel("masked next-token accuracy\n(fraction, own task)")
    bottom.set_ylabel("relative change against local\n(acc - acc_local) / acc_local")
    bottom.set_xlabel(
        "client (shaded: contaminated)"
        + (
            "; pi = fraction of a benign client's sequences that are swapped"
            if experiment == "heterogeneous"
            else ""
        )
    )
    bottom.set_xticks(range(n_clients), _tick_labels(info, experiment))
    top.set_xlim(-0.6, n_clients - 0.4)
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    top.set_title(f"{experiment} benign clients", pad=16)
    caption = (
        f"Federated LoRA on sequence copying, {experiment} experiment: per-client "
        f"masked accuracy on the client's own task (top) and relative change "
        f"against local LoRA fine-tuning (bottom), mean over {n_reps} replicates "
        "with 95% Monte Carlo intervals; K = 10, contaminated clients shaded. "
        + ("Quick grid (fewer steps). " if quick else "")
        + "CLAIR: per-module empirical-null test, Holm over the K x 8 (client, "
        "module) pairs, a client is flagged if any module is rejected; shared "
        "subspace of rank 2 per module."
    )
    return save_figure(fig, folder / f"copying_{experiment}.png", caption)


def _detection_figure(
    clients: pd.DataFrame, folder: Path, n_reps: int, quick: bool
) -> Path:
    """How often CLAIR flags each client, and in how many modules."""
    sub = clients[clients["method"] == "clair"].copy()
    experiments = [e for e in EXPERIMENTS if e in set(sub["experiment"])]
    fig, axes = plt.subplots(
        1, len(experiments), figsize=(5 * len(experiments) + 2.5, 3.8), squeeze=False
    )
    for ax, experiment in zip(axes[0], experiments, strict=True):
        part = sub[sub["experiment"] == experiment]
        rate = proportion_summary(part, "client", "flagged")
        share = mc_summary(part, "client", "module_share")
        info = _clients(part)
        ax.errorbar(
            rate["client"],
            rate["rate"],
            yerr=_bar(rate["rate"], rate["lo"], rate["hi"]),
            fmt="o",
            color="tab:blue",
            capsize=2,
            label="flagged by CLAIR\n(fraction of replicates)",
        )
        ax.plot(
            share["client"],
            share["mean"],
            "s",
            mfc="none",
            color="tab:gray",
            label="modules that reject it\n(mean fraction)",
        )
        _mark_contaminated(ax, info["kind"].tolist(), label=True, short=True)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xticks(range(len(info)), _tick_labels(info, experiment), fontsize=7)
        ax.set_xlabel("client (shaded: contaminated)")
        ax.set_ylabel("fraction (unitless)")
        ax.set_title(experiment, pad=24)
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    n_modules = int(sub["n_modules"].max())
    caption = (
        f"CLAIR's verdicts per client over {n_reps} replicates per experiment "
        f"(Wilson 95% intervals), and the mean fraction of the {n_modules} modules "
        "in which Holm over the K x M (client, module) p-values rejects it; a client "
        "is flagged when any module is rejected." + (" Quick grid." if quick else "")
    )
    return save_figure(fig, folder / "copying_detection.png", caption)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean benign accuracy and relative change per method, with 95% intervals.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame (one row per replicate and method).

    Returns
    -------
    pandas.DataFrame
        One row per (experiment, method): ``benign_accuracy`` and
        ``benign_relative_change`` means with ``_lo`` / ``_hi`` 95% Monte Carlo
        intervals, ``contaminated_accuracy`` mean, and for CLAIR the mean
        detection precision and recall (with intervals) and the exact-recovery
        rate (Wilson interval); ``n`` replicates.
    """
    keys = ["experiment", "method"]
    out = None
    for value in ("benign_accuracy", "benign_relative_change", "contaminated_accuracy"):
        part = mc_summary(frame, keys, value)[[*keys, "mean", "lo", "hi", "n"]]
        part = part.rename(
            columns={"mean": value, "lo": f"{value}_lo", "hi": f"{value}_hi"}
        )
        if value != "benign_accuracy":
            part = part.drop(columns="n")
        out = part if out is None else out.merge(part, on=keys, how="left")
    clair_rows = frame[frame["method"] == "clair"].copy()
    for value in ("precision", "recall"):
        clair_rows[value] = clair_rows[value].astype(float)
        part = mc_summary(clair_rows, keys, value)[[*keys, "mean", "lo", "hi"]]
        part = part.rename(
            columns={"mean": value, "lo": f"{value}_lo", "hi": f"{value}_hi"}
        )
        out = out.merge(part, on=keys, how="left")
    clair_rows["exact"] = clair_rows["exact"].astype(bool)
    exact = proportion_summary(clair_rows, keys, "exact")[[*keys, "rate", "lo", "hi"]]
    exact = exact.rename(columns={"rate": "exact", "lo": "exact_lo", "hi": "exact_hi"})
    out = out.merge(exact, on=keys, how="left")
    # means of values in [0, 1] lie in [0, 1]: clip the t intervals there
    for value in ("benign_accuracy", "contaminated_accuracy", "precision", "recall"):
        for end in ("lo", "hi"):
            out[f"{value}_{end}"] = out[f"{value}_{end}"].clip(0.0, 1.0)
    order = {m: i for i, m in enumerate(STYLE)}
    out["_order"] = out["method"].map(order)
    return (
        out.sort_values(["experiment", "_order"])
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def _markdown(table: pd.DataFrame, quick: bool) -> str:
    """The summary table as markdown, one section per experiment."""

    def interval(row: pd.Series, name: str, fmt: str) -> str:
        mean, lo, hi = row[name], row.get(f"{name}_lo"), row.get(f"{name}_hi")
        if pd.isna(mean):
            return ""
        text = format(mean, fmt)
        if lo is not None and not pd.isna(lo):
            text += f" [{format(lo, fmt)}, {format(hi, fmt)}]"
        return text

    lines = [
        "# Federated LoRA on sequence copying" + (" (quick grid)" if quick else ""),
        "",
        "Means over replicates with 95% Monte Carlo intervals (t intervals; Wilson "
        "for the exact-recovery rate). Benign accuracy: masked next-token accuracy "
        "averaged over the benign clients, each on its own task; relative change: "
        "mean over benign clients of (acc - acc_local) / acc_local.",
    ]
    for experiment, part in table.groupby("experiment", sort=False):
        n = int(part["n"].max())
        lines += [
            "",
            f"## {experiment} ({n} replicates)",
            "",
            "| method | benign accuracy | relative change vs local | contaminated "
            "accuracy |",
            "|---|---|---|---|",
        ]
        for _, row in part.iterrows():
            lines.append(
                f"| {STYLE[row['method']][0]} | "
                f"{interval(row, 'benign_accuracy', '.3f')} | "
                f"{interval(row, 'benign_relative_change', '+.3f')} | "
                f"{interval(row, 'contaminated_accuracy', '.3f')} |"
            )
        clair_row = part[part["method"] == "clair"].iloc[0]
        lines += [
            "",
            "CLAIR detection: precision "
            f"{interval(clair_row, 'precision', '.3f')}, recall "
            f"{interval(clair_row, 'recall', '.3f')}, exact recovery of the "
            f"contaminated set {interval(clair_row, 'exact', '.3f')}.",
        ]
    return "\n".join(lines) + "\n"


def report(frame: pd.DataFrame, folder: Path, args: argparse.Namespace) -> None:
    """Write the figures and the summary table into ``folder``.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's results.
    folder : pathlib.Path
        ``results/copying/`` or ``results/copying/quick/``.
    args : argparse.Namespace
        The parsed command line (``args.quick``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    clients = client_frame(frame)
    for experiment in EXPERIMENTS:
        part = frame[frame["experiment"] == experiment]
        if len(part):
            n_reps = part["replicate"].nunique()
            _client_figure(clients, experiment, folder, n_reps, args.quick)
    _detection_figure(clients, folder, frame["replicate"].nunique(), args.quick)
    table = summary_table(frame)
    table.to_csv(folder / "summary.csv", index=False)
    (folder / "summary.md").write_text(_markdown(table, args.quick))
    plt.close("all")


def main(argv: list[str] | None = None) -> int:
    """Run the study (resumable) and write its report."""
    return study_main(build, report, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

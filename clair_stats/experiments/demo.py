"""The main job: CLAIR against the baselines on one simulated federation.

Scenario (docs/model.md §2.3 (b)): K clients fit a multi-response regression by OLS;
benign clients share span(A); the contaminated ones are split between two contamination
types. Every method of docs/pipeline.md §6 estimates each client's Theta_k; the table
reports the subspace error, the detection precision and recall, the benign-client mean
error ||Theta~_k - Theta_k||_F and its relative change against local fitting, and the
seconds each method took. One figure shows the per-client errors with the contaminated
clients marked.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clair_stats.core.linalg import top_subspace
from clair_stats.evaluation import baselines
from clair_stats.evaluation.metrics import (
    client_errors,
    detection_scores,
    projection_distance,
)
from clair_stats.pipeline.estimator import clair
from clair_stats.simulate.model import FederatedModel

__all__ = ["MethodReport", "add_arguments", "run_demo"]


@dataclass(frozen=True)
class MethodReport:
    """One row of the demo table.

    Parameters
    ----------
    name : str
        The method's label in the table and the figure.
    estimates : numpy.ndarray, shape (K, p, q)
        The method's estimate of every client's Theta_k.
    seconds : float
        Wall-clock time of the method.
    subspace_error : float, optional
        The projection distance between the method's subspace and the true A
        (:func:`~clair_stats.evaluation.metrics.projection_distance`); default
        None, for methods without a subspace.
    precision : float, optional
        Precision of the method's contaminated set; default None, for methods
        that flag no client.
    recall : float, optional
        Recall of the method's contaminated set; default None, for methods that
        flag no client.
    """

    name: str
    estimates: np.ndarray
    seconds: float
    subspace_error: float | None = None
    precision: float | None = None
    recall: float | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The parser (of ``clair demo``) the options are added to: the scenario
        (``--clients``, ``--p``, ``--q``, ``--rank``, ``--contamination``,
        ``--types``, ``--n``, ``--sigma``), ``--seed`` and ``--out``.
    """
    parser.add_argument("--clients", type=int, default=40, help="K (default 40)")
    parser.add_argument("--p", type=int, default=30, help="rows p (default 30)")
    parser.add_argument("--q", type=int, default=5, help="columns q (default 5)")
    parser.add_argument("--rank", type=int, default=3, help="shared rank r")
    parser.add_argument(
        "--contamination", type=float, default=0.2, help="fraction gamma (0.2)"
    )
    parser.add_argument(
        "--types",
        default="random,subspace",
        help="contamination types, comma separated (default random,subspace)",
    )
    parser.add_argument("--n", type=int, default=200, help="samples per client")
    parser.add_argument("--sigma", type=float, default=1.0, help="regression noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default="results/demo.png", help="figure path (results/demo.png)"
    )


def _timed(name: str, fn: Callable[[], np.ndarray], **extra) -> MethodReport:
    start = time.perf_counter()
    estimates = fn()
    return MethodReport(name, estimates, time.perf_counter() - start, **extra)


def run_demo(args: argparse.Namespace) -> list[MethodReport]:
    """Run every method on the scenario, print the table, save the figure.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options of :func:`add_arguments`.

    Returns
    -------
    list of MethodReport
        One row per method, in the order of the table.
    """
    model = FederatedModel(
        p=args.p,
        q=args.q,
        rank=args.rank,
        n_clients=args.clients,
        contamination=args.contamination,
        contamination_type=tuple(args.types.split(",")),
    )
    sample = model.sample_regression(n=args.n, sigma=args.sigma, seed=args.seed)
    updates, a, contaminated = sample.updates, sample.subspace, sample.contaminated
    n_bad = int(contaminated.sum())
    # per-entry standard deviation of each local fit: sigma_k^2 tr((X^T X)^-1) / p
    sigma_k = sample.local_sd
    print(f"scenario: {sample!r}")
    print(
        f"  local fits: per-entry error sd {np.median(sigma_k):.3g} (median over "
        f"clients), separation delta_min = {sample.margin[contaminated].min():.3g}"
        if n_bad
        else "  no contaminated client"
    )

    reports = [
        _timed("local", lambda: baselines.local(updates)),
        _timed("fedavg", lambda: baselines.fedavg(updates)),
        _timed("coordinate median", lambda: baselines.coordinate_median(updates)),
        _timed("trimmed mean 20%", lambda: baselines.trimmed_mean(updates, 0.2)),
        _timed("geometric median", lambda: baselines.geometric_median(updates)),
    ]
    if model.n_clients > 2 * n_bad + 2:
        reports += [
            _timed("krum", lambda: baselines.krum(updates, n_bad)),
            _timed("multi-krum", lambda: baselines.multi_krum(updates, n_bad)),
        ]
    start = time.perf_counter()
    svd_est = baselines.svd_refine(updates, model.rank)
    reports.append(
        MethodReport(
            "plain SVD + refine",
            svd_est,
            time.perf_counter() - start,
            subspace_error=projection_distance(top_subspace(updates, model.rank), a),
        )
    )
    # CLAIR with its defaults (noise level, rank and test by documented rules),
    # and with the fits' error covariance (the exact test of regression fits)
    calls = {
        "CLAIR": {},
        "CLAIR, noise_cov": {
            "noise_cov": sample.noise_cov,
            "noise_df": sample.noise_df,
        },
    }
    results = {}
    for name, kwargs in calls.items():
        start = time.perf_counter()
        result = results[name] = clair(updates, **kwargs)
        seconds = time.perf_counter() - start
        scores = detection_scores(~result.collaborative, contaminated)
        reports.append(
            MethodReport(
                name,
                result.refined,
                seconds,
                subspace_error=projection_distance(result.subspace, a),
                precision=scores.precision,
                recall=scores.recall,
            )
        )
    result = results["CLAIR"]
    reports.append(
        _timed(
            "oracle CLAIR",
            lambda: baselines.oracle_clair(updates, a, sample.benign),
            subspace_error=0.0,
            precision=1.0,
            recall=1.0,
        )
    )
    _print_table(reports, sample)
    print("\n" + result.summary())
    out = _figure(reports, sample, Path(args.out))
    print(f"\nfigure written to {out.resolve()}")
    return reports


def _benign_error(report: MethodReport, sample) -> float:
    return float(client_errors(report.estimates, sample.truth)[sample.benign].mean())


def _print_table(reports: list[MethodReport], sample) -> None:
    local = _benign_error(reports[0], sample)

    def fmt(x: float | None, spec: str) -> str:
        width = int(spec.split(".")[0])
        return f"{'-':>{width}}" if x is None else format(x, spec)

    print(
        f"\n{'method':<20} {'subspace err':>12} {'precision':>9} {'recall':>7} "
        f"{'benign err':>10} {'vs local':>9} {'seconds':>8}"
    )
    for r in reports:
        err = _benign_error(r, sample)
        print(
            f"{r.name:<20} {fmt(r.subspace_error, '12.3e')} "
            f"{fmt(r.precision, '9.2f')} {fmt(r.recall, '7.2f')} {err:10.4f} "
            f"{(err - local) / local:+9.1%} {r.seconds:8.4f}"
        )
    print(
        "benign err: mean over benign clients of ||Theta~_k - Theta_k||_F; "
        "vs local: relative change of that mean."
    )


def _figure(reports: list[MethodReport], sample, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    shown = ("local", "fedavg", "plain SVD + refine", "CLAIR", "oracle CLAIR")
    markers = dict(zip(shown, "os^Dv", strict=True))
    fig, ax = plt.subplots(figsize=(10.5, 4.2))
    clients = np.arange(sample.n_clients)
    for r in reports:
        if r.name not in shown:
            continue
        errors = client_errors(r.estimates, sample.truth)
        ax.plot(clients, errors, markers[r.name], label=r.name, ms=5, alpha=0.85)
    for k in np.flatnonzero(sample.contaminated):
        ax.axvspan(k - 0.5, k + 0.5, color="tab:red", alpha=0.12, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("client k")
    ax.set_ylabel(r"estimation error $\|\tilde\Theta_k - \Theta_k\|_F$ (log scale)")
    ax.set_title(
        f"Per-client error, K = {sample.n_clients}, p = {sample.p}, q = {sample.q}, "
        f"r = {sample.rank}; shaded: contaminated clients"
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.text(
        0.01,
        0.01,
        "CLAIR keeps the flagged clients' local fits; the benign ones share the "
        "off-subspace average.",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

"""Benchmark the trimmed refit of A^ and c^ against one decomposition (§3.6).

``clair(M, rank=r, sigma=tau)`` with ``refit="trimmed"`` (the default) against
``refit="none"`` (the paper's estimator) on the same data, in the same process,
with three yardsticks measured in the same run:

* the decomposition alone: :func:`clair_stats.decompose` with the options clair()
  uses (P1 at clair()'s mu: the noise operator norm of ``sigma``, or of the
  estimated noise level);
* the floor: one thin SVD of the p x Kq stack M (``scipy.linalg.svd``,
  ``full_matrices=False``), the unit cost of one iteration of a nuclear-norm
  solver;
* the refit's extra time, trimmed - none, in units of the decomposition.

docs/pipeline.md §3.6 ("Cost") says the refit costs K + 5 starts of a few
concentration steps each (an eigen-decomposition of a p x p Gram matrix or of the
smaller side, and one K x p x q product) and one exact SVD, and the estimator's
docstring calls it a small multiple of the decomposition. The ratio trimmed /
none is the figure to read.

Instances (B_k with iid N(0, 1) entries, noise tau = 0.05, fixed seeds):

* dense: Theta^_k = A B_k^T + tau E_k (p x q, rank r = 3), either ``clean`` (no
  contaminated client) or ``alie`` (30% identical ALIE attackers at the benign
  mean - 1.5 sd, coordinate-wise: the refit runs in full, with copies grouped,
  the trimmed fit and the reweighting; on ``clean`` data it is the check that
  keeps the decomposition's fit);
* LoRA (factored, :class:`clair_stats.LowRankUpdates`, never multiplied out by
  clair()): B_k = U G_k + 0.02 E_k (p x 8), A_k (8 x q) with iid N(0, 1/q)
  entries, U p x 4 shared; ``copies``: 30% identical copies of one adapter in a
  subspace orthogonal to U with coefficients three times larger. Called with
  the defaults, ``clair(updates, rank=4)``: the noise 0.02 E_k A_k of a LoRA
  update has rank 8, so the chi-square law of a per-entry ``sigma`` does not
  hold (measured: sigma = 0.02 sqrt(8 / q), its per-entry sd, flagged 14 of the
  50 clean clients); the noise level is estimated (a pilot P0 and up to three P1
  solves) and the test is the empirical null. The floor is the SVD of the dense
  stack (formed once for it, outside every timed call).

Timing: the four calls run in turn (trimmed, none, decompose, SVD) ``--repeats``
times after one warm-up round that is not counted, and the medians are reported
(other engineers share the machine: the median is not moved by one slow or one
lucky run). The ratio trimmed / none is the median of the ratios of the pairs of
one round, so that a drift of the machine's speed during the run cancels. BLAS on
one thread (``threadpoolctl``), as the tests run. Absolute times depend on the
machine and its load; only the ratios are the result.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import scipy
import scipy.linalg
from _provenance import blas, command_line, source_digest
from threadpoolctl import threadpool_limits

import clair_stats
from clair_stats import (
    AssumptionWarning,
    ConvergenceWarning,
    LowRankUpdates,
    clair,
    decompose,
)
from clair_stats.core.linalg import stack

#: name -> (p, q, K, scenario, factored); r = RANK for the dense cases.
CASES: dict[str, tuple[int, int, int, str, bool]] = {
    "40x240 clean": (40, 6, 40, "clean", False),
    "40x240 alie": (40, 6, 40, "alie", False),
    "100x800 clean": (100, 8, 100, "clean", False),
    "100x800 alie": (100, 8, 100, "alie", False),
    "200x3200 clean": (200, 16, 200, "clean", False),
    "200x3200 alie": (200, 16, 200, "alie", False),
    "LoRA 512x(50x512) clean": (512, 512, 50, "clean", True),
    "LoRA 512x(50x512) copies": (512, 512, 50, "copies", True),
}
RANK, TAU, GAMMA, Z_ALIE, SEED = 3, 0.05, 0.3, 1.5, 2026
LORA_RANK, LORA_SHARED, LORA_NOISE = 8, 4, 0.02


def dense_instance(
    p: int, q: int, n_clients: int, scenario: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(updates, A, contaminated) of a dense case.

    Theta^_k = A B_k^T + tau E_k; with ``scenario="alie"`` the first
    round(GAMMA K) clients send the benign mean - Z_ALIE sd, coordinate-wise.
    """
    rng = np.random.default_rng(SEED + p)
    a = np.linalg.qr(rng.standard_normal((p, RANK)))[0]
    coef = rng.standard_normal((n_clients, q, RANK))
    updates = np.einsum("pr,kqr->kpq", a, coef)
    updates += TAU * rng.standard_normal((n_clients, p, q))
    bad = np.zeros(n_clients, dtype=bool)
    if scenario == "alie":
        f = int(round(GAMMA * n_clients))
        benign = updates[f:]
        updates[:f] = benign.mean(axis=0) - Z_ALIE * benign.std(axis=0, ddof=1)
        bad[:f] = True
    return updates, a, bad


def lora_instance(
    p: int, q: int, n_clients: int, scenario: str
) -> tuple[LowRankUpdates, np.ndarray, np.ndarray]:
    """(updates, U, contaminated) of a LoRA case (module docstring)."""
    rng = np.random.default_rng(SEED + p + n_clients)
    basis = np.linalg.qr(rng.standard_normal((p, 2 * LORA_SHARED)))[0]
    u, v = basis[:, :LORA_SHARED], basis[:, LORA_SHARED:]
    f = int(round(GAMMA * n_clients)) if scenario == "copies" else 0
    b, a = [], []
    for k in range(n_clients):
        a.append(rng.standard_normal((LORA_RANK, q)) / np.sqrt(q))
        if k < f:
            b.append(v @ (3.0 * rng.standard_normal((LORA_SHARED, LORA_RANK))))
        else:
            b.append(
                u @ rng.standard_normal((LORA_SHARED, LORA_RANK))
                + LORA_NOISE * rng.standard_normal((p, LORA_RANK))
            )
    if f:
        b[1:f] = [b[0]] * (f - 1)
        a[1:f] = [a[0]] * (f - 1)
    return LowRankUpdates(b, a), u, np.arange(n_clients) < f


def timed(call: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = call()
    return time.perf_counter() - t0, out


def bench_case(name: str, repeats: int) -> dict:
    """Time one case: clair trimmed, clair none, decompose alone, one SVD of M.

    Returns
    -------
    dict
        Medians (seconds), the median paired ratio trimmed / none, and what the
        refit did (source, starts, subspace errors, flags).
    """
    p, q, n_clients, scenario, factored = CASES[name]
    if factored:
        updates, truth, bad = lora_instance(p, q, n_clients, scenario)
        # the noise of a LoRA update has rank r_k: the chi-square law of a given
        # per-entry sigma does not hold, so the defaults (sigma estimated, the
        # empirical null)
        rank, options = LORA_SHARED, {}
        m = stack(updates.dense())
    else:
        updates, truth, bad = dense_instance(p, q, n_clients, scenario)
        rank, options = RANK, {"sigma": TAU}
        m = stack(updates)

    def run(refit: str):
        return clair(updates, rank=rank, refit=refit, **options)

    with warnings.catch_warnings():
        # the paper's estimator warns on the attacked cases (it flags the benign
        # clients); converged is reported below
        warnings.simplefilter("ignore", AssumptionWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        trimmed, none = run("trimmed"), run("none")  # the warm-up round
        mu = none.mu

        def solve():
            return decompose(updates, mode="penalized", mu=mu)

        solve()
        scipy.linalg.svd(m, full_matrices=False)
        times: dict[str, list[float]] = {
            "trimmed": [],
            "none": [],
            "dec": [],
            "svd": [],
        }
        for _ in range(repeats):
            times["trimmed"].append(timed(lambda: run("trimmed"))[0])
            times["none"].append(timed(lambda: run("none"))[0])
            times["dec"].append(timed(solve)[0])
            times["svd"].append(
                timed(lambda: scipy.linalg.svd(m, full_matrices=False))[0]
            )
    med = {key: float(np.median(value)) for key, value in times.items()}
    ratio = float(np.median(np.array(times["trimmed"]) / np.array(times["none"])))

    def error(result) -> float:
        a = result.subspace
        return float(np.linalg.norm(a @ a.T - truth @ truth.T))

    refit = trimmed.refit
    return {
        **med,
        "ratio": ratio,
        "source": "-" if refit is None else refit.source,
        "starts": 0 if refit is None else refit.n_starts,
        "err_trimmed": error(trimmed),
        "err_none": error(none),
        "flags_trimmed": bool(np.array_equal(~trimmed.collaborative, bad)),
        "flags_none": bool(np.array_equal(~none.collaborative, bad)),
        "converged": bool(trimmed.decomposition.info.converged),
        "shape": (p, q, n_clients),
        "f": int(bad.sum()),
    }


def row_md(name: str, row: dict) -> tuple[str, str]:
    """The timing row and the accuracy row of one case."""
    extra = (row["trimmed"] - row["none"]) / row["dec"]
    timing = (
        f"| {name} | {row['shape']} | {row['f']} | {row['trimmed']:.4g} | "
        f"{row['none']:.4g} | **{row['ratio']:.2f}** | {row['dec']:.4g} | "
        f"{row['svd']:.3g} | {row['none'] / row['dec']:.2f} | {extra:.2f} | "
        f"{row['trimmed'] / row['svd']:.1f} |"
    )
    accuracy = (
        f"| {name} | {row['source']} | {row['starts']} | {row['err_trimmed']:.3g} | "
        f"{row['err_none']:.3g} | {'yes' if row['flags_trimmed'] else 'no'} | "
        f"{'yes' if row['flags_none'] else 'no'} | {row['converged']} |"
    )
    return timing, accuracy


def header(
    args: argparse.Namespace,
    when: str,
    argv: Sequence[str] | None = None,
    digest: str | None = None,
) -> list[str]:
    """The provenance lines of the report: date, machine, versions, command (as run
    from the repository root, no absolute path), instances and settings.

    Parameters
    ----------
    args : argparse.Namespace
        From the command line (``repeats``).
    when : str
        The date and load line.
    argv : sequence of str, optional
        The command line of the run; default ``sys.argv``.
    digest : str, optional
        :func:`source_digest` of the code measured, taken when the run started
        (the package is edited in place); default now.

    Returns
    -------
    list of str
        Markdown list items.
    """
    return [
        f"- date: {when}",
        f"- machine: {platform.platform()}, os.cpu_count() = {os.cpu_count()}, "
        f"Python {platform.python_version()}; BLAS threads = 1 (threadpoolctl)",
        f"- versions: numpy {np.__version__}, scipy {scipy.__version__}, "
        f"clair_stats {clair_stats.__version__} (source sha1 "
        f"{digest or source_digest()}); "
        f"BLAS: {blas()}",
        f"- command: `{command_line(sys.argv if argv is None else argv)}`",
        f"- instances: dense Theta^_k = A B_k^T + tau E_k, r = {RANK}, tau = {TAU}, "
        f"B_k, E_k iid N(0, 1), seed {SEED} + p; alie: {GAMMA:.0%} identical "
        f"attackers at the benign mean - {Z_ALIE} sd; LoRA: B_k = U G_k + "
        f"{LORA_NOISE} E_k (p x {LORA_RANK}), A_k iid N(0, 1/q), U p x "
        f"{LORA_SHARED}, r = {LORA_SHARED}; copies: {GAMMA:.0%} identical "
        "adapters outside span(U)",
        "- calls: dense `clair(M, rank=r, sigma=tau, refit=...)` (P1, mu = the "
        "noise operator norm of sigma; the chi-square test); LoRA `clair(updates, "
        "rank=r, refit=...)` (the noise of a LoRA update has rank r_k, so no "
        "per-entry sigma: sigma estimated by the pilot P0 and up to 3 P1 solves, "
        "the empirical null); decompose = `decompose(M, mode='penalized', "
        "mu=result.mu)`, one P1 solve at clair's final mu; SVD = "
        "`scipy.linalg.svd(M, full_matrices=False)` of the dense p x Kq stack",
        f"- times: median of {args.repeats} rounds (trimmed, none, decompose, SVD "
        "in turn) after one warm-up round; trimmed / none = median of the "
        "per-round ratios",
    ]


def report(
    rows: dict[str, dict], args: argparse.Namespace, when: str, digest: str
) -> str:
    """Markdown: header, timing table, accuracy table, notes."""
    body = [row_md(name, row) for name, row in rows.items()]
    return "\n".join(
        [
            "# The trimmed refit (docs/pipeline.md §3.6): its cost against one "
            "decomposition",
            "",
            *header(args, when, digest=digest),
            "",
            "| case | (p, q, K) | f | trimmed s | none s | trimmed / none "
            "| decompose s | SVD s | none / decompose | (trimmed - none) / decompose "
            "| trimmed / SVD |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *[t for t, _ in body],
            "",
            "| case | refit source | starts | subspace error, trimmed "
            "| subspace error, none | flags exact, trimmed | flags exact, none "
            "| P1 converged |",
            "|---|---|---|---|---|---|---|---|",
            *[a for _, a in body],
            "",
            "refit source: `decomposition` when the trimmed check keeps L^'s "
            "subspace (no copies, the majority fits it), `trimmed` or `reweighted` "
            "when A^ is refitted. flags exact: the flagged set is the contaminated "
            "set. subspace error: ||P_A^ - P_A||_F (LoRA: A = U). The dense stack "
            "of the LoRA cases is formed for the SVD floor only.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run the benchmark, print and write the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="rounds per case")
    parser.add_argument("--cases", help="subset: comma-separated names of CASES")
    parser.add_argument("--quick", action="store_true", help="the two smallest cases")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "refit.md"
    )
    args = parser.parse_args(argv)
    names = list(CASES)[:2] if args.quick else list(CASES)
    if args.cases:
        names = [s.strip() for s in args.cases.split(",")]
        unknown = [s for s in names if s not in CASES]
        if unknown:
            parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    load0 = os.getloadavg()[0]
    start = datetime.datetime.now().isoformat(timespec="seconds")
    digest = source_digest()  # the code imported, before anyone edits it
    rows: dict[str, dict] = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for name in names:
            rows[name] = bench_case(name, args.repeats)
            print(name, {k: v for k, v in rows[name].items() if k != "shape"})
    load = f"{load0:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    text = report(rows, args, f"{start} (1-min load average {load})", digest)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()

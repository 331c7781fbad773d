"""Benchmark CLAIR on LoRA factors at LLM scale: the factored solver (§5.8).

K clients each send a rank-16 LoRA adapter of one 4096 x 4096 module, Theta^_k =
s_k B_k A_k. The dense path would stack M = [Theta^_1, ..., Theta^_K], a 4096 x
4096 K matrix (1.3 GB per 10 clients in float64, several copies inside the
solver); the factored path (:mod:`clair_stats.solvers.factored`) solves on a
core of size R x K max_k r_k with R <= sum_k r_k and never forms M.

Two scenarios, 10% of the clients contaminated (Gaussian B_k, norm matched):

* ``shared``: benign B_k = U G_k with U (p x 8) common: the noiseless model of
  docs/model.md §2 (benign column spaces inside span(U)), so R = 8 + 16 * #contaminated.
  Program: the default of :func:`clair_stats.clair` (P0, detection by support).
* ``generic``: benign B_k = U G_k + 0.05 E_k / sqrt(p), so every client has its
  own 16-dimensional column space and R = sum_k r_k = 16 K, the worst case for
  the core. Program: P1 with mu = 5, detection by support at L^'s subspace
  (``refit="none"``: the support rule at a refitted subspace would flag every one
  of these noisy updates, and nobody would be refined). With the scaling 2,
  the noise has operator norm about 0.2 << mu, and a benign block's residual
  (noise, Frobenius norm about 0.4, plus the shrinkage of the signal by the
  nuclear norm, about mu sqrt(8 / K)) stays below the block threshold mu lam =
  20 / sqrt(K) for K <= 100, so S^_k = 0 exactly on benign blocks.

Each case runs in its own spawned process, so that its peak resident memory
(``resource.getrusage``; it includes the interpreter, numpy and the instance's
factors) is its own; the traced peak (``tracemalloc``, numpy's allocations during
the call) is measured in one extra run. Times are the best of ``--repeats`` runs
of ``clair()`` (other engineers share the machine: the other runs measure them),
with its parts: the reduction to the core, the core solve and the rest (subspace,
statistics, refinement with a truncated SVD per client at rank r_k).

The dense path runs where it fits: at most :data:`DENSE_MAX_ENTRIES` entries in
M (p K q), i.e. p = q = 512 here. The cutoff: the dense solver holds about ten
p x Kq float64 arrays (M, L, S, Y, the shifted matrix, the residual, ... ;
measured below as peak RSS per entry of M), so 2.5e7 entries is already about 2
GB, the memory target; at p = q = 4096 even K = 10 (1.7e8 entries) needs about
13 GB and one iteration a 4096 x 4096 eigendecomposition of a Gram matrix built
from a 4096 x 40960 matrix. The comparison at p = q = 512 reports time and
memory ratios and the agreement of objective, subspace and flags.

Reference in the same run: the time to multiply out the K updates once (K
products B_k A_k, each discarded), the least any dense method must spend.

With a centre (``center=True``, generic scenario, ``--center-clients``) the core is
R x K n_w with n_w the dimension of all row spaces (docs/programs.md §5.8): 1600 x
160000 (2 GB) at K = 100. Those cases run under an address-space cap
(``--memory-cap`` GB, ``RLIMIT_AS`` of the child), so that K = 100 reports whether
it fits in the stated bound instead of taking the shared machine's memory.

BLAS threads: one per child by default (``--threads``). On the shared 2-core
machine two OpenBLAS threads were 10 to 20 times slower than one whenever other
jobs ran (measured at 1-min load 3: generic K = 100 took 545 s with two threads,
31 s with one; the reduction alone 42 s against 1.5 s).

Target (set when the factored path was written): K = 100 at p = q = 4096, r = 16
in under 10 s and 2 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
import tracemalloc
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy
from _provenance import blas, command_line, source_digest

import clair_stats
from clair_stats import ConvergenceWarning, LowRankUpdates, clair

RANK, SHARED_RANK, GAMMA, NOISE, SCALING, SEED = 16, 8, 0.1, 0.05, 2.0, 2026
MU_GENERIC = 5.0
LORA_P = 4096
DENSE_P = 512
CLIENTS = (10, 50, 100)
CENTER_CLIENTS = (10, 20, 30, 100)
MEMORY_CAP_GB = 8.0
DENSE_MAX_ENTRIES = 25_000_000
SCENARIOS = ("shared", "generic")
SLOW = 60.0  # seconds: a case this slow runs once, without the traced run
SHOWN = ("seconds", "reduction", "solve", "iterations", "rss_peak", "flags_ok")


def lora_instance(
    p: int, q: int, n_clients: int, scenario: str, seed: int = SEED
) -> tuple[LowRankUpdates, np.ndarray]:
    """The factored instance of one case and its contaminated mask.

    Parameters
    ----------
    p, q : int
        Module shape.
    n_clients : int
        K; the first round(GAMMA K) clients are contaminated.
    scenario : {"shared", "generic"}
        Benign B_k exactly in span(U), or in span(U) plus noise.
    seed : int

    Returns
    -------
    updates : LowRankUpdates
        B_k (p, 16), A_k (16, q) with iid N(0, 1/q) entries, scaling 2
        (PEFT's lora_alpha / r with lora_alpha = 32).
    contaminated : numpy.ndarray of bool, shape (K,)
    """
    rng = np.random.default_rng(seed + n_clients + p)
    u = np.linalg.qr(rng.standard_normal((p, SHARED_RANK)))[0]
    n_bad = int(round(GAMMA * n_clients))
    b, a = [], []
    for k in range(n_clients):
        a.append(rng.standard_normal((RANK, q)) / np.sqrt(q))
        if k < n_bad:  # columns of norm ~ sqrt(8), as the benign U G_k
            b.append(rng.standard_normal((p, RANK)) * np.sqrt(SHARED_RANK / p))
            continue
        bk = u @ rng.standard_normal((SHARED_RANK, RANK))
        if scenario == "generic":
            bk += NOISE * rng.standard_normal((p, RANK)) / np.sqrt(p)
        b.append(bk)
    return LowRankUpdates(b, a, scaling=SCALING), np.arange(n_clients) < n_bad


def program(scenario: str) -> dict:
    """The clair() arguments of a scenario."""
    if scenario == "shared":
        return {}  # the defaults: on these noiseless updates, P0 and the support
    # the program of the stored results: P1 and the support rule (the default
    # detect="auto" would test these noisy updates), at L^'s subspace: with the
    # trimmed refit the support rule also asks every energy at A^ to be below
    # support_tol ||M||_F, which these noisy updates never are, so every client
    # would be flagged and step 4 not timed
    return {
        "mode": "penalized",
        "mu": MU_GENERIC,
        "detect": "support",
        "refit": "none",
    }


def rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux: ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def case_child(spec: dict, conn) -> None:
    """Child process: run one case and send back scalars (and the small A^)."""
    try:
        if spec.get("memory_cap"):  # bytes of address space (the centred cases)
            cap = int(spec["memory_cap"] * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        updates, contaminated = lora_instance(
            spec["p"], spec["p"], spec["K"], spec["scenario"]
        )
        data = updates.dense() if spec["path"] == "dense" else updates
        kwargs = program(spec["scenario"])
        if spec.get("center"):
            kwargs["center"] = True
        out: dict = {"rss_before": rss_mb()}
        if spec["path"] == "factored" and spec.get("reference"):
            t0 = time.perf_counter()
            for k in range(updates.n_clients):
                updates.client(k)  # discarded: the cost of forming M once
            out["form_m"] = time.perf_counter() - t0
        best, result = np.inf, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # converged is kept
            for _ in range(spec["repeats"]):
                t0 = time.perf_counter()
                res = clair(data, **kwargs)
                seconds = time.perf_counter() - t0
                if seconds < best:
                    best, result = seconds, res
                if seconds > SLOW:  # one run says enough, and repeats would hit the cap
                    break
            out["rss_peak"] = rss_mb()
            if best <= SLOW:
                tracemalloc.start()
                clair(data, **kwargs)
                out["traced_peak"] = tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
        dec = result.decomposition
        info = dec.info
        out.update(
            seconds=best,
            solve=info.seconds,
            iterations=info.iterations,
            converged=info.converged,
            objective=info.objective,
            relative_gap=info.relative_gap,
            flags_ok=bool(np.array_equal(~result.collaborative, contaminated)),
            flagged=int((~result.collaborative).sum()),
            collaborative=result.collaborative,
            subspace=result.subspace,
        )
        if spec["path"] == "factored":
            out.update(
                reduction=dec.reduction_seconds,
                core=dec.core_shape,
                trunc=float(
                    np.max(
                        result.refined.truncation_error
                        / np.maximum(result.refined.refined_norm, 1e-300)
                    )
                ),
            )
        conn.send(out)
    except MemoryError:  # the cap of a centred case
        conn.send({"error": "MemoryError", "rss_peak": rss_mb()})
    except Exception as exc:  # reported in the table, not raised
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def run_case(spec: dict, cap: float) -> dict:
    """Run :func:`case_child` in a spawned process, terminated after ``cap`` s."""
    ctx = mp.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=case_child, args=(spec, writer))
    load = os.getloadavg()[0]
    proc.start()
    writer.close()
    out: dict = {"timeout": True}
    if reader.poll(cap):
        try:
            out = reader.recv()
        except EOFError:
            out = {"error": "child died (out of memory?)"}
    proc.join(timeout=5 if "timeout" not in out else 0)
    if proc.is_alive():
        proc.terminate()
        proc.join()
    out["load"] = (load, os.getloadavg()[0])
    return out


def subspace_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||P_A - P_B||_F = sqrt(2) ||(I - P_A) B||_F for equal ranks (else inf).

    The second form has no cancellation (2 r - 2 ||A^T B||_F^2 bottoms out at
    sqrt(r eps) ~ 1e-7).
    """
    if a.shape != b.shape:
        return float("inf")
    return float(np.sqrt(2.0) * np.linalg.norm(b - a @ (a.T @ b)))


def fmt(x: float, spec: str = ".3g") -> str:
    """format(x, spec)."""
    return format(x, spec)


def lora_rows(results: dict) -> list[str]:
    """The LoRA-scale table (factored only)."""
    rows = []
    for (scenario, k), r in results.items():
        head = f"| {scenario} | {k} |"
        if "seconds" not in r:
            why = "> cap" if r.get("timeout") else r.get("error", "?")[:80]
            rows.append(f"{head} {why} |" + " - |" * 11)
            continue
        rest = r["seconds"] - r["reduction"] - r["solve"]
        rows.append(
            f"{head} {r['core'][0]} x {r['core'][1]} | {fmt(r['seconds'])} | "
            f"{fmt(r['reduction'])} | {fmt(r['solve'])} ({r['iterations']} it) | "
            f"{fmt(rest)} | {fmt(r['seconds'] / r['form_m'], '.2f')} | "
            f"{r['rss_peak']:.0f} | {r['rss_before']:.0f} | "
            f"{r.get('traced_peak', float('nan')):.0f} | "
            f"{'yes' if r['flags_ok'] else 'no'} ({r['flagged']}) | "
            f"{r['trunc']:.2e} | {r['load'][0]:.1f} / {r['load'][1]:.1f} |"
        )
    return rows


def center_rows(results: dict, cap_gb: float) -> list[str]:
    """The centred cases (generic, center=True) at p = q = LORA_P."""
    rows = []
    for k, r in results.items():
        head = f"| {k} |"
        if "seconds" not in r:
            if r.get("error") == "MemoryError":
                why = f"exceeds the {cap_gb:g} GB address-space cap"
            else:
                why = "> time cap" if r.get("timeout") else r.get("error", "?")[:80]
            rows.append(f"{head} {why} |" + " - |" * 6)
            continue
        rest = r["seconds"] - r["reduction"] - r["solve"]
        rows.append(
            f"{head} {r['core'][0]} x {r['core'][1]} | {fmt(r['seconds'])} | "
            f"{fmt(r['reduction'])} | {fmt(r['solve'])} ({r['iterations']} it) | "
            f"{fmt(rest)} | {r['rss_peak']:.0f} | "
            f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |"
        )
    return rows


def dense_rows(factored: dict, dense: dict) -> list[str]:
    """The dense-vs-factored table at p = q = DENSE_P."""
    rows = []
    for key, f in factored.items():
        d = dense.get(key, {"error": "above the cutoff"})
        scenario, k = key
        head = f"| {scenario} | {k} |"
        if "seconds" not in f or "seconds" not in d:
            why = d.get("error") or ("> cap" if d.get("timeout") else "-")
            if "seconds" not in f:
                why = f.get("error") or "> cap"
            rows.append(f"{head} {why[:60]} |" + " - |" * 7)
            continue
        rel = abs(f["objective"] - d["objective"]) / abs(d["objective"])
        same = np.array_equal(f["collaborative"], d["collaborative"])
        rows.append(
            f"{head} {fmt(d['seconds'])} | {fmt(f['seconds'])} | "
            f"{d['seconds'] / f['seconds']:.1f}x | {d['rss_peak']:.0f} | "
            f"{f['rss_peak']:.0f} | {rel:.1e} | "
            f"{subspace_distance(f['subspace'], d['subspace']):.1e} | "
            f"{'yes' if same else 'no'} |"
        )
    return rows


def targets(results: dict) -> list[str]:
    """The target per scenario, MET / NOT MET with the figures."""
    out = []
    for scenario in SCENARIOS:
        r = results.get((scenario, 100))
        if r is None:
            continue
        if "seconds" not in r:
            out.append(f"- {scenario}, K = 100: **NOT MET** (did not finish)")
            continue
        met = r["seconds"] < 10 and r["rss_peak"] < 2048
        out.append(
            f"- {scenario}, K = 100: **{'MET' if met else 'NOT MET'}** "
            f"({r['seconds']:.3g} s, peak RSS {r['rss_peak']:.0f} MB; 1-min load "
            f"{r['load'][0]:.1f} at start)"
        )
    return out


def header(
    args: argparse.Namespace, when: str, argv: Sequence[str] | None = None
) -> list[str]:
    """The provenance lines of the report: date, machine, versions, command (as run
    from the repository root, no absolute path), instances and measurements.

    Parameters
    ----------
    args : argparse.Namespace
        From the command line (``repeats``).
    when : str
        The date and load line.
    argv : sequence of str, optional
        The command line of the run; default ``sys.argv``.

    Returns
    -------
    list of str
        Markdown list items.
    """
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default (all cores)")
    return [
        f"- date: {when}",
        f"- machine: {platform.platform()}, os.cpu_count() = {os.cpu_count()}, "
        f"Python {platform.python_version()}; OPENBLAS_NUM_THREADS = {threads}",
        f"- versions: numpy {np.__version__}, scipy {scipy.__version__}, "
        f"clair_stats {clair_stats.__version__} (source sha1 "
        f"{source_digest()}); BLAS: {blas()}",
        f"- command: `{command_line(sys.argv if argv is None else argv)}`",
        f"- instances: `lora_instance(p, p, K, scenario)`: r_k = {RANK}, shared "
        f"rank {SHARED_RANK}, {GAMMA:.0%} contaminated, scaling {SCALING}, "
        f"generic noise {NOISE}; shared: clair() defaults (noiseless: P0, support); "
        f"generic: P1 with mu = {MU_GENERIC}, support, refit none",
        f"- times: best of {args.repeats} runs of clair() in a child process per "
        f"case (one run when it takes over {SLOW:g} s; reduction + core solve + "
        "rest = total); peak RSS of that child; traced = tracemalloc peak of "
        "one more run (not made for the slow cases)",
    ]


def report(
    lora: dict,
    small_f: dict,
    small_d: dict,
    args,
    when: str,
    centred: dict | None = None,
) -> str:
    """Markdown report."""
    centre = []
    if centred:
        centre = [
            f"## p = q = {LORA_P}, r = {RANK}: with a centre (generic, center=True; "
            f"address space capped at {args.memory_cap:g} GB)",
            "",
            "| K | core R x K n_w | clair s | reduction s | core solve s | rest s "
            "| peak RSS MB | load start / end |",
            "|---|---|---|---|---|---|---|---|",
            *center_rows(centred, args.memory_cap),
            "",
        ]
    return "\n".join(
        [
            "# CLAIR on LoRA factors: factored solver at LLM scale",
            "",
            *header(args, when),
            "",
            f"## p = q = {LORA_P}, r = {RANK}: factored",
            "",
            "| scenario | K | core R x Km | clair s | reduction s | core solve s "
            "| rest s | clair / form M | peak RSS MB | RSS before MB | traced MB "
            "| flags correct (n) | max rel. truncation | load start / end |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *lora_rows(lora),
            "",
            "clair / form M: the clair() time over that of multiplying out the K "
            "updates once (each discarded), measured in the same process.",
            "",
            f"## p = q = {DENSE_P}, r = {RANK}: dense vs factored (cutoff p K q <= "
            f"{DENSE_MAX_ENTRIES:.1e})",
            "",
            "| scenario | K | dense s | factored s | dense / factored | dense RSS MB "
            "| factored RSS MB | rel. objective diff | ||P_A^ - P_A^||_F "
            "| same flags |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *dense_rows(small_f, small_d),
            "",
            *centre,
            "## Target (K = 100 at p = q = 4096 in < 10 s and < 2 GB)",
            "",
            *targets(lora),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run the cases, print and write the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per case")
    parser.add_argument("--cap", type=float, default=900.0, help="seconds per case")
    parser.add_argument(
        "--clients", type=int, nargs="+", default=list(CLIENTS), help="values of K"
    )
    parser.add_argument(
        "--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS)
    )
    parser.add_argument("--no-dense", action="store_true", help="skip p = 512")
    parser.add_argument(
        "--center-clients",
        type=int,
        nargs="*",
        default=list(CENTER_CLIENTS),
        help="values of K with a centre (generic); none to skip",
    )
    parser.add_argument(
        "--memory-cap",
        type=float,
        default=MEMORY_CAP_GB,
        help="address-space cap of the centred cases, GB",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS threads of the child processes (0: as the environment)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "lora_scale.md"
    )
    args = parser.parse_args(argv)
    if args.threads:  # read by OpenBLAS when a child imports numpy
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    start = datetime.datetime.now().isoformat(timespec="seconds")
    load0 = os.getloadavg()[0]
    lora, small_f, small_d = {}, {}, {}
    for scenario in args.scenarios:
        for k in args.clients:
            spec = {
                "scenario": scenario,
                "p": LORA_P,
                "K": k,
                "path": "factored",
                "repeats": args.repeats,
                "reference": True,
            }
            lora[(scenario, k)] = run_case(spec, args.cap)
            shown = {x: v for x, v in lora[(scenario, k)].items() if x in SHOWN}
            print(scenario, k, shown, flush=True)
            if args.no_dense:
                continue
            spec = dict(spec, p=DENSE_P, reference=False)
            small_f[(scenario, k)] = run_case(spec, args.cap)
            if DENSE_P * DENSE_P * k <= DENSE_MAX_ENTRIES:
                small_d[(scenario, k)] = run_case(dict(spec, path="dense"), args.cap)
    centred = {}
    for k in args.center_clients:
        spec = {
            "scenario": "generic",
            "p": LORA_P,
            "K": k,
            "path": "factored",
            "repeats": args.repeats,
            "center": True,
            "memory_cap": args.memory_cap,
        }
        centred[k] = run_case(spec, args.cap)
        shown = {x: v for x, v in centred[k].items() if x in SHOWN + ("error",)}
        print("generic, center", k, shown, flush=True)
    load = f"{load0:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    when = f"{start} (1-min load average {load})"
    text = report(lora, small_f, small_d, args, when, centred)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()

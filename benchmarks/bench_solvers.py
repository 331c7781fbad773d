"""Benchmark the P0 solvers: cvxpy + SCS against the proximal (ADMM) solver.

For each size p x Kq the same noiseless instance of the ``random`` contamination
model (r = 3, gamma = 0.2, fixed seed) is solved by

* cvxpy + SCS (the exact reference, docs/programs.md §5), in a child process so that it
can be
  stopped at ``--cvxpy-cap`` seconds; the child regenerates the instance from its
  seed (checked by a hash) and returns only scalars;
* the proximal solver (best of ``--repeats`` runs, default tolerance);
* one thin SVD of the stacked M (p x Kq), best of 5 runs.

Reported: times, iterations, convergence, relative duality gaps, the subspace error
||P_A^ - P_A||_F (A^ = top-r left singular vectors of the stacked L^), whether the
block support equals the contaminated set, and the relative objective difference.

Absolute times depend on the machine, the BLAS and its thread count, and on other
load; the results are the *ratios* measured in one run on the same instances:
cvxpy time / proximal time, and proximal time / thin-SVD time ("thin-SVD
equivalents", the unit cost of one iteration of a nuclear-norm solver). Targets:
proximal >= 500x faster than cvxpy+SCS at 60 x 500 with equal or better accuracy,
and a P0 solve in <= 25 thin-SVD equivalents at 200 x 4000.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import multiprocessing as mp
import os
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path

import cvxpy
import numpy as np
import scipy
import scipy.linalg
import scs
from _provenance import blas, command_line, source_digest
from tqdm import tqdm

import clair_stats
from clair_stats import ConvergenceWarning, Decomposition, FederatedModel, decompose
from clair_stats.core.linalg import stack

#: (p, q, K) per size p x Kq; rank, contamination and seeds are fixed below.
SIZES: dict[str, tuple[int, int, int]] = {
    "20x100": (20, 1, 100),
    "40x300": (40, 3, 100),
    "60x500": (60, 5, 100),
    "100x1000": (100, 10, 100),
    "200x4000": (200, 20, 200),
}
RANK, GAMMA, SEED = 3, 0.2, 2026
CVXPY_TOL = 1e-6
SVD_REPEATS = 5
ACC_FLOOR = 1e-6  # subspace errors below this count as exact recovery


def instance(p: int, q: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (updates, A, benign) of the noiseless instance of size (p, q, K)."""
    model = FederatedModel(p, q, RANK, k, contamination=GAMMA)
    s = model.sample(noise=0.0, seed=SEED + p)
    return s.updates, s.subspace, s.benign


def digest(x: np.ndarray) -> str:
    """Hash of an array's bytes, to check that both processes see one instance."""
    return hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()


def recovery(result: Decomposition, a: np.ndarray, benign: np.ndarray) -> dict:
    """Subspace error, support match and solver statistics of one solve.

    Parameters
    ----------
    result : Decomposition
    a : numpy.ndarray, shape (p, r)
        The true subspace A.
    benign : numpy.ndarray of bool, shape (K,)

    Returns
    -------
    dict
        Scalars: the SolverInfo fields, ``sub_err`` = ||P_A^ - P_A||_F and
        ``wrong`` = number of clients where support() differs from ~benign.
    """
    u = scipy.linalg.svd(stack(result.low_rank), full_matrices=False)[0][:, :RANK]
    err = float(np.linalg.norm(u @ u.T - a @ a.T))
    wrong = int(np.count_nonzero(result.support() != ~benign))
    keys = ("seconds", "iterations", "converged", "relative_gap", "objective")
    stats = {key: getattr(result.info, key) for key in keys}
    return stats | {"sub_err": err, "wrong": wrong}


def cvxpy_child(pqk: tuple[int, int, int], expected: str, conn: Connection) -> None:
    """Child process: solve P0 with cvxpy + SCS and send back scalars only."""
    try:
        updates, a, benign = instance(*pqk)
        if digest(updates) != expected:
            raise RuntimeError("child regenerated a different instance")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = decompose(updates, solver="cvxpy", tol=CVXPY_TOL)
        conn.send(recovery(res, a, benign))
    except Exception as exc:  # reported in the table, not raised
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def run_cvxpy(pqk: tuple[int, int, int], expected: str, cap: float) -> dict:
    """Run :func:`cvxpy_child` in a spawned process, terminated after ``cap`` s.

    Parameters
    ----------
    pqk : tuple of int
        (p, q, K) of the instance.
    expected : str
        :func:`digest` of the parent's updates.
    cap : float
        Wall-clock limit in seconds (cvxpy cannot be interrupted in-process).

    Returns
    -------
    dict
        The child's scalars, ``{"timeout": True}`` or ``{"error": message}``.
    """
    ctx = mp.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=cvxpy_child, args=(pqk, expected, writer))
    proc.start()
    writer.close()
    out: dict = {"timeout": True}
    if reader.poll(cap):
        try:
            out = reader.recv()
        except EOFError:
            out = {"error": "child died"}
    proc.join(timeout=5 if "timeout" not in out else 0)
    if proc.is_alive():
        proc.terminate()
        proc.join()
    if "error" in out and proc.exitcode:
        out["error"] += f" (exit code {proc.exitcode})"
    return out


def bench_size(pqk: tuple[int, int, int], repeats: int, cap: float | None) -> dict:
    """Benchmark one size: thin SVD, proximal solver, cvxpy + SCS.

    Parameters
    ----------
    pqk : tuple of int
        (p, q, K).
    repeats : int
        Proximal runs; the best time is reported.
    cap : float or None
        cvxpy time cap in seconds; None skips cvxpy (a smaller size exceeded it).

    Returns
    -------
    dict
        ``svd`` (best seconds), ``prox`` and ``cvx`` (dicts of :func:`recovery`).
    """
    updates, a, benign = instance(*pqk)
    m = stack(updates)
    scipy.linalg.svd(m, full_matrices=False)  # warm-up, not timed
    svd = []
    for _ in range(SVD_REPEATS):
        t0 = time.perf_counter()
        scipy.linalg.svd(m, full_matrices=False)
        svd.append(time.perf_counter() - t0)
    runs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # info.converged kept
        for _ in range(repeats):
            runs.append(recovery(decompose(updates, solver="proximal"), a, benign))
    # best of N: on a shared machine the other runs measure the neighbours
    prox = dict(runs[0], seconds=float(np.min([r["seconds"] for r in runs])))
    cvx = {"timeout": True, "untried": True} if cap is None else None
    if cvx is None:
        cvx = run_cvxpy(pqk, digest(updates), cap)
    return {"svd": float(np.min(svd)), "prox": prox, "cvx": cvx}


def support_md(r: dict) -> str:
    """'yes' or 'no (n wrong)'."""
    return "yes" if r["wrong"] == 0 else f"no ({r['wrong']} wrong)"


def row_md(name: str, row: dict) -> tuple[str, str]:
    """The timing row and the accuracy row of one size."""
    pr, cv, svd = row["prox"], row["cvx"], row["svd"]
    prox = f"{pr['seconds']:.4g} | {pr['iterations']} | {pr['converged']} | "
    prox += f"{pr['relative_gap']:.1e}"
    c_err = c_sup = obj = ratio = "-"
    if "seconds" in cv:
        scs = f"{cv['seconds']:.4g} | {cv['iterations']} | {cv['converged']} | "
        scs += f"{cv['relative_gap']:.1e}"
        ratio = f"{cv['seconds'] / pr['seconds']:.0f}x"
        c_err, c_sup = f"{cv['sub_err']:.1e}", support_md(cv)
        obj = f"{abs(cv['objective'] - pr['objective']) / abs(pr['objective']):.1e}"
    else:
        err = cv.get("error", "").replace("|", "/")[:80]
        scs = err or "skipped (> cap)" + ("†" if "untried" in cv else "")
        scs += " | - | - | -"
    timing = f"| {name} | {SIZES[name]} | {scs} | {prox} | {ratio} | {svd:.3g} | "
    timing += f"{pr['seconds'] / svd:.1f} |"
    acc = f"| {name} | {c_err} | {pr['sub_err']:.1e} | {c_sup} | {support_md(pr)} "
    return timing, acc + f"| {obj} |"


def targets(rows: dict[str, dict]) -> list[str]:
    """The two targets in words, MET / NOT MET with the measured figures."""
    t1 = "proximal >= 500x faster than cvxpy+SCS at 60 x 500 with equal or better "
    t1 += "accuracy"
    t2 = "P0 solve <= 25 thin-SVD equivalents at 200 x 4000"
    out = [f"- {t1}: NOT EVALUATED (cvxpy did not run)", f"- {t2}: NOT EVALUATED"]
    if "60x500" in rows and "seconds" in rows["60x500"]["cvx"]:
        pr, cv = rows["60x500"]["prox"], rows["60x500"]["cvx"]
        ratio = cv["seconds"] / pr["seconds"]
        acc_ok = pr["sub_err"] <= max(cv["sub_err"], ACC_FLOOR)
        acc_ok = acc_ok and pr["wrong"] <= cv["wrong"]
        met = "MET" if ratio >= 500 and acc_ok else "NOT MET"
        out[0] = (
            f"- {t1}: **{met}** (ratio {ratio:.0f}x; subspace error prox "
            f"{pr['sub_err']:.1e} vs SCS {cv['sub_err']:.1e}, errors below "
            f"{ACC_FLOOR:g} count as equal; clients misclassified prox "
            f"{pr['wrong']} vs SCS {cv['wrong']})"
        )
    if "200x4000" in rows:
        row = rows["200x4000"]
        eq = row["prox"]["seconds"] / row["svd"]
        out[1] = (
            f"- {t2}: **{'MET' if eq <= 25 else 'NOT MET'}** ({eq:.1f} "
            f"equivalents = {row['prox']['seconds']:.3g} s / {row['svd']:.3g} s)"
        )
    return out


def header(
    args: argparse.Namespace, when: str, argv: Sequence[str] | None = None
) -> list[str]:
    """The provenance lines of the report: date, machine, versions, command (as run
    from the repository root, no absolute path), instances and settings.

    Parameters
    ----------
    args : argparse.Namespace
        From the command line (``cvxpy_cap``, ``repeats``).
    when : str
        The date and load line.
    argv : sequence of str, optional
        The command line of the run; default ``sys.argv``.

    Returns
    -------
    list of str
        Markdown list items.
    """
    mods = (np, scipy, cvxpy, scs, clair_stats)
    ver = ", ".join(f"{m.__name__} {m.__version__}" for m in mods)
    ver += f" (source sha1 {source_digest()})"
    return [
        f"- date: {when}",
        f"- machine: {platform.platform()}, os.cpu_count() = {os.cpu_count()}, "
        f"Python {platform.python_version()}",
        f"- versions: {ver}; BLAS: {blas()}",
        f"- command: `{command_line(sys.argv if argv is None else argv)}`",
        f"- instances: FederatedModel(p, q, rank={RANK}, K, contamination="
        f'{GAMMA}, "random").sample(noise=0, seed={SEED} + p); default lam',
        f"- cvxpy + SCS: tol = {CVXPY_TOL:g} (eps_abs = eps_rel), one run in a "
        f"child process capped at {args.cvxpy_cap:g} s (time includes cvxpy "
        f"compilation); proximal: default tol 1e-7, best of {args.repeats}; "
        "thin SVD: scipy.linalg.svd(M, full_matrices=False), best of "
        f"{SVD_REPEATS}",
    ]


def report(rows: dict[str, dict], args: argparse.Namespace, when: str) -> str:
    """Markdown: header, timing table, accuracy table, targets."""
    body = [row_md(name, row) for name, row in rows.items()]
    return "\n".join(
        [
            "# P0 solvers: cvxpy + SCS vs proximal (ADMM)",
            "",
            *header(args, when),
            "",
            "| p x Kq | (p, q, K) | SCS s | SCS it | SCS conv | SCS gap | prox s "
            "| prox it | prox conv | prox gap | SCS / prox | SVD s | prox / SVD |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *[t for t, _ in body],
            "",
            "| p x Kq | subspace err SCS | subspace err prox | support SCS "
            "| support prox | rel. objective diff |",
            "|---|---|---|---|---|---|",
            *[a for _, a in body],
            "",
            "† not attempted: a smaller size already exceeded the cap.",
            "",
            "## Targets",
            "",
            *targets(rows),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run the benchmark, print and write the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cvxpy-cap", type=float, default=300.0, help="seconds")
    parser.add_argument("--repeats", type=int, default=5, help="proximal runs")
    parser.add_argument("--sizes", help="subset, e.g. 20x100,60x500")
    parser.add_argument("--quick", action="store_true", help="two smallest sizes")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "solvers.md"
    )
    args = parser.parse_args(argv)
    names = list(SIZES)[:2] if args.quick else list(SIZES)
    if args.sizes:
        names = [s.strip() for s in args.sizes.split(",")]
        unknown = [s for s in names if s not in SIZES]
        if unknown:
            parser.error(f"unknown sizes {unknown}; choose from {list(SIZES)}")
        names = [s for s in SIZES if s in names]  # increasing size
    rows: dict[str, dict] = {}
    exceeded, load0 = False, os.getloadavg()[0]
    start = datetime.datetime.now().isoformat(timespec="seconds")
    for name in tqdm(names, desc="sizes"):
        cap = None if exceeded else args.cvxpy_cap
        row = bench_size(SIZES[name], args.repeats, cap)
        exceeded = exceeded or "timeout" in row["cvx"]
        rows[name] = row
    load = f"{load0:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    text = report(rows, args, f"{start} (1-min load average {load})")
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()

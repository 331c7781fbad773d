r"""
Calibrating c_lam: for which lam = c / sqrt(K) does P0 recover exactly?
=======================================================================

**Question.** When the contamination fraction gamma is unknown, CLAIR's step 1 (the
exact decomposition P0 of SPEC §3) uses lam = c_lam / sqrt(K). SPEC §3 sets
c_lam = 4 from a first scan ("exact recovery held for lam sqrt(K) in about [3, 5]"),
but the README's known limitations record that c = 4 fails in most q = 1 regimes.
This study maps, regime by regime, the set of c = lam sqrt(K) at which P0 recovers
*exactly* on every replicate (the regime's "working window"), and recommends the c
that lies in the most windows. It also runs, in every regime, the theory value of
Theorem T1 (SPEC §4), c_T1 = lam_T1 sqrt(K) = 3 / (7 sqrt(gamma)).

**Grid** (full mode). Regimes: p in {30, 80}, q in {1, 2, 5, 10}, K in {20, 50, 100},
r in {2, 5}, gamma in {0.1, 0.2, 0.4}, contamination type ``random`` and
``orthogonal`` (288 regimes); c in {1.5, 2, 2.5, ..., 7} (12 values) plus c_T1; 8
replicates, noiseless data (tau = 0), no centre. That is 288 x 13 x 8 = 29,952 solves.
The number of replicates was set from a measured rate: 200 runs drawn at random from
the full grid took 0.047 s each on one core (one BLAS thread; 0.017-0.03 s at p = 30,
0.03-0.12 s at p = 80, up to 3 s for a non-converged solve), so 8 replicates take about
25 minutes of solver time, inside the 40-minute budget with a margin for a loaded
machine (the full run then took 23 minutes, 1333 s of it in the solver).
``--replicates`` changes it; more replicates can only shrink the windows.
``--quick`` runs p = 30, q in {1, 5}, K in {20, 100}, r = 2, gamma in {0.1, 0.4},
``random`` only, c in {2, 3, 4, 5, 6} plus c_T1, 2 replicates (96 solves, a few
seconds). The quick grid is a subset of the full grid with the same seeds, so rows of
a quick run are reused by a later full run.

**One run.** ``FederatedModel(p, q, r, K, contamination=gamma,
contamination_type=type).sample(noise=0, seed=s)``, then
``decompose(updates, lam=c / sqrt(K), tol=1e-9, max_iter=3000)`` (ADMM).
Exact recovery means all of

* the solver converged (a ``ConvergenceWarning`` is suppressed and the run counted as
  a failure);
* ||P_A^ - P_A||_F <= 1e-6, A^ the top-r left singular vectors of the stacked L^
  (p x Kq);
* the block support of S^ (``Decomposition.support()``) equals the contaminated set;
* the numerical rank of L^ (``Decomposition.rank()``) equals r.

**Seeds.** The seed of a run is a deterministic function of (regime, replicate) and the
base seed (``numpy.random.SeedSequence``); it does *not* depend on c: every c is tried
on the *same* instances (common random numbers), so a window is a property of one set
of instances rather than of different draws per c, and the comparison between c
values is not blurred by instance-to-instance variation.

**Resuming and parallelism.** Each finished run appends one row to
``results/lambda_calibration/runs.csv`` (flushed at once); on restart, rows already
present (same regime, c, replicate, seed, tol and max_iter) are skipped, so an
interrupted run continues where it stopped. Runs are ordered replicate-major: a
partial run first covers every regime and c once. ``--jobs N`` runs N solves in
parallel with joblib (if installed); BLAS is limited to one thread per process unless
``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` are set (measured
on the shared 2-core machine of this study: with the default multi-threaded OpenBLAS
the same solves took 15 to 145 times longer, e.g. 1.74 s instead of 0.012 s).
``--summary-only`` rewrites the summary from the CSV without solving.

**Reading the output.** ``summary.md`` (``summary_quick.md`` in quick mode; also
printed) gives

1. the recommendation: the grid c lying in the most working windows, with the
   number of regimes it covers, the regimes no c covers, and the same count for the
   current ``DEFAULT_C_LAM`` and for c_T1 (run per regime), and the ceiling
   c < sqrt(q K) above which P0 returns S^ = 0 whatever the data;
2. the coverage table: per q (and per K, per type, per gamma), how many regimes have
   c in their window, for every c of the grid;
3. the intersection of the windows over all regimes, and per q;
4. per regime: the window (the grid values of c with success rate 1, written as
   intervals of consecutive grid values), the success rate at every c and at c_T1.

A window is an empirical statement about the replicates run: "success rate 1" with
n = 8 replicates is compatible with a true failure rate up to about 0.31 (one-sided
95% bound 1 - 0.05^(1/8)); the counts of covered regimes are the robust part.
A second coverage table counts *subspace-only* recovery (converged and
||P_A^ - P_A||_F <= 1e-6, support and rank not required): the subspace of step 2 can
be right while the support of S^ is not (step 3 can then use the chi-square test).
"""

from __future__ import annotations

import os

# One BLAS thread per process (set before numpy is imported; user settings win).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import csv
import itertools
import math
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clair_stats import DEFAULT_C_LAM, ConvergenceWarning, FederatedModel, decompose
from clair_stats._validation import stack

try:
    from joblib import Parallel, delayed
except ImportError:  # pragma: no cover - joblib is optional
    Parallel = None
    delayed = None

#: Output directory (git-ignored), relative to the repository root.
OUT_DIR = Path(__file__).resolve().parent.parent / "results" / "lambda_calibration"
#: Thresholds of exact recovery.
SUBSPACE_TOL = 1e-6
#: Solver settings of every run.
TOL, MAX_ITER = 1e-9, 3000
BASE_SEED = 20260521
TYPES = ("random", "orthogonal")

FULL_GRID: dict[str, tuple] = {
    "p": (30, 80),
    "q": (1, 2, 5, 10),
    "K": (20, 50, 100),
    "r": (2, 5),
    "gamma": (0.1, 0.2, 0.4),
    "type": TYPES,
    "c": tuple(1.5 + 0.5 * i for i in range(12)),  # 1.5, 2, ..., 7
    "replicates": 8,
}
QUICK_GRID: dict[str, tuple] = {
    "p": (30,),
    "q": (1, 5),
    "K": (20, 100),
    "r": (2,),
    "gamma": (0.1, 0.4),
    "type": ("random",),
    "c": (2.0, 3.0, 4.0, 5.0, 6.0),
    "replicates": 2,
}

FIELDS = (
    "p",
    "q",
    "K",
    "r",
    "gamma",
    "type",
    "c_kind",
    "c",
    "replicate",
    "seed",
    "tol",
    "max_iter",
    "lam",
    "success",
    "converged",
    "iterations",
    "subspace_error",
    "support_ok",
    "false_pos",
    "false_neg",
    "rank",
    "seconds",
    "error",
)
#: Columns identifying a run (its resume key).
KEY_FIELDS = FIELDS[:12]


# ------------------------------------------------------------------------- regimes
@dataclass(frozen=True, order=True)
class Regime:
    """One cell (p, q, K, r, gamma, type) of the grid."""

    p: int
    q: int
    K: int
    r: int
    gamma: float
    kind: str

    @property
    def c_theory(self) -> float:
        """c_T1 = lam_T1 sqrt(K) = 3 / (7 sqrt(gamma)) (SPEC §4, T1)."""
        return 3.0 / (7.0 * math.sqrt(self.gamma))

    @property
    def label(self) -> str:
        """A short readable name."""
        return (
            f"p={self.p} q={self.q} K={self.K} r={self.r} "
            f"gamma={self.gamma:g} {self.kind}"
        )

    def seed(self, replicate: int, base_seed: int) -> int:
        """Deterministic seed of (regime, replicate): the same for every c.

        Parameters
        ----------
        replicate : int
            Replicate index.
        base_seed : int
            Base seed of the study.

        Returns
        -------
        int
            A 32-bit seed from :class:`numpy.random.SeedSequence`.
        """
        entropy = [
            base_seed,
            self.p,
            self.q,
            self.K,
            self.r,
            round(1000 * self.gamma),
            TYPES.index(self.kind) if self.kind in TYPES else 99,
            replicate,
        ]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])


@dataclass(frozen=True)
class Task:
    """One run: a regime, a value of c, a replicate."""

    regime: Regime
    c_kind: str  # "grid" or "theory"
    c: float
    replicate: int
    seed: int

    def key(self, tol: float, max_iter: int) -> tuple[str, ...]:
        """The resume key, formatted as in the CSV."""
        g = self.regime
        return (
            str(g.p),
            str(g.q),
            str(g.K),
            str(g.r),
            _fmt(g.gamma),
            g.kind,
            self.c_kind,
            _fmt(self.c),
            str(self.replicate),
            str(self.seed),
            f"{tol:.3g}",
            str(max_iter),
        )


def _fmt(x: float) -> str:
    """Canonical text of a float in the CSV (so that keys compare as strings)."""
    return f"{x:.6g}"


def regimes(grid: dict[str, tuple]) -> list[Regime]:
    """All regimes of a grid, in a fixed order.

    Parameters
    ----------
    grid : dict
        ``FULL_GRID`` or ``QUICK_GRID``.

    Returns
    -------
    list of Regime
    """
    cells = itertools.product(
        grid["p"], grid["q"], grid["K"], grid["r"], grid["gamma"], grid["type"]
    )
    return [Regime(p, q, K, r, float(gm), kd) for p, q, K, r, gm, kd in cells]


def tasks(
    grid: dict[str, tuple], replicates: int, base_seed: int, theory: bool = True
) -> list[Task]:
    """All runs of a grid, replicate-major (a partial run covers every cell once).

    Parameters
    ----------
    grid : dict
        ``FULL_GRID`` or ``QUICK_GRID``.
    replicates : int
        Replicates per (regime, c).
    base_seed : int
        Base seed of the study.
    theory : bool
        Also run c_T1 = 3 / (7 sqrt(gamma)) in every regime.

    Returns
    -------
    list of Task
    """
    out = []
    for rep in range(replicates):
        for g in regimes(grid):
            seed = g.seed(rep, base_seed)
            out.extend(Task(g, "grid", float(c), rep, seed) for c in grid["c"])
            if theory:
                out.append(Task(g, "theory", g.c_theory, rep, seed))
    return out


# ------------------------------------------------------------------------ one run
def run_one(task: Task, tol: float = TOL, max_iter: int = MAX_ITER) -> dict[str, str]:
    """Solve P0 on one instance and check exact recovery.

    Parameters
    ----------
    task : Task
        The regime, c, replicate and seed.
    tol, max_iter : float, int
        Solver tolerance (relative duality gap and primal residual) and iteration
        limit of :func:`clair_stats.decompose`.

    Returns
    -------
    dict
        One CSV row (all values as text), with ``success`` = "1" on exact recovery.
    """
    g = task.regime
    model = FederatedModel(
        g.p, g.q, g.r, g.K, contamination=g.gamma, contamination_type=g.kind
    )
    sample = model.sample(noise=0.0, seed=task.seed)
    lam = task.c / math.sqrt(g.K)
    row = dict(zip(KEY_FIELDS, task.key(tol, max_iter), strict=True))
    row["lam"] = _fmt(lam)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = decompose(sample.updates, lam=lam, tol=tol, max_iter=max_iter)
    except (np.linalg.LinAlgError, FloatingPointError) as exc:  # a failed run
        row.update(
            success="0",
            converged="0",
            iterations="",
            subspace_error="",
            support_ok="0",
            false_pos="",
            false_neg="",
            rank="",
            seconds=f"{time.perf_counter() - start:.4f}",
            error=f"{type(exc).__name__}: {exc}".replace("\n", " "),
        )
        return row
    seconds = time.perf_counter() - start
    U = np.linalg.svd(stack(res.low_rank), full_matrices=False)[0][:, : g.r]
    A = sample.subspace
    error = float(np.linalg.norm(U @ U.T - A @ A.T))
    flagged, bad = res.support(), sample.contaminated
    rank = res.rank()
    converged = bool(res.info.converged)
    support_ok = bool(np.array_equal(flagged, bad))
    success = converged and error <= SUBSPACE_TOL and support_ok and rank == g.r
    row.update(
        success=str(int(success)),
        converged=str(int(converged)),
        iterations=str(res.info.iterations),
        subspace_error=f"{error:.3e}",
        support_ok=str(int(support_ok)),
        false_pos=str(int(np.sum(flagged & ~bad))),
        false_neg=str(int(np.sum(~flagged & bad))),
        rank=str(rank),
        seconds=f"{seconds:.4f}",
        error="",
    )
    return row


# -------------------------------------------------------------------------- CSV I/O
def _repair_tail(path: Path) -> None:
    """Drop a partial last line (a run killed in the middle of a write)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def read_runs(path: Path) -> list[dict[str, str]]:
    """Complete rows of ``runs.csv`` (empty if the file does not exist).

    A partial last line (a writer in progress or killed) is ignored, not removed.

    Parameters
    ----------
    path : Path
        The CSV file.

    Returns
    -------
    list of dict
    """
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is not None and tuple(reader.fieldnames) != FIELDS:
            raise SystemExit(
                f"{path} has columns {reader.fieldnames}, expected {list(FIELDS)}; "
                "move it away or pass another --out directory."
            )
        return [row for row in reader if None not in row.values()]


def execute(
    todo: Sequence[Task], path: Path, jobs: int, tol: float, max_iter: int
) -> None:
    """Run the tasks and append one flushed CSV row per finished run.

    Parameters
    ----------
    todo : sequence of Task
        Runs not yet in the CSV.
    path : Path
        ``runs.csv``; created with a header if missing.
    jobs : int
        Parallel processes (joblib); 1 runs in this process.
    tol, max_iter : float, int
        Solver settings.
    """
    new = not path.exists() or path.stat().st_size == 0
    results: Iterable[dict[str, str]]
    if jobs > 1 and Parallel is not None:
        results = Parallel(n_jobs=jobs, return_as="generator_unordered")(
            delayed(run_one)(t, tol, max_iter) for t in todo
        )
    else:
        if jobs > 1:
            print("joblib is not installed: running with --jobs 1.", file=sys.stderr)
        results = (run_one(t, tol, max_iter) for t in todo)
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            writer.writeheader()
            fh.flush()
        bar = tqdm(results, total=len(todo), unit="run", mininterval=2.0)
        failures = 0
        for row in bar:
            writer.writerow(row)
            fh.flush()
            failures += row["success"] != "1"
            bar.set_postfix(failures=failures, refresh=False)


# -------------------------------------------------------------------------- summary
def _intervals(values: Sequence[float], grid: Sequence[float]) -> str:
    """Write a subset of the grid as runs of consecutive grid values, e.g. "3-5"."""
    if not values:
        return "none"
    chosen = set(values)
    runs: list[list[float]] = []
    for c in sorted(grid):
        if c in chosen:
            if runs and runs[-1][-1] == _previous(c, grid):
                runs[-1].append(c)
            else:
                runs.append([c])
    return ", ".join(
        f"{r[0]:g}" if len(r) == 1 else f"[{r[0]:g}, {r[-1]:g}]" for r in runs
    )


def _previous(c: float, grid: Sequence[float]) -> float | None:
    ordered = sorted(grid)
    i = ordered.index(c)
    return ordered[i - 1] if i > 0 else None


def _rate(successes: Sequence[int]) -> str:
    if not successes:
        return "."
    s, n = sum(successes), len(successes)
    return "1" if s == n else ("0" if s == 0 else f"{s}/{n}")


def _coverage_table(
    regs: Sequence[Regime],
    cgrid: Sequence[float],
    windows: dict[Regime, list[float]],
    theory_ok: Callable[[Regime], bool],
) -> list[str]:
    """Markdown rows: per group of regimes, how many windows contain each c."""
    out = [
        "| group | n | " + " | ".join(f"{c:g}" for c in cgrid) + " | T1 |",
        "|" + "---|" * (len(cgrid) + 3),
    ]
    for attr in ("", "q", "K", "p", "r", "gamma", "kind"):
        values = [None] if not attr else sorted({getattr(g, attr) for g in regs})
        for v in values:
            group = [g for g in regs if not attr or getattr(g, attr) == v]
            if not attr:
                label = "all"
            elif attr == "kind":
                label = str(v)
            else:
                label = f"{attr}={v:g}"
            counts = [sum(1 for g in group if c in windows[g]) for c in cgrid]
            t1 = sum(1 for g in group if theory_ok(g))
            out.append(
                f"| {label} | {len(group)} | "
                + " | ".join(str(n) for n in counts)
                + f" | {t1} |"
            )
    return out


def summarize(
    grid: dict[str, tuple],
    replicates: int,
    rows: Sequence[dict[str, str]],
    base_seed: int,
    tol: float,
    max_iter: int,
    title: str,
) -> str:
    """The markdown summary of the runs of one grid.

    Parameters
    ----------
    grid : dict
        The grid whose runs are summarized (other rows of the CSV are ignored).
    replicates : int
        Replicates per (regime, c) planned.
    rows : sequence of dict
        Rows of ``runs.csv``.
    base_seed : int
        Base seed (selects the rows of this study).
    tol, max_iter : float, int
        Solver settings (select the rows).
    title : str
        First heading.

    Returns
    -------
    str
        Markdown.
    """
    planned = tasks(grid, replicates, base_seed)
    by_key = {tuple(r[f] for f in KEY_FIELDS): r for r in rows}
    cgrid = [float(c) for c in grid["c"]]
    regs = regimes(grid)
    # (regime, c) -> list of success flags; theory runs under c = "T1"
    cells: dict[tuple[Regime, float | str], list[int]] = defaultdict(list)
    # the same for subspace-only recovery (converged, ||P_A^ - P_A||_F <= 1e-6)
    sub_cells: dict[tuple[Regime, float | str], list[int]] = defaultdict(list)
    seconds, done = 0.0, 0
    for t in planned:
        row = by_key.get(t.key(tol, max_iter))
        if row is None:
            continue
        done += 1
        seconds += float(row["seconds"])
        cell = (t.regime, t.c if t.c_kind == "grid" else "T1")
        cells[cell].append(int(row["success"]))
        sub_ok = (
            row["converged"] == "1"
            and row["subspace_error"] != ""
            and float(row["subspace_error"]) <= SUBSPACE_TOL
        )
        sub_cells[cell].append(int(sub_ok))

    def rate1(g: Regime, c: float | str, table: dict | None = None) -> bool:
        flags = (cells if table is None else table).get((g, c), [])
        return bool(flags) and all(flags)

    # regimes without any run yet (a partial run) are left out of every count
    not_run = [g for g in regs if not any(cells.get((g, c)) for c in cgrid)]
    regs = [g for g in regs if g not in not_run]
    if not regs:
        return f"# {title}\n\nNo runs yet.\n"
    windows = {g: [c for c in cgrid if rate1(g, c)] for g in regs}
    sub_windows = {g: [c for c in cgrid if rate1(g, c, sub_cells)] for g in regs}
    covered = {c: [g for g in regs if c in windows[g]] for c in cgrid}
    n_reg = len(regs)

    def mean_rate(c: float) -> float:
        rates = [np.mean(cells[(g, c)]) for g in regs if cells.get((g, c))]
        return float(np.mean(rates)) if rates else 0.0

    best_count = max(len(v) for v in covered.values()) if covered else 0
    tied = [c for c in cgrid if len(covered[c]) == best_count]
    # ties: highest mean success rate, then closest to the current default
    best = max(tied, key=lambda c: (round(mean_rate(c), 12), -abs(c - DEFAULT_C_LAM)))
    uncovered = [g for g in regs if not windows[g]]
    theory_ok = [g for g in regs if rate1(g, "T1")]
    reps_seen = [len(cells.get((g, c), [])) for g in regs for c in cgrid]

    out: list[str] = [f"# {title}", ""]
    out.append(
        f"Runs: {done} of {len(planned)} planned ({len(regs) + len(not_run)} regimes x "
        f"({len(cgrid)} grid values of c + c_T1) x {replicates} replicates); "
        f"replicates per (regime, c): {min(reps_seen)}-{max(reps_seen)}; solver time "
        f"{seconds:.0f} s (tol = {tol:g}, max_iter = {max_iter}). "
        "Exact recovery = converged, ||P_A^ - P_A||_F <= 1e-6, support = "
        "contaminated set, rank = r. Window = grid values of c = lam sqrt(K) with "
        "success rate 1."
    )
    if done < len(planned):
        out.append("")
        out.append(
            "**Partial run**: windows are computed from the replicates done so far "
            "and can only shrink as more arrive; "
            f"{len(not_run)} regimes without any run yet are left out of every count "
            f"below ({len(regs)} regimes summarized)."
        )
    out += ["", "## Recommendation", ""]
    out.append(
        f"- Recommended c_lam = **{best:g}**: in the working window of "
        f"{len(covered[best])} of {n_reg} regimes (mean success rate "
        f"{mean_rate(best):.3f})."
        + (
            f" Tied on coverage: {', '.join(f'{c:g}' for c in tied)}."
            if len(tied) > 1
            else ""
        )
    )
    default = float(DEFAULT_C_LAM)
    if default in covered:
        out.append(
            f"- Current DEFAULT_C_LAM = {default:g}: in {len(covered[default])} of "
            f"{n_reg} windows (mean success rate {mean_rate(default):.3f})."
        )
    else:
        out.append(f"- Current DEFAULT_C_LAM = {default:g} is not on this grid.")
    t1_rates = [np.mean(cells[(g, "T1")]) for g in regs if cells.get((g, "T1"))]
    gammas = sorted({g.gamma for g in regs})
    t1_by_gamma = ", ".join(
        f"gamma={gm:g}: c_T1={3 / (7 * math.sqrt(gm)):.3f}, "
        f"{sum(1 for g in theory_ok if g.gamma == gm)}/"
        f"{sum(1 for g in regs if g.gamma == gm)}"
        for gm in gammas
    )
    out.append(
        f"- T1 theory value c_T1 = 3/(7 sqrt(gamma)) (run in every regime): success "
        f"rate 1 in {len(theory_ok)} of {n_reg} regimes (mean success rate "
        f"{np.mean(t1_rates) if t1_rates else float('nan'):.3f}); by gamma: "
        f"{t1_by_gamma}."
    )
    out.append(
        f"- Regimes with an empty window (no c of the grid works): {len(uncovered)}"
        + (":" if uncovered else ".")
    )
    out += [f"  - {g.label}" for g in uncovered]
    if best_count < n_reg:
        missed = [g for g in regs if g not in covered[best] and windows[g]]
        out.append(
            f"- Regimes with a nonempty window that c = {best:g} misses: "
            f"{len(missed)}" + (":" if missed else ".")
        )
        out += [
            f"  - {g.label}: window {_intervals(windows[g], cgrid)}" for g in missed
        ]

    # a structural ceiling: ||S||_* <= sum_k ||S_k||_* <= sqrt(q) sum_k ||S_k||_F, so
    # for lam >= sqrt(q) (c >= sqrt(q K)) the pair (L, S) = (M, 0) is optimal in P0
    ceiling = [g for g in regs if any(c >= math.sqrt(g.q * g.K) for c in cgrid)]
    out.append(
        "- Ceiling: for c >= sqrt(q K) (lam >= sqrt(q)) the objective of P0 is at "
        "least ||M||_*, so (L, S) = (M, 0) is optimal (the only optimum for "
        "c > sqrt(q K)) and no contaminated client can be flagged; "
        f"this cuts the grid in {len(ceiling)} regimes"
        + (
            " ("
            + "; ".join(
                sorted(
                    {
                        f"q={g.q}, K={g.K}: c >= {math.sqrt(g.q * g.K):.3f}"
                        for g in ceiling
                    }
                )
            )
            + ")."
            if ceiling
            else "."
        )
    )

    # coverage tables
    for heading, wins, table in (
        ("Coverage: regimes whose window contains c", windows, cells),
        (
            "Coverage of subspace-only recovery (converged, ||P_A^ - P_A||_F <= "
            "1e-6; support and rank not required)",
            sub_windows,
            sub_cells,
        ),
    ):
        out += ["", f"## {heading}", ""]
        out += _coverage_table(regs, cgrid, wins, lambda g, t=table: rate1(g, "T1", t))

    # intersections
    out += ["", "## Intersection of the working windows", ""]
    every = [c for c in cgrid if all(c in windows[g] for g in regs)]
    out.append(f"- all {n_reg} regimes: {_intervals(every, cgrid)}")
    for q in sorted({g.q for g in regs}):
        group = [g for g in regs if g.q == q]
        inter = [c for c in cgrid if all(c in windows[g] for g in group)]
        n_empty = sum(1 for g in group if not windows[g])
        best_q = max(cgrid, key=lambda c, gr=group: sum(c in windows[g] for g in gr))
        n_best = sum(best_q in windows[g] for g in group)
        out.append(
            f"- q = {q} ({len(group)} regimes): intersection "
            f"{_intervals(inter, cgrid)}; empty windows {n_empty}; the c in most "
            f"windows {best_q:g} ({n_best}/{len(group)})"
        )
        for K in sorted({g.K for g in group}):
            sub = [g for g in group if g.K == K]
            inter = [c for c in cgrid if all(c in windows[g] for g in sub)]
            out.append(f"  - K = {K} ({len(sub)}): {_intervals(inter, cgrid)}")

    # per regime
    out += ["", "## Per regime: window and success rate at each c", ""]
    out.append(
        "| regime | window | "
        + " | ".join(f"{c:g}" for c in cgrid)
        + " | c_T1 | rate at c_T1 |"
    )
    out.append("|" + "---|" * (len(cgrid) + 4))
    for g in regs:
        out.append(
            f"| {g.label} | {_intervals(windows[g], cgrid)} | "
            + " | ".join(_rate(cells.get((g, c), [])) for c in cgrid)
            + f" | {g.c_theory:.3f} | {_rate(cells.get((g, 'T1'), []))} |"
        )
    out.append("")
    out.append(
        "Rates: 1 = every replicate recovered exactly, 0 = none, s/n otherwise, "
        ". = not run yet."
    )
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
    """
    parser = argparse.ArgumentParser(
        description=(
            "Map exact recovery of P0 over c = lam sqrt(K) and recommend c_lam "
            "(see the module docstring)."
        )
    )
    parser.add_argument(
        "--quick", action="store_true", help="small subset (about a minute)"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="parallel processes (joblib); default 1"
    )
    parser.add_argument(
        "--replicates",
        type=int,
        default=None,
        help=f"replicates per (regime, c); default {FULL_GRID['replicates']} full, "
        f"{QUICK_GRID['replicates']} quick",
    )
    parser.add_argument(
        "--out", type=Path, default=OUT_DIR, help=f"output directory ({OUT_DIR})"
    )
    parser.add_argument(
        "--seed", type=int, default=BASE_SEED, help="base seed of the study"
    )
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="only rewrite the summary from runs.csv (no solving)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study (or its missing runs) and write the summary.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments.

    Returns
    -------
    int
        Exit status.
    """
    args = parse_args(argv)
    grid = QUICK_GRID if args.quick else FULL_GRID
    replicates = args.replicates or int(grid["replicates"])
    if args.jobs < 1 or replicates < 1:
        raise SystemExit("--jobs and --replicates must be >= 1.")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "runs.csv"
    planned = tasks(grid, replicates, args.seed)
    if not args.summary_only and path.exists():
        _repair_tail(path)  # only here: --summary-only may run beside a writer
    rows = read_runs(path)
    if not args.summary_only:
        have = {tuple(r[f] for f in KEY_FIELDS) for r in rows}
        todo = [t for t in planned if t.key(TOL, MAX_ITER) not in have]
        print(
            f"{len(planned)} runs planned, {len(planned) - len(todo)} already in "
            f"{path}, {len(todo)} to do (jobs={args.jobs}).",
            file=sys.stderr,
        )
        if todo:
            execute(todo, path, args.jobs, TOL, MAX_ITER)
            rows = read_runs(path)
    mode = "quick" if args.quick else "full"
    text = summarize(
        grid,
        replicates,
        rows,
        args.seed,
        TOL,
        MAX_ITER,
        title=f"Calibration of c_lam = lam sqrt(K) ({mode} grid)",
    )
    name = "summary_quick.md" if args.quick else "summary.md"
    (args.out / name).write_text(text)
    print(text)
    print(f"Wrote {args.out / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

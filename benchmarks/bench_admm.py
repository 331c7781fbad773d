"""Benchmark the Anderson acceleration of the P0 ADMM (and of the P1 sweeps).

For every instance of a grid of shapes, noise levels, contamination and centre,
the same scaled program is solved twice in the same run, with the acceleration off
(``accelerate=False``, the plain ADMM with its residual-balanced penalty) and on
(the default), to a relative duality gap and a relative primal residual of
``--tol`` (default 1e-9). Instances: ``FederatedModel(p, q, rank=3, K,
contamination=gamma, center=center).sample(noise=tau, seed)``, default lam; the
grid is p in {30, 80}, q in {1, 2, 5, 10}, K in {20, 50, 100} (a subset of the
24 combinations, see SHAPES), tau in {0.01, 0.03, 0.1, 0.25} (noisy) and 0
(noiseless), gamma in {0, 0.2}, with and without a centre.

Reported: iterations off and on (median, max, per class of instances), the
accepted and rejected extrapolations, the relative objective difference between
the two solutions (both certified), and the time ratio on / off (each the best of
``--repeats`` runs, measured in the same run; a ratio, never an absolute time, is
the result). The P1 block-coordinate descent is measured the same way with mu =
tau (sqrt(p) + sqrt(Kq)), forcing the acceleration on and off with and without
a centre. Target: median <= 60 ADMM iterations on noisy data.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from _provenance import blas, command_line, source_digest
from tqdm import tqdm

import clair_stats
from clair_stats import FederatedModel
from clair_stats.pipeline.decompose import _Scaled, _Settings
from clair_stats.solvers.admm import admm_p0
from clair_stats.solvers.base import SolverOutput
from clair_stats.solvers.bcd import bcd_p1

#: (p, q, K): both p, every q, every K, not the full product (2-core machine).
SHAPES = [
    (30, 1, 20),
    (30, 2, 50),
    (30, 5, 20),
    (30, 10, 100),
    (80, 1, 100),
    (80, 2, 100),
    (80, 5, 50),
    (80, 10, 20),
]
NOISY = (0.01, 0.03, 0.1, 0.25)
#: (gamma, center) classes of instances.
CLASSES = [(0.2, False), (0.0, False), (0.2, True)]
RANK, SEED, MAX_ITER = 3, 2026, 5000


def solve(
    kind: str, updates: np.ndarray, center: bool, mu: float | None, **options
) -> tuple[SolverOutput, float]:
    """Solve P0 (``kind="admm"``) or P1 (``"bcd"``) on the scaled data; (out, s)."""
    mode = "exact" if kind == "admm" else "penalized"
    settings = _Settings.checked(
        updates.shape[0],
        lam=None,
        mode=mode,
        mu=mu,
        eps=None,
        center=center,
        weights=None,
        solver="proximal",
        tol=options.pop("tol"),
        max_iter=MAX_ITER,
        cvxpy_solver="SCS",
    )
    scaled = _Scaled.of(updates)
    solver = admm_p0 if kind == "admm" else bcd_p1
    start = time.perf_counter()
    out = solver(
        settings.problem(scaled.scale),
        scaled.matrix,
        tol=settings.tol,
        max_iter=MAX_ITER,
        **options,
    )
    return out, time.perf_counter() - start


def compare(kind: str, pqk, tau, gamma, center, tol, repeats) -> dict:
    """One instance solved with the acceleration off and on."""
    p, q, k = pqk
    model = FederatedModel(p, q, RANK, k, contamination=gamma, center=center)
    updates = model.sample(noise=tau, seed=SEED + p + q + k).updates
    mu = None if kind == "admm" else tau * (np.sqrt(p) + np.sqrt(k * q))
    row = {"p": p, "q": q, "K": k, "tau": tau, "gamma": gamma, "center": center}
    for name, flag in (("off", False), ("on", True)):
        runs = [
            solve(kind, updates, center, mu, tol=tol, accelerate=flag)
            for _ in range(repeats)
        ]
        out = runs[0][0]
        row[name] = {
            "iterations": out.iterations,
            "converged": out.converged,
            "objective": out.objective,
            "accepted": out.accepted,
            "rejected": out.rejected,
            "seconds": min(seconds for _, seconds in runs),
        }
    off, on = row["off"], row["on"]
    row["objective_diff"] = abs(on["objective"] - off["objective"]) / abs(
        off["objective"]
    )
    row["time_ratio"] = on["seconds"] / off["seconds"]
    return row


def summary(rows: list[dict], label: str) -> str:
    """One Markdown table row: median and max iterations, time ratios."""
    if not rows:
        return f"| {label} | 0 | - | - | - | - | - | - | - |"
    off = np.array([r["off"]["iterations"] for r in rows])
    on = np.array([r["on"]["iterations"] for r in rows])
    ratio = np.array([r["time_ratio"] for r in rows])
    rejected = sum(r["on"]["rejected"] for r in rows)
    accepted = sum(r["on"]["accepted"] for r in rows)
    failed = sum(not r["on"]["converged"] for r in rows)
    failed_off = sum(not r["off"]["converged"] for r in rows)
    return (
        f"| {label} | {len(rows)} | {np.median(off):.0f} / {off.max()} "
        f"({failed_off} unconverged) | {np.median(on):.0f} / {on.max()} "
        f"({failed} unconverged) | {np.percentile(on, 90):.0f} | "
        f"{np.median(ratio):.2f} [{ratio.min():.2f}, {ratio.max():.2f}] | "
        f"{accepted} / {rejected} | "
        f"{max(r['objective_diff'] for r in rows):.1e} |"
    )


def table(rows: list[dict], by_shape: bool) -> list[str]:
    """Summary rows: noisy / noiseless, per class, per noise level, per shape."""
    head = [
        "| instances | n | iterations off: median / max | on: median / max "
        "| on: 90th pct | time on / off: median [min, max] | extrapolations "
        "accepted / rejected | max rel. objective diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    noisy = [r for r in rows if r["tau"] > 0]
    clean = [r for r in rows if r["tau"] == 0]
    lines = [summary(noisy, "**noisy, all**"), summary(clean, "**noiseless, all**")]
    for gamma, center in CLASSES:
        label = f"gamma {gamma}, {'centre' if center else 'no centre'}"
        for name, group in (("noisy", noisy), ("noiseless", clean)):
            sel = [r for r in group if (r["gamma"], r["center"]) == (gamma, center)]
            if sel:
                lines.append(summary(sel, f"{name}, {label}"))
    for tau in sorted({r["tau"] for r in noisy}):
        lines.append(summary([r for r in noisy if r["tau"] == tau], f"tau = {tau}"))
    if by_shape:
        for pqk in SHAPES:
            sel = [r for r in noisy if (r["p"], r["q"], r["K"]) == pqk]
            lines.append(summary(sel, f"noisy, (p, q, K) = {pqk}"))
    return head + lines


def worst(rows: list[dict], n: int = 6) -> list[str]:
    """The n noisy instances with most accelerated iterations."""
    noisy = sorted(
        (r for r in rows if r["tau"] > 0), key=lambda r: -r["on"]["iterations"]
    )
    out = ["| p, q, K | tau | gamma | centre | off | on | accepted / rejected |"]
    out.append("|---|---|---|---|---|---|---|")
    for r in noisy[:n]:
        out.append(
            f"| {r['p']}, {r['q']}, {r['K']} | {r['tau']} | {r['gamma']} | "
            f"{r['center']} | {r['off']['iterations']} | {r['on']['iterations']} | "
            f"{r['on']['accepted']} / {r['on']['rejected']} |"
        )
    return out


def figure(rows: list[dict], path: Path) -> None:
    """Scatter of iterations on against off (log-log), noisy and noiseless."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.2))
    for noisy, colour, label in ((True, "C0", "noisy"), (False, "C1", "noiseless")):
        sel = [r for r in rows if (r["tau"] > 0) == noisy]
        ax.scatter(
            [r["off"]["iterations"] for r in sel],
            [r["on"]["iterations"] for r in sel],
            s=14,
            c=colour,
            label=label,
            alpha=0.7,
        )
    ax.plot([1, MAX_ITER], [1, MAX_ITER], "k:", lw=1, label="equal")
    ax.axhline(60, color="grey", lw=0.8, ls="--", label="target 60")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="iterations, accelerate=False",
        ylabel="iterations, accelerate=True",
        title="ADMM for P0 to a relative gap of 1e-9",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def header(args: argparse.Namespace, when: str) -> list[str]:
    """Provenance lines: date, machine, versions, command, settings."""
    mods = (np, scipy, clair_stats)
    ver = ", ".join(f"{m.__name__} {m.__version__}" for m in mods)
    return [
        f"- date: {when}",
        f"- machine: {platform.platform()}, os.cpu_count() = {os.cpu_count()}, "
        f"Python {platform.python_version()}, OMP_NUM_THREADS = "
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}",
        f"- versions: {ver} (source sha1 {source_digest()}); BLAS: {blas()}",
        f"- command: `{command_line(sys.argv)}`",
        f"- instances: FederatedModel(p, q, rank={RANK}, K, contamination=gamma, "
        f"center=center).sample(noise=tau, seed={SEED} + p + q + K), default lam; "
        f"(p, q, K) in {SHAPES}; noisy tau in {NOISY}",
        f"- stopping rule: relative gap and relative primal residual <= "
        f"{args.tol:g} (P1: relative gap), max_iter {MAX_ITER}; times are the "
        f"best of {args.repeats} runs",
    ]


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run the grid, print and write the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tol", type=float, default=1e-9)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs")
    parser.add_argument("--quick", action="store_true", help="two shapes, no P1")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "admm.md"
    )
    args = parser.parse_args(argv)
    shapes = SHAPES[:2] if args.quick else SHAPES
    when = datetime.datetime.now().isoformat(timespec="seconds")
    load0 = os.getloadavg()[0]
    grid = [
        (pqk, tau, gamma, center)
        for pqk in shapes
        for tau in (0.0, *NOISY)
        for gamma, center in CLASSES
    ]
    rows = [
        compare("admm", *cell, args.tol, args.repeats)
        for cell in tqdm(grid, desc="admm")
    ]
    p1_rows = []
    if not args.quick:
        p1_grid = [
            (pqk, tau, 0.2, center)
            for pqk in shapes
            for tau in NOISY
            for center in (False, True)
        ]
        p1_rows = [
            compare("bcd", *cell, args.tol, args.repeats)
            for cell in tqdm(p1_grid, desc="bcd")
        ]
    load = f"{load0:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    fig_path = args.out.with_suffix(".png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure(rows, fig_path)
    noisy_on = [r["on"]["iterations"] for r in rows if r["tau"] > 0]
    met = np.median(noisy_on) <= 60
    lines = [
        "# Anderson-accelerated ADMM for P0: iterations to a relative gap of "
        f"{args.tol:g}",
        "",
        *header(args, f"{when} (1-min load average {load})"),
        "",
        "## ADMM (P0), acceleration off against on",
        "",
        *table(rows, by_shape=True),
        "",
        f"![iterations on against off]({fig_path.name})",
        "",
        "Noisy instances with the most accelerated iterations:",
        "",
        *worst(rows),
        "",
        "- target, median <= 60 iterations on noisy data: "
        f"**{'MET' if met else 'NOT MET'}** (median {np.median(noisy_on):.0f}, "
        f"max {max(noisy_on)})",
    ]
    if p1_rows:
        lines += [
            "",
            "## Block-coordinate descent (P1, mu = tau (sqrt(p) + sqrt(Kq)), "
            "gamma 0.2), acceleration forced off against on",
            "",
            *table(p1_rows, by_shape=False),
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()

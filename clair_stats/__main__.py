"""Command line: ``clair demo|solvers|adapters`` (or ``python -m clair_stats``).

``demo`` runs CLAIR and every baseline on a simulated federation
(:mod:`clair_stats.experiments.demo`). ``solvers`` decomposes one instance with the fast
solver, reports subspace and support recovery, and cross-checks the fast solver
against the cvxpy reference on a small instance.
``adapters`` runs CLAIR per module on K clients' PEFT LoRA adapters, flags
clients, and writes refined adapters and a JSON report
(:mod:`clair_stats.lora.cli`).
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

from clair_stats import CONTAMINATION_TYPES, FederatedModel, decompose
from clair_stats.evaluation.metrics import projection_distance
from clair_stats.experiments.demo import add_arguments, run_demo
from clair_stats.lora.cli import add_arguments as add_adapter_arguments
from clair_stats.lora.cli import run_command as run_adapters_command
from clair_stats.pipeline.subspace import estimate_subspace

__all__ = ["main"]


def solvers_demo(args: argparse.Namespace) -> int:
    """Decompose one instance and cross-check against cvxpy; the exit code."""
    model = FederatedModel(
        p=args.p,
        q=args.q,
        rank=args.rank,
        n_clients=args.clients,
        contamination=args.contamination,
        contamination_type=args.type,
    )
    sample = model.sample(noise=args.noise, seed=args.seed)
    print(f"instance: {sample!r}\n")
    result = decompose(sample.updates, tol=args.tol)
    print(result.summary())
    subspace, _ = estimate_subspace(result, rank=args.rank)
    support = result.support(tol=1e-4 if args.noise > 0 else 1e-6)
    print(
        f"\nsubspace error ||P_A^ - P_A||_F = "
        f"{projection_distance(subspace, sample.subspace):.3e}"
    )
    print(
        f"true contaminated clients:     {np.nonzero(sample.contaminated)[0].tolist()}"
    )
    print(f"nonzero blocks of S^:          {np.nonzero(support)[0].tolist()}")

    print("\ncross-check on a small instance (p=8, q=2, K=10): proximal vs cvxpy")
    small = FederatedModel(p=8, q=2, rank=2, n_clients=10).sample(seed=args.seed)
    fast = decompose(small.updates, tol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = decompose(small.updates, solver="cvxpy", cvxpy_solver="CLARABEL")
    print(f"  {fast.info!r}\n  {ref.info!r}")
    rel = abs(fast.info.objective - ref.info.objective) / abs(ref.info.objective)
    print(f"  relative objective difference: {rel:.2e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``clair`` console script.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name (default ``sys.argv[1:]``): a
        subcommand, ``demo``, ``solvers`` or ``adapters``, and its options
        (``clair <subcommand> --help`` lists them).

    Returns
    -------
    int
        The exit code of the subcommand.
    """
    parser = argparse.ArgumentParser(prog="clair", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo", help="CLAIR against every baseline on a simulated federation"
    )
    add_arguments(d)
    s = sub.add_parser("solvers", help="the fast solver against cvxpy on one instance")
    s.add_argument("--p", type=int, default=60, help="rows p of each update")
    s.add_argument("--q", type=int, default=5, help="columns q of each update")
    s.add_argument("--clients", type=int, default=100, help="number of clients K")
    s.add_argument("--rank", type=int, default=3, help="shared rank r")
    s.add_argument(
        "--contamination", type=float, default=0.2, help="fraction gamma in [0, 1)"
    )
    s.add_argument("--type", choices=CONTAMINATION_TYPES, default="random")
    s.add_argument("--noise", type=float, default=0.0, help="noise level tau")
    s.add_argument("--tol", type=float, default=1e-7, help="relative duality gap")
    s.add_argument("--seed", type=int, default=0)
    a = sub.add_parser(
        "adapters",
        help="CLAIR per module on K clients' PEFT LoRA adapters: flag, refine, write",
    )
    add_adapter_arguments(a)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            run_demo(args)
            return 0
        if args.command == "adapters":
            return run_adapters_command(args)
        return solvers_demo(args)
    except (
        ValueError,
        TypeError,
        FileNotFoundError,
        FileExistsError,
        ImportError,
    ) as exc:
        parser.error(str(exc))
    return 2


if __name__ == "__main__":
    sys.exit(main())

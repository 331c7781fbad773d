"""``clair adapters``: read K PEFT adapters, flag, refine, write adapters and a report.

:func:`run_adapters` is the command as a function: read the adapter folders
(:func:`clair_stats.lora.peft.read_adapters`), run CLAIR per module and combine
the modules into one verdict per client
(:func:`clair_stats.lora.adapters.analyse_adapters`), write one refined adapter
per client (:func:`clair_stats.lora.writing.write_refined`) and the JSON report
(:mod:`clair_stats.lora.report`). :func:`add_arguments` and :func:`run_command`
are the command line (``clair adapters DIR... --out OUT``,
:mod:`clair_stats.__main__`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from os import PathLike
from pathlib import Path

from clair_stats.lora.adapters import analyse_adapters
from clair_stats.lora.peft import read_adapters
from clair_stats.lora.report import REPORT_NAME, AdaptersResult
from clair_stats.lora.writing import write_refined

__all__ = ["add_arguments", "run_adapters", "run_command"]


def run_adapters(
    folders: Iterable[str | PathLike[str]],
    out: str | PathLike[str],
    *,
    rank: int | None = None,
    side: str = "left",
    alpha: float = 0.05,
    out_rank: int | None = None,
    lam: float | None = None,
    dtype: str = "float32",
    report: str | PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **solver_options,
) -> AdaptersResult:
    """Read K adapters, run CLAIR per module, write refined adapters and a report.

    Parameters
    ----------
    folders : iterable of str or path-like
        One PEFT LoRA adapter folder per client.
    out : str or path-like
        Output folder: ``out/<client name>/`` per client and the JSON report.
    report : str or path-like, optional
        The JSON report's path; default ``out/clair_report.json``.
    rank, side, alpha, lam, progress, solver_options
        As in :func:`analyse_adapters`.
    out_rank, dtype, overwrite
        As in :func:`write_refined`.

    Returns
    -------
    AdaptersResult
    """
    adapters = read_adapters(folders)
    report_path = Path(report) if report is not None else Path(out) / REPORT_NAME
    if report_path.exists() and not overwrite:
        raise FileExistsError(
            f"report {report_path} already exists; choose another --out/--json or "
            "pass --overwrite."
        )
    result = analyse_adapters(
        adapters,
        rank=rank,
        side=side,
        alpha=alpha,
        lam=lam,
        progress=progress,
        **solver_options,
    )
    result = write_refined(
        adapters,
        result,
        out,
        out_rank=out_rank,
        dtype=dtype,
        overwrite=overwrite,
        progress=progress,
    )
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(
        json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8"
    )
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``clair adapters``."""
    parser.add_argument(
        "dirs", nargs="+", metavar="DIR", help="one PEFT LoRA adapter folder per client"
    )
    parser.add_argument(
        "--out", required=True, help="folder for the refined adapters and the report"
    )
    parser.add_argument(
        "--side",
        choices=("left", "right"),
        default="left",
        help="share the output space of Delta W (left, default) or the input space",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="family-wise level over clients x modules (Holm; default 0.05)",
    )
    parser.add_argument(
        "--rank",
        type=int,
        default=None,
        help="shared rank r per module (default: median LoRA rank of the clients)",
    )
    parser.add_argument(
        "--out-rank",
        type=int,
        default=None,
        help="LoRA rank of the refined adapters (default: each client's own rank)",
    )
    parser.add_argument("--lam", type=float, default=None, help="lam of P0")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16", "float64"),
        default="float32",
        help="dtype of the written adapters (default float32)",
    )
    parser.add_argument(
        "--json", default=None, help="report path (default OUT/clair_report.json)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_command(args: argparse.Namespace) -> int:
    """``clair adapters``: run, print both tables, say where the outputs are."""
    result = run_adapters(
        args.dirs,
        args.out,
        rank=args.rank,
        side=args.side,
        alpha=args.alpha,
        out_rank=args.out_rank,
        lam=args.lam,
        dtype=args.dtype,
        report=args.json,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(result.summary())
    report = args.json if args.json is not None else Path(args.out) / REPORT_NAME
    print(f"\nrefined adapters written to {args.out}/<client>; report: {report}")
    return 0

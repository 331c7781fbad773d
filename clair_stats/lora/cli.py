"""``clair adapters``: read K PEFT adapters, flag, refine, write adapters and a report.

:func:`run_adapters` is the command as a function: read the adapter folders
(:func:`clair_stats.lora.peft.read_adapters`), run CLAIR per module and combine
the modules into one verdict per client
(:func:`clair_stats.lora.adapters.analyse_adapters`), write one refined adapter
per client (:func:`clair_stats.lora.writing.write_refined`) and the JSON report
(:mod:`clair_stats.lora.report`). :func:`add_arguments` and :func:`run_command`
are the command line (``clair adapters DIR... --out OUT``,
:mod:`clair_stats.__main__`).

**How the outputs are written.** OUT is replaced as a whole or not at all:

1. before any work, OUT and the ``--json`` path are checked: neither may be,
   lie inside or contain an input adapter folder (symlinks resolved), nor may an
   existing OUT be or contain the current folder; an existing
   non-empty OUT is replaced only with ``--overwrite`` and only if it is the
   output of an earlier run (its ``clair_report.json`` is a report of this
   format and every other entry is one of that report's client folders);
   an existing ``--json`` file likewise only if it is such a report;
2. the work folder ``.<OUT name>.clair-work`` is created (or, by a resumed
   run, reused) next to OUT (same parent, so the final move is a rename) before
   the analysis, so that an unwritable place fails in a second, not after the
   minutes of analysis; so is ``.<name>.clair-tmp-<pid>`` next to the ``--json``
   file;
3. every module's results are stored in it as they finish, then every client's
   adapter and ``clair_report.json`` are written into its ``out/`` folder
   (:mod:`clair_stats.lora.resume`);
4. then ``out/`` is renamed to OUT and the work folder deleted; an existing OUT
   is first renamed aside to ``.<OUT name>.clair-old-<pid>`` and deleted after
   the new one is in place, so that at every moment the old or the new complete
   output exists (a run killed between the two renames leaves the old output in
   the ``-old`` folder); the ``--json`` file is replaced with ``os.replace``.

A failure before step 4 leaves the previous outputs untouched. After an
interruption (Ctrl-C, SIGKILL, a lost machine) or a write error (a full disk)
the work folder keeps every finished module and client, and the same command
resumes from them (its outputs are those of an uninterrupted run); when the
inputs or the arguments are refused it is deleted. A rerun with other inputs,
settings or code starts afresh.

**Parallel.** Modules are independent until the verdict, and again after it:
``--jobs N`` (default: the cores) fits, then refines, N modules at once and
writes N clients at once, each in its own process with one BLAS thread;
``--dask ADDRESS`` does the same on dask.distributed. The per-module tensors are
read memory-mapped from each client's safetensors file when a worker needs them,
never all at once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from collections.abc import Iterable
from dataclasses import replace
from os import PathLike
from pathlib import Path

from clair_stats.core.exceptions import ClairWarning
from clair_stats.core.parallel import WorkerError, Workers
from clair_stats.core.validation import check_int
from clair_stats.lora.adapters import _checked, combine_modules, fit_modules
from clair_stats.lora.peft import read_adapters
from clair_stats.lora.report import (
    REPORT_FORMAT,
    REPORT_NAME,
    AdaptersResult,
    _command_line,
    _wording,
)
from clair_stats.lora.resume import OutputError, WorkFolder, fingerprint
from clair_stats.lora.writing import checked_output, refine_and_write

__all__ = [
    "AUTO_PARALLEL_MIN",
    "OutputError",
    "add_arguments",
    "default_jobs",
    "run_adapters",
    "run_command",
]

#: Factor entries (sum over clients and modules of r (out + in)) from which
#: ``jobs=None`` works on several processes: 5e6 is about 2 s of work on one
#: process (K = 20 clients of 4 modules 2048 wide at rank 16), twice what
#: starting the workers costs.
AUTO_PARALLEL_MIN = 5_000_000

#: What earlier versions of write_refined left in OUT when killed.
_LEGACY_TMP = ".clair_tmp"


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
    jobs: int | None = 1,
    dask: str | None = None,
    **solver_options,
) -> AdaptersResult:
    """Read K adapters, run CLAIR per module, write refined adapters and a report.

    The outputs are written as described in the module docstring: checked
    before any work, staged next to ``out`` and moved into place only when
    complete, so that a failure leaves the previous outputs untouched.

    Parameters
    ----------
    folders : iterable of str or path-like
        One PEFT LoRA adapter folder per client.
    out : str or path-like
        Output folder: ``out/<client name>/`` per client and the JSON report
        ``out/clair_report.json``. It may not be, lie inside or contain an input
        folder.
    report : str or path-like, optional
        A second copy of the JSON report, outside ``out`` and the input folders.
    overwrite : bool
        Replace an existing non-empty ``out`` (and ``report``), if it is the
        output of an earlier run (an empty ``out`` needs no ``overwrite``).
    rank, side, alpha, lam, progress
        As in :func:`~clair_stats.lora.adapters.analyse_adapters`.
    out_rank, dtype
        As in :func:`~clair_stats.lora.writing.write_refined`.
    jobs : int or None
        Modules (then clients) worked on at once, each in its own process with
        one BLAS thread; default 1, in this process. None (the default of
        ``clair adapters``) takes :func:`default_jobs` processes when the
        adapters hold at least :data:`AUTO_PARALLEL_MIN` factor entries, else 1:
        starting a worker costs about a second. Every ``jobs`` writes the same
        outputs. A script that runs more than one job must call this under
        ``if __name__ == "__main__":`` (each worker process imports the script).
    dask : str, optional
        Work on dask.distributed instead: ``"local"`` or a scheduler address
        (its workers must see the inputs and the folder of ``out`` at the same
        paths).
    **solver_options
        ``tol``, ``max_iter`` for :func:`clair_stats.decompose`, as in
        :func:`analyse_adapters`.

    Returns
    -------
    AdaptersResult

    Raises
    ------
    ValueError
        If ``out`` or ``report`` overlaps an input folder, ``report`` lies inside
        ``out``, or the analysis refuses the adapters.
    FileExistsError
        If ``out`` (or ``report``) exists and may not be replaced.
    OutputError
        If the outputs cannot be written there (permissions, a full disk).
    """
    folders = [Path(f) for f in folders]
    out = Path(out)
    report = _check_places(folders, out, report, overwrite)
    if jobs is not None:
        jobs = check_int(jobs, "jobs", 1)
    out_rank, dtype = checked_output(out_rank, dtype)
    adapters = read_adapters(folders)
    side, alpha, rank = _checked(adapters, side, alpha, rank)
    if jobs is None:
        jobs = default_jobs() if _entries(adapters) >= AUTO_PARALLEL_MIN else 1
    settings = {
        "rank": rank,
        "side": side,
        "alpha": alpha,
        "lam": lam,
        "out_rank": out_rank,
        "dtype": dtype,
        "solver_options": solver_options,
    }
    staging = _Staging(out, report, fingerprint(adapters, settings))
    with staging, Workers(jobs, dask) as workers:
        parallel = {"progress": progress, "workers": workers}
        work = staging.work
        names = adapters.module_names
        outcomes = fit_modules(
            adapters,
            rank=rank,
            side=side,
            lam=lam,
            solver_options=solver_options,
            done=work.stored_fits(names),
            store=work.save_fit,
            **parallel,
        )
        result = combine_modules(
            adapters,
            outcomes,
            rank=rank,
            side=side,
            alpha=alpha,
            lam=lam,
            solver_options=solver_options,
            stacklevel=3,
        )
        result = refine_and_write(
            adapters,
            result,
            work.modules,
            tuple(staging.folder / name for name in result.names),
            out_rank=out_rank,
            dtype=dtype,
            done_modules=work.stored_refined(names),
            done_clients=work.clients_done(result.names),
            **parallel,
        )
        result = replace(result, outputs=tuple(str(out / n) for n in result.names))
        staging.commit(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def _entries(adapters) -> int:
    """The number of factor entries, sum over clients and modules of r (out + in)."""
    return sum(
        spec.rank * (spec.shape[0] + spec.shape[1])
        for adapter in adapters.adapters
        for spec in adapter.modules.values()
    )


def default_jobs() -> int:
    """The number of cores this process may run on (the default of ``--jobs``).

    Returns
    -------
    int
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``clair adapters``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The ``adapters`` sub-command's parser.
    """
    parser.add_argument(
        "dirs", nargs="+", metavar="DIR", help="one PEFT LoRA adapter folder per client"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="folder for the refined adapters and clair_report.json (outside the "
        "input folders); replaced as a whole when the run succeeds",
    )
    parser.add_argument(
        "--side",
        choices=("left", "right"),
        default="left",
        help="share the output space of Delta W (left, default) or the input space",
    )
    parser.add_argument(
        "--alpha",
        type=_level,
        default=0.05,
        help="family-wise level over clients x modules (Holm; default 0.05)",
    )
    parser.add_argument(
        "--rank",
        type=_positive_int,
        default=None,
        help="shared rank r per module (default: median LoRA rank of the clients)",
    )
    parser.add_argument(
        "--out-rank",
        type=_positive_int,
        default=None,
        help="LoRA rank of the refined adapters (default: each client's own rank)",
    )
    parser.add_argument(
        "--lam", type=_positive_float, default=None, help="lam of P0 (> 0)"
    )
    parser.add_argument(
        "--max-iter",
        type=_positive_int,
        default=None,
        help="iteration limit of step 1's solver per module (default: the solver's)",
    )
    parser.add_argument(
        "--tol",
        type=_positive_float,
        default=None,
        help="stopping tolerance of step 1's solver (default: the solver's)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16", "float64"),
        default="float32",
        help="dtype of the written adapters (default float32)",
    )
    parser.add_argument(
        "--json",
        default=None,
        help="also write the report to this path (outside OUT)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the output of an earlier run in OUT (and --json)",
    )
    parser.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        help="modules worked on at once, one process and one BLAS thread each "
        "(default: the number of cores, or 1 for adapters too small to gain from "
        "more); every value writes the same outputs",
    )
    parser.add_argument(
        "--dask",
        default=None,
        metavar="ADDRESS",
        help="work on dask.distributed: 'local' or a scheduler address (its workers "
        "must see the input and output folders at the same paths)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_command(args: argparse.Namespace) -> int:
    """``clair adapters``: run, print both tables, say where the outputs are.

    Parameters
    ----------
    args : argparse.Namespace
        The options of :func:`add_arguments`.

    Returns
    -------
    int
        The exit code: 0; 1 when the outputs cannot be written, an input
        file cannot be read (one line on stderr names the path) or a worker
        process died; 130 after
        Ctrl-C (stderr says where the finished work is kept). Refused
        arguments and a missing input folder raise ``ValueError`` /
        ``FileExistsError`` / ``FileNotFoundError`` for
        :func:`clair_stats.__main__.main` (exit code 2). Warnings are printed as
        one line each.
    """
    solver_options = {
        key: value
        for key, value in (("max_iter", args.max_iter), ("tol", args.tol))
        if value is not None
    }
    with warnings.catch_warnings(record=True) as caught, _command_line():
        warnings.simplefilter("default")
        try:
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
                jobs=args.jobs,
                dask=args.dask,
                **solver_options,
            )
        except KeyboardInterrupt:
            return 130  # what was kept is said on stderr
        except WorkerError as exc:
            print(f"clair adapters: error: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            if isinstance(exc, FileNotFoundError | FileExistsError):
                raise
            print(f"clair adapters: error: {_one_line(exc)}", file=sys.stderr)
            return 1
        finally:
            _print_warnings(caught)
    print(result.summary())
    where = Path(args.out) / REPORT_NAME
    copy = f" (and {args.json})" if args.json is not None else ""
    print(f"\nrefined adapters written to {args.out}/<client>; report: {where}{copy}")
    return 0


# -- the places of the outputs ------------------------------------------------------


def _check_places(
    folders: list[Path],
    out: Path,
    report: str | PathLike[str] | None,
    overwrite: bool,
) -> Path | None:
    """Refuse outputs that overlap the inputs or may not be replaced; the report
    copy's path (None if there is none besides ``out/clair_report.json``)."""
    inputs = [(f, f.resolve()) for f in folders]
    out_real = out.resolve()
    report_path = None if report is None else Path(report)
    if report_path is not None and report_path.resolve() == out_real / REPORT_NAME:
        report_path = None
    places = [(_wording("--out", "out"), out, out_real)]
    if report_path is not None:
        places.append(
            (_wording("--json", "report"), report_path, report_path.resolve())
        )
    problems = []
    for option, given, real in places:
        found: dict[str, list[str]] = {}
        for folder, folder_real in inputs:
            if real == folder_real:
                relation = "is"
            elif folder_real in real.parents:
                relation = "lies inside"
            elif real in folder_real.parents:
                relation = "contains"
            else:
                continue
            found.setdefault(relation, []).append(str(folder))
        problems += [
            f"{option} {given} {relation} the input adapter folder"
            f"{'s' if len(names) > 1 else ''} {_preview(names)}"
            for relation, names in found.items()
        ]
    if problems:
        raise ValueError(
            "; ".join(problems)
            + ": the outputs would replace or mix with the adapters they are made "
            "from. "
            + _wording(
                "Choose an --out (and --json) outside every input folder.",
                "Choose an out (and report) outside every input folder.",
            )
        )
    if report_path is not None and out_real in report_path.resolve().parents:
        raise ValueError(
            f"{_wording('--json', 'report')} {report_path} lies inside "
            f"{_wording('--out', 'out')} {out}, which always holds the report as "
            f"{out / REPORT_NAME}; give a path outside it for the copy, or none."
        )
    _check_out(out, overwrite)
    if report_path is not None:
        _check_report(report_path, overwrite)
    return report_path


def _check_out(out: Path, overwrite: bool) -> None:
    """An existing ``out`` may be replaced: empty, or an earlier run's output with
    ``overwrite``."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(
            f"{out} is a file; "
            + _wording("choose another --out.", "choose another out folder.")
        )
    here, real = Path.cwd().resolve(), out.resolve()
    if here == real or real in here.parents:
        raise ValueError(
            f"{_wording('--out', 'out')} {out} is or contains the current folder "
            f"{here}; the output folder is replaced as a whole, which would leave "
            "this folder deleted under your shell. Run from another folder or "
            + _wording("choose another --out.", "choose another out folder.")
        )
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    strangers = _not_written_by_us(out, entries)
    if strangers:
        raise FileExistsError(
            f"{out} holds {_preview(strangers)}, which no clair adapters run "
            "wrote; it is not replaced, even with "
            + _wording("--overwrite", "overwrite=True")
            + ". "
            + _wording("Choose another --out", "Choose another out folder")
            + ", or empty or remove it yourself."
        )
    if not overwrite:
        raise FileExistsError(
            f"{out} holds the output of an earlier clair adapters run; "
            + _wording(
                "choose another --out or pass --overwrite to replace it.",
                "choose another out folder or pass overwrite=True to replace it.",
            )
        )
    locked = [
        str(p)
        for p in (out, *(out / e for e in entries))
        if p.is_dir() and not os.access(p, os.W_OK | os.X_OK)
    ]
    if locked:
        raise OutputError(
            f"the earlier output in {out} cannot be replaced: {_preview(locked)} "
            "not writable; make it writable or "
            + _wording("choose another --out.", "choose another out folder.")
        )


def _not_written_by_us(out: Path, entries: list[str]) -> list[str]:
    """The entries of a non-empty ``out`` that are not an earlier run's output."""
    known = _report_clients(out / REPORT_NAME)
    if known is None:
        return [e for e in entries if e != REPORT_NAME] or [REPORT_NAME]
    known |= {REPORT_NAME, _LEGACY_TMP}
    return [e for e in entries if e not in known or not _kind_ok(out / e)]


def _kind_ok(path: Path) -> bool:
    """The report is a file, every other entry a folder (not a link)."""
    if path.name == REPORT_NAME:
        return path.is_file() and not path.is_symlink()
    return path.is_dir() and not path.is_symlink()


def _report_clients(path: Path) -> set[str] | None:
    """The client folder names of a ``clair adapters`` report, or None if ``path``
    is not one."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        return None
    names = set()
    for client in report.get("clients") or []:
        if isinstance(client, dict) and isinstance(client.get("name"), str):
            names.add(client["name"])
            if isinstance(client.get("output"), str):
                names.add(Path(client["output"]).name)
    return names


def _check_report(path: Path, overwrite: bool) -> None:
    """An existing report copy may be replaced: with ``overwrite``, if it is one."""
    if not path.exists() and not path.is_symlink():
        return
    option = _wording("--json", "report")
    if path.is_dir():
        raise FileExistsError(f"{option} {path} is a folder; give a file path.")
    if _report_clients(path) is None:
        raise FileExistsError(
            f"{option} {path} exists and is not a clair adapters report; it is "
            "not replaced, even with "
            + _wording("--overwrite", "overwrite=True")
            + f". Choose another {option} path or remove it yourself."
        )
    if not overwrite:
        raise FileExistsError(
            f"report {path} already exists; "
            + _wording(
                "choose another --json or pass --overwrite.",
                "choose another report path or pass overwrite=True.",
            )
        )


class _Staging:
    """The output being made, in the work folder next to ``out``
    (:class:`~clair_stats.lora.resume.WorkFolder`, and a file next to the report
    copy): locked on entry, moved into place by :meth:`commit`; kept for the next
    run after an interruption or a write error, removed when the inputs or the
    arguments were refused."""

    def __init__(self, out: Path, report: Path | None, fingerprint: dict) -> None:
        # absolute and real: "." has a name and a parent, and a symlinked OUT
        # is replaced behind its link
        self.out = out
        self.final = out.resolve()
        self.report = None if report is None else report.resolve()
        self.work = WorkFolder(out, fingerprint)
        self.folder = self.work.staging
        pid = os.getpid()
        self.old = self.final.parent / f".{self.final.name}.clair-old-{pid}"
        self.report_tmp = None
        if self.report is not None:
            self.report_tmp = (
                self.report.parent / f".{self.report.name}.clair-tmp-{pid}"
            )
        self.committed = False

    def __enter__(self) -> _Staging:
        for target, option in (
            (self.final, _wording("--out", "out folder")),
            (self.report, _wording("--json", "report path")),
        ):
            if target is None:
                continue
            blocker = next((p for p in target.parents if p.exists()), None)
            if blocker is not None and not blocker.is_dir():
                raise OutputError(
                    f"cannot write the outputs: {blocker} is a file, not a folder; "
                    f"choose another {option}."
                )
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.work.__enter__()
            if self.report_tmp is not None:
                self.report.parent.mkdir(parents=True, exist_ok=True)
                self.report_tmp.write_bytes(b"")
        except OutputError:
            raise
        except OSError as exc:
            self._remove_report_tmp()
            self.work.remove()
            raise OutputError(
                f"cannot write the outputs: {_os_error(exc)}; "
                + _wording(
                    "choose an --out (and --json) in a folder you can write to.",
                    "choose an out folder (and report path) you can write to.",
                )
            ) from exc
        return self

    def commit(self, report_text: str) -> None:
        """Write the report, then move the complete output into place.

        Parameters
        ----------
        report_text : str
            The JSON report.
        """
        moved_aside = False
        try:
            (self.folder / REPORT_NAME).write_text(report_text, encoding="utf-8")
            if self.report_tmp is not None:
                self.report_tmp.write_text(report_text, encoding="utf-8")
            if self.final.exists():
                os.rename(self.final, self.old)
                moved_aside = True
            try:
                os.rename(self.folder, self.final)
            except OSError:
                if moved_aside:
                    os.rename(self.old, self.final)
                raise
        except OSError as exc:
            raise OutputError(
                f"writing the outputs failed: {_os_error(exc)}; nothing was changed "
                f"at {self.out}{self._kept()}"
            ) from exc
        self.committed = True
        self.work.remove()
        if self.report_tmp is not None:
            try:
                os.replace(self.report_tmp, self.report)
            except OSError as exc:
                raise OutputError(
                    f"the outputs are in {self.out}, but the report copy could "
                    f"not be written: {_os_error(exc)}"
                ) from exc
        if moved_aside:
            shutil.rmtree(self.old, ignore_errors=True)
            if self.old.exists():
                warnings.warn(
                    f"the new outputs are in {self.out}; the earlier output, moved "
                    f"to {self.old}, could not be deleted entirely; delete it "
                    "yourself.",
                    ClairWarning,
                    stacklevel=2,
                )

    def __exit__(self, kind, exc, traceback) -> None:
        self._remove_report_tmp()
        if self.committed or exc is None:
            return
        if isinstance(exc, ValueError | TypeError) and not _is_write_error(exc):
            self.work.remove()  # refused: a rerun needs other inputs or arguments
            return
        self.work.__exit__(kind, exc, traceback)
        if isinstance(exc, KeyboardInterrupt):
            print(
                f"clair adapters: interrupted{self._kept()}",
                file=sys.stderr,
                flush=True,
            )
        elif _is_write_error(exc):
            raise OutputError(
                f"writing the outputs failed: {_os_error(exc)}; nothing was changed "
                f"at {self.out}{self._kept()}"
            ) from exc

    def _kept(self) -> str:
        """Where the finished work waits for the next run, if anything is kept."""
        if not self.work.path.exists():
            return ""
        return (
            f"; the finished modules are kept in {self.work.path}, and the same "
            "command resumes from them"
        )

    def _remove_report_tmp(self) -> None:
        if self.report_tmp is not None:
            try:
                self.report_tmp.unlink(missing_ok=True)
            except OSError:
                pass


# -- small helpers ------------------------------------------------------------------


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    """clair_stats' warnings as one line each on stderr; others as Python shows
    them."""
    for w in caught:
        if issubclass(w.category, ClairWarning):
            print(f"clair adapters: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _is_write_error(exc: BaseException) -> bool:
    """An operating-system error of writing (not a refusal of the arguments)."""
    if isinstance(exc, OutputError):
        return False
    if isinstance(exc, OSError):
        return not isinstance(exc, FileNotFoundError | FileExistsError)
    return type(exc).__name__ == "SafetensorError"  # safetensors' I/O errors


def _os_error(exc: BaseException) -> str:
    """``<path>: <reason>`` of an operating-system error, else its text."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def _one_line(exc: OSError) -> str:
    """An error for the command line: one line."""
    if isinstance(exc, OutputError):
        return str(exc)
    return _os_error(exc)


def _preview(items: list[str], n: int = 5) -> str:
    """The first ``n`` items, and how many more."""
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text}")
    return value


def _level(text: str) -> float:
    """argparse type: a level in (0, 1)."""
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value

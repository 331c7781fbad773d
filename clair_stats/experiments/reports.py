"""Execute the jupytext reports of ``notebooks/`` into ``reports/*.html``.

``make report`` runs ``python -m clair_stats.experiments.reports``: every
``notebooks/*.py`` (jupytext percent format) is converted to a notebook, executed
with nbclient in a fresh kernel whose working directory is the repository root,
and exported to HTML with nbconvert. Each report reads its study's stored
results (see :func:`clair_stats.experiments.study.load_or_run`). When the full
grid is not stored on this machine but is archived in ``docs/studies/``, the
report is the archived figures and tables
(:func:`clair_stats.experiments.archive.archive_report`); otherwise it runs the
study's quick grid. ``--mode quick`` forces the quick grid, as CI does.

Needs the ``notebooks`` extra (jupytext, nbclient, nbconvert, ipykernel).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from clair_stats.experiments.archive import (
    DEFAULT_DEST,
    STUDIES,
    archive_report,
    full_grid_stored,
)

__all__ = ["execute_notebook", "main", "notebook_paths"]


def notebook_paths(folder: str | os.PathLike[str] = "notebooks") -> list[Path]:
    """The report sources: ``folder/*.py`` not starting with an underscore.

    Parameters
    ----------
    folder : path-like
        The notebooks folder.

    Returns
    -------
    list of pathlib.Path
        The jupytext sources, sorted by name.

    Raises
    ------
    FileNotFoundError
        When ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no notebooks folder at {folder.resolve()}")
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))


def execute_notebook(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] = ".",
    mode: str | None = None,
    results: str | os.PathLike[str] | None = None,
    timeout: int = 1800,
) -> Path:
    """Execute one jupytext notebook and write it as HTML.

    Parameters
    ----------
    source : path-like
        A ``notebooks/*.py`` file in jupytext percent format.
    out_dir : path-like
        Where ``<name>.html`` is written (created if missing).
    root : path-like
        The kernel's working directory (the repository root).
    mode : {"auto", "quick", "full"}, optional
        Sets ``CLAIR_REPORT_MODE`` for the kernel (see
        :func:`clair_stats.experiments.study.load_or_run`); default: inherited.
    results : path-like, optional
        Sets ``CLAIR_RESULTS`` for the kernel (where studies are stored).
    timeout : int
        Seconds allowed per cell.

    Returns
    -------
    pathlib.Path
        The HTML file.

    Raises
    ------
    nbclient.exceptions.CellExecutionError
        When a cell fails; the message holds the cell's traceback.
    """
    import jupytext
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    source = Path(source)
    notebook = jupytext.read(source)
    env = dict(os.environ)
    if mode is not None:
        env["CLAIR_REPORT_MODE"] = mode
    if results is not None:
        env["CLAIR_RESULTS"] = str(Path(results).resolve())
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(Path(root).resolve())}},
    )
    client.execute(env=env)
    html, _ = HTMLExporter().from_notebook_node(notebook)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{source.stem}.html"
    target.write_text(html, encoding="utf-8")
    return target


def _from_archive(name: str, mode: str | None) -> bool:
    """In auto mode, a study whose full grid is archived in docs/studies/ but not
    stored here is reported from the archive rather than by its quick grid."""
    mode = mode or os.environ.get("CLAIR_REPORT_MODE", "auto")
    if mode != "auto" or name not in STUDIES:
        return False
    archived = (DEFAULT_DEST / name / "provenance.json").exists()
    return archived and not full_grid_stored(name)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``make report``; returns the exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``): notebook names, ``--mode``,
        ``--out``, ``--notebooks``.

    Returns
    -------
    int
        0 when every report was written, 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "names", nargs="*", help="notebook names (default: all of notebooks/)"
    )
    parser.add_argument("--mode", choices=("auto", "quick", "full"), default=None)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--notebooks", type=Path, default=Path("notebooks"))
    args = parser.parse_args(argv)
    paths = notebook_paths(args.notebooks)
    if args.names:
        known = {p.stem: p for p in paths}
        unknown = sorted(set(args.names) - set(known))
        if unknown:
            parser.error(f"no notebook named {unknown}; choose from {sorted(known)}")
        paths = [known[n] for n in args.names]
    failed = []
    for path in paths:
        start = time.perf_counter()
        try:
            if _from_archive(path.stem, args.mode):
                target = archive_report(path.stem, args.out)
                print(f"{target}  (the archived full grid: docs/studies/)")
                continue
            target = execute_notebook(path, args.out, mode=args.mode)
        except Exception as exc:  # report every notebook, then fail
            failed.append(path.stem)
            print(f"FAILED {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        print(f"{target}  ({time.perf_counter() - start:.0f} s)")
    if failed:
        print(f"{len(failed)} report(s) failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

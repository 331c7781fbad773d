"""The studies' full-grid results, kept in the repository in a compact form.

A study's full grid costs minutes to hours (``simulations/``); its stored results
(``results/<study>/results.sqlite``) are build products and are not committed, and
the largest (``detection``) holds 238 MB. What is committed is what a reader looks
at: for every study whose full grid is stored, the figures and tables that its
``report()`` writes, and a page that shows them, under ``docs/studies/``:

* ``docs/studies/<study>/``: the PNG figures (reduced to a 256-colour palette,
  about a third of the size, the same picture to the eye) and the Markdown tables;
* ``docs/studies/<study>/provenance.json``: the study's version, its grid
  (configurations, replicates, rows) and the date of the archive;
* ``docs/studies/<study>.md`` and ``docs/studies/index.md``: the site's pages.

``make archive`` (``python -m clair_stats.experiments.archive``) rewrites the
archive of every study whose full grid is stored and says which are not;
``--check`` only compares the archive with the studies' current versions. A study
whose logic changed (a new version) no longer matches its archive until its full
grid is run again: the check fails and names it. Each study's folder and page are
written to a temporary name and then moved into place, so that an interruption
leaves the previous archive whole.

The site (``make docs``) and ``make report`` show these figures without running
anything (:func:`archive_report` is ``make report``'s page for a study whose full
grid is not stored here).
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import importlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "STUDIES",
    "ArchiveError",
    "archive_report",
    "archive_study",
    "check_archive",
    "full_grid_stored",
    "main",
    "study_script",
    "write_index",
]

#: The studies, in the order of the site's index: (name, module of the script).
STUDIES: dict[str, str] = {
    "fig1_subspace_error": "simulations.fig1_subspace_error",
    "phase_transition": "simulations.phase_transition",
    "oracle_gain": "simulations.oracle_gain",
    "detection": "simulations.detection",
    "null_calibration": "simulations.null_calibration",
    "robustness": "simulations.robustness",
    "byzantine": "simulations.byzantine",
    "lambda_calibration": "simulations.lambda_calibration",
    "verdict_rules": "simulations.verdict_rules",
    "copying": "simulations.copying.study",
}

#: Where the archive lives, relative to the repository root.
DEFAULT_DEST = Path("docs") / "studies"


class ArchiveError(RuntimeError):
    """A study cannot be archived (its full grid is not all stored) or its archive
    does not match the study (missing files, another version)."""


def study_script(name: str) -> Any:
    """The module of a study script (it defines ``parser``, ``build``, ``report``).

    Parameters
    ----------
    name : str
        A key of :data:`STUDIES`.

    Returns
    -------
    module
        The imported script (the repository root must be importable: run from it).

    Raises
    ------
    ValueError
        For a name that is not a study.
    """
    if name not in STUDIES:
        raise ValueError(f"no study named {name!r}; choose from {sorted(STUDIES)}")
    return importlib.import_module(STUDIES[name])


def _title(script: Any, name: str) -> str:
    """The first line of the script's docstring, without its final full stop."""
    doc = (script.__doc__ or "").strip().splitlines()
    line = doc[0].strip().rstrip(".") if doc else name
    # the docstrings are reStructuredText: ``x`` is code in both languages
    return line.replace("``", "`")


def _full_grid(script: Any, results: str | os.PathLike[str] | None):
    """The full grid's arguments, study and store path."""
    path_args = [] if results is None else ["--results", str(results)]
    args = script.parser().parse_args(path_args)
    study = script.build(args)
    from clair_stats.experiments.study import results_dir

    return args, study, results_dir(results) / study.name / "results.sqlite"


#: Replicates rerun by :func:`archive_study` to see whether the stored results are
#: those of the current code.
SPOT_CHECKS = 4


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    """The scalar leaves of a JSON result, by path; timings left out (they vary)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if "second" not in key and "time" not in key:
                out.update(_leaves(item, f"{path}/{key}"))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(_leaves(item, f"{path}[{i}]"))
        return out
    return {path: value}


def _difference(stored: Any, new: Any) -> tuple[float, str]:
    """The largest relative difference between two results and where it is
    (``inf`` when they differ in shape or in a non-numeric value)."""
    a, b = _leaves(stored), _leaves(new)
    if a.keys() != b.keys():
        return float("inf"), "the fields"
    worst, where = 0.0, ""
    for key, x in a.items():
        y = b[key]
        numbers = (int, float)
        if (
            isinstance(x, bool)
            or isinstance(y, bool)
            or not (isinstance(x, numbers) and isinstance(y, numbers))
        ):
            if x != y:
                return float("inf"), key
        elif x != y and not (x != x and y != y):  # NaN equals NaN here
            gap = abs(x - y) / max(abs(x), abs(y), 1e-12)
            if gap > worst:
                worst, where = gap, key
    return worst, where


#: Relative difference below which a rerun counts as reproducing a stored result
#: (summation order and BLAS threads move the last digits).
REPRODUCED = 1e-9


def spot_check(study: Any, store: Any, n: int = SPOT_CHECKS) -> dict[str, Any]:
    """Rerun ``n`` stored replicates with the current code and compare.

    Parameters
    ----------
    study : Study
        The full grid.
    store : ResultStore
        Its results, open.
    n : int
        How many replicates: spread evenly over the grid's tasks.

    Returns
    -------
    dict
        ``checked``; ``reproduced``, the replicates whose numeric results are
        within :data:`REPRODUCED` (relative) of the stored ones and whose other
        values are equal (timings aside); ``max_relative_difference`` (``inf``
        when a result changed shape or a non-numeric value) and ``where``, the
        field of the largest difference.
    """
    from clair_stats.experiments.study import _check_result, _to_json

    tasks = study.tasks()
    differences, where = [], []
    for key, replicate, seed in (tasks[i * len(tasks) // n] for i in range(n)):
        config = json.loads(key)
        # the rows as the store writes them (a list of mappings, JSON values)
        rows = _check_result(study.run(config, seed), config, seed)
        new = json.loads(json.dumps(rows, default=_to_json))
        gap, field_ = _difference(store.result(key, replicate), new)
        differences.append(gap)
        where.append(field_)
    worst = max(range(n), key=lambda i: differences[i])
    return {
        "checked": n,
        "reproduced": sum(d <= REPRODUCED for d in differences),
        "max_relative_difference": differences[worst],
        "where": where[worst] if differences[worst] > REPRODUCED else "",
    }


def _quantize_png(source: Path, target: Path) -> None:
    """Write ``source`` as a 256-colour palette PNG (matplotlib figures have few
    colours; anti-aliased edges lose nothing visible)."""
    from PIL import Image

    with Image.open(source) as image:
        reduced = image.convert("RGB").quantize(
            colors=256, method=Image.Quantize.MEDIANCUT
        )
        reduced.save(target, optimize=True)


def archive_study(
    name: str,
    *,
    results: str | os.PathLike[str] | None = None,
    dest: str | os.PathLike[str] = DEFAULT_DEST,
) -> Path:
    """Archive one study's full-grid figures and tables under ``dest``.

    Parameters
    ----------
    name : str
        A key of :data:`STUDIES`.
    results : path-like, optional
        The results folder holding ``<name>/results.sqlite`` (default
        :func:`~clair_stats.experiments.study.results_dir`).
    dest : path-like
        The archive folder (default ``docs/studies``).

    Returns
    -------
    pathlib.Path
        The study's archive folder ``dest/<name>``.

    Raises
    ------
    ArchiveError
        When the full grid is not all stored; the message says how many replicates
        are missing and the command that completes them (it resumes).
    """
    from clair_stats.experiments.study import ResultStore

    script = study_script(name)
    args, study, path = _full_grid(script, results)
    command = f"python -m {STUDIES[name].removesuffix('.study')} --jobs 2"
    if not path.exists():
        raise ArchiveError(f"{name}: no stored results at {path}; run `{command}`")
    with ResultStore(path, study.name, study.version) as store:
        missing = store.missing(study)
        if missing:
            raise ArchiveError(
                f"{name}: {missing} of {len(study.tasks())} replicates of the full "
                f"grid are not stored in {path}; run `{command}` (it resumes)"
            )
        frame = store.frame(study)
        check = spot_check(study, store)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    # a run killed while staging leaves its folder behind; it is not the archive
    for stale in dest.glob(f".{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=dest) as tmp:
        report_dir = Path(tmp) / "report"
        report_dir.mkdir()
        script.report(frame, report_dir, args)
        staged = Path(tmp) / name
        staged.mkdir()
        figures, tables = [], []
        for item in sorted(report_dir.iterdir()):
            if item.suffix == ".png":
                _quantize_png(item, staged / item.name)
                figures.append(item.name)
            elif item.suffix == ".md":
                shutil.copyfile(item, staged / item.name)
                tables.append(item.name)
        provenance = {
            "study": study.name,
            "version": study.version,
            "configurations": len(study.configs),
            "replicates": study.replicates,
            "rows": len(frame),
            "archived": _dt.date.today().isoformat(),
            "spot_check": check,
            "title": _title(script, name),
            "command": command,
            "figures": figures,
            "tables": tables,
        }
        (staged / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
        page = Path(tmp) / f"{name}.md"
        page.write_text(_page(name, provenance))
        # move into place: the old folder goes only once the new one is whole
        old = Path(tmp) / "old"
        if target.exists():
            os.replace(target, old)
        os.replace(staged, target)
        os.replace(page, dest / f"{name}.md")
    return target


def _page(name: str, provenance: dict) -> str:
    """The site's page of one study: what was run, its figures, its tables."""
    source = STUDIES[name].removesuffix(".study").replace(".", "/")
    source = f"{source}/" if STUDIES[name].endswith(".study") else f"{source}.py"
    lines = [
        f"# {provenance['title']}",
        "",
        f"Study `{name}` (`{source}`),"
        f" version {provenance['version']}: the full grid, "
        f"{provenance['configurations']} configurations x "
        f"{provenance['replicates']} replicates ({provenance['rows']} rows), "
        f"archived on {provenance['archived']} by `make archive`. The full grid is "
        f"run (and resumed after an interruption) by `{provenance['command']}`.",
        "",
        _spot_text(provenance["spot_check"]),
        "",
    ]
    for figure in provenance["figures"]:
        # each figure links to its full-size file
        lines += [f"[![{figure}]({name}/{figure})]({name}/{figure})", ""]
    for table in provenance["tables"]:
        # the table's own title becomes a section of the page
        lines += ["```{include} " + f"{name}/{table}", ":heading-offset: 1", "```", ""]
    return "\n".join(lines)


def _spot_text(check: dict) -> str:
    """One paragraph on whether the stored results are the current code's."""
    n, same = check["checked"], check["reproduced"]
    worst, where = check["max_relative_difference"], check["where"]
    head = (
        f"Reproduction check when archived: {n} replicates spread over the grid "
        f"were run again with the code of the day; {same} of {n} gave the stored "
        f"results (to a relative {REPRODUCED:.0e}, timings aside)."
    )
    if same == n:
        return head
    gap = "a non-numeric value" if worst == float("inf") else f"{worst:.1e} (relative)"
    return (
        f"{head} The largest difference is {gap} in `{where}`: these results are "
        "those of an earlier state of the code at the same study version, and "
        "may differ from a rerun's in that measure."
    )


def write_index(dest: str | os.PathLike[str] = DEFAULT_DEST) -> Path:
    """Write ``dest/index.md``: a table of the archived studies and a toctree.

    Parameters
    ----------
    dest : path-like
        The archive folder.

    Returns
    -------
    pathlib.Path
        The index page.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rows, pages, absent = [], [], []
    for name in STUDIES:
        file = dest / name / "provenance.json"
        if not file.exists():
            absent.append(name)
            continue
        info = json.loads(file.read_text())
        pages.append(name)
        check = info["spot_check"]
        rows.append(
            f"| [{name}]({name}.md) | {info['title']} | {info['version']} | "
            f"{info['configurations']} x {info['replicates']} | {info['archived']} | "
            f"{check['reproduced']} of {check['checked']} |"
        )
    lines = [
        "# Studies: the full-grid results",
        "",
        "The simulation studies of `simulations/` at their full grids, as their",
        "reports draw them. Running a full grid costs minutes to hours, so the",
        "figures and tables are kept in the repository (`docs/studies/`, a few MB);",
        "`make archive` rewrites them from the stored results (`results/`) after a",
        "study's full grid has been run, and fails on a study whose archive is of",
        "an older version than its code. The notebooks of `notebooks/` (`make",
        "report`) explain each study's figures.",
        "",
        "The last column counts the replicates that the code of the day",
        "reproduced (to a relative 1e-9) when the archive was written; a study's",
        "page names the largest difference of the others.",
        "",
        "| study | question | version | configurations x replicates | archived "
        "| reproduced |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if absent:
        lines += [
            "Not archived (no full grid stored when the archive was written): "
            + ", ".join(f"`{name}`" for name in absent)
            + ". Run `python -m simulations.<name>` and then `make archive`.",
            "",
        ]
    lines += ["```{toctree}", ":hidden:", "", *pages, "```", ""]
    index = dest / "index.md"
    _atomic_write(index, "\n".join(lines))
    return index


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}-", delete=False, encoding="utf-8"
    ) as handle:
        handle.write(text)
    os.chmod(handle.name, 0o644)  # a temporary file is private; the page is not
    os.replace(handle.name, path)


def check_archive(dest: str | os.PathLike[str] = DEFAULT_DEST) -> list[str]:
    """The problems of the archive: stale versions, missing and stray files.

    Parameters
    ----------
    dest : path-like
        The archive folder.

    Returns
    -------
    list of str
        One line per problem (empty when the archive matches the studies).
    """
    dest = Path(dest)
    problems = []
    for name in STUDIES:
        file = dest / name / "provenance.json"
        if not file.exists():
            continue
        info = json.loads(file.read_text())
        script = study_script(name)
        version = script.build(script.parser().parse_args([])).version
        if info["version"] != version:
            problems.append(
                f"{name}: archived from version {info['version']}, the study is at "
                f"version {version}; run its full grid ({info['command']}) and "
                "`make archive`, or delete its archive"
            )
        for item in info["figures"] + info["tables"]:
            if not (dest / name / item).exists():
                problems.append(f"{name}: {item} is listed but missing")
        if not (dest / f"{name}.md").exists():
            problems.append(f"{name}: the page {name}.md is missing")
        listed = {"provenance.json", *info["figures"], *info["tables"]}
        for item in sorted(p.name for p in (dest / name).iterdir()):
            if item not in listed:
                problems.append(f"{name}: {item} is not listed in provenance.json")
    expected = {"index.md", *STUDIES, *(f"{name}.md" for name in STUDIES)}
    for item in sorted(p.name for p in dest.iterdir()) if dest.is_dir() else []:
        if item not in expected:
            problems.append(
                f"{item} in {dest} is not part of the archive (a staging folder of "
                "an interrupted `make archive`?); delete it"
            )
    return problems


def full_grid_stored(name: str, results: str | os.PathLike[str] | None = None) -> bool:
    """Whether every replicate of a study's full grid is in its results file.

    Parameters
    ----------
    name : str
        A key of :data:`STUDIES`.
    results : path-like, optional
        The results folder (default
        :func:`~clair_stats.experiments.study.results_dir`).

    Returns
    -------
    bool
        False when the file is missing, of another version or incomplete.
    """
    from clair_stats.experiments.study import ResultStore, StoreError

    _, study, path = _full_grid(study_script(name), results)
    if not path.exists():
        return False
    try:
        with ResultStore(path, study.name, study.version) as store:
            return store.missing(study) == 0
    except StoreError:
        return False


def archive_report(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    dest: str | os.PathLike[str] = DEFAULT_DEST,
) -> Path:
    """Write ``out_dir/<name>.html`` from the archive: figures and tables.

    ``make report`` writes this page for a study whose full grid is not stored on
    this machine but is archived, instead of running the quick grid.

    Parameters
    ----------
    name : str
        A key of :data:`STUDIES`.
    out_dir : path-like
        Where the HTML file is written (created if missing).
    dest : path-like
        The archive folder.

    Returns
    -------
    pathlib.Path
        The HTML file.

    Raises
    ------
    FileNotFoundError
        When the study is not archived.
    """
    import nbformat
    from nbconvert import HTMLExporter

    dest = Path(dest)
    page = dest / f"{name}.md"
    if not page.exists():
        raise FileNotFoundError(f"{name} is not archived in {dest}")
    text = page.read_text(encoding="utf-8")

    def include(match: re.Match) -> str:
        return (dest / match.group(1)).read_text(encoding="utf-8")

    text = re.sub(r"```\{include\} (\S+)\n[^`]*```", include, text)

    def inline(match: re.Match) -> str:
        data = base64.b64encode((dest / match.group(2)).read_bytes()).decode()
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    # the page's figures link to their files; here they are embedded instead
    text = re.sub(r"\[(!\[[^\]]*\]\([^)]+\.png\))\]\([^)]+\)", r"\1", text)
    text = re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", inline, text)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)])
    html, _ = HTMLExporter().from_notebook_node(notebook)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.html"
    _atomic_write(target, html)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``make archive``; returns the exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``): study names (default: every study
        whose full grid is stored), ``--results``, ``--dest``, ``--check``.

    Returns
    -------
    int
        0 when every named study was archived (or, with ``--check``, when the
        archive matches the studies); 1 otherwise, with one line per problem.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "names", nargs="*", help=f"studies (default: all of {list(STUDIES)})"
    )
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    parser.add_argument(
        "--check", action="store_true", help="only compare the archive with the studies"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(STUDIES))
    if unknown:
        parser.error(f"no study named {unknown}; choose from {list(STUDIES)}")
    if args.check:
        problems = check_archive(args.dest)
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    failed = []
    for name in args.names or list(STUDIES):
        try:
            folder = archive_study(name, results=args.results, dest=args.dest)
        except ArchiveError as exc:
            print(f"not archived: {exc}", file=sys.stderr)
            if args.names:
                failed.append(name)
            continue
        size = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
        print(f"{name}: archived in {folder} ({size:.2f} MB)")
    write_index(args.dest)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Provenance lines shared by the benchmark reports: command, source digest, BLAS.

A benchmark's Markdown is committed, so it records nothing specific to the machine's
file system: the command is written as run from the repository root, with ``python``
for the interpreter (its version is on the report's machine line), the script's path
relative to the root, and every path argument relative to the root; a path outside
the repository keeps only its file name, as ``<elsewhere>/name``.

Imported by the scripts of ``benchmarks/`` (run as ``python benchmarks/<script>.py``,
which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import clair_stats

#: The repository root (the parent of ``benchmarks/``).
ROOT = Path(__file__).resolve().parent.parent


def relative_path(token: str, cwd: str | os.PathLike[str] | None = None) -> str:
    """A path argument as seen from the repository root.

    Parameters
    ----------
    token : str
        A path as typed on the command line (absolute, or relative to ``cwd``).
    cwd : path-like, optional
        The directory the command ran in; default the current one.

    Returns
    -------
    str
        The path relative to :data:`ROOT` (POSIX separators), or
        ``<elsewhere>/<file name>`` for a path outside the repository.
    """
    path = (Path(cwd or os.getcwd()) / token).resolve()
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return f"<elsewhere>/{path.name}"


def _is_path(token: str) -> bool:
    """A command-line token is taken for a path when it contains a separator."""
    return os.sep in token or (os.altsep is not None and os.altsep in token)


def command_line(argv: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> str:
    """The command of a benchmark run, as it would be typed at the repository root.

    Parameters
    ----------
    argv : sequence of str
        ``sys.argv`` of the run: the script, then its arguments.
    cwd : path-like, optional
        The directory the command ran in; default the current one.

    Returns
    -------
    str
        ``python <script> <arguments>``, shell-quoted; the script and every
        argument that contains a path separator (also in ``--option=value``) are
        rewritten by :func:`relative_path`, so no absolute path remains.
    """
    if not argv:
        raise ValueError("argv is empty: pass sys.argv (the script, then arguments)")
    words = ["python", relative_path(argv[0], cwd)]
    for token in argv[1:]:
        option, eq, value = token.partition("=")
        if eq and option.startswith("-") and _is_path(value):
            words.append(f"{option}={relative_path(value, cwd)}")
        elif _is_path(token):
            words.append(relative_path(token, cwd))
        else:
            words.append(token)
    return shlex.join(words)


def source_digest() -> str:
    """The first 12 hex digits of the sha1 of the package's ``.py`` files.

    The package is edited in place, so its version number alone does not identify
    the code measured.
    """
    sha = hashlib.sha1()
    for f in sorted(Path(clair_stats.__file__).parent.rglob("*.py")):
        sha.update(f.read_bytes())
    return sha.hexdigest()[:12]


def blas() -> str:
    """The BLAS numpy was built against, ``"<name> <version>"`` or ``"unknown"``."""
    try:  # numpy >= 1.26; informative only
        b = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{b['name']} {b['version']}"
    except Exception:
        return "unknown"

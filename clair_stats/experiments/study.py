"""The study runner: a grid of configurations x replicates, resumable and parallel.

Every study in ``simulations/`` is a :class:`Study`: a list of configurations (each a
flat mapping of JSON scalars, e.g. ``{"p": 30, "K": 50, "method": "clair"}``), a
number of replicates, and a module-level function ``run(config, seed)`` that does one
replicate and returns its result (a mapping of JSON values, or a list of such
mappings when one replicate yields several rows, e.g. one per method).

* **Seeds** are a deterministic function of (study name, configuration, replicate)
  (:func:`derive_seed`): a replicate gives the same result whatever the order, the
  parallelism or the grid it is run in, and a quick grid that is a subset of the full
  grid shares its rows.
* **Storage** is one SQLite file per study (:class:`ResultStore`), one row per
  replicate, committed as soon as the replicate finishes. A killed run loses at most
  the replicates in flight (one when sequential, at most 2 n_jobs with joblib, those
  submitted and unfinished with dask); running it again skips what is stored.
* **Parallelism**: ``n_jobs`` local processes with joblib, or a dask.distributed
  cluster (``dask="local"`` starts one on this machine, ``dask="tcp://host:8786"``
  connects to a running scheduler). Results always come back to the calling process,
  which is the only writer of the store. The joblib workers end within a fraction
  of a second when the calling process dies, even by SIGKILL
  (:func:`clair_stats.core.parallel.exit_with_parent`; measured: joblib's own
  workers survived a SIGKILL of the parent for 330 s, holding its stdout open).
* **A damaged store** (not a SQLite file, truncated, another program's tables) is
  refused with a :class:`StoreError` naming the file and the way out (``--fresh``
  or moving the file away); :func:`study_main` prints it as one line.
* **Progress**: a tqdm bar over the replicates, starting from those already stored.

:func:`study_parser` and :func:`study_main` give every study script the same command
line: ``--quick``, ``--jobs``, ``--dask``, ``--results``, ``--fresh``,
``--report-only``, ``--no-progress``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clair_stats.core.optional import require
from clair_stats.core.parallel import exit_with_parent, map_unordered, run_task

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "ResultStore",
    "StoreError",
    "Study",
    "derive_seed",
    "grid",
    "load_or_run",
    "report_folder",
    "results_dir",
    "run_study",
    "study_main",
    "study_parser",
]

Config = Mapping[str, Any]
Result = Mapping[str, Any] | Sequence[Mapping[str, Any]]
RunFunction = Callable[[dict[str, Any], int], Result]

_SCALARS = (str, int, float, bool, type(None))
# Columns of the flattened frame that a configuration or a result may not use.
_RESERVED = ("replicate", "seed", "seconds", "item")


def grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    """The Cartesian product of named axes, as a list of configurations.

    Parameters
    ----------
    **axes
        One iterable of JSON scalars per configuration key.

    Returns
    -------
    list of dict
        ``[{"p": 30, "K": 10}, {"p": 30, "K": 20}, ...]``, the last axis varying
        fastest.

    Examples
    --------
    >>> grid(p=[30, 80], K=[10, 20])
    [{'p': 30, 'K': 10}, {'p': 30, 'K': 20}, {'p': 80, 'K': 10}, {'p': 80, 'K': 20}]
    """
    names = list(axes)
    values = [list(v) for v in axes.values()]
    for name, vals in zip(names, values, strict=True):
        if not vals:
            raise ValueError(f"grid axis {name!r} is empty; give it at least one value")
    return [dict(zip(names, combo, strict=True)) for combo in product(*values)]


def _canonical(config: Config) -> str:
    """The configuration as canonical JSON (sorted keys); raises on non-scalars."""
    if not isinstance(config, Mapping):
        raise TypeError(
            f"a configuration must be a mapping of names to values, got {type(config)}"
        )
    clean: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise TypeError(f"configuration keys must be strings, got {key!r}")
        if key in _RESERVED:
            raise ValueError(
                f"configuration key {key!r} is reserved for the runner's own "
                f"columns {_RESERVED}; rename it"
            )
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, _SCALARS):
            raise TypeError(
                f"configuration value {key}={value!r} is a {type(value).__name__}; "
                "use a JSON scalar (str, int, float, bool or None) so that it can "
                "be stored and hashed into the seed"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"configuration value {key}={value!r} is not finite")
        clean[key] = value
    return json.dumps(clean, sort_keys=True, separators=(",", ":"))


def derive_seed(study: str, config: Config, replicate: int) -> int:
    """The seed of one replicate: a hash of (study, configuration, replicate).

    Parameters
    ----------
    study : str
        The study's name.
    config : mapping
        The configuration (JSON scalars); key order does not matter.
    replicate : int
        The replicate index, ``0 <= replicate``.

    Returns
    -------
    int
        A 63-bit seed, the first 8 bytes of SHA-256 of the canonical text. Equal
        numbers that differ in type (``1`` and ``1.0``) give different seeds: keep
        a key's type fixed across grids.
    """
    if replicate < 0:
        raise ValueError(f"replicate must be >= 0, got {replicate}")
    text = f"{study}\x1f{_canonical(config)}\x1f{int(replicate)}"
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _to_json(value: Any) -> Any:
    """numpy scalars and arrays as JSON values (for ``json.dumps(default=...)``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(
        f"a study result holds a {type(value).__name__} ({value!r}); return JSON "
        "values (numbers, strings, lists, dicts, numpy scalars or arrays)"
    )


def _check_result(result: Any, config: Config, seed: int) -> list[dict[str, Any]]:
    """The result as a list of row mappings; a clear error if it has another form."""
    rows = [result] if isinstance(result, Mapping) else result
    if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
        raise TypeError(
            f"run(config, seed) must return a mapping or a list of mappings, got "
            f"{type(result).__name__} for config={dict(config)}, seed={seed}"
        )
    out = []
    for row in rows:
        if not isinstance(row, Mapping):
            raise TypeError(
                f"run(config, seed) returned a list holding a "
                f"{type(row).__name__}; every item must be a mapping "
                f"(config={dict(config)}, seed={seed})"
            )
        clash = set(row) & (set(config) | set(_RESERVED))
        if clash:
            raise ValueError(
                f"result keys {sorted(clash)} clash with configuration keys or the "
                f"runner's columns {_RESERVED}; rename them"
            )
        out.append(dict(row))
    return out


@dataclass(frozen=True)
class Study:
    """A grid of configurations x replicates and the function that runs one.

    Parameters
    ----------
    name : str
        The study's name; it names the store and enters every seed.
    run : callable
        ``run(config: dict, seed: int) -> mapping | list of mappings``. It must be
        a module-level function (it is pickled to worker processes) and must draw
        all its randomness from ``seed``.
    configs : sequence of mapping
        The configurations; values are JSON scalars (see :func:`grid`).
    replicates : int
        Replicates per configuration, ``>= 1``.
    version : str
        The version of ``run``'s logic. The store records it and refuses to mix
        results of different versions: bump it when a change alters results.
    """

    name: str
    run: RunFunction
    configs: Sequence[Config]
    replicates: int
    version: str = "1"
    _keys: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(
                f"study name {self.name!r} must be non-empty letters, digits, '_' "
                "or '-' (it names a folder)"
            )
        if not callable(self.run):
            raise TypeError("run must be callable as run(config, seed)")
        if isinstance(self.replicates, bool) or int(self.replicates) < 1:
            raise ValueError(f"replicates must be >= 1, got {self.replicates!r}")
        if len(self.configs) == 0:
            raise ValueError("a study needs at least one configuration")
        keys = tuple(_canonical(c) for c in self.configs)
        if len(set(keys)) != len(keys):
            raise ValueError("the study's configurations contain duplicates")
        object.__setattr__(self, "_keys", keys)

    def tasks(self) -> list[tuple[str, int, int]]:
        """Every ``(config key, replicate, seed)``, replicate-major.

        Replicate-major order means a partial run covers every configuration once
        before it starts a second replicate anywhere.
        """
        return [
            (key, rep, derive_seed(self.name, json.loads(key), rep))
            for rep in range(self.replicates)
            for key in self._keys
        ]


def results_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Where studies store results: ``path``, else ``$CLAIR_RESULTS``, else results/.

    Parameters
    ----------
    path : path-like, optional
        An explicit results folder (``--results``).

    Returns
    -------
    pathlib.Path
        The folder (not created).
    """
    if path is not None:
        return Path(path)
    return Path(os.environ.get("CLAIR_RESULTS", "results"))


class StoreError(ValueError):
    """A results file that cannot be used: damaged, another program's, another
    study's or another version's, or unreadable. The message names the file and
    says what to do (``--fresh`` / ``fresh=True`` discards it)."""


#: The tables of a store and their columns, in order.
_SCHEMA = {
    "meta": ("key", "value"),
    "runs": ("config", "replicate", "seed", "result", "seconds", "finished"),
}


class ResultStore:
    """One study's results in a SQLite file, one row per finished replicate.

    Parameters
    ----------
    path : path-like
        The database file (created with its folder if missing).
    study : str
        The study's name, recorded in the file; opening a store of another study
        raises.
    version : str
        The version of the study's logic; opening a store written by another
        version raises (start afresh with ``fresh=True``).
    fresh : bool
        Delete stored results first.

    Raises
    ------
    StoreError
        If the file is not a store of this runner (not SQLite, damaged, e.g.
        truncated, or holding other tables), cannot be opened, or holds another
        study or version. Opening runs SQLite's ``quick_check`` over the file
        (measured: 0.06-0.09 s for a store of 100 MB).

    Notes
    -----
    Each :meth:`add` is its own committed transaction (WAL journal), so a process
    killed at any moment leaves every finished replicate on disk and none half
    written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        study: str,
        version: str = "1",
        *,
        fresh: bool = False,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        if self.path.exists() and not self.path.is_file():
            raise StoreError(
                f"{self.path} is not a file; move it away or point to another "
                "results folder (--results)"
            )
        self._db = None
        with self._guard():
            self._db = sqlite3.connect(self.path)
            try:
                self._open(study, version)
            except BaseException:
                self._db.close()
                raise

    def _open(self, study: str, version: str) -> None:
        """Check the file, create the tables of a new store, check study and version."""
        check = self._db.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise sqlite3.DatabaseError(
                "damaged: " + "; ".join(str(row[0]) for row in check[:3])
            )
        names = self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite!_%' ESCAPE '!'"
        ).fetchall()
        tables = {
            name: tuple(
                row[0]
                for row in self._db.execute(
                    "SELECT name FROM pragma_table_info(?)", (name,)
                )
            )
            for (name,) in names
        }
        if tables and tables != _SCHEMA:
            raise sqlite3.DatabaseError(
                f"its tables {_describe(tables)} are not those of a study's "
                f"results, {_describe(_SCHEMA)}"
            )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS runs ("
                " config TEXT NOT NULL, replicate INTEGER NOT NULL,"
                " seed INTEGER NOT NULL, result TEXT NOT NULL,"
                " seconds REAL NOT NULL, finished REAL NOT NULL,"
                " PRIMARY KEY (config, replicate))"
            )
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        for key, value in (("study", study), ("version", version)):
            if key not in meta:
                with self._db:
                    self._db.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
            elif meta[key] != value:
                raise StoreError(
                    f"{self.path} holds results of {key} {meta[key]!r}, not "
                    f"{value!r}; pass fresh=True (--fresh) to discard them, or "
                    "point to another results folder"
                )

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """SQLite's errors on this file as one :class:`StoreError` saying what to do."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise StoreError(
                    f"the results file {self.path} is in use by another process "
                    f"({text}); wait for the other run of this study to end"
                ) from exc
            if "unable to open" in text or "readonly" in text:
                raise StoreError(
                    f"the results file {self.path} cannot be opened for writing "
                    f"({text}); make it and its folder writable, or point to "
                    "another results folder (--results)"
                ) from exc
            raise StoreError(
                f"the results file {self.path} cannot be used as a study's store "
                f"({text}); rerun with --fresh (fresh=True in Python) to discard "
                "the results stored in it, or move it away to keep them"
            ) from exc

    def close(self) -> None:
        """Close the database."""
        if self._db is not None:
            self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def done(self) -> set[tuple[str, int]]:
        """The ``(config key, replicate)`` pairs already stored."""
        with self._guard():
            return set(
                self._db.execute("SELECT config, replicate FROM runs").fetchall()
            )

    def add(
        self,
        config_key: str,
        replicate: int,
        seed: int,
        rows: list[dict[str, Any]],
        seconds: float,
    ) -> None:
        """Store one finished replicate (committed at once).

        Parameters
        ----------
        config_key : str
            The configuration's canonical JSON (sorted keys, no spaces).
        replicate : int
            The replicate's index.
        seed : int
            The seed it ran with (:func:`derive_seed`).
        rows : list of dict
            Its result rows (JSON values; numpy scalars and arrays are converted).
        seconds : float
            Its wall time.
        """
        text = json.dumps(rows, default=_to_json)
        with self._guard(), self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                (config_key, int(replicate), int(seed), text, seconds, time.time()),
            )

    def records(self) -> Iterator[tuple[dict[str, Any], int, int, list, float]]:
        """Every stored replicate: ``(config, replicate, seed, rows, seconds)``."""
        query = "SELECT config, replicate, seed, result, seconds FROM runs"
        with self._guard():
            rows = self._db.execute(query).fetchall()
        for key, rep, seed, text, seconds in rows:
            yield json.loads(key), rep, seed, json.loads(text), seconds

    def missing(self, study: Study) -> int:
        """How many replicates of ``study``'s grid this store does not hold.

        Parameters
        ----------
        study : Study
            The grid.

        Returns
        -------
        int
            0 when every ``(configuration, replicate)`` of the grid is stored.
        """
        done = self.done()
        return sum((key, rep) not in done for key, rep, _ in study.tasks())

    def result(self, config_key: str, replicate: int) -> list[dict[str, Any]]:
        """The stored rows of one replicate.

        Parameters
        ----------
        config_key : str
            The configuration's canonical JSON, as :meth:`Study.tasks` gives it.
        replicate : int
            The replicate's index.

        Returns
        -------
        list of dict
            The rows as :meth:`add` stored them (JSON values).

        Raises
        ------
        KeyError
            When that replicate is not stored.
        """
        query = "SELECT result FROM runs WHERE config = ? AND replicate = ?"
        with self._guard():
            found = self._db.execute(query, (config_key, int(replicate))).fetchone()
        if found is None:
            raise KeyError(f"replicate {replicate} of {config_key} is not stored")
        return json.loads(found[0])

    def __len__(self) -> int:
        with self._guard():
            return self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def frame(self, study: Study | None = None) -> pd.DataFrame:
        """The stored results as a tidy pandas DataFrame.

        Parameters
        ----------
        study : Study, optional
            Keep only the rows of this study's grid and replicates (a store may
            hold more, e.g. a full run's rows when reading a quick grid).

        Returns
        -------
        pandas.DataFrame
            One row per result row: the configuration's columns, ``replicate``,
            ``seed``, ``seconds`` (of the whole replicate), ``item`` (the row's
            index within its replicate) and the result's columns.
        """
        pd = require("pandas", "studies", "the results frame of a study")
        wanted = None
        if study is not None:
            wanted = {(key, rep) for key, rep, _ in study.tasks()}
        out = []
        with self._guard():
            stored = self._db.execute(
                "SELECT config, replicate, seed, result, seconds FROM runs"
            ).fetchall()
        for key, rep, seed, text, seconds in stored:
            if wanted is not None and (key, rep) not in wanted:
                continue
            config = json.loads(key)
            for item, row in enumerate(json.loads(text)):
                out.append(
                    {
                        **config,
                        "replicate": rep,
                        "seed": seed,
                        "seconds": seconds,
                        "item": item,
                        **row,
                    }
                )
        frame = pd.DataFrame(out)
        if len(frame):
            frame = frame.sort_values(["replicate", "item"], kind="stable")
        return frame.reset_index(drop=True)


def _describe(tables: Mapping[str, Sequence[str]]) -> str:
    """``meta(key, value), runs(...)``: tables and their columns, in words."""
    return ", ".join(
        f"{name}({', '.join(cols)})" for name, cols in sorted(tables.items())
    )


def _execute(
    run: RunFunction, key: str, replicate: int, seed: int, blas_threads: int | None
) -> tuple[str, int, int, list[dict[str, Any]], float]:
    """Run one replicate (in a worker); returns what the store needs."""
    config = json.loads(key)
    start = time.perf_counter()
    result = run_task(run, (config, seed), blas_threads)
    seconds = time.perf_counter() - start
    return key, replicate, seed, _check_result(result, config, seed), seconds


def _sequential(run, todo, blas_threads):
    for key, rep, seed in todo:
        yield _execute(run, key, rep, seed, blas_threads)


def _joblib(run, todo, n_jobs, blas_threads):
    joblib = require("joblib", "studies", "running a study with --jobs")
    delayed = joblib.delayed
    # One replicate per batch, at most 2 n_jobs dispatched ahead: what a kill can
    # lose is bounded by 2 n_jobs replicates (joblib's automatic batching would
    # group fast replicates, and a batch comes back only when all of it is done).
    # The workers end with this process (exit_with_parent); the backend is
    # resolved when Parallel is built, so the configuration is left at once.
    with joblib.parallel_config(
        backend="loky", initializer=exit_with_parent, initargs=(os.getpid(),)
    ):
        parallel = joblib.Parallel(
            n_jobs=n_jobs,
            return_as="generator_unordered",
            batch_size=1,
            pre_dispatch="2*n_jobs",
        )
    yield from parallel(
        delayed(_execute)(run, key, rep, seed, blas_threads) for key, rep, seed in todo
    )


def _dask(run, todo, address, n_jobs, blas_threads):
    tasks = [(run, key, rep, seed, blas_threads) for key, rep, seed in todo]
    # _execute limits the BLAS threads itself
    for _, result in map_unordered(
        _execute, tasks, jobs=n_jobs, dask=address, blas_threads=None
    ):
        yield result


def run_study(
    study: Study,
    store: ResultStore | str | os.PathLike[str] | None = None,
    *,
    n_jobs: int = 1,
    dask: str | None = None,
    blas_threads: int | None = 1,
    progress: bool = True,
    fresh: bool = False,
) -> ResultStore:
    """Run every replicate of ``study`` not yet in the store.

    Parameters
    ----------
    study : Study
        The grid and its run function.
    store : ResultStore or path, optional
        Where results go; default ``results_dir() / study.name / "results.sqlite"``.
    n_jobs : int
        Local worker processes (joblib); ``1`` runs in this process. With
        ``dask="local"``, the number of dask workers.
    dask : str, optional
        ``"local"`` for a dask.distributed cluster on this machine, or a scheduler
        address (``"tcp://host:8786"``). Needs the ``dask`` extra.
    blas_threads : int or None
        BLAS threads per replicate (threadpoolctl); ``None`` leaves them alone. One
        thread per process is what parallel studies want: on the 2-core machine of
        this project, multi-threaded OpenBLAS under load made solves 15-145 times
        slower.
    progress : bool
        Show a tqdm progress bar.
    fresh : bool
        Discard stored results first.

    Returns
    -------
    ResultStore
        The open store; ``store.frame(study)`` gives the results.

    Notes
    -----
    On ``KeyboardInterrupt`` the finished replicates are already committed; the
    exception propagates after the workers are stopped, and running again resumes.
    """
    if isinstance(n_jobs, bool) or int(n_jobs) < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs!r}")
    if not isinstance(store, ResultStore):
        path = (
            Path(store)
            if store is not None
            else results_dir() / study.name / "results.sqlite"
        )
        store = ResultStore(path, study.name, study.version, fresh=fresh)
    done = store.done()
    tasks = study.tasks()
    todo = [t for t in tasks if (t[0], t[1]) not in done]

    if dask is not None:
        results = _dask(study.run, todo, dask, n_jobs, blas_threads)
    elif n_jobs > 1 and len(todo) > 1:
        results = _joblib(study.run, todo, n_jobs, blas_threads)
    else:
        results = _sequential(study.run, todo, blas_threads)

    tqdm = require("tqdm", "studies", "the study runner's progress bar").tqdm
    bar = tqdm(
        total=len(tasks),
        initial=len(tasks) - len(todo),
        desc=study.name,
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for key, rep, seed, rows, seconds in results:
            store.add(key, rep, seed, rows, seconds)
            bar.update(1)
    finally:
        bar.close()
        close = getattr(results, "close", None)
        if close is not None:
            close()
    return store


def report_folder(
    name: str, quick: bool, results: str | os.PathLike[str] | None = None
) -> Path:
    """Where a study's figures and tables go: ``<results>/<name>/`` (full grid) or
    ``<results>/<name>/quick/`` (quick grid); both read the same store.

    Parameters
    ----------
    name : str
        The study's name.
    quick : bool
        Whether the figures are the quick grid's.
    results : path-like, optional
        The results folder (default :func:`results_dir`).

    Returns
    -------
    pathlib.Path
        The report folder (not created).
    """
    folder = results_dir(results) / name
    return folder / "quick" if quick else folder


def load_or_run(
    script: Any, mode: str | None = None, results: str | os.PathLike[str] | None = None
) -> tuple[pd.DataFrame, Path, argparse.Namespace]:
    """The results of a study script for a report: stored, or run in quick mode.

    Parameters
    ----------
    script : module
        A study script of ``simulations/`` (it defines ``parser()``, ``build(args)``
        and ``report(frame, folder, args)``).
    mode : {"auto", "quick", "full"}, optional
        ``"full"`` reads the full grid's stored results and raises if any replicate
        is missing; ``"quick"`` runs (or reads) the quick grid; ``"auto"`` uses the
        full grid when all of it is stored and the quick grid otherwise. Default
        ``$CLAIR_REPORT_MODE`` or ``"auto"``.
    results : path-like, optional
        The results folder (default :func:`results_dir`).

    Returns
    -------
    frame : pandas.DataFrame
        :meth:`ResultStore.frame` of the chosen grid.
    folder : pathlib.Path
        The grid's report folder, with the figures written by ``script.report``.
    args : argparse.Namespace
        The parsed arguments the grid was built from (``args.quick`` tells which).
    """
    mode = mode or os.environ.get("CLAIR_REPORT_MODE", "auto")
    if mode not in ("auto", "quick", "full"):
        raise ValueError(f"mode must be 'auto', 'quick' or 'full', got {mode!r}")
    path_args = [] if results is None else ["--results", str(results)]
    full_args = script.parser().parse_args(path_args)
    full = script.build(full_args)
    path = results_dir(results) / full.name / "results.sqlite"
    if mode != "quick" and path.exists():
        with ResultStore(path, full.name, full.version) as store:
            if store.missing(full) == 0:
                frame = store.frame(full)
                folder = report_folder(full.name, False, results)
                script.report(frame, folder, full_args)
                return frame, folder, full_args
    if mode == "full":
        raise FileNotFoundError(
            f"the full grid of {full.name} is not all stored in {path}; run "
            f"`python simulations/{full.name}.py` first (it resumes)"
        )
    args = script.parser().parse_args(["--quick", *path_args])
    study = script.build(args)
    with run_study(study, path, progress=False) as store:
        frame = store.frame(study)
    folder = report_folder(study.name, True, results)
    script.report(frame, folder, args)
    return frame, folder, args


def _one_line(exc: BaseException) -> str:
    """An error as one line: a :class:`StoreError`'s message, or what the operating
    system refused and on which file."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return (
            f"cannot create the results file{where}: {exc.strerror}; choose a "
            "writable results folder (--results)"
        )
    return str(exc)


def study_parser(description: str) -> argparse.ArgumentParser:
    """The command line shared by every study script.

    Parameters
    ----------
    description : str
        The script's one-line description (shown by ``--help``).

    Returns
    -------
    argparse.ArgumentParser
        With ``--quick``, ``--jobs``, ``--dask``, ``--results``, ``--fresh``,
        ``--report-only`` and ``--no-progress``; add study options to it.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="the small grid (seconds to a minute)"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="local worker processes (default 1)"
    )
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        default=None,
        help="run on dask.distributed: 'local' or a scheduler address",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results folder (default $CLAIR_RESULTS or ./results)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="discard stored results first"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write figures and tables from stored results without running",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def study_main(
    build: Callable[[argparse.Namespace], Study],
    report: Callable[[pd.DataFrame, Path, argparse.Namespace], None],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse the command line, run the study and write its report.

    Parameters
    ----------
    build : callable
        ``build(args) -> Study`` (``args.quick`` selects the grid).
    report : callable
        ``report(frame, folder, args)`` writes figures and tables into ``folder``
        (``results/<study>/``) from the frame of :meth:`ResultStore.frame`.
    parser : argparse.ArgumentParser
        From :func:`study_parser`, with the study's own options added.
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code: 0; 130 when interrupted (finished replicates are kept);
        1 when the results file cannot be used (:class:`StoreError`, or an
        operating-system error creating it): one line on stderr names the file
        and what to do.
    """
    args = parser.parse_args(argv)
    study = build(args)
    path = results_dir(args.results) / study.name / "results.sqlite"
    folder = report_folder(study.name, args.quick, args.results)
    if args.report_only and not path.exists():
        parser.error(f"no stored results at {path}; run without --report-only")
    try:
        store = ResultStore(
            path,
            study.name,
            study.version,
            fresh=args.fresh and not args.report_only,
        )
    except (StoreError, OSError) as exc:
        print(f"{parser.prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    try:
        if not args.report_only:
            run_study(
                study,
                store,
                n_jobs=args.jobs,
                dask=args.dask,
                progress=not args.no_progress,
            )
    except KeyboardInterrupt:
        store.close()
        print(
            f"\ninterrupted: finished replicates are stored in {path}; run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return 130
    except StoreError as exc:
        store.close()
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    try:
        with store:
            frame = store.frame(study)
    except StoreError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    if frame.empty:
        print(f"{study.name}: no results stored yet", file=sys.stderr)
        return 1
    report(frame, folder, args)
    print(f"{study.name}: results and figures in {folder}")
    return 0

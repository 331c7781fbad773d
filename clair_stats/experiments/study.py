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
  which is the only writer of the store.
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
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clair_stats.core.optional import require

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "ResultStore",
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
    """Where studies store results: ``path``, else ``$CLAIR_RESULTS``, else results/."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get("CLAIR_RESULTS", "results"))


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
        self._db = sqlite3.connect(self.path)
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
                raise ValueError(
                    f"{self.path} holds results of {key} {meta[key]!r}, not "
                    f"{value!r}; pass fresh=True (--fresh) to discard them, or "
                    "point to another results folder"
                )

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def done(self) -> set[tuple[str, int]]:
        """The ``(config key, replicate)`` pairs already stored."""
        return set(self._db.execute("SELECT config, replicate FROM runs").fetchall())

    def add(
        self,
        config_key: str,
        replicate: int,
        seed: int,
        rows: list[dict[str, Any]],
        seconds: float,
    ) -> None:
        """Store one finished replicate (committed at once)."""
        text = json.dumps(rows, default=_to_json)
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                (config_key, int(replicate), int(seed), text, seconds, time.time()),
            )

    def records(self) -> Iterator[tuple[dict[str, Any], int, int, list, float]]:
        """Every stored replicate: ``(config, replicate, seed, rows, seconds)``."""
        query = "SELECT config, replicate, seed, result, seconds FROM runs"
        for key, rep, seed, text, seconds in self._db.execute(query):
            yield json.loads(key), rep, seed, json.loads(text), seconds

    def __len__(self) -> int:
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
        for key, rep, seed, text, seconds in self._db.execute(
            "SELECT config, replicate, seed, result, seconds FROM runs"
        ):
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


def _execute(
    run: RunFunction, key: str, replicate: int, seed: int, blas_threads: int | None
) -> tuple[str, int, int, list[dict[str, Any]], float]:
    """Run one replicate (in a worker); returns what the store needs."""
    config = json.loads(key)
    start = time.perf_counter()
    if blas_threads is None:
        result = run(config, seed)
    else:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=blas_threads):
            result = run(config, seed)
    seconds = time.perf_counter() - start
    return key, replicate, seed, _check_result(result, config, seed), seconds


def _sequential(run, todo, blas_threads):
    for key, rep, seed in todo:
        yield _execute(run, key, rep, seed, blas_threads)


def _joblib(run, todo, n_jobs, blas_threads):
    joblib = require("joblib", "studies", "running a study with --jobs")
    Parallel, delayed = joblib.Parallel, joblib.delayed
    # One replicate per batch, at most 2 n_jobs dispatched ahead: what a kill can
    # lose is bounded by 2 n_jobs replicates (joblib's automatic batching would
    # group fast replicates, and a batch comes back only when all of it is done).
    parallel = Parallel(
        n_jobs=n_jobs,
        return_as="generator_unordered",
        batch_size=1,
        pre_dispatch="2*n_jobs",
    )
    yield from parallel(
        delayed(_execute)(run, key, rep, seed, blas_threads) for key, rep, seed in todo
    )


def _dask(run, todo, address, n_jobs, blas_threads):
    distributed = require("dask.distributed", "dask", "running a study with --dask")
    Client, LocalCluster = distributed.Client, distributed.LocalCluster
    as_completed = distributed.as_completed

    cluster = None
    if address == "local":
        cluster = LocalCluster(
            n_workers=max(1, n_jobs),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        )
        client = Client(cluster)
    else:
        client = Client(address)
    futures = []
    try:
        futures = [
            client.submit(_execute, run, key, rep, seed, blas_threads, pure=False)
            for key, rep, seed in todo
        ]
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.cancel(futures)
        client.close()
        if cluster is not None:
            cluster.close()


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
    ``<results>/<name>/quick/`` (quick grid); both read the same store."""
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
            stored = store.done()
            complete = all((k, r) in stored for k, r, _ in full.tasks())
            if complete:
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
        The exit code: 0, or 130 when interrupted (finished replicates are kept).
    """
    args = parser.parse_args(argv)
    study = build(args)
    path = results_dir(args.results) / study.name / "results.sqlite"
    folder = report_folder(study.name, args.quick, args.results)
    try:
        if args.report_only:
            if not path.exists():
                parser.error(f"no stored results at {path}; run without --report-only")
            store = ResultStore(path, study.name, study.version)
        else:
            store = run_study(
                study,
                path,
                n_jobs=args.jobs,
                dask=args.dask,
                progress=not args.no_progress,
                fresh=args.fresh,
            )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished replicates are stored in {path}; run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return 130
    with store:
        frame = store.frame(study)
    if frame.empty:
        print(f"{study.name}: no results stored yet", file=sys.stderr)
        return 1
    report(frame, folder, args)
    print(f"{study.name}: results and figures in {folder}")
    return 0

"""Independent tasks on this process, a local process pool or a dask cluster.

:func:`map_unordered` runs ``function(*arguments)`` for every tuple of arguments and
yields ``(index, result)`` as each task finishes, in completion order, on one of
three back-ends:

* ``jobs=1`` and no ``dask``: in this process, in order;
* ``jobs=N > 1``: a pool of N spawned processes (the standard library's
  :class:`concurrent.futures.ProcessPoolExecutor`, ``spawn`` start method, so no
  thread or lock state is inherited). At most 2 N tasks are submitted ahead, so
  that an interruption loses at most that many. Every worker ignores Ctrl-C (the
  calling process stops the pool) and ends within :data:`PARENT_POLL` seconds of
  the calling process's death, even by SIGKILL (:func:`exit_with_parent`);
* ``dask="local"`` (a ``LocalCluster`` of ``jobs`` one-thread worker processes on
  this machine) or ``dask="tcp://host:8786"`` (a running scheduler; its workers
  must see the same files as the caller).

Every task runs with ``blas_threads`` BLAS threads (threadpoolctl; default one):
on a machine with as many busy processes as cores, multi-threaded OpenBLAS was
measured 10 to 20 times slower than one thread, and one thread everywhere makes
the three back-ends give bit-identical results.

Results come back to the calling process, which alone decides what to store;
tasks that write files themselves must write them atomically (a worker may be
killed mid-task).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from clair_stats.core.optional import require

__all__ = [
    "PARENT_POLL",
    "WorkerError",
    "Workers",
    "exit_with_parent",
    "map_unordered",
    "run_task",
]


class WorkerError(RuntimeError):
    """A worker process died while running a task (killed, or unable to start)."""


#: Seconds between two checks of a worker that its parent is alive.
PARENT_POLL = 0.2


def exit_with_parent(parent: int, interval: float = PARENT_POLL) -> None:
    """Worker initializer: end this worker as soon as the process ``parent`` dies.

    Pool workers notice a dead parent only when they next wait for a task (and
    loky's only when their idle timeout of 300 s expires): measured, a SIGKILL of
    a ``--jobs 2`` study left both joblib workers alive for 330 s, holding the
    study's stdout open. A daemon thread checks every ``interval`` seconds that
    ``parent`` is alive and calls ``os._exit`` once it is not, even in the middle
    of a task, whose result could no longer be stored. A worker that is a child of
    ``parent`` watches ``os.getppid()``, which changes the moment the parent dies;
    any other worker whether ``parent`` still exists. A worker that starts after
    the parent died exits at once. POSIX only: elsewhere nothing is watched.

    Parameters
    ----------
    parent : int
        The pid of the process that submits the tasks.
    interval : float
        Seconds between two checks.
    """
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return
    child = os.getppid() == parent

    def alive() -> bool:
        if child:
            return os.getppid() == parent
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else
            return True
        return True

    if not alive():
        os._exit(1)

    def watch() -> None:
        while alive():
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="clair-exit-with-parent", daemon=True).start()


def run_task(
    function: Callable[..., Any], arguments: Sequence[Any], blas_threads: int | None
) -> Any:
    """``function(*arguments)`` with ``blas_threads`` BLAS threads (None: as is).

    Parameters
    ----------
    function : callable
        A module-level function (it is pickled by name for the workers).
    arguments : sequence
        Its positional arguments.
    blas_threads : int or None
        BLAS threads during the call (threadpoolctl); None leaves them alone.

    Returns
    -------
    object
        What ``function`` returns.
    """
    if blas_threads is None:
        return function(*arguments)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=blas_threads):
        return function(*arguments)


def map_unordered(
    function: Callable[..., Any],
    arguments: Iterable[Sequence[Any]],
    *,
    jobs: int = 1,
    dask: str | None = None,
    blas_threads: int | None = 1,
    workers: Workers | None = None,
) -> Iterator[tuple[int, Any]]:
    """Run ``function(*a)`` for every ``a`` in ``arguments``; yield as they finish.

    Parameters
    ----------
    function : callable
        A module-level function (pickled by name for the workers).
    arguments : iterable of sequences
        One tuple of positional arguments per task.
    jobs : int
        Worker processes (1: in this process); with ``dask="local"``, the number
        of dask workers.
    dask : str, optional
        ``"local"`` or a dask scheduler address (needs the ``dask`` extra).
    blas_threads : int or None
        BLAS threads per task (default 1; None leaves them alone).
    workers : Workers, optional
        Open workers to run on (their own ``jobs``, ``dask`` and
        ``blas_threads`` apply), so that several maps share one pool.

    Yields
    ------
    index : int
        The task's position in ``arguments``.
    result : object
        What the task returned. A task's exception is raised here (the pool is
        then stopped); closing the generator early stops the workers too.
    """
    if workers is not None:
        yield from workers.map_unordered(function, arguments)
        return
    with Workers(jobs, dask, blas_threads) as own:
        yield from own.map_unordered(function, arguments)


class Workers:
    """A pool of workers for several :func:`map_unordered` calls (a context manager).

    The process pool or the dask client is started at the first map that needs
    it and stopped on leaving: several phases of one job pay the start of the
    workers (about a second each: a spawned process imports numpy and scipy)
    once.

    Parameters
    ----------
    jobs : int
        Worker processes (1: in this process).
    dask : str, optional
        ``"local"`` or a dask scheduler address.
    blas_threads : int or None
        BLAS threads per task (default 1; None leaves them alone).
    """

    def __init__(
        self, jobs: int = 1, dask: str | None = None, blas_threads: int | None = 1
    ) -> None:
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}.")
        self.jobs, self.dask, self.blas_threads = jobs, dask, blas_threads
        self._pool = None
        self._client = None
        self._cluster = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        self.close(abort=exc is not None)

    def map_unordered(
        self, function: Callable[..., Any], arguments: Iterable[Sequence[Any]]
    ) -> Iterator[tuple[int, Any]]:
        """As :func:`map_unordered`, on these workers.

        Parameters
        ----------
        function : callable
            A module-level function.
        arguments : iterable of sequences
            One tuple of positional arguments per task.

        Yields
        ------
        tuple of (int, object)
            The task's index and its result, as tasks finish.
        """
        tasks = list(arguments)
        if self.dask is not None:
            yield from self._dask(function, tasks)
        elif self.jobs > 1 and len(tasks) > 1:
            yield from self._processes(function, tasks)
        else:
            for index, task in enumerate(tasks):
                yield index, run_task(function, task, self.blas_threads)

    def close(self, abort: bool = False) -> None:
        """Stop the workers (``abort``: at once, killing running tasks).

        Parameters
        ----------
        abort : bool
            Terminate the worker processes instead of waiting for them.
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            if abort:
                processes = list((getattr(pool, "_processes", None) or {}).values())
                pool.shutdown(wait=False, cancel_futures=True)
                for process in processes:
                    process.terminate()
                for process in processes:
                    process.join(5)
            else:
                pool.shutdown(wait=True)
        client, self._client = self._client, None
        if client is not None:
            client.close()
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.close()

    def _processes(self, function, tasks):
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                max_workers=self.jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_start,
                initargs=(os.getpid(),),
            )
        pending: dict = {}
        queue = iter(enumerate(tasks))
        finished = False
        try:
            for _ in range(2 * self.jobs):
                self._submit(pending, queue, function)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool as exc:
                        raise WorkerError(
                            "a worker process ended abruptly: killed (out of "
                            "memory?) or unable to start. A script that runs work "
                            "in parallel must start it under "
                            "`if __name__ == '__main__':` (each worker imports the "
                            "script); else run again with fewer jobs."
                        ) from exc
                    self._submit(pending, queue, function)
                    yield index, result
            finished = True
        finally:
            if not finished:  # an error, Ctrl-C or an abandoned generator
                self.close(abort=True)

    def _submit(self, pending, queue, function) -> None:
        task = next(queue, None)
        if task is not None:
            index, arguments = task
            future = self._pool.submit(run_task, function, arguments, self.blas_threads)
            pending[future] = index

    def _dask(self, function, tasks):
        distributed = require("dask.distributed", "dask", "running on dask (--dask)")
        if self._client is None:
            if self.dask == "local":
                self._cluster = distributed.LocalCluster(
                    n_workers=max(1, self.jobs),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
                self._client = distributed.Client(self._cluster)
            else:
                self._client = distributed.Client(self.dask)
        client = self._client
        futures = []
        try:
            futures = [
                client.submit(run_task, function, task, self.blas_threads, pure=False)
                for task in tasks
            ]
            index = {future.key: i for i, future in enumerate(futures)}
            for future in distributed.as_completed(futures):
                yield index[future.key], future.result()
        finally:
            client.cancel(futures)


def _worker_start(parent: int) -> None:
    """Initializer of the process pool's workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool
    exit_with_parent(parent)

"""Optional dependencies: imported when used, with an error that says what to install.

``pip install clair_stats`` brings the core (numpy, scipy, cvxpy, statsmodels,
matplotlib). The rest comes with extras, and ``import clair_stats`` loads none of
them:

- ``lora``: safetensors (PEFT adapter files) and tqdm (progress bars of
  ``clair adapters``);
- ``studies``: pandas, joblib and tqdm (the study runner of
  :mod:`clair_stats.experiments`); ``dask``: dask.distributed for ``--dask``;
- ``notebooks``: jupytext, nbclient, nbconvert, ipykernel (``make report``);
- ``torch``, ``peft``: the Transformer experiment and the PEFT round-trip tests;
- ``flower``: flwr, pinned to 1.42.0, whose server-side aggregators
  :mod:`clair_stats.evaluation.flower` calls on (K, p, q) arrays.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any, TypeVar

__all__ = ["progress", "require", "require_safetensors"]

T = TypeVar("T")


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise ImportError naming the extra that provides it.

    Parameters
    ----------
    module : str
        The module to import, e.g. ``"safetensors.numpy"``.
    extra : str
        The clair_stats extra that installs it, e.g. ``"lora"``.
    purpose : str
        What it is needed for, completing "... is needed for <purpose>".
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise ImportError(
            f"{top} is needed for {purpose} but is not installed; install it with "
            f"pip install 'clair_stats[{extra}]'."
        ) from exc


def require_safetensors(submodule: str | None = None) -> ModuleType:
    """``safetensors`` (or ``safetensors.<submodule>``), from the ``lora`` extra.

    Parameters
    ----------
    submodule : str, optional
        A submodule to import instead of the package, e.g. ``"numpy"`` for
        ``safetensors.numpy``. Default: the package itself.

    Returns
    -------
    module
        The imported module; an ``ImportError`` naming the ``lora`` extra when
        safetensors is not installed.
    """
    name = "safetensors" if submodule is None else f"safetensors.{submodule}"
    return require(name, "lora", "reading and writing PEFT adapter files")


def progress(
    iterable: Iterable[T],
    *,
    desc: str,
    total: int | None = None,
    disable: bool = False,
    **options: Any,
) -> Iterator[T]:
    """Iterate with a progress bar: tqdm when installed, else one line per step.

    Without tqdm (it comes with the ``lora`` and ``studies`` extras) the fallback
    writes ``desc: i/total`` to stderr after each item, so that long work still
    shows where it is.

    Parameters
    ----------
    iterable : iterable
        The items to iterate over, yielded unchanged.
    desc : str
        The label of the bar (keyword only).
    total : int, optional
        The number of items, for the bar's length; default ``len(iterable)``
        when it has one, else unknown.
    disable : bool, default False
        Iterate without any bar or line.
    **options
        Further keyword arguments of ``tqdm`` (ignored by the fallback).

    Yields
    ------
    object
        The items of ``iterable``, in order.
    """
    if disable:
        yield from iterable
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        of = f"/{total}" if total is not None else ""
        for i, item in enumerate(iterable, start=1):
            yield item
            print(f"{desc}: {i}{of}", file=sys.stderr, flush=True)
        return
    bar = tqdm(iterable, desc=desc, total=total, **options)
    try:
        yield from bar
    finally:
        bar.close()

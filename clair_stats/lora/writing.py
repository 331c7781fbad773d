"""Step 4 of CLAIR per module and the refined PEFT adapters, one per client.

With the verdict's collaborative set S^ (the same in every module) and each
module's A^_m, every collaborative client's update is refined as
:func:`clair_stats.clair` refines (docs/pipeline.md §3.4,
:func:`clair_stats.pipeline.refine.refine_clients`): A^_m refitted on S^, and

.. math:: \\tilde\\Theta_{km} = \\bar\\Theta_m + (1 - b_{km}) P_{\\hat A_m}
          (\\hat\\Theta_{km} - \\bar\\Theta_m), \\qquad
          \\bar\\Theta_m = \\frac{1}{|\\hat S|}
          \\sum_{j \\in \\hat S} \\hat\\Theta_{jm},

b_km the empirical-Bayes share of the in-subspace deviation pooled away (sigma by
the median rule per module), truncated to a LoRA rank by SVD
(:func:`clair_stats.solvers.factored.refine_factored`, on the factors), and
written as one PEFT adapter per client
(:func:`clair_stats.lora.peft.write_adapter`, scaling 1). A flagged client keeps
its local update in every module. Each module's refined factors go to a temporary
safetensors file first, so that memory holds one module of all clients at a time.

A client whose update in module m is zero (an untrained module, left out of the module's
fit and test by :func:`clair_stats.lora.adapters.analyse_adapters`) keeps its zero
update there and does not enter Thetabar_m; in a module that was not tested every client
keeps its update. The refinement keeps (a share of) a client's own in-subspace part P_A^
Theta^_km and replaces the rest by the federation's P_A^^perp Thetabar_m; a zero update
has no in-subspace part, so the refinement would give it only the other clients'
off-subspace mean, the part CLAIR treats as client-specific, without the shared signal:
it would move the client's model in module m in directions estimated to be noise, where
the client itself trained nothing. Keeping the zero update leaves the module as the
client trained it (the base weights).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path

import numpy as np

from clair_stats.core.optional import require_safetensors
from clair_stats.core.parallel import Workers
from clair_stats.core.validation import check_choice, check_int
from clair_stats.lora.adapters import _subset
from clair_stats.lora.peft import AdapterSet, cast_factors, write_adapter
from clair_stats.lora.progress import ModuleProgress
from clair_stats.lora.report import (
    AdaptersResult,
    ModuleReport,
    _map_worded,
    _wording,
)
from clair_stats.pipeline.paths import FactoredUpdates

__all__ = [
    "RefinedModule",
    "assemble_adapters",
    "assemble_client",
    "checked_output",
    "module_file",
    "refine_adapter_module",
    "refine_and_write",
    "save_atomic",
    "refine_modules",
    "write_refined",
]

_TMP = ".clair_tmp"


def write_refined(
    adapters: AdapterSet,
    result: AdaptersResult,
    out: str | PathLike[str],
    *,
    out_rank: int | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
    jobs: int = 1,
    dask: str | None = None,
) -> AdaptersResult:
    """Step 4 per module with the combined S^, then one adapter per client.

    Collaborative clients get the rank-t truncated SVD of Theta~_km = Thetabar_m + (1 -
    b_km) P_A^ (Theta^_km - Thetabar_m), with A^_m refitted on S^ and b_km the
    empirical-Bayes shrinkage of the module docstring (Thetabar_m over S^ without the
    zero updates of module m; b_km = 0 is the paper's P_A^ Theta^_km + P_A^^perp
    Thetabar_m); flagged clients, zero updates and every client of a module that was not
    tested their local factors (s_k B_km, A_km). Each module's refined factors go to a
    temporary safetensors file in ``out`` (so memory holds one module at a time), then
    each client's adapter is assembled from them and written to ``out/<client name>``
    (:func:`clair_stats.lora.peft.write_adapter`, scaling 1). This writes into ``out``
    in place; :func:`clair_stats.lora.cli.run_adapters` (``clair adapters``) writes a
    complete output elsewhere first and then moves it into place.

    Parameters
    ----------
    adapters : AdapterSet
        The K clients' adapters that ``result`` analysed.
    result : AdaptersResult
        From :func:`clair_stats.lora.adapters.analyse_adapters` on the same
        adapters.
    out : str or path-like
        The output folder.
    out_rank : int, optional
        t, the LoRA rank of every refined module; default each client's own rank.
    dtype : {"float32", "float16", "float64"}
        The dtype of the written factors (default ``"float32"``).
    overwrite : bool
        Replace adapters already in ``out``.
    progress : bool
        Show tqdm bars.
    jobs : int
        Modules refined (and then clients written) at once, each in its own
        process with one BLAS thread; 1 (default) works here, also with one BLAS
        thread, so that every ``jobs`` gives the same files.
    dask : str, optional
        Work on dask.distributed instead: ``"local"`` or a scheduler address (its
        workers must see ``out`` and the adapters at the same paths).

    Returns
    -------
    AdaptersResult
        ``result`` with the truncation errors per module and ``outputs``, the K
        adapter folders written.
    """
    require_safetensors("numpy")  # before any work: the lora extra is needed
    if result.names != adapters.names or [m.name for m in result.modules] != list(
        adapters.module_names
    ):
        raise ValueError(
            "result does not belong to these adapters (different clients or "
            "modules); run analyse_adapters on them first."
        )
    out_rank, dtype = checked_output(out_rank, dtype)
    folder = Path(out)
    targets = tuple(folder / name for name in result.names)
    if not overwrite:
        taken = [str(t) for t in targets if t.exists() and any(t.iterdir())]
        if taken:
            raise FileExistsError(
                f"output folder(s) {taken} already exist and are not empty; "
                + _wording(
                    "choose another --out or pass --overwrite.",
                    "choose another out or pass overwrite=True.",
                )
            )
    tmp = folder / _TMP
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with Workers(jobs, dask) as workers:
            return refine_and_write(
                adapters,
                result,
                tmp,
                targets,
                out_rank=out_rank,
                dtype=dtype,
                overwrite=overwrite,
                progress=progress,
                workers=workers,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def checked_output(out_rank: int | None, dtype: str) -> tuple[int | None, str]:
    """``out_rank`` and ``dtype`` of the refined adapters, checked.

    Parameters
    ----------
    out_rank : int or None
        t >= 1, or None for each client's own rank.
    dtype : {"float32", "float16", "float64"}
        The dtype to write.

    Returns
    -------
    tuple
        The checked (out_rank, dtype).
    """
    if out_rank is not None:
        out_rank = check_int(out_rank, "out_rank", 1)
    return out_rank, check_choice(dtype, "dtype", ("float32", "float16", "float64"))


def refine_and_write(
    adapters: AdapterSet,
    result: AdaptersResult,
    folder: str | PathLike[str],
    targets: tuple[Path, ...],
    *,
    out_rank: int | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
    workers: Workers | None = None,
    done_modules: dict[int, RefinedModule] | None = None,
    done_clients: set[int] | None = None,
) -> AdaptersResult:
    """Step 4 on every module (:func:`refine_modules`), then every client's
    adapter (:func:`assemble_adapters`); what :func:`write_refined` and
    ``clair adapters`` (resuming what is ``done``) both do.

    Parameters
    ----------
    adapters : AdapterSet
        The K clients' adapters.
    result : AdaptersResult
        The analysis.
    folder : str or path-like
        The folder of the per-module files.
    targets : tuple of pathlib.Path
        Client k's adapter folder at index k.
    out_rank, dtype, overwrite, progress
        As in :func:`write_refined` (checked by the caller).
    workers : Workers, optional
        Open workers (default: this process).
    done_modules : dict of int to RefinedModule, optional
        Modules refined already (a resumed run).
    done_clients : set of int, optional
        Clients written already (a resumed run).

    Returns
    -------
    AdaptersResult
        ``result`` with the truncation errors, step 4's seconds, ``out_rank`` and
        ``dtype`` in the settings, and ``outputs`` the targets.
    """
    options = {"progress": progress, "workers": workers}
    refined = refine_modules(
        adapters,
        result,
        folder,
        out_rank=out_rank,
        dtype=dtype,
        done=done_modules,
        **options,
    )
    assemble_adapters(
        adapters,
        result,
        folder,
        targets,
        dtype=dtype,
        overwrite=overwrite,
        done=done_clients,
        **options,
    )
    modules = [
        replace(
            m,
            truncation_error=r.truncation_error,
            refined_norm=r.refined_norm,
            refine_seconds=r.seconds,
        )
        for m, r in zip(result.modules, refined, strict=True)
    ]
    return replace(
        result,
        modules=tuple(modules),
        settings=dict(result.settings, out_rank=out_rank, dtype=dtype),
        outputs=tuple(str(t) for t in targets),
    )


def save_atomic(
    path: str | PathLike[str], tensors: dict[str, np.ndarray], metadata: dict[str, str]
) -> None:
    """Write a safetensors file under a temporary name, then rename it, so that
    the file exists only complete (a worker may be killed while writing).

    Parameters
    ----------
    path : str or path-like
        The file.
    tensors : dict of str to numpy.ndarray
        Its tensors.
    metadata : dict of str to str
        Its header metadata.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    require_safetensors("numpy").save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)


@dataclass(frozen=True)
class RefinedModule:
    """What :func:`refine_adapter_module` reports of one module (its factors are
    in its file).

    Parameters
    ----------
    name : str
        The module path.
    truncation_error : numpy.ndarray, shape (K,)
        ||Theta~_km - B~_km A~_km||_F (0 for the clients that keep their update).
    refined_norm : numpy.ndarray, shape (K,)
        ||Theta~_km||_F (the local update's norm for those that keep it).
    seconds : float
        Wall time of the module, reading included (the file's write is not).
    """

    name: str
    truncation_error: np.ndarray = field(repr=False)
    refined_norm: np.ndarray = field(repr=False)
    seconds: float = 0.0


def module_file(folder: Path, index: int) -> Path:
    """The file of module ``index``'s refined factors in ``folder``.

    Parameters
    ----------
    folder : pathlib.Path
        The folder of the per-module files.
    index : int
        The module's position in the adapters' module names.

    Returns
    -------
    pathlib.Path
    """
    return Path(folder) / f"refined-{index:05d}.safetensors"


def refine_adapter_module(
    adapters: AdapterSet,
    module: ModuleReport,
    collaborative: np.ndarray,
    side: str,
    out_rank: int | None,
    dtype: str,
    path: str | PathLike[str],
) -> RefinedModule:
    """Step 4 on one module; its K clients' factors written to ``path``.

    The file (safetensors; keys ``<k>.B`` and ``<k>.A`` in ``dtype``, and
    ``truncation_error`` and ``refined_norm``) is written to a temporary name and
    renamed, so that it exists only complete.

    Parameters
    ----------
    adapters : AdapterSet
        The K clients' adapters (the module is read memory-mapped).
    module : ModuleReport
        The module's report from the analysis (A^_m, zero updates).
    collaborative : numpy.ndarray of bool, shape (K,)
        S^, the same in every module.
    side : {"left", "right"}
        As in the analysis.
    out_rank : int or None
        t, or each client's own rank.
    dtype : {"float32", "float16", "float64"}
        The dtype of the written factors.
    path : str or path-like
        The file to write.

    Returns
    -------
    RefinedModule
    """
    from clair_stats.pipeline.refine import refine_clients

    start = time.perf_counter()
    updates = adapters.updates(module.name)
    n_clients = updates.n_clients
    factors_b = [s * b for s, b in zip(updates.scaling, updates.B, strict=True)]
    factors_a = list(updates.A)
    errors = np.zeros(n_clients)
    norms = updates.norms()
    if module.tested:
        kept = np.flatnonzero(~module.zero_update)
        work = FactoredUpdates(_subset(updates, kept)).oriented(side)
        refined = work.restore(
            refine_clients(
                work.data,
                module.subspace,
                np.asarray(collaborative)[kept],
                refined_rank=out_rank,
            ).refined,
            side,
        )
        for j, k in enumerate(kept):
            factors_b[k], factors_a[k] = refined.B[j], refined.A[j]
        errors[kept] = refined.truncation_error
        norms[kept] = refined.refined_norm
    tensors = {}
    for k in range(n_clients):
        b, a = cast_factors(module.name, factors_b[k], factors_a[k], dtype)
        tensors[f"{k}.B"] = np.ascontiguousarray(b)
        tensors[f"{k}.A"] = np.ascontiguousarray(a)
    seconds = time.perf_counter() - start
    tensors["truncation_error"] = errors
    tensors["refined_norm"] = norms
    meta = json.dumps({"name": module.name, "seconds": seconds})
    save_atomic(path, tensors, {"refined": meta})
    return RefinedModule(
        name=module.name,
        truncation_error=errors,
        refined_norm=norms,
        seconds=seconds,
    )


def refine_modules(
    adapters: AdapterSet,
    result: AdaptersResult,
    folder: str | PathLike[str],
    *,
    out_rank: int | None = None,
    dtype: str = "float32",
    progress: bool = True,
    jobs: int = 1,
    dask: str | None = None,
    done: dict[int, RefinedModule] | None = None,
    workers: Workers | None = None,
) -> list[RefinedModule]:
    """Step 4 on every module not in ``done``, in parallel; one file each.

    Parameters
    ----------
    adapters : AdapterSet
        The K clients' adapters.
    result : AdaptersResult
        The analysis (S^ and each module's A^_m).
    folder : str or path-like
        Where the per-module files go (:func:`module_file`).
    out_rank, dtype
        As in :func:`write_refined`.
    progress : bool
        Show a bar.
    jobs, dask
        As in :func:`clair_stats.lora.adapters.analyse_adapters`.
    done : dict of int to RefinedModule, optional
        Modules whose files exist already (a resumed run); not redone.
    workers : Workers, optional
        Open workers to use instead of ``jobs`` and ``dask``.

    Returns
    -------
    list of RefinedModule
        One per module, in module order.
    """
    done = dict(done or {})
    todo = [i for i in range(len(result.modules)) if i not in done]
    tasks = [
        (
            adapters,
            result.modules[i],
            result.collaborative,
            result.side,
            out_rank,
            dtype,
            module_file(Path(folder), i),
        )
        for i in todo
    ]
    with ModuleProgress(
        len(result.modules), "refine per module", progress, initial=len(done)
    ) as bar:
        for j, refined in _map_worded(
            refine_adapter_module, tasks, jobs=jobs, dask=dask, workers=workers
        ):
            done[todo[j]] = refined
            bar.done(refined.seconds)
    return [done[i] for i in range(len(result.modules))]


def assemble_client(
    adapters: AdapterSet,
    client: int,
    folder: str | PathLike[str],
    target: str | PathLike[str],
    dtype: str,
    overwrite: bool = False,
) -> float:
    """Write client ``client``'s adapter from the per-module files.

    A new ``target`` is written as ``.<name>.partial`` next to it and renamed, so
    that it exists only complete.

    Parameters
    ----------
    adapters : AdapterSet
        The K clients' adapters (client ``client``'s is the config template).
    client : int
        k.
    folder : str or path-like
        The per-module files of :func:`refine_modules`.
    target : str or path-like
        The adapter folder to write.
    dtype : {"float32", "float16", "float64"}
        The dtype to write.
    overwrite : bool
        Replace an adapter already in ``target``.

    Returns
    -------
    float
        Wall time in seconds.
    """
    safe_open = require_safetensors().safe_open
    start = time.perf_counter()
    factors = {}
    for i, name in enumerate(adapters.module_names):
        with safe_open(str(module_file(Path(folder), i)), framework="numpy") as f:
            factors[name] = (f.get_tensor(f"{client}.B"), f.get_tensor(f"{client}.A"))
    target = Path(target)
    if target.exists():
        write_adapter(
            target, factors, adapters.adapters[client], dtype=dtype, overwrite=overwrite
        )
    else:  # complete or absent, for a resumed run: written aside, then renamed
        partial = target.with_name(f".{target.name}.partial")
        if partial.exists():
            shutil.rmtree(partial)
        write_adapter(partial, factors, adapters.adapters[client], dtype=dtype)
        os.rename(partial, target)
    return time.perf_counter() - start


def assemble_adapters(
    adapters: AdapterSet,
    result: AdaptersResult,
    folder: str | PathLike[str],
    targets: tuple[Path, ...],
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
    jobs: int = 1,
    dask: str | None = None,
    done: set[int] | None = None,
    workers: Workers | None = None,
) -> None:
    """Write every client's adapter not in ``done`` (:func:`assemble_client`).

    Parameters
    ----------
    adapters : AdapterSet
        The K clients' adapters.
    result : AdaptersResult
        The analysis (for the client count).
    folder : str or path-like
        The per-module files.
    targets : tuple of pathlib.Path
        Client k's adapter folder at index k.
    dtype, overwrite
        As in :func:`write_refined`.
    progress : bool
        Show a bar.
    jobs, dask
        As in :func:`clair_stats.lora.adapters.analyse_adapters`.
    done : set of int, optional
        Clients already written (a resumed run).
    workers : Workers, optional
        Open workers to use instead of ``jobs`` and ``dask``.
    """
    done = set(done or ())
    todo = [k for k in range(result.n_clients) if k not in done]
    tasks = [(adapters, k, folder, targets[k], dtype, overwrite) for k in todo]
    with ModuleProgress(
        result.n_clients,
        "write adapters",
        progress,
        initial=len(done),
        unit="client",
    ) as bar:
        for _, seconds in _map_worded(
            assemble_client, tasks, jobs=jobs, dask=dask, workers=workers
        ):
            bar.done(seconds)

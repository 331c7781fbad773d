"""CLAIR per module on K clients' LoRA adapters: steps 1-3, one verdict per client.

Every adapted module m (a weight of shape out x in) is one CLAIR problem on the K
updates Theta^_km = s_k B_km A_km (p = out, q = in; ``side="right"`` works on the
transposes), solved in factored form so that no p x Kq matrix is formed
(:func:`fit_module`, which takes dense (K, p, q) stacks as well):

1. decompose M_m = [Theta^_1m, ..., Theta^_Km] by P0 (no noise level is known for
   adapters; P0 is positively homogeneous, so lam = c_lam / sqrt(K) needs no
   scale) and take A^_m, the top-r_m left singular vectors of L^, checked against
   the least-trimmed-squares fit of docs/pipeline.md §3.6 as :func:`clair_stats.clair`
   does (:func:`clair_stats.pipeline.estimator.shared_subspace`): clients that
   share another task (a coordinated minority) could otherwise pull A^_m towards
   their directions and hide in it; r_m is ``rank``, by default the median LoRA
   rank of the clients in module m;
2. measure each client's off-subspace energy E_km = ||P_{A^_m}^perp
   Theta^_km||_F^2 (:func:`clair_stats.core.linalg.off_subspace_energy`, on the
   factors);
3. turn the (M, K) energies into one verdict per client
   (:func:`clair_stats.lora.verdict.client_verdict`: empirical-null p-values per
   module, Holm over all K x M, flagged iff any module is rejected).

**Zero updates.** A client whose update in module m is zero (B_km = 0, PEFT's
initialisation of an adapter that was never trained there, or A_km = 0) carries no
information about module m: its energy is 0 whatever A^_m, log E_km = -inf, and no
z-score exists. Such a (client, module) is left out of module m -- out of the
decomposition (lam and the default rank come from the other clients), of the
empirical null and of Holm -- and its p-value is missing (NaN, null in the report);
the client keeps its zero update in module m (:mod:`clair_stats.lora.writing`). A
module with fewer than 3 nonzero updates is not tested (the null scores each client
against at least two others) and every client keeps its update there. A client
with no p-value left in any module is *uninformative*: not flagged, since nothing
says it is contaminated, and written with its own update. Holm runs over the
(client, module) pairs that have a p-value, so the family-wise guarantee of
:mod:`clair_stats.lora.verdict` holds over them. The report and the summary name
every such client and module, and a :class:`~clair_stats.ClairWarning` says so.

Step 4, the refinement of the clients that are not flagged in every module with the
same S^, and the writing of the refined adapters are in
:mod:`clair_stats.lora.writing`; the results and the JSON report in
:mod:`clair_stats.lora.report`; the command in :mod:`clair_stats.lora.cli`.

Cost, measured on a 2-core machine (benchmarks/results/adapters.md; LoRA rank
16, one process and one BLAS thread per module): steps 1-2 of a 4096 x 4096
module took 0.7 s at K = 20, 3.5 s at K = 50 and 10.3 s at K = 100, step 4 and
the write 0.4, 1.8 and 6.2 s (the null law of the z-scores is computed once per
K). Memory holds one module of all clients at a time.

References
----------
He, Chen, Feng (2026). Federated LoRA fine-tuning for LLMs via collaborative
alignment. arXiv:2605.21217.
"""

from __future__ import annotations

import importlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from clair_stats.core.exceptions import (
    AssumptionWarning,
    ClairWarning,
    ConvergenceWarning,
)
from clair_stats.core.linalg import off_subspace_energy
from clair_stats.core.lowrank import LowRankUpdates
from clair_stats.core.parallel import Workers
from clair_stats.core.results import SolverInfo
from clair_stats.core.validation import check_alpha, check_choice, check_int
from clair_stats.lora.peft import AdapterSet
from clair_stats.lora.progress import ModuleProgress
from clair_stats.lora.report import (
    AdaptersResult,
    ModuleReport,
    _map_worded,
    _wording,
)
from clair_stats.lora.verdict import ClientVerdict, client_verdict
from clair_stats.pipeline.empirical_null import DRAWS
from clair_stats.pipeline.estimator import shared_subspace
from clair_stats.pipeline.paths import as_updates

__all__ = [
    "MIN_CLIENTS",
    "ModuleFit",
    "ModuleOutcome",
    "analyse_adapters",
    "combine_modules",
    "fit_adapter_module",
    "fit_module",
    "fit_modules",
    "zero_updates",
]

#: Fewest clients with a nonzero update for a module to be fit and tested.
MIN_CLIENTS = 3


@dataclass(frozen=True)
class ModuleFit:
    """Steps 1-2 of CLAIR on one module and the energies of step 3.

    Parameters
    ----------
    subspace : numpy.ndarray, shape (p, r)
        A^, orthonormal columns (p = out for ``side="left"``, in for right).
    energies : numpy.ndarray, shape (K,)
        E_k = ||P_{A^}^perp Theta^_k||_F^2.
    rank : int
        r.
    df : int
        (p - r) q, the degrees of freedom of the chi-square test of step 3 (for
        comparison; the verdict does not use them).
    solver : SolverInfo
        Step 1's solver statistics (``converged`` records non-convergence).
    """

    subspace: np.ndarray = field(repr=False)
    energies: np.ndarray = field(repr=False)
    rank: int
    df: int
    solver: SolverInfo = field(repr=False)


def fit_module(
    updates: np.ndarray | LowRankUpdates,
    rank: int,
    *,
    side: str = "left",
    lam: float | None = None,
    refit: str = "trimmed",
    **solver_options,
) -> ModuleFit:
    """Decompose one module's K updates by P0, take A^ (refitted) and the energies.

    .. math:: \\min_{L,S} \\|L\\|_* + \\lambda \\sum_k \\|S_k\\|_F
              \\ \\text{ s.t. } L + S = M, \\qquad
              E_k = \\|P_{\\hat A}^\\perp \\hat\\Theta_k\\|_F^2,

    with A^ the top-r left singular vectors of L^, checked against a fit that
    only a majority of clients determines (``refit="trimmed"``).

    Parameters
    ----------
    updates : numpy.ndarray of shape (K, p, q), or LowRankUpdates
        Theta^_k (factored updates are never multiplied out).
    rank : int
        r, 1 <= r < p (p of the chosen side).
    side : {"left", "right"}
        Share the column space (output space of Delta W) or the row space.
    lam : float, optional
        lam of P0; default c_lam / sqrt(K).
    refit : {"trimmed", "none"}
        ``"trimmed"``: A^ checked against, and if need be replaced by, the
        least-trimmed-squares fit of :func:`clair_stats.clair`
        (docs/pipeline.md §3.6, :func:`clair_stats.pipeline.estimator.shared_subspace`),
        so that a coordinated group (clients sharing another task) cannot pull
        it; ``"none"``: the top-r left singular vectors of L^.
    **solver_options
        ``tol``, ``max_iter`` for :func:`clair_stats.decompose`.

    Returns
    -------
    ModuleFit
        A :class:`~clair_stats.ConvergenceWarning` of step 1 is not raised here:
        ``solver.converged`` records it, and the callers warn once per run.
    """
    side = check_choice(side, "side", ("left", "right"))
    work = as_updates(updates).oriented(side).data
    _, p, q = work.shape
    rank = check_int(rank, "rank", 1)
    if rank >= p:
        space = "output" if side == "left" else "input"
        raise ValueError(
            f"rank r = {rank} leaves no off-subspace complement in the p = {p} "
            f"dimensional {space} space; "
            + _wording(f"choose --rank below {p}.", f"pass rank < {p}.")
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        subspace, decomposition, _ = shared_subspace(
            work, rank, lam=lam, refit=refit, **solver_options
        )
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return ModuleFit(
        subspace=subspace,
        energies=off_subspace_energy(work, subspace),
        rank=rank,
        df=(p - rank) * q,
        solver=decomposition.info,
    )


def analyse_adapters(
    adapters: AdapterSet,
    *,
    rank: int | None = None,
    side: str = "left",
    alpha: float = 0.05,
    lam: float | None = None,
    draws: int = DRAWS,
    progress: bool = True,
    jobs: int = 1,
    dask: str | None = None,
    **solver_options,
) -> AdaptersResult:
    """Steps 1-3 of CLAIR per module, and one verdict per client.

    A client whose update in a module is zero (:func:`zero_updates`) is left out
    of that module's fit and test, and a module with fewer than
    :data:`MIN_CLIENTS` nonzero updates is not tested (the rule and its reasons
    are in the module docstring); both are named in the result's
    :meth:`~clair_stats.lora.report.AdaptersResult.notes` and in one
    :class:`~clair_stats.ClairWarning`.

    Parameters
    ----------
    adapters : AdapterSet
        K >= 3 clients' adapters (:func:`clair_stats.lora.peft.read_adapters`).
    rank : int, optional
        r_m for every module; default the median LoRA rank of the clients with
        a nonzero update in each module. Must be below p (out for
        ``side="left"``, in for right).
    side : {"left", "right"}
        Share the output space (column space of Delta W) or the input space.
    alpha : float
        Level of Holm's procedure over the (client, module) p-values.
    lam : float, optional
        lam of P0; default c_lam / sqrt(K_m), K_m the clients with a nonzero
        update in module m.
    draws : int
        Monte Carlo draws of the null law of the z-scores.
    progress : bool
        Show a tqdm bar over the modules (modules done, seconds per module, time
        left).
    jobs : int
        Modules fit at once, each in its own process with one BLAS thread
        (:func:`clair_stats.core.parallel.map_unordered`); 1 (the default) runs
        them here, also with one BLAS thread, so that every ``jobs`` gives the
        same numbers.
    dask : str, optional
        Fit the modules on dask.distributed instead: ``"local"`` or a scheduler
        address (its workers must see the adapter files at the same paths).
    **solver_options
        ``tol``, ``max_iter`` for :func:`clair_stats.decompose`.

    Returns
    -------
    AdaptersResult
    """
    side, alpha, rank = _checked(adapters, side, alpha, rank)
    outcomes = fit_modules(
        adapters,
        rank=rank,
        side=side,
        lam=lam,
        solver_options=solver_options,
        progress=progress,
        jobs=jobs,
        dask=dask,
    )
    return combine_modules(
        adapters,
        outcomes,
        rank=rank,
        side=side,
        alpha=alpha,
        lam=lam,
        draws=draws,
        solver_options=solver_options,
        stacklevel=3,
    )


def fit_modules(
    adapters: AdapterSet,
    *,
    rank: int | None = None,
    side: str = "left",
    lam: float | None = None,
    solver_options: dict | None = None,
    progress: bool = True,
    jobs: int = 1,
    dask: str | None = None,
    done: dict[int, ModuleOutcome] | None = None,
    store: Callable[[int, ModuleOutcome], None] | None = None,
    workers: Workers | None = None,
) -> list[ModuleOutcome]:
    """Steps 1-2 on every module not in ``done`` (:func:`fit_adapter_module`).

    Parameters
    ----------
    adapters : AdapterSet
        The K clients' adapters.
    rank, side, lam, progress, jobs, dask
        As in :func:`analyse_adapters`.
    solver_options : dict, optional
        ``tol``, ``max_iter`` of step 1.
    done : dict of int to ModuleOutcome, optional
        Modules already fit (a resumed run), by position; not redone.
    store : callable, optional
        Called as ``store(index, outcome)`` in this process as each module
        finishes (before the next result is taken).
    workers : Workers, optional
        Open workers to use instead of ``jobs`` and ``dask`` (one pool for
        several phases).

    Returns
    -------
    list of ModuleOutcome
        One per module, in the order of ``adapters.module_names``.
    """
    names = adapters.module_names
    found = dict(done or {})
    todo = [i for i in range(len(names)) if i not in found]
    tasks = [(adapters, names[i], rank, side, lam, solver_options) for i in todo]
    with ModuleProgress(
        len(names), "CLAIR per module", progress, initial=len(found)
    ) as bar:
        for j, outcome in _map_worded(
            fit_adapter_module, tasks, jobs=jobs, dask=dask, workers=workers
        ):
            if store is not None:
                store(todo[j], outcome)
            found[todo[j]] = outcome
            bar.done(outcome.seconds)
    return [found[i] for i in range(len(names))]


@dataclass(frozen=True)
class ModuleOutcome:
    """Steps 1-2 on one module of an adapter set: what the verdict needs of it.

    The result of :func:`fit_adapter_module`, computed on any worker, kept (by
    ``clair adapters``) in the output's temporary folder until the run ends, and
    combined over the modules by :func:`combine_modules`.

    Parameters
    ----------
    name : str
        The module path.
    shape : tuple of int
        (out, in).
    client_ranks : tuple of int
        The clients' LoRA ranks r_k in this module.
    zero_update : numpy.ndarray of bool, shape (K,)
        Clients whose update here is zero (:func:`zero_updates`).
    fit : ModuleFit or None
        Steps 1-2 on the nonzero updates; None when fewer than
        :data:`MIN_CLIENTS` are nonzero (the module is not tested).
    seconds : float
        Wall time of the module (reading included).
    warnings : tuple of (str, str)
        The warnings the module raised, as (category's import path, message):
        a worker's warnings do not reach the calling process otherwise.
    """

    name: str
    shape: tuple[int, int]
    client_ranks: tuple[int, ...]
    zero_update: np.ndarray = field(repr=False)
    fit: ModuleFit | None = field(repr=False)
    seconds: float = 0.0
    warnings: tuple[tuple[str, str], ...] = ()

    @property
    def kept(self) -> np.ndarray:
        """The clients with a nonzero update (those of the fit), in order."""
        return np.flatnonzero(~self.zero_update)


def fit_adapter_module(
    adapters: AdapterSet,
    name: str,
    rank: int | None = None,
    side: str = "left",
    lam: float | None = None,
    solver_options: dict | None = None,
) -> ModuleOutcome:
    """Read one module of every client (memory-mapped) and run steps 1-2 on it.

    Parameters
    ----------
    adapters : AdapterSet
        The K clients' adapters.
    name : str
        The module path.
    rank : int, optional
        r_m; default the median LoRA rank of the clients with a nonzero update.
    side : {"left", "right"}
        As in :func:`analyse_adapters`.
    lam : float, optional
        lam of P0 (default c_lam / sqrt(K_m)).
    solver_options : dict, optional
        ``tol``, ``max_iter`` of step 1.

    Returns
    -------
    ModuleOutcome

    Raises
    ------
    ValueError
        When the rank leaves no complement, or a client's update lies in A^_m
        exactly (its log energy would be -inf).
    """
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        updates = adapters.updates(name)
        zero = zero_updates(updates)
        kept = np.flatnonzero(~zero)
        fit = None
        if kept.size >= MIN_CLIENTS:
            sub = _subset(updates, kept)
            r = rank if rank is not None else int(np.median(sub.ranks))
            try:
                fit = fit_module(sub, r, side=side, lam=lam, **(solver_options or {}))
            except ValueError as exc:
                raise ValueError(f"module {name!r}: {exc}") from None
            inside = kept[fit.energies <= 0]
            if inside.size:
                raise ValueError(
                    f"module {name!r}: the update of client(s) "
                    f"{[adapters.names[k] for k in inside]} lies in the shared "
                    "subspace exactly (off-subspace energy 0, log energy -inf), "
                    "which the test cannot score; noiseless or copied adapters "
                    "do this when the shared rank is too large. "
                    + _wording(
                        f"Choose a smaller --rank (below {fit.rank}).",
                        f"Pass a smaller rank (below {fit.rank}).",
                    )
                )
    return ModuleOutcome(
        name=name,
        shape=(updates.p, updates.q),
        client_ranks=updates.ranks,
        zero_update=zero,
        fit=fit,
        seconds=time.perf_counter() - start,
        warnings=_unique_warnings(caught),
    )


def combine_modules(
    adapters: AdapterSet,
    outcomes: list[ModuleOutcome],
    *,
    rank: int | None = None,
    side: str = "left",
    alpha: float = 0.05,
    lam: float | None = None,
    draws: int = DRAWS,
    solver_options: dict | None = None,
    stacklevel: int = 2,
) -> AdaptersResult:
    """Step 3: one verdict per client from the modules' outcomes.

    Re-emits the modules' warnings (one line per distinct message, naming the
    modules), then warns once for modules whose step 1 did not converge, once
    for the notes of the result (zero updates, untested modules), and with an
    :class:`~clair_stats.AssumptionWarning` when half or more of the clients are
    flagged (as :func:`clair_stats.clair` does).

    Parameters
    ----------
    adapters : AdapterSet
        The adapters the outcomes are of.
    outcomes : list of ModuleOutcome
        One per module, in the order of ``adapters.module_names``.
    rank, side, alpha, lam, draws, solver_options
        As passed to :func:`analyse_adapters` (recorded in the settings; ``alpha``
        and ``draws`` are used here).
    stacklevel : int
        Of the warnings.

    Returns
    -------
    AdaptersResult
    """
    names = adapters.module_names
    if [o.name for o in outcomes] != list(names):
        raise ValueError("outcomes must be one per module, in module order.")
    _reemit(outcomes, stacklevel + 1)
    n_clients = adapters.n_clients
    verdict = _verdict(
        [
            _spread(o.fit.energies, o.kept, n_clients) if o.fit is not None else None
            for o in outcomes
        ],
        alpha,
        names,
        draws,
        n_clients,
    )
    modules = []
    for i, o in enumerate(outcomes):
        fit = o.fit
        p = o.shape[0] if side == "left" else o.shape[1]
        energies = np.full(n_clients, np.nan)
        if fit is not None:
            energies[o.zero_update] = 0.0
            energies[o.kept] = fit.energies
        modules.append(
            ModuleReport(
                name=o.name,
                shape=o.shape,
                rank=fit.rank if fit is not None else 0,
                client_ranks=o.client_ranks,
                subspace=fit.subspace if fit is not None else np.zeros((p, 0)),
                energies=energies,
                z=verdict.z[i],
                p_values=verdict.module_p_values[i],
                adjusted_p_values=verdict.adjusted_p_values[i],
                rejected=verdict.rejected[i],
                solver=fit.solver if fit is not None else None,
                zero_update=o.zero_update,
                fit_seconds=o.seconds,
            )
        )
    modules = tuple(modules)
    bad = [m.name for m in modules if m.tested and not m.solver.converged]
    if bad:
        warnings.warn(
            f"step 1 did not converge in module(s) {bad}; "
            + _wording("raise --max-iter or --tol.", "raise max_iter or tol."),
            ConvergenceWarning,
            stacklevel=stacklevel,
        )
    result = AdaptersResult(
        names=adapters.names,
        paths=tuple(str(a.path) for a in adapters.adapters),
        modules=modules,
        flagged=verdict.flagged,
        p_values=verdict.p_values,
        alpha=alpha,
        side=side,
        base_model=adapters.base_model,
        settings={
            "side": side,
            "alpha": alpha,
            "rank": rank,
            "lam": lam,
            "draws": int(draws),
            "solver_options": dict(solver_options or {}),
        },
    )
    notes = result.notes()
    if notes:
        warnings.warn("; ".join(notes) + ".", ClairWarning, stacklevel=stacklevel)
    flagged = int(result.flagged.sum())
    if flagged and 2 * flagged >= n_clients:
        short = [
            o.name
            for o in outcomes
            if any("lower than rank" in message for _, message in o.warnings)
        ]
        hint = (
            f"In {len(short)} module(s) L^ has a lower rank than the r_m asked "
            "for, so A^_m holds arbitrary directions that no client fits: "
            + _wording("pass a smaller --rank.", "pass a smaller rank.")
            if short
            else "More than half of the clients may be contaminated, which no "
            "method that assumes a benign majority can resolve."
        )
        warnings.warn(
            f"{flagged} of {n_clients} clients are flagged: CLAIR assumes that "
            "fewer than half are contaminated (a benign majority), so the flags "
            f"and the refinement are unreliable. {hint}",
            AssumptionWarning,
            stacklevel=stacklevel,
        )
    return result


def _unique_warnings(caught: list) -> tuple[tuple[str, str], ...]:
    """(category path, message) of each distinct warning, in order.

    A :class:`~clair_stats.ConvergenceWarning` of step 1 is left out:
    ``solver.converged`` records it and :func:`combine_modules` warns once.
    """
    seen: dict[tuple[str, str], None] = {}
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            continue
        category = f"{w.category.__module__}.{w.category.__qualname__}"
        seen[(category, str(w.message))] = None
    return tuple(seen)


def _reemit(outcomes: list[ModuleOutcome], stacklevel: int) -> None:
    """The modules' warnings, once per distinct message, naming the modules."""
    where: dict[tuple[str, str], list[str]] = {}
    for o in outcomes:
        for key in o.warnings:
            where.setdefault(tuple(key), []).append(o.name)
    for (category, message), modules in where.items():
        shown = modules if len(modules) <= 3 else [*modules[:3], "..."]
        warnings.warn(
            f"module(s) {', '.join(shown)} ({len(modules)} of {len(outcomes)}): "
            f"{message}",
            _category(category),
            stacklevel=stacklevel,
        )


def _category(path: str) -> type[Warning]:
    """The warning class at ``module.qualname`` (UserWarning if not importable)."""
    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return UserWarning
    return (
        found if isinstance(found, type) and issubclass(found, Warning) else UserWarning
    )


def _checked(
    adapters: AdapterSet, side: str, alpha: float, rank: int | None
) -> tuple[str, float, int | None]:
    """The arguments of the analysis, checked (before any work)."""
    if not isinstance(adapters, AdapterSet):
        raise TypeError(
            "adapters must be an AdapterSet "
            "(clair_stats.lora.peft.read_adapters(folders)), "
            f"got {type(adapters).__name__}."
        )
    side = check_choice(side, "side", ("left", "right"))
    alpha = check_alpha(alpha)
    if rank is not None:
        rank = check_int(rank, "rank", 1)
    if adapters.n_clients < MIN_CLIENTS:
        raise ValueError(
            f"got {adapters.n_clients} adapters; the per-module test scores each "
            "client against the others and needs K >= 3 (K >= 8 to find anything "
            "at alpha = 0.05 after Holm over clients and modules)."
        )
    return side, alpha, rank


def zero_updates(updates: LowRankUpdates) -> np.ndarray:
    """Which clients' updates are zero, up to rounding.

    Zero means ``||s_k B_k A_k||_F <= 1e-12 |s_k| ||B_k||_F ||A_k||_F``: B_k = 0
    or A_k = 0 (an untrained LoRA module: PEFT starts from B = 0) or B_k A_k = 0
    up to rounding.

    Parameters
    ----------
    updates : LowRankUpdates
        The K clients' factors of one module.

    Returns
    -------
    numpy.ndarray of bool, shape (K,)
        True for the clients whose update is zero.
    """
    scale = np.array(
        [
            abs(s) * np.linalg.norm(b) * np.linalg.norm(a)
            for s, b, a in zip(updates.scaling, updates.B, updates.A, strict=True)
        ]
    )
    return updates.norms() <= 1e-12 * scale


def _subset(updates: LowRankUpdates, clients: np.ndarray) -> LowRankUpdates:
    """The updates of some clients (at least two), in the order of ``clients``."""
    return LowRankUpdates(
        [updates.B[k] for k in clients],
        [updates.A[k] for k in clients],
        updates.scaling[np.asarray(clients)],
    )


def _spread(values: np.ndarray, kept: np.ndarray, n_clients: int) -> np.ndarray:
    """``values`` of the clients ``kept`` at their places among K, NaN elsewhere."""
    out = np.full(n_clients, np.nan)
    out[kept] = values
    return out


def _verdict(
    energies: list[np.ndarray | None],
    alpha: float,
    modules: tuple[str, ...],
    draws: int,
    n_clients: int,
) -> ClientVerdict:
    """:func:`clair_stats.lora.verdict.client_verdict` with a module not tested
    (``None``) as a row of missing pairs (NaN); a client left out of a module is
    NaN in its row already."""
    rows = [np.full(n_clients, np.nan) if e is None else e for e in energies]
    return client_verdict(rows, alpha, modules=modules, draws=draws)

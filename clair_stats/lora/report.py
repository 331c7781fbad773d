"""What ``clair adapters`` reports: per-module and per-client results, and the JSON.

:class:`ModuleReport` holds CLAIR on one module (A^_m, the energies, the
per-module evidence of the verdict, step 1's solver statistics and, once the
adapters are written, the truncation errors); :class:`AdaptersResult` holds one
verdict per client (:mod:`clair_stats.lora.verdict`), the module reports, the
tables a person reads (:meth:`AdaptersResult.summary`) and the JSON report.

JSON report (``clair_report.json``, format ``clair_stats.adapters/1``):
``format``, ``clair_stats_version``, ``settings`` (side, alpha, rank, out_rank,
lam, draws, dtype, solver_options, combination), ``base_model``, ``n_clients``,
``n_modules``, ``clients`` (per client: name, path, flagged, p_value,
rejected_modules, worst_modules, zero_update_modules, uninformative, output) and
``modules`` (per module: name, shape, rank, client_ranks, tested,
zero_update_clients, rejected_clients, energies, z, p_values, adjusted_p_values,
solver, truncation_error, refined_norm, seconds: ``fit`` and ``refine``, the
wall time of steps 1-2 and of step 4 on the module in its worker, reading
included; a resumed run reports the times stored with each module).
Non-finite numbers are written as null:
a missing p-value (a zero update, an untested module, an uninformative client)
is null. ``zero_update_*``, ``uninformative``, ``tested``, ``solver_options``
and ``seconds`` were added to the format without renaming it; a module that is
not tested has rank 0 and solver null.

Messages that name an option are worded for the caller: :func:`_wording` gives
the command line's spelling (``--max-iter``) inside :func:`_command_line` (which
``clair adapters`` enters) and the Python spelling (``max_iter=``) elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np

from clair_stats.core.parallel import map_unordered
from clair_stats.core.results import SolverInfo
from clair_stats.lora.verdict import RULE

__all__ = ["REPORT_FORMAT", "REPORT_NAME", "AdaptersResult", "ModuleReport"]

REPORT_NAME = "clair_report.json"
REPORT_FORMAT = "clair_stats.adapters/1"  # a format name: unchanged by the move

_COMMAND_LINE: ContextVar[bool] = ContextVar(
    "clair_adapters_command_line", default=False
)


@contextmanager
def _command_line() -> Iterator[None]:
    """Within: messages name the options of ``clair adapters`` (:func:`_wording`)."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def _worded(command_line: bool, function, *arguments):
    """``function(*arguments)`` with the messages of the caller's wording (for a
    worker process, where :func:`_command_line` was not entered)."""
    token = _COMMAND_LINE.set(command_line)
    try:
        return function(*arguments)
    finally:
        _COMMAND_LINE.reset(token)


def _map_worded(function, tasks: list[tuple], **parallel):
    """:func:`clair_stats.core.parallel.map_unordered` of ``function`` over
    ``tasks``, each run with the caller's wording (:func:`_worded`)."""
    flag = _COMMAND_LINE.get()
    return map_unordered(
        _worded, [(flag, function, *task) for task in tasks], **parallel
    )


def _wording(command_line: str, python: str) -> str:
    """``command_line`` under ``clair adapters``, ``python`` for a Python caller."""
    return command_line if _COMMAND_LINE.get() else python


@dataclass(frozen=True)
class ModuleReport:
    """CLAIR on one module (steps 1-3 and the truncation of docs/pipeline.md §3).

    Parameters
    ----------
    name : str
        The module path.
    shape : tuple of int
        (out, in) of Delta W.
    rank : int
        r_m, the dimension of the shared subspace A^_m (0 if not tested).
    client_ranks : tuple of int
        The clients' LoRA ranks r_km.
    subspace : numpy.ndarray, shape (p, r_m)
        A^_m (p = out for ``side="left"``, in for ``side="right"``).
    energies : numpy.ndarray, shape (K,)
        E_km = ||P_{A^_m}^perp Theta^_km||_F^2 (0 for a zero update, NaN in a
        module that is not tested).
    z : numpy.ndarray, shape (K,)
        The robust leave-one-out z-scores of log E_km (NaN where not tested).
    p_values : numpy.ndarray, shape (K,)
        p_km, uncorrected; NaN for a zero update and in a module not tested.
    adjusted_p_values : numpy.ndarray, shape (K,)
        Holm-adjusted over all the (client, module) p-values there are.
    rejected : numpy.ndarray of bool, shape (K,)
        Clients this module flags.
    solver : SolverInfo or None
        Step 1's solver statistics; None if the module is not tested.
    zero_update : numpy.ndarray of bool, shape (K,)
        Clients whose update here is zero (B = 0 or A = 0: an untrained
        adapter), left out of this module's fit and test
        (:func:`clair_stats.lora.adapters.analyse_adapters`).
    truncation_error : numpy.ndarray or None, shape (K,)
        ||Theta~_km - B~_km A~_km||_F once refined (0 for flagged clients).
    refined_norm : numpy.ndarray or None, shape (K,)
        ||Theta~_km||_F once refined.
    fit_seconds : float or None
        Wall time of steps 1-2 on this module in its worker (reading included).
    refine_seconds : float or None
        Wall time of step 4 on this module in its worker (reading included, not
        the write of its file), once refined.
    """

    name: str
    shape: tuple[int, int]
    rank: int
    client_ranks: tuple[int, ...]
    subspace: np.ndarray = field(repr=False)
    energies: np.ndarray = field(repr=False)
    z: np.ndarray = field(repr=False)
    p_values: np.ndarray = field(repr=False)
    adjusted_p_values: np.ndarray = field(repr=False)
    rejected: np.ndarray = field(repr=False)
    solver: SolverInfo | None = field(repr=False)
    zero_update: np.ndarray = field(repr=False)
    truncation_error: np.ndarray | None = field(default=None, repr=False)
    refined_norm: np.ndarray | None = field(default=None, repr=False)
    fit_seconds: float | None = field(default=None, repr=False)
    refine_seconds: float | None = field(default=None, repr=False)

    @property
    def tested(self) -> bool:
        """Whether at least 3 clients have a nonzero update here (fit and test)."""
        return self.solver is not None


@dataclass(frozen=True)
class AdaptersResult:
    """One verdict per client from all modules, and the per-module reports.

    Parameters
    ----------
    names : tuple of str
        Client names (the adapter folder names, made unique).
    paths : tuple of str
        The adapter folders.
    modules : tuple of ModuleReport
        The per-module reports, in the order of the adapters' module paths.
    flagged : numpy.ndarray of bool, shape (K,)
        Clients outside S^: they keep their local update in every module.
    p_values : numpy.ndarray, shape (K,)
        Combined p-value: min over modules of the Holm-adjusted p_km; NaN for an
        uninformative client.
    alpha : float
        The level of Holm's procedure over the (client, module) p-values.
    side : str
        ``"left"`` (the shared subspace is in the output space of Delta W) or
        ``"right"`` (in the input space).
    base_model : str or None
        The adapters' common ``base_model_name_or_path`` (None if unset).
    settings : dict
        The options of the run (for the report).
    outputs : tuple of str or None
        The refined adapters' folders, once written (:func:`write_refined`).
    """

    names: tuple[str, ...]
    paths: tuple[str, ...]
    modules: tuple[ModuleReport, ...] = field(repr=False)
    flagged: np.ndarray = field(repr=False)
    p_values: np.ndarray = field(repr=False)
    alpha: float
    side: str
    base_model: str | None
    settings: dict = field(repr=False)
    outputs: tuple[str, ...] | None = field(default=None, repr=False)

    @property
    def n_clients(self) -> int:
        """K."""
        return len(self.names)

    @property
    def collaborative(self) -> np.ndarray:
        """S^, the clients refined in every module (where their update is not zero)."""
        return ~self.flagged

    @property
    def uninformative(self) -> np.ndarray:
        """(K,) clients without a p-value in any module: their update is zero in
        every module (or nonzero only in modules not tested). Not tested, so not
        flagged; they keep their update everywhere."""
        tested = np.array([np.isfinite(m.p_values) for m in self.modules])
        return ~tested.any(axis=0)

    def zero_update_modules(self, k: int) -> list[str]:
        """The modules in which client k's update is zero.

        Parameters
        ----------
        k : int
            The client index, 0-based (the order of ``names``).

        Returns
        -------
        list of str
            The module paths, in the order of ``modules``.
        """
        return [m.name for m in self.modules if m.zero_update[k]]

    def worst_modules(self, k: int, n: int = 3) -> list[tuple[str, float]]:
        """Client k's ``n`` modules with the smallest p_km, as (name, p_km).

        Modules without a p-value for client k are left out.

        Parameters
        ----------
        k : int
            The client index, 0-based (the order of ``names``).
        n : int, default 3
            The most modules to return.

        Returns
        -------
        list of tuple of (str, float)
            (module path, p_km), by increasing p_km.
        """
        pairs = [
            (m.name, float(m.p_values[k]))
            for m in self.modules
            if np.isfinite(m.p_values[k])
        ]
        return sorted(pairs, key=lambda pair: pair[1])[:n]

    def client_table(self) -> str:
        """Per client: flagged, combined p-value, worst modules, zero updates."""
        width = max(6, *(len(n) for n in self.names))
        lines = [f"{'client':<{width}}  flagged  p-value    worst modules (p_km)"]
        uninformative = self.uninformative
        for k, name in enumerate(self.names):
            worst = ", ".join(f"{m} ({p:.1e})" for m, p in self.worst_modules(k))
            zero = self.zero_update_modules(k)
            if uninformative[k]:
                note = "uninformative: " + (
                    "zero update in every module"
                    if len(zero) == len(self.modules)
                    else f"no module tested where its update is not zero ({zero})"
                )
                lines.append(f"{name:<{width}}  {'-':<7}  {'-':<9}  {note}")
                continue
            if zero:
                worst += f"  [zero update in {', '.join(zero)}: not tested there]"
            lines.append(
                f"{name:<{width}}  {'YES' if self.flagged[k] else 'no':<7}  "
                f"{self.p_values[k]:.3e}  {worst}"
            )
        return "\n".join(lines)

    def module_table(self) -> str:
        """Per module: shape, r, clients it flags, truncation error, solver,
        clients with a zero update."""
        width = max(6, *(len(m.name) for m in self.modules))
        lines = [
            f"{'module':<{width}}  {'out x in':>11}  {'r':>3}  {'min p_km':>9}  "
            "rel. trunc.  solver      flags  (zero update)"
        ]
        for m in self.modules:
            flags = [self.names[k] for k in np.flatnonzero(m.rejected)]
            zero = [self.names[k] for k in np.flatnonzero(m.zero_update)]
            trunc = "-"
            if m.truncation_error is not None:
                rel = m.truncation_error / np.maximum(m.refined_norm, 1e-300)
                trunc = f"{float(np.max(rel)):.2e}"
            if m.solver is None:
                state = "not fit"
            else:
                state = "converged" if m.solver.converged else "NOT conv."
            finite = m.p_values[np.isfinite(m.p_values)]
            low = f"{float(np.min(finite)):>9.2e}" if finite.size else f"{'-':>9}"
            rank = f"{m.rank:>3}" if m.tested else f"{'-':>3}"
            lines.append(
                f"{m.name:<{width}}  {m.shape[0]:>5} x {m.shape[1]:<5}  {rank}  "
                f"{low}  {trunc:>11}  {state:<10}  "
                f"{', '.join(flags) if flags else '-'}"
                + (f"  ({', '.join(zero)})" if zero else "")
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """Both tables with a header (and what was not tested, and why)."""
        n_flag = int(self.flagged.sum())
        lines = [
            f"CLAIR on {self.n_clients} adapters of {self.base_model!r}, "
            f"{len(self.modules)} modules, side = {self.side}, alpha = {self.alpha}",
            f"flagged: {n_flag} client(s) "
            f"{[self.names[k] for k in np.flatnonzero(self.flagged)]}",
        ]
        lines += [f"note: {note}" for note in self.notes()]
        lines.append(f"rule: {RULE}")
        return (
            "\n".join(lines) + f"\n\nclients\n{self.client_table()}\n\n"
            f"modules\n{self.module_table()}"
        )

    def notes(self) -> list[str]:
        """What was left out of the test, and why: zero updates (untrained
        adapters), uninformative clients, modules not tested. Empty if nothing."""
        notes = []
        uninformative = self.uninformative
        if uninformative.any():
            names = [self.names[k] for k in np.flatnonzero(uninformative)]
            notes.append(
                f"uninformative: {names} have no p-value in any module (zero update "
                "in every module where CLAIR could test them, e.g. untrained "
                "adapters); not flagged (nothing says they are contaminated) and "
                "written with their own update"
            )
        partial = {
            self.names[k]: self.zero_update_modules(k)
            for k in range(self.n_clients)
            if not uninformative[k] and self.zero_update_modules(k)
        }
        if partial:
            where = "; ".join(f"{n} in {', '.join(m)}" for n, m in partial.items())
            notes.append(
                f"zero update (untrained module: B = 0 or A = 0) of {where}: left "
                "out of that module's fit and test; the client keeps its zero "
                "update there"
            )
        untested = [m.name for m in self.modules if not m.tested]
        if untested:
            notes.append(
                f"not tested: module(s) {untested} (fewer than 3 clients with a "
                "nonzero update there); every client keeps its update there"
            )
        return notes

    def to_json(self) -> dict:
        """The report as a JSON-ready dict (fields in the module docstring)."""
        from clair_stats import __version__

        clients = []
        uninformative = self.uninformative
        for k, name in enumerate(self.names):
            clients.append(
                {
                    "name": name,
                    "path": self.paths[k],
                    "flagged": bool(self.flagged[k]),
                    "p_value": _float(self.p_values[k]),
                    "rejected_modules": [m.name for m in self.modules if m.rejected[k]],
                    "worst_modules": [
                        {"module": m, "p_value": p} for m, p in self.worst_modules(k)
                    ],
                    "zero_update_modules": self.zero_update_modules(k),
                    "uninformative": bool(uninformative[k]),
                    "output": None if self.outputs is None else self.outputs[k],
                }
            )
        modules = []
        for m in self.modules:
            info = m.solver
            modules.append(
                {
                    "name": m.name,
                    "shape": list(m.shape),
                    "rank": m.rank,
                    "client_ranks": list(m.client_ranks),
                    "tested": m.tested,
                    "zero_update_clients": [
                        self.names[k] for k in np.flatnonzero(m.zero_update)
                    ],
                    "rejected_clients": [
                        self.names[k] for k in np.flatnonzero(m.rejected)
                    ],
                    "energies": _floats(m.energies),
                    "z": _floats(m.z),
                    "p_values": _floats(m.p_values),
                    "adjusted_p_values": _floats(m.adjusted_p_values),
                    "solver": None
                    if info is None
                    else {
                        "solver": info.solver,
                        "problem": info.problem,
                        "converged": bool(info.converged),
                        "iterations": int(info.iterations),
                        "relative_gap": _float(info.relative_gap),
                        "seconds": _float(info.seconds),
                    },
                    "truncation_error": None
                    if m.truncation_error is None
                    else _floats(m.truncation_error),
                    "refined_norm": None
                    if m.refined_norm is None
                    else _floats(m.refined_norm),
                    "seconds": {
                        "fit": _float(m.fit_seconds),
                        "refine": _float(m.refine_seconds),
                    },
                }
            )
        return {
            "format": REPORT_FORMAT,
            "clair_stats_version": __version__,
            "settings": dict(self.settings, combination=RULE),
            "base_model": self.base_model,
            "n_clients": self.n_clients,
            "n_modules": len(self.modules),
            "clients": clients,
            "modules": modules,
        }

    def __repr__(self) -> str:
        return (
            f"AdaptersResult(K={self.n_clients}, modules={len(self.modules)}, "
            f"flagged={[self.names[k] for k in np.flatnonzero(self.flagged)]}, "
            f"alpha={self.alpha}, side={self.side!r})"
        )


# -- helpers ----------------------------------------------------------------------


def _float(x: float | None) -> float | None:
    """A JSON-safe float (None for None, NaN or infinity)."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def _floats(values: np.ndarray) -> list[float | None]:
    return [_float(v) for v in np.asarray(values).ravel()]

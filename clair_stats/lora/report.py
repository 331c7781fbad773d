"""What ``clair adapters`` reports: per-module and per-client results, and the JSON.

:class:`ModuleReport` holds CLAIR on one module (A^_m, the energies, the
per-module evidence of the verdict, step 1's solver statistics and, once the
adapters are written, the truncation errors); :class:`AdaptersResult` holds one
verdict per client (:mod:`clair_stats.lora.verdict`), the module reports, the
tables a person reads (:meth:`AdaptersResult.summary`) and the JSON report.

JSON report (``clair_report.json``, format ``clair_stats.adapters/1``):
``format``, ``clair_stats_version``, ``settings`` (side, alpha, rank, out_rank,
lam, draws, dtype, combination), ``base_model``, ``n_clients``, ``n_modules``,
``clients`` (per client: name, path, flagged, p_value, rejected_modules,
worst_modules, output) and ``modules`` (per module: name, shape, rank,
client_ranks, rejected_clients, energies, z, p_values, adjusted_p_values,
solver, truncation_error, refined_norm). Non-finite numbers are written as null.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clair_stats.core.results import SolverInfo
from clair_stats.lora.verdict import RULE

__all__ = ["REPORT_FORMAT", "REPORT_NAME", "AdaptersResult", "ModuleReport"]

REPORT_NAME = "clair_report.json"
REPORT_FORMAT = "clair_stats.adapters/1"  # a format name: unchanged by the move


@dataclass(frozen=True)
class ModuleReport:
    """CLAIR on one module (steps 1-3 and the truncation of docs/pipeline.md §3).

    Attributes
    ----------
    name : str
        The module path.
    shape : tuple of int
        (out, in) of Delta W.
    rank : int
        r_m, the dimension of the shared subspace A^_m.
    client_ranks : tuple of int
        The clients' LoRA ranks r_km.
    subspace : numpy.ndarray, shape (p, r_m)
        A^_m (p = out for ``side="left"``, in for ``side="right"``).
    energies : numpy.ndarray, shape (K,)
        E_km = ||P_{A^_m}^perp Theta^_km||_F^2.
    z : numpy.ndarray, shape (K,)
        The robust leave-one-out z-scores of log E_km.
    p_values : numpy.ndarray, shape (K,)
        p_km, uncorrected.
    adjusted_p_values : numpy.ndarray, shape (K,)
        Holm-adjusted over all K x M p-values.
    rejected : numpy.ndarray of bool, shape (K,)
        Clients this module flags.
    solver : SolverInfo
        Step 1's solver statistics.
    truncation_error : numpy.ndarray or None, shape (K,)
        ||Theta~_km - B~_km A~_km||_F once refined (0 for flagged clients).
    refined_norm : numpy.ndarray or None, shape (K,)
        ||Theta~_km||_F once refined.
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
    solver: SolverInfo = field(repr=False)
    truncation_error: np.ndarray | None = field(default=None, repr=False)
    refined_norm: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AdaptersResult:
    """One verdict per client from all modules, and the per-module reports.

    Attributes
    ----------
    names : tuple of str
        Client names (the adapter folder names, made unique).
    paths : tuple of str
        The adapter folders.
    modules : tuple of ModuleReport
    flagged : numpy.ndarray of bool, shape (K,)
        Clients outside S^: they keep their local update in every module.
    p_values : numpy.ndarray, shape (K,)
        Combined p-value: min over modules of the Holm-adjusted p_km.
    alpha : float
    side : str
    base_model : str or None
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
        """S^, the clients refined in every module."""
        return ~self.flagged

    def worst_modules(self, k: int, n: int = 3) -> list[tuple[str, float]]:
        """Client k's ``n`` modules with the smallest p_km, as (name, p_km)."""
        pairs = [(m.name, float(m.p_values[k])) for m in self.modules]
        return sorted(pairs, key=lambda pair: pair[1])[:n]

    def client_table(self) -> str:
        """Per client: flagged, combined p-value, worst modules."""
        width = max(6, *(len(n) for n in self.names))
        lines = [f"{'client':<{width}}  flagged  p-value    worst modules (p_km)"]
        for k, name in enumerate(self.names):
            worst = ", ".join(f"{m} ({p:.1e})" for m, p in self.worst_modules(k))
            lines.append(
                f"{name:<{width}}  {'YES' if self.flagged[k] else 'no':<7}  "
                f"{self.p_values[k]:.3e}  {worst}"
            )
        return "\n".join(lines)

    def module_table(self) -> str:
        """Per module: shape, r, clients it flags, truncation error, solver."""
        width = max(6, *(len(m.name) for m in self.modules))
        lines = [
            f"{'module':<{width}}  {'out x in':>11}  {'r':>3}  {'min p_km':>9}  "
            "rel. trunc.  solver      flags"
        ]
        for m in self.modules:
            flags = [self.names[k] for k in np.flatnonzero(m.rejected)]
            trunc = "-"
            if m.truncation_error is not None:
                rel = m.truncation_error / np.maximum(m.refined_norm, 1e-300)
                trunc = f"{float(np.max(rel)):.2e}"
            state = "converged" if m.solver.converged else "NOT conv."
            lines.append(
                f"{m.name:<{width}}  {m.shape[0]:>5} x {m.shape[1]:<5}  {m.rank:>3}  "
                f"{float(np.min(m.p_values)):>9.2e}  {trunc:>11}  {state:<10}  "
                f"{', '.join(flags) if flags else '-'}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """Both tables with a header."""
        n_flag = int(self.flagged.sum())
        return (
            f"CLAIR on {self.n_clients} adapters of {self.base_model!r}, "
            f"{len(self.modules)} modules, side = {self.side}, alpha = {self.alpha}\n"
            f"flagged: {n_flag} client(s) "
            f"{[self.names[k] for k in np.flatnonzero(self.flagged)]}\n"
            f"rule: {RULE}\n\nclients\n{self.client_table()}\n\n"
            f"modules\n{self.module_table()}"
        )

    def to_json(self) -> dict:
        """The report as a JSON-ready dict (fields in the module docstring)."""
        from clair_stats import __version__

        clients = []
        for k, name in enumerate(self.names):
            clients.append(
                {
                    "name": name,
                    "path": self.paths[k],
                    "flagged": bool(self.flagged[k]),
                    "p_value": float(self.p_values[k]),
                    "rejected_modules": [m.name for m in self.modules if m.rejected[k]],
                    "worst_modules": [
                        {"module": m, "p_value": p} for m, p in self.worst_modules(k)
                    ],
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
                    "rejected_clients": [
                        self.names[k] for k in np.flatnonzero(m.rejected)
                    ],
                    "energies": _floats(m.energies),
                    "z": _floats(m.z),
                    "p_values": _floats(m.p_values),
                    "adjusted_p_values": _floats(m.adjusted_p_values),
                    "solver": {
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


def _float(x: float) -> float | None:
    """A JSON-safe float (None for NaN or infinity)."""
    x = float(x)
    return x if np.isfinite(x) else None


def _floats(values: np.ndarray) -> list[float | None]:
    return [_float(v) for v in np.asarray(values).ravel()]

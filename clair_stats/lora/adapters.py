"""``clair adapters``: CLAIR on K clients' PEFT LoRA adapters, one verdict per client.

Every adapted module m (a weight of shape out x in) is one CLAIR problem on the K
updates Theta^_km = s_k B_km A_km (p = out, q = in; ``side="right"`` works on the
transposes), solved in factored form so that no p x Kq matrix is formed:

1. decompose M_m = [Theta^_1m, ..., Theta^_Km] by P0 (no noise level is known for
   adapters) and take A^_m, the top-r_m left singular vectors of L^
   (:func:`clair_stats.decompose`, :func:`clair_stats.estimate_subspace`);
   r_m is ``rank``, by default the median LoRA rank of the clients in module m;
2. measure each client's off-subspace energy E_km = ||P_{A^_m}^perp Theta^_km||_F^2;
3. turn the energies into p-values p_km (below), and combine them over modules;
4. refine the clients that are not flagged, in every module, with the same
   collaborative set S^ (SPEC §3 step 4), truncate each refined update to a LoRA
   rank by SVD (:func:`clair_stats.solvers.factored.refine_factored`) and write
   one adapter per client. A flagged client keeps its local update in every
   module.

Per-module p-values. SPEC §3's chi-square test assumes iid noise in all p q
entries; a LoRA update has rank r_k, and benign clients differ by the scale of
their training more than by chi-square sampling. On benign-only federations of
the generator of ``tests/test_adapters_cli.py`` (K = 20, df = (p - r) q = 320),
that test with the median rule flagged 22% of the clients per module (5-40%),
and the larger df of LLM modules only narrows chi^2_df / df further. Instead the
log energies of the benign clients are modelled as iid normal, with location and
scale unknown per module. Client k is scored against the others,

.. math:: z_{km} = \\frac{\\log E_{km} - \\operatorname{med}_{j \\ne k} \\log E_{jm}}
          {1.4826\\, \\operatorname{MAD}_{j \\ne k} \\log E_{jm}},

robust to fewer than half contaminated clients (as the median rule of SPEC §3).
Under the model z_km is pivotal (its law depends on K only), and p_km =
P(Z >= z_km) is computed from that law: with X_1..X_{K-1} iid N(0, 1) and (m, s)
their median and normalised MAD, P(Z >= z) = E[Phi-bar(m + z s)], averaged over
``draws`` simulated (m, s) (fixed seed; conditional Monte Carlo). Measured
against 10^6 draws, the default 50000 draws give p_km within 20% down to p =
1e-4 at K = 8, 1e-5 at K = 20 and 1e-6 at K = 50-100; further out they
understate p (by up to 3x at p = 2e-5, K = 8). With K = 8 the normal or t_{K-1}
reference would be far too liberal: measured family-wise error 0.34 and 0.12 at
a nominal 0.05 (K = 8, 3 modules), against 0.042 for this law (0.043 at K =
20; 2000 replicates each).

Combination over modules: Holm's procedure over all K x M p-values p_km at level
alpha; client k is flagged iff at least one of its modules is rejected, and its
combined p-value is the smallest Holm-adjusted p-value over its modules. Holm
controls the family-wise error over (client, module) pairs under any dependence
(the modules of one client come from one training run, and each module's
location and scale are shared by its K statistics), so the probability that any
client that is benign in every module is flagged is at most alpha, to the
accuracy of the per-module null model. A client contaminated in one module only
is found as well as one contaminated everywhere (a sum of chi-squares over
modules would dilute it); a client contaminated weakly in every module is found
less well.

Measured on the generator of ``tests/test_adapters_cli.py`` (3 modules, LoRA
rank 4, contaminated factors 30x the benign noise, 100 seeds per line): a benign
client was flagged in 2-4% of the runs at K = 8 and 3% at K = 20 (alpha = 0.05).
A client contaminated in two or three modules was found in every run. A client
contaminated in a single module was found in 96% of the runs at K = 8 when it is
that module's only contaminated client, but in 61% (89% at 300x) when a second
client is contaminated in the same module: P0 at the default lam leaves part of
both contaminations in L^, and A^ takes them in. At K = 20 it was found in all
runs.

Cost, measured on a loaded 2-core machine (p = q = 4096, LoRA rank 16, K = 50,
one module): steps 1-3 took 12.6 s (the null law of the z-scores, about 2 s,
is computed once per K), the refinement and writing 56 s (an SVD of a core of
about 800 x 800 per collaborative client), peak RSS 0.53 GB. Memory holds one
module of all clients at a time.

JSON report (``clair_report.json``): ``format``, ``clair_stats_version``,
``settings`` (side, alpha, rank, out_rank, lam, draws, dtype, combination),
``base_model``, ``n_clients``, ``n_modules``, ``clients`` (per client: name,
path, flagged, p_value, rejected_modules, worst_modules, output) and ``modules``
(per module: name, shape, rank, client_ranks, rejected_clients, energies, z,
p_values, adjusted_p_values, solver, truncation_error, refined_norm).

References
----------
He, Chen, Feng (2026). Federated LoRA fine-tuning for LLMs via collaborative
alignment. arXiv:2605.21217.
Holm (1979). A simple sequentially rejective multiple test procedure. Scand. J.
Statist. 6(2).
"""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from os import PathLike
from pathlib import Path

import numpy as np
import scipy.stats
from scipy.special import logsumexp

from clair_stats.core.exceptions import ConvergenceWarning
from clair_stats.core.linalg import off_subspace_energy
from clair_stats.core.results import SolverInfo
from clair_stats.lora.peft import AdapterSet, read_adapters, write_adapter
from clair_stats.pipeline.decompose import decompose
from clair_stats.pipeline.multitest import reject
from clair_stats.pipeline.subspace import estimate_subspace

__all__ = [
    "AdaptersResult",
    "ModuleReport",
    "add_arguments",
    "analyse_adapters",
    "energy_p_values",
    "run_adapters",
    "run_command",
    "write_refined",
]

REPORT_NAME = "clair_report.json"
REPORT_FORMAT = "clair_stats.lora.adapters/1"
COMBINATION = (
    "Holm over the K x M (client, module) p-values at level alpha; a client is "
    "flagged iff any of its modules is rejected; its p-value is the smallest "
    "Holm-adjusted p-value over its modules"
)
MAD_SCALE = 1.0 / scipy.stats.norm.ppf(0.75)  # 1.4826: MAD -> sd for a normal
_TMP = ".clair_tmp"


@dataclass(frozen=True)
class ModuleReport:
    """CLAIR on one module (SPEC §3 steps 1-3 and the refinement's truncation).

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
            f"rule: {COMBINATION}\n\nclients\n{self.client_table()}\n\n"
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
            "settings": dict(self.settings, combination=COMBINATION),
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


def energy_p_values(
    energies: np.ndarray, draws: int = 50000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Robust leave-one-out z-scores of log E_k and their exact null p-values.

    Under "the log energies of the benign clients are iid N(mu, s^2)", z_k =
    (log E_k - med_{j != k} log E_j) / (1.4826 MAD_{j != k} log E_j) has a law
    that depends on K only; p_k = P(Z >= z_k) = E[Phi-bar(m + z_k s)] over the
    median m and normalised MAD s of K - 1 standard normals (conditional Monte
    Carlo over ``draws`` draws, fixed ``seed``).

    Parameters
    ----------
    energies : numpy.ndarray, shape (K,)
        E_k > 0, K >= 3.
    draws : int
        Monte Carlo draws of (m, s).
    seed : int
        Seed of those draws.

    Returns
    -------
    z : numpy.ndarray, shape (K,)
    p_values : numpy.ndarray, shape (K,)
        One-sided: large energies are evidence of contamination.
    """
    energies = np.asarray(energies, dtype=float)
    if energies.ndim != 1 or energies.size < 3:
        raise ValueError(
            "energies must be a 1-D array of K >= 3 values (two others to estimate "
            f"the location and scale from), got shape {energies.shape}."
        )
    if not np.all(np.isfinite(energies)) or np.any(energies <= 0):
        raise ValueError(
            "the off-subspace energies must be finite and > 0; got "
            f"{np.sort(energies)[:3].tolist()}... A client whose update lies in the "
            "shared subspace exactly has energy 0: noiseless updates cannot be "
            "tested this way (use clair(..., detect='support')), or choose a "
            "smaller rank r."
        )
    logs = np.log(energies)
    n = logs.size
    z = np.empty(n)
    for k in range(n):
        others = np.delete(logs, k)
        med = np.median(others)
        mad = MAD_SCALE * np.median(np.abs(others - med))
        if mad == 0:
            raise ValueError(
                "more than half of the clients have the same off-subspace energy "
                "(MAD 0), so its spread cannot be estimated; are several adapters "
                "identical copies?"
            )
        z[k] = (logs[k] - med) / mad
    grid, log_sf = _null_log_sf(n - 1, int(draws), int(seed))
    # log P(Z >= z) is smooth and decreasing in asinh(z); beyond the grid the
    # last value is kept, which can only overstate p
    p = np.exp(np.interp(np.arcsinh(z), np.arcsinh(grid), log_sf))
    return z, np.minimum(p, 1.0)


@lru_cache(maxsize=16)
def _null_log_sf(n_others: int, draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """log P(Z >= z) on a grid of z, for the leave-one-out robust z of K - 1 others."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((draws, n_others))
    med = np.median(x, axis=1)
    mad = MAD_SCALE * np.median(np.abs(x - med[:, None]), axis=1)
    mad = np.maximum(mad, np.finfo(float).tiny)
    # z on a grid uniform in asinh(z) (|z| up to 1e4), where log P(Z >= z) is smooth
    grid = np.sinh(np.linspace(-np.arcsinh(1e4), np.arcsinh(1e4), 241))
    # P(Z >= z) = E[P(X >= m + z s | m, s)] with X ~ N(0, 1) independent of (m, s)
    log_sf = np.array(
        [logsumexp(scipy.stats.norm.logsf(med + z * mad)) for z in grid]
    ) - np.log(draws)
    return grid, log_sf


def analyse_adapters(
    adapters: AdapterSet,
    *,
    rank: int | None = None,
    side: str = "left",
    alpha: float = 0.05,
    lam: float | None = None,
    draws: int = 50000,
    progress: bool = True,
    **solver_options,
) -> AdaptersResult:
    """Steps 1-3 of CLAIR per module, and one verdict per client.

    Parameters
    ----------
    adapters : AdapterSet
        K >= 3 clients' adapters (:func:`clair_stats.lora.peft.read_adapters`).
    rank : int, optional
        r_m for every module; default the median LoRA rank of the clients in
        each module. Must be below p (out for ``side="left"``, in for right).
    side : {"left", "right"}
        Share the output space (column space of Delta W) or the input space.
    alpha : float
        Level of Holm's procedure over the K x M p-values.
    lam : float, optional
        lam of P0; default c_lam / sqrt(K).
    draws : int
        Monte Carlo draws of the null law of the z-scores.
    progress : bool
        Show a tqdm bar over the modules.
    **solver_options
        ``tol``, ``max_iter`` for :func:`clair_stats.decompose`.

    Returns
    -------
    AdaptersResult
    """
    from tqdm.auto import tqdm

    if not isinstance(adapters, AdapterSet):
        raise TypeError(
            "adapters must be an AdapterSet "
            "(clair_stats.lora.peft.read_adapters(folders)), "
            f"got {type(adapters).__name__}."
        )
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, int | float)
        or not (0 < alpha < 1)
    ):
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}.")
    if rank is not None and (
        isinstance(rank, bool) or not isinstance(rank, int) or rank < 1
    ):
        raise ValueError(f"rank must be a positive integer or None, got {rank!r}.")
    if adapters.n_clients < 3:
        raise ValueError(
            f"got {adapters.n_clients} adapters; the per-module test scores each "
            "client against the others and needs K >= 3 (K >= 8 to find anything "
            "at alpha = 0.05 after Holm over clients and modules)."
        )
    partial, infos = [], []
    bar = tqdm(adapters.module_names, desc="CLAIR per module", disable=not progress)
    for name in bar:
        updates = adapters.updates(name)
        work = updates.transpose() if side == "right" else updates
        r = rank if rank is not None else int(np.median(updates.ranks))
        if r >= work.p:
            raise ValueError(
                f"module {name!r}: rank r = {r} leaves no off-subspace complement in "
                f"the p = {work.p} dimensional space of side={side!r}; pass a rank "
                f"below {work.p}."
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            decomposition = decompose(work, lam=lam, **solver_options)
        for w in caught:
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        subspace, _ = estimate_subspace(decomposition, rank=r)
        energies = off_subspace_energy(work, subspace)
        try:
            z, p = energy_p_values(energies, draws=draws)
        except ValueError as exc:
            raise ValueError(f"module {name!r}: {exc}") from None
        shape = (updates.p, updates.q)
        partial.append((name, shape, updates.ranks, r, subspace, energies, z, p))
        infos.append(decomposition.info)
    bar.close()
    p_all = np.stack([item[-1] for item in partial])  # (M, K)
    rejected, adjusted = reject(p_all.ravel(), alpha, "holm")
    rejected, adjusted = rejected.reshape(p_all.shape), adjusted.reshape(p_all.shape)
    modules = tuple(
        ModuleReport(
            name=name,
            shape=shape,
            rank=r,
            client_ranks=ranks,
            subspace=subspace,
            energies=energies,
            z=z,
            p_values=p,
            adjusted_p_values=adjusted[i],
            rejected=rejected[i],
            solver=infos[i],
        )
        for i, (name, shape, ranks, r, subspace, energies, z, p) in enumerate(partial)
    )
    if any(not m.solver.converged for m in modules):
        bad = [m.name for m in modules if not m.solver.converged]
        warnings.warn(
            f"step 1 did not converge in module(s) {bad}; raise max_iter or tol.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return AdaptersResult(
        names=adapters.names,
        paths=tuple(str(a.path) for a in adapters.adapters),
        modules=modules,
        flagged=rejected.any(axis=0),
        p_values=adjusted.min(axis=0),
        alpha=float(alpha),
        side=side,
        base_model=adapters.base_model,
        settings={
            "side": side,
            "alpha": float(alpha),
            "rank": rank,
            "lam": lam,
            "draws": int(draws),
        },
    )


def write_refined(
    adapters: AdapterSet,
    result: AdaptersResult,
    out: str | PathLike[str],
    *,
    out_rank: int | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
) -> AdaptersResult:
    """Step 4 per module with the combined S^, then one adapter per client.

    Collaborative clients get the rank-t truncated SVD of Theta~_km = P_A^
    Theta^_km + P_A^^perp Thetabar_m (Thetabar_m over S^); flagged clients their
    local factors (s_k B_km, A_km). Each module's refined factors go to a
    temporary safetensors file in ``out`` (so memory holds one module at a
    time), then each client's adapter is assembled from them and written to
    ``out/<client name>`` (:func:`clair_stats.lora.peft.write_adapter`, scaling 1).

    Parameters
    ----------
    adapters : AdapterSet
    result : AdaptersResult
        From :func:`analyse_adapters` on the same adapters.
    out : str or path-like
        The output folder.
    out_rank : int, optional
        t, the LoRA rank of every refined module; default each client's own rank.
    dtype : {"float32", "float16", "float64"}
    overwrite : bool
        Replace adapters already in ``out``.
    progress : bool
        Show tqdm bars.

    Returns
    -------
    AdaptersResult
        ``result`` with the truncation errors per module and ``outputs``, the K
        adapter folders written.
    """
    from safetensors import safe_open
    from safetensors.numpy import save_file
    from tqdm.auto import tqdm

    from clair_stats.solvers.factored import refine_factored

    if result.names != adapters.names or [m.name for m in result.modules] != list(
        adapters.module_names
    ):
        raise ValueError(
            "result does not belong to these adapters (different clients or "
            "modules); run analyse_adapters on them first."
        )
    if out_rank is not None and (
        isinstance(out_rank, bool) or not isinstance(out_rank, int) or out_rank < 1
    ):
        raise ValueError(
            f"out_rank must be a positive integer or None, got {out_rank!r}."
        )
    folder = Path(out)
    targets = tuple(folder / name for name in result.names)
    if not overwrite:
        taken = [str(t) for t in targets if t.exists() and any(t.iterdir())]
        if taken:
            raise FileExistsError(
                f"output folder(s) {taken} already exist and are not empty; choose "
                "another --out or pass --overwrite."
            )
    tmp = folder / _TMP
    tmp.mkdir(parents=True, exist_ok=True)
    modules = []
    try:
        for i, module in enumerate(
            tqdm(result.modules, desc="refine per module", disable=not progress)
        ):
            updates = adapters.updates(module.name)
            work = updates.transpose() if result.side == "right" else updates
            refined = refine_factored(
                work, module.subspace, result.collaborative, rank=out_rank
            )
            if result.side == "right":
                refined = refined.transpose()
            modules.append(
                replace(
                    module,
                    truncation_error=np.asarray(refined.truncation_error),
                    refined_norm=np.asarray(refined.refined_norm),
                )
            )
            save_file(
                {
                    f"{k}.{x}": np.ascontiguousarray(f, dtype=np.float64)
                    for k in range(result.n_clients)
                    for x, f in (("B", refined.B[k]), ("A", refined.A[k]))
                },
                str(tmp / f"{i}.safetensors"),
            )
        for k in tqdm(
            range(result.n_clients), desc="write adapters", disable=not progress
        ):
            factors = {}
            for i, module in enumerate(result.modules):
                with safe_open(str(tmp / f"{i}.safetensors"), framework="numpy") as f:
                    factors[module.name] = (
                        f.get_tensor(f"{k}.B"),
                        f.get_tensor(f"{k}.A"),
                    )
            write_adapter(
                targets[k],
                factors,
                adapters.adapters[k],
                dtype=dtype,
                overwrite=overwrite,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return replace(
        result,
        modules=tuple(modules),
        settings=dict(result.settings, out_rank=out_rank, dtype=dtype),
        outputs=tuple(str(t) for t in targets),
    )


def run_adapters(
    folders: Iterable[str | PathLike[str]],
    out: str | PathLike[str],
    *,
    rank: int | None = None,
    side: str = "left",
    alpha: float = 0.05,
    out_rank: int | None = None,
    lam: float | None = None,
    dtype: str = "float32",
    report: str | PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **solver_options,
) -> AdaptersResult:
    """Read K adapters, run CLAIR per module, write refined adapters and a report.

    Parameters
    ----------
    folders : iterable of str or path-like
        One PEFT LoRA adapter folder per client.
    out : str or path-like
        Output folder: ``out/<client name>/`` per client and the JSON report.
    report : str or path-like, optional
        The JSON report's path; default ``out/clair_report.json``.
    rank, side, alpha, lam, progress, solver_options
        As in :func:`analyse_adapters`.
    out_rank, dtype, overwrite
        As in :func:`write_refined`.

    Returns
    -------
    AdaptersResult
    """
    adapters = read_adapters(folders)
    report_path = Path(report) if report is not None else Path(out) / REPORT_NAME
    if report_path.exists() and not overwrite:
        raise FileExistsError(
            f"report {report_path} already exists; choose another --out/--json or "
            "pass --overwrite."
        )
    result = analyse_adapters(
        adapters,
        rank=rank,
        side=side,
        alpha=alpha,
        lam=lam,
        progress=progress,
        **solver_options,
    )
    result = write_refined(
        adapters,
        result,
        out,
        out_rank=out_rank,
        dtype=dtype,
        overwrite=overwrite,
        progress=progress,
    )
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(
        json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8"
    )
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``clair adapters``."""
    parser.add_argument(
        "dirs", nargs="+", metavar="DIR", help="one PEFT LoRA adapter folder per client"
    )
    parser.add_argument(
        "--out", required=True, help="folder for the refined adapters and the report"
    )
    parser.add_argument(
        "--side",
        choices=("left", "right"),
        default="left",
        help="share the output space of Delta W (left, default) or the input space",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="family-wise level over clients x modules (Holm; default 0.05)",
    )
    parser.add_argument(
        "--rank",
        type=int,
        default=None,
        help="shared rank r per module (default: median LoRA rank of the clients)",
    )
    parser.add_argument(
        "--out-rank",
        type=int,
        default=None,
        help="LoRA rank of the refined adapters (default: each client's own rank)",
    )
    parser.add_argument("--lam", type=float, default=None, help="lam of P0")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16", "float64"),
        default="float32",
        help="dtype of the written adapters (default float32)",
    )
    parser.add_argument(
        "--json", default=None, help="report path (default OUT/clair_report.json)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_command(args: argparse.Namespace) -> int:
    """``clair adapters``: run, print both tables, say where the outputs are."""
    result = run_adapters(
        args.dirs,
        args.out,
        rank=args.rank,
        side=args.side,
        alpha=args.alpha,
        out_rank=args.out_rank,
        lam=args.lam,
        dtype=args.dtype,
        report=args.json,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(result.summary())
    report = args.json if args.json is not None else Path(args.out) / REPORT_NAME
    print(f"\nrefined adapters written to {args.out}/<client>; report: {report}")
    return 0


# -- helpers ----------------------------------------------------------------------


def _float(x: float) -> float | None:
    """A JSON-safe float (None for NaN or infinity)."""
    x = float(x)
    return x if np.isfinite(x) else None


def _floats(values: np.ndarray) -> list[float | None]:
    return [_float(v) for v in np.asarray(values).ravel()]

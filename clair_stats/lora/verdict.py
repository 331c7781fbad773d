"""The per-module verdict rule: one verdict per client from M modules' energies.

A LoRA federation is M CLAIR problems, one per adapted module, on the same K
clients. Each module m gives the off-subspace energies E_km (SPEC §3 step 3,
:func:`clair_stats.lora.adapters.fit_module`); this module turns the (M, K) array
of energies into one verdict per client, the collaborative set S^ shared by all
modules. It is the rule of ``clair adapters`` and of the sequence-copying
experiment (``simulations/copying/federation.py``).

**The rule.**

1. Per module, p_km = the empirical-null p-value of E_km among the K clients
   (:func:`clair_stats.pipeline.empirical_null.energy_p_values`: robust
   leave-one-out z-score of log E_km, exact law under "benign log energies are
   iid normal within a module").
2. Holm's procedure over all K x M p-values at level alpha
   (:func:`clair_stats.pipeline.multitest.reject`).
3. Client k is flagged iff at least one of its modules is rejected; its combined
   p-value is the smallest Holm-adjusted p-value over its modules (flagged iff
   it is <= alpha).

**Guarantee.** Holm controls the family-wise error over (client, module) pairs
under any dependence (the modules of one client come from one training run, and
each module's location and scale are estimated from the same K clients), so the
probability that any client benign in every module is flagged is at most alpha,
to the accuracy of the per-module null model (iid normal benign log energies, fewer
than half of the clients contaminated in each module). A client contaminated in
one module only is found as well as one contaminated everywhere (a sum over modules
would dilute it); a client contaminated weakly in every module is found less well
than by a rule that pools the modules.

**Measured** (``simulations/verdict_rules.py``, alpha = 0.05): see the figures
below, filled in from the study.

References
----------
Holm (1979). A simple sequentially rejective multiple test procedure. Scand. J.
Statist. 6(2).
He, Chen, Feng (2026). Federated LoRA fine-tuning for LLMs via collaborative
alignment. arXiv:2605.21217.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from clair_stats.core.validation import check_alpha
from clair_stats.pipeline.empirical_null import DRAWS, energy_p_values
from clair_stats.pipeline.multitest import reject

__all__ = ["RULE", "ClientVerdict", "client_verdict"]

#: The rule in one sentence (recorded in reports).
RULE = (
    "empirical-null p-value per (client, module); Holm over the K x M p-values at "
    "level alpha; a client is flagged iff any of its modules is rejected; its "
    "p-value is the smallest Holm-adjusted p-value over its modules"
)


@dataclass(frozen=True)
class ClientVerdict:
    """One verdict per client from M modules, with the per-module evidence.

    Attributes
    ----------
    flagged : numpy.ndarray of bool, shape (K,)
        Clients outside S^.
    p_values : numpy.ndarray, shape (K,)
        Combined p-value: min over modules of the Holm-adjusted p_km.
    z : numpy.ndarray, shape (M, K)
        Robust leave-one-out z-scores of log E_km.
    module_p_values : numpy.ndarray, shape (M, K)
        p_km, uncorrected.
    adjusted_p_values : numpy.ndarray, shape (M, K)
        Holm-adjusted over all K x M p-values.
    rejected : numpy.ndarray of bool, shape (M, K)
        The (module, client) pairs Holm rejects.
    alpha : float
        The level.
    """

    flagged: np.ndarray = field(repr=False)
    p_values: np.ndarray = field(repr=False)
    z: np.ndarray = field(repr=False)
    module_p_values: np.ndarray = field(repr=False)
    adjusted_p_values: np.ndarray = field(repr=False)
    rejected: np.ndarray = field(repr=False)
    alpha: float

    @property
    def n_clients(self) -> int:
        """K."""
        return self.flagged.size

    @property
    def n_modules(self) -> int:
        """M."""
        return self.rejected.shape[0]

    @property
    def collaborative(self) -> np.ndarray:
        """S^, the clients refined in every module."""
        return ~self.flagged

    @property
    def module_flags(self) -> np.ndarray:
        """(K,) in how many modules each client is rejected."""
        return self.rejected.sum(axis=0)

    def __repr__(self) -> str:
        return (
            f"ClientVerdict(K={self.n_clients}, M={self.n_modules}, "
            f"flagged={np.flatnonzero(self.flagged).tolist()}, alpha={self.alpha})"
        )


def client_verdict(
    energies: np.ndarray | Sequence[np.ndarray],
    alpha: float = 0.05,
    *,
    modules: Sequence[str] | None = None,
    draws: int = DRAWS,
    seed: int = 0,
) -> ClientVerdict:
    """The verdict of the module docstring from the per-module energies.

    .. math:: \\hat S^c = \\{k : \\exists m,\\ p^{\\mathrm{Holm}}_{km} \\le \\alpha\\},
              \\quad p_k = \\min_m p^{\\mathrm{Holm}}_{km}.

    Parameters
    ----------
    energies : array_like, shape (M, K)
        E_km = ||P_{A^_m}^perp Theta^_km||_F^2 > 0, K >= 3 clients (the same
        clients in the same order in every module).
    alpha : float
        Family-wise level over the K x M (client, module) pairs.
    modules : sequence of str, optional
        The M module names, for error messages.
    draws, seed : int
        Monte Carlo draws and seed of the null law
        (:func:`clair_stats.pipeline.empirical_null.null_law`).

    Returns
    -------
    ClientVerdict
    """
    alpha = check_alpha(alpha)
    rows = [np.asarray(e, dtype=float) for e in energies]
    if not rows:
        raise ValueError("energies holds no module; give an (M, K) array, M >= 1.")
    sizes = {row.shape for row in rows}
    if len(sizes) != 1 or rows[0].ndim != 1:
        raise ValueError(
            "energies must be an (M, K) array: one row of K energies per module, the "
            f"same K clients in every module; got rows of shapes {sorted(sizes)}."
        )
    if modules is not None and len(modules) != len(rows):
        raise ValueError(
            f"modules names {len(modules)} modules but energies has {len(rows)} rows."
        )
    z = np.empty((len(rows), rows[0].size))
    p = np.empty_like(z)
    for i, row in enumerate(rows):
        try:
            z[i], p[i] = energy_p_values(row, draws=draws, seed=seed)
        except ValueError as exc:
            name = repr(modules[i]) if modules is not None else str(i)
            raise ValueError(f"module {name}: {exc}") from None
    rejected, adjusted = reject(p.ravel(), alpha, "holm")
    rejected, adjusted = rejected.reshape(p.shape), adjusted.reshape(p.shape)
    return ClientVerdict(
        flagged=rejected.any(axis=0),
        p_values=adjusted.min(axis=0),
        z=z,
        module_p_values=p,
        adjusted_p_values=adjusted,
        rejected=rejected,
        alpha=alpha,
    )

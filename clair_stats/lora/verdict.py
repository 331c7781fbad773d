"""The per-module verdict rule: one verdict per client from M modules' energies.

A LoRA federation is M CLAIR problems, one per adapted module, on the same K
clients. Each module m gives the off-subspace energies E_km (docs/pipeline.md §3.3,
:func:`clair_stats.lora.adapters.fit_module`); this module turns the (M, K) array
of energies into one verdict per client, the collaborative set S^ shared by all
modules. It is the rule of ``clair adapters`` and of the sequence-copying
experiment (``simulations/copying/federation.py``).

**The rule.**

1. Per module, p_km = the empirical-null p-value of E_km among the K clients
   (:func:`clair_stats.pipeline.empirical_null.energy_p_values`: robust
   leave-one-out z-score of log E_km, exact law under "benign log energies are
   iid normal within a module").
2. Holm's procedure over all K x M p-values (those there are) at level alpha
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

**Measured** (``simulations/verdict_rules.py``, alpha = 0.05, Wilson 95%
intervals; the study also ran the former rule of the copying experiment, "vote":
the chi-square test of step 3 (docs/pipeline.md §3.3.2) per module with the median-rule
sigma, Holm over the K
clients, flagged when at least half of the modules flag it).

* Family-wise error, benign-only synthetic federations
  (:func:`clair_stats.lora.synthetic.synthetic_federation`, 400 per (K, M), K in
  {8, 20, 50}, M in {3, 8}): 0.013-0.043 (largest upper bound 0.067, K = 8,
  M = 3); vote 0.44-0.998. With 20% of the clients contaminated (200 per
  configuration): 0.000-0.035; vote 0.010-0.955.
* Family-wise error on the trained LoRA updates of the sequence-copying
  experiment (K = 10, M = 8, 3 contaminated clients; 40 replicates per
  experiment): 0.050 [0.014, 0.165] (homogeneous) and 0.000 [0, 0.088]
  (heterogeneous); vote 0.43 [0.29, 0.58] and 0.55 [0.40, 0.69].
* Power on synthetic federations, contamination 30 times the benign noise: 1.00
  at K >= 20 whatever the number of contaminated modules; at K = 8, 0.78-0.79
  with one contaminated module and 0.93-0.99 with half or all of them. Vote:
  0.09-0.34 with one contaminated module (it cannot reach half), 1.00 otherwise.
  At 2 times the benign noise: 0.07-0.35 (K = 8), 0.47-0.86 (K = 20), 0.72-0.97
  (K = 50); vote 0.10-0.36 with one module, 1.00 with half or all.
* Power on the copying updates: 0.32 [0.24, 0.40] (homogeneous) and 0.13 [0.08,
  0.20] (heterogeneous); vote 0.93 and 0.72.

This rule keeps its level everywhere it was measured; the vote does not (its
per-module chi-square p-values of benign pairs fall below 1e-4 16% of the time
on the copying updates), so the vote's power is bought with false flags. The
price of this rule is power when few clients are contaminated weakly in many
modules, as in the copying experiment: with K = 10 each z_km is scored against
9 others, whose MAD is noisy, so the null law has heavy tails and Holm's first
threshold alpha / (K M) = 6e-4 (M = 8) needs z_km >= 10.3, where a normal law
would need 3.2 (at K = 50: 1.25e-4, z_km >= 4.6 against 3.7).
In the full copying experiment (100 replicates per design) this rule found 25%
and 7% of the contaminated clients, and CLAIR lost to local fine-tuning (-7.7%
and -5.6% benign accuracy) where oracle CLAIR gained +1.3% and +4.7%
(docs/findings.md §F7).

Measured fix (a candidate, evaluated in the study on the same energies, not yet
the library's rule): pool the scale of the log energies over
the modules (location per module, one MAD from all K x M residuals; its exact
law by the same conditional Monte Carlo). It kept the family-wise error at
0.022-0.048 on the benign-only synthetic federations and 0.000 / 0.050 on the
copying updates, and raised the power on the copying updates to 0.96 [0.91, 0.98]
and 0.43 [0.35, 0.52], on weak synthetic contamination to 0.49-1.00. It assumes
one log-energy scale for all modules: on the copying updates 2 of 4480 benign
(client, module) p-values fell below 1e-4 (0.45 expected), a tail to watch.

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
from clair_stats.pipeline.multitest import reject_present

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

    Parameters
    ----------
    flagged : numpy.ndarray of bool, shape (K,)
        Clients outside S^.
    p_values : numpy.ndarray, shape (K,)
        Combined p-value: min over modules of the Holm-adjusted p_km (NaN for a
        client with no (client, module) pair).
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
        clients in the same order in every module). NaN marks a missing pair:
        client k left out of module m (scored among the other clients of m, its
        p_km NaN), or a whole row of NaN for a module not tested. Holm then runs
        over the pairs there are; a client with no pair has p-value NaN and is
        not flagged.
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
    z = np.full((len(rows), rows[0].size), np.nan)
    p = np.full_like(z, np.nan)
    for i, row in enumerate(rows):
        kept = ~np.isnan(row)  # NaN: a missing (client, module) pair
        if not kept.any():
            continue  # a module not tested
        try:
            z[i, kept], p[i, kept] = energy_p_values(row[kept], draws=draws, seed=seed)
        except ValueError as exc:
            name = repr(modules[i]) if modules is not None else str(i)
            raise ValueError(f"module {name}: {exc}") from None
    # Holm over the pairs there are (with none missing, all K x M)
    rejected, adjusted, combined = reject_present(p, alpha, "holm")
    return ClientVerdict(
        flagged=rejected.any(axis=0),
        p_values=combined,
        z=z,
        module_p_values=p,
        adjusted_p_values=adjusted,
        rejected=rejected,
        alpha=alpha,
    )

"""Dense and factored updates behind one interface, so that clair() never branches.

:func:`~clair_stats.clair` needs five operations on the client updates: orient
them (``side="right"`` works on the transposes), decompose them (step 1), measure
each client's off-subspace energy E_k = ||P_A^perp (Theta^_k - c^)||_F^2 (step 3),
refine the collaborative clients (step 4) and orient the refined updates back.
:class:`DenseUpdates` does them on a (K, p, q) array; :class:`FactoredUpdates` on
LoRA factors Theta^_k = s_k B_k A_k, through the (sum_k r_k)-sized core of
:mod:`clair_stats.solvers.factored`, never forming a p x q product. Both report
the (K, p, q) shape of the full updates, so the degrees of freedom of the test are
those of the p x q blocks either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from clair_stats.core.linalg import off_subspace_energy
from clair_stats.core.lowrank import LowRankUpdates
from clair_stats.core.results import (
    Decomposition,
    FactoredDecomposition,
    RefinedFactors,
)
from clair_stats.core.validation import check_updates
from clair_stats.pipeline.decompose import decompose
from clair_stats.pipeline.refine import refine
from clair_stats.solvers.factored import core_energies, refine_factored

__all__ = ["DenseUpdates", "FactoredUpdates", "Updates", "as_updates"]


class Updates(Protocol):
    """What :func:`~clair_stats.clair` needs from the client updates."""

    #: True for LoRA factors (the refined updates come back as factors).
    factored: bool

    @property
    def shape(self) -> tuple[int, int, int]:
        """(K, p, q) of the full updates."""

    def oriented(self, side: str) -> Updates:
        """The updates of ``side``: themselves, or their transposes for "right"."""

    def decompose(self, **options) -> Decomposition | FactoredDecomposition:
        """Step 1 (:func:`clair_stats.decompose` with ``options``)."""

    def energies(
        self,
        decomposition: Decomposition | FactoredDecomposition,
        subspace: np.ndarray,
        scale: float = 1.0,
    ) -> np.ndarray:
        """E_k / scale^2 = ||P_A^perp (Theta^_k - c^) / scale||_F^2, shape (K,).

        ``scale`` (a power of two) keeps the squares clear of over- and
        underflow: the energies of updates of order 1e300 or 1e-300.
        """

    def direction_energies(
        self,
        decomposition: Decomposition | FactoredDecomposition,
        basis: np.ndarray,
        scale: float = 1.0,
    ) -> np.ndarray:
        """||u_i^T (Theta^_k - c^) / scale||^2 per client k and column u_i, (K, r)."""

    def refine(
        self,
        decomposition: Decomposition | FactoredDecomposition,
        subspace: np.ndarray,
        collaborative: np.ndarray,
        refined_rank: int | None,
    ) -> np.ndarray | RefinedFactors:
        """Step 4: Theta~_k for k in S^, Theta^_k otherwise."""

    def restore(
        self, refined: np.ndarray | RefinedFactors, side: str
    ) -> np.ndarray | RefinedFactors:
        """Refined updates of ``side`` back in the orientation of the input."""


@dataclass(frozen=True)
class DenseUpdates:
    """Updates held as a (K, p, q) float64 array."""

    data: np.ndarray
    factored = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data.shape

    def oriented(self, side: str) -> DenseUpdates:
        if side == "right":
            return DenseUpdates(self.data.transpose(0, 2, 1))
        return self

    def decompose(self, **options) -> Decomposition:
        return decompose(self.data, **options)

    def energies(
        self, decomposition: Decomposition, subspace: np.ndarray, scale: float = 1.0
    ) -> np.ndarray:
        center = decomposition.center
        return off_subspace_energy(
            self.data / scale, subspace, None if center is None else center / scale
        )

    def direction_energies(
        self, decomposition: Decomposition, basis: np.ndarray, scale: float = 1.0
    ) -> np.ndarray:
        blocks = self.data / scale
        if decomposition.center is not None:
            blocks = blocks - decomposition.center / scale
        return np.sum(np.einsum("pr,kpq->krq", basis, blocks) ** 2, axis=2)

    def refine(
        self,
        decomposition: Decomposition,
        subspace: np.ndarray,
        collaborative: np.ndarray,
        refined_rank: int | None,
    ) -> np.ndarray:
        return refine(self.data, subspace, collaborative)

    def restore(self, refined: np.ndarray, side: str) -> np.ndarray:
        return np.ascontiguousarray(
            refined.transpose(0, 2, 1) if side == "right" else refined
        )


@dataclass(frozen=True)
class FactoredUpdates:
    """Updates held as LoRA factors (:class:`~clair_stats.LowRankUpdates`)."""

    data: LowRankUpdates
    factored = True

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data.shape

    def oriented(self, side: str) -> FactoredUpdates:
        return FactoredUpdates(self.data.transpose()) if side == "right" else self

    def decompose(self, **options) -> FactoredDecomposition:
        return decompose(self.data, **options)

    def energies(
        self,
        decomposition: FactoredDecomposition,
        subspace: np.ndarray,
        scale: float = 1.0,
    ) -> np.ndarray:
        # A^ = Q A_c lies in span(Q): the energies of the core, with the centre
        # of the core solve
        center = decomposition.core.center
        return core_energies(
            decomposition.core_data / scale,
            decomposition.basis.T @ subspace,
            None if center is None else center / scale,
        )

    def direction_energies(
        self,
        decomposition: FactoredDecomposition,
        basis: np.ndarray,
        scale: float = 1.0,
    ) -> np.ndarray:
        # u_i = Q u_ci lies in span(Q) and W_k is an isometry: the core's energies
        blocks = decomposition.core_data / scale
        center = decomposition.core.center
        if center is not None:
            blocks = blocks - center / scale
        core_basis = decomposition.basis.T @ basis
        return np.sum(np.einsum("Rr,kRm->krm", core_basis, blocks) ** 2, axis=2)

    def refine(
        self,
        decomposition: FactoredDecomposition,
        subspace: np.ndarray,
        collaborative: np.ndarray,
        refined_rank: int | None,
    ) -> RefinedFactors:
        return refine_factored(
            self.data,
            subspace,
            collaborative,
            rank=refined_rank,
            basis=decomposition.basis,
        )

    def restore(self, refined: RefinedFactors, side: str) -> RefinedFactors:
        return refined.transpose() if side == "right" else refined


def as_updates(updates: object) -> DenseUpdates | FactoredUpdates:
    """Wrap LowRankUpdates or a (K, p, q) array (validated) in the interface."""
    if isinstance(updates, LowRankUpdates):
        return FactoredUpdates(updates)
    return DenseUpdates(check_updates(updates))

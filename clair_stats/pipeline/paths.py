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

from clair_stats.core.linalg import off_subspace_energy, off_subspace_residuals
from clair_stats.core.lowrank import LowRankUpdates
from clair_stats.core.results import (
    Decomposition,
    FactoredDecomposition,
    RefinedFactors,
)
from clair_stats.core.validation import check_updates
from clair_stats.pipeline.decompose import decompose
from clair_stats.pipeline.refine import refine
from clair_stats.solvers.factored import refine_factored

__all__ = ["Coordinates", "DenseUpdates", "FactoredUpdates", "Updates", "as_updates"]


@dataclass(frozen=True)
class Coordinates:
    """Client updates in a basis: Theta^_k = basis X_k W_k^T, W_k an isometry.

    Dense updates are their own coordinates (``basis`` None, W_k = I); factored
    ones are the core of :mod:`clair_stats.solvers.factored`. Energies and
    subspace fits are the same in either, since Q and W_k are isometries and
    A^ lies in span(Q).
    """

    #: X_k, shape (K, d, m).
    blocks: np.ndarray
    #: Q, shape (p, d), orthonormal columns; None for the identity.
    basis: np.ndarray | None
    #: c^ in these coordinates, shape (d, m), or None.
    center: np.ndarray | None

    def inward(self, subspace: np.ndarray) -> np.ndarray:
        """A (p x r) in these coordinates: Q^T A."""
        return subspace if self.basis is None else self.basis.T @ subspace

    def outward(self, subspace: np.ndarray) -> np.ndarray:
        """A in these coordinates back to p x r: Q A."""
        return subspace if self.basis is None else self.basis @ subspace

    def energies(
        self,
        subspace: np.ndarray,
        center: np.ndarray | None = None,
        scale: float = 1.0,
    ) -> np.ndarray:
        """E_k / scale^2 = ||P_A^perp (Theta^_k - c) / scale||_F^2, shape (K,).

        ``subspace`` p x r; ``center`` in these coordinates (default the
        decomposition's c^). ``scale`` (a power of two) keeps the squares clear
        of over- and underflow: the energies of updates of order 1e300 or 1e-300.
        """
        c = self.center if center is None else center
        return off_subspace_energy(
            self.blocks / scale,
            self.inward(subspace),
            None if c is None else c / scale,
        )

    def direction_energies(
        self,
        basis: np.ndarray,
        center: np.ndarray | None = None,
        scale: float = 1.0,
    ) -> np.ndarray:
        """||u_i^T (Theta^_k - c) / scale||^2 per client k and column u_i, (K, r)."""
        c = self.center if center is None else center
        x = self.blocks / scale if c is None else (self.blocks - c) / scale
        return np.sum((self.inward(basis).T @ x) ** 2, axis=2)


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

    def coordinates(
        self, decomposition: Decomposition | FactoredDecomposition
    ) -> Coordinates:
        """The blocks X_k, with Theta^_k's columns = basis X_k, and the centre."""

    def residual_gram(
        self,
        decomposition: Decomposition | FactoredDecomposition,
        subspace: np.ndarray,
        center: np.ndarray | None,
        scale: float = 1.0,
    ) -> np.ndarray:
        """<P_A^perp (Theta^_j - c), P_A^perp (Theta^_k - c)> / scale^2, (K, K).

        ``center`` in the coordinates of :meth:`coordinates` (None: c = 0).
        """

    def refine(
        self,
        decomposition: Decomposition | FactoredDecomposition,
        subspace: np.ndarray,
        collaborative: np.ndarray,
        refined_rank: int | None,
        weights: np.ndarray | None = None,
        shrinkage: np.ndarray | None = None,
    ) -> np.ndarray | RefinedFactors:
        """Step 4: Theta~_k for k in S^, Theta^_k otherwise (mean weighted by w,
        in-subspace deviations shrunk by b_k)."""

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

    def coordinates(self, decomposition: Decomposition) -> Coordinates:
        return Coordinates(self.data, None, decomposition.center)

    def residual_gram(
        self,
        decomposition: Decomposition,
        subspace: np.ndarray,
        center: np.ndarray | None,
        scale: float = 1.0,
    ) -> np.ndarray:
        return _gram(
            self.data / scale, subspace, None if center is None else center / scale
        )

    def refine(
        self,
        decomposition: Decomposition,
        subspace: np.ndarray,
        collaborative: np.ndarray,
        refined_rank: int | None,
        weights: np.ndarray | None = None,
        shrinkage: np.ndarray | None = None,
    ) -> np.ndarray:
        return refine(self.data, subspace, collaborative, weights, shrinkage)

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

    def coordinates(self, decomposition: FactoredDecomposition) -> Coordinates:
        # Theta^_k = Q C_k W_k^T with Q, W_k isometries: the core C_k (with a
        # centre, W is shared and c = Q c_c W^T)
        return Coordinates(
            decomposition.core_data, decomposition.basis, decomposition.core.center
        )

    def residual_gram(
        self,
        decomposition: FactoredDecomposition,
        subspace: np.ndarray,
        center: np.ndarray | None,
        scale: float = 1.0,
    ) -> np.ndarray:
        if center is not None:  # a shared row basis: the core's inner products
            return _gram(
                decomposition.core_data / scale,
                decomposition.basis.T @ subspace,
                center / scale,
            )
        # <G_j A_j, G_k A_k> = sum((G_j^T G_k) * (A_j A_k^T)), G_k = s_k P_A^perp B_k
        data = self.data
        left = np.hstack([data.scaling[k] * data.B[k] for k in range(data.n_clients)])
        left = (left - subspace @ (subspace.T @ left)) / scale
        rows = np.vstack(list(data.A))
        product = (left.T @ left) * (rows @ rows.T)
        edges = np.cumsum([0, *(b.shape[1] for b in data.B)])[:-1]
        return np.add.reduceat(np.add.reduceat(product, edges, axis=0), edges, axis=1)

    def refine(
        self,
        decomposition: FactoredDecomposition,
        subspace: np.ndarray,
        collaborative: np.ndarray,
        refined_rank: int | None,
        weights: np.ndarray | None = None,
        shrinkage: np.ndarray | None = None,
    ) -> RefinedFactors:
        return refine_factored(
            self.data,
            subspace,
            collaborative,
            rank=refined_rank,
            basis=decomposition.basis,
            weights=weights,
            shrinkage=shrinkage,
        )

    def restore(self, refined: RefinedFactors, side: str) -> RefinedFactors:
        return refined.transpose() if side == "right" else refined


def _gram(
    blocks: np.ndarray, subspace: np.ndarray, center: np.ndarray | None
) -> np.ndarray:
    """<R_j, R_k> for the residuals R_k = P_A^perp (X_k - c) of blocks in a shared
    row basis, shape (K, K)."""
    outside = off_subspace_residuals(blocks, subspace, center)
    outside = outside.reshape(outside.shape[0], -1)
    return outside @ outside.T


def as_updates(updates: object) -> DenseUpdates | FactoredUpdates:
    """Wrap LowRankUpdates or a (K, p, q) array (validated) in the interface."""
    if isinstance(updates, LowRankUpdates):
        return FactoredUpdates(updates)
    return DenseUpdates(check_updates(updates))

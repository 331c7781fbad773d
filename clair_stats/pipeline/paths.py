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

import functools
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from clair_stats.core.linalg import (
    off_subspace_energy,
    off_subspace_residuals,
    stack,
)
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

    Parameters
    ----------
    blocks : numpy.ndarray, shape (K, d, m)
        X_k: the updates themselves (d = p, m = q) or the core blocks C_k.
    basis : numpy.ndarray of shape (p, d), or None
        Q, orthonormal columns; None for the identity (dense updates).
    center : numpy.ndarray of shape (d, m), or None
        c^ in these coordinates; None without a centre.
    """

    blocks: np.ndarray
    basis: np.ndarray | None
    center: np.ndarray | None

    def inward(self, subspace: np.ndarray) -> np.ndarray:
        """A (p x r) in these coordinates: Q^T A.

        Parameters
        ----------
        subspace : numpy.ndarray, shape (p, r)
            A basis A in R^p (for factored updates it must lie in span(Q) for
            the map to be exact).

        Returns
        -------
        numpy.ndarray, shape (d, r)
            Q^T A, or ``subspace`` itself when ``basis`` is None.
        """
        return subspace if self.basis is None else self.basis.T @ subspace

    def outward(self, subspace: np.ndarray) -> np.ndarray:
        """A in these coordinates back to p x r: Q A.

        Parameters
        ----------
        subspace : numpy.ndarray, shape (d, r)
            A basis in these coordinates.

        Returns
        -------
        numpy.ndarray, shape (p, r)
            Q A, or ``subspace`` itself when ``basis`` is None.
        """
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

        Parameters
        ----------
        subspace : numpy.ndarray, shape (p, r)
            A, orthonormal columns (r = 0 gives the whole energy).
        center : numpy.ndarray of shape (d, m), optional
            c in these coordinates; default None, the ``center`` of these
            coordinates (itself None without a centre).
        scale : float, default 1.0
            The unit the updates are divided by before squaring.

        Returns
        -------
        numpy.ndarray, shape (K,)
            E_k / scale^2 for every client.
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
        """||u_i^T (Theta^_k - c) / scale||^2 per client k and column u_i, (K, r).

        Parameters
        ----------
        basis : numpy.ndarray, shape (p, r)
            The directions u_i in its columns.
        center : numpy.ndarray of shape (d, m), optional
            c in these coordinates; default None, the ``center`` of these
            coordinates (itself None without a centre).
        scale : float, default 1.0
            The unit the updates are divided by before squaring.

        Returns
        -------
        numpy.ndarray, shape (K, r)
            The energy of each client along each direction, over scale^2.
        """
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
        """The updates of ``side``: themselves, or their transposes for "right".

        Parameters
        ----------
        side : {"left", "right"}
            ``"left"`` keeps the updates, ``"right"`` transposes every one.

        Returns
        -------
        Updates
            Updates of the same kind.
        """

    def decompose(self, **options) -> Decomposition | FactoredDecomposition:
        """Step 1 (:func:`clair_stats.decompose` with ``options``).

        Parameters
        ----------
        **options
            Keyword arguments of :func:`clair_stats.decompose` (``lam``,
            ``mode``, ``center``, ``weights``, the solver's settings).

        Returns
        -------
        Decomposition or FactoredDecomposition
            The decomposition of the updates.
        """

    def coordinates(
        self, decomposition: Decomposition | FactoredDecomposition
    ) -> Coordinates:
        """The blocks X_k, with Theta^_k's columns = basis X_k, and the centre.

        Parameters
        ----------
        decomposition : Decomposition or FactoredDecomposition
            Step 1 on these updates (:meth:`decompose`): its centre, and for
            factored updates its core and basis Q.

        Returns
        -------
        Coordinates
            The updates in the basis of the decomposition.
        """

    def residual_gram(
        self,
        decomposition: Decomposition | FactoredDecomposition,
        subspace: np.ndarray,
        center: np.ndarray | None,
        scale: float = 1.0,
    ) -> np.ndarray:
        """<P_A^perp (Theta^_j - c), P_A^perp (Theta^_k - c)> / scale^2, (K, K).

        ``center`` in the coordinates of :meth:`coordinates` (None: c = 0).

        Parameters
        ----------
        decomposition : Decomposition or FactoredDecomposition
            Step 1 on these updates (its basis Q for factored updates).
        subspace : numpy.ndarray, shape (p, r)
            A, orthonormal columns.
        center : numpy.ndarray or None
            c in the coordinates of :meth:`coordinates`; None for c = 0.
        scale : float, default 1.0
            The unit the updates are divided by before the inner products.

        Returns
        -------
        numpy.ndarray, shape (K, K)
            The Gram matrix of the off-subspace residuals.
        """

    def inside_gram(
        self,
        decomposition: Decomposition | FactoredDecomposition,
        subspace: np.ndarray,
        scale: float = 1.0,
    ) -> np.ndarray:
        """<P_A Theta^_j, P_A Theta^_k> / scale^2, (K, K).

        Parameters
        ----------
        decomposition : Decomposition or FactoredDecomposition
            Step 1 on these updates.
        subspace : numpy.ndarray, shape (p, r)
            A, orthonormal columns.
        scale : float, default 1.0
            The unit the updates are divided by before the inner products.

        Returns
        -------
        numpy.ndarray, shape (K, K)
            The Gram matrix of the in-subspace parts.
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
        """Step 4: Theta~_k for k in S^, Theta^_k otherwise.

        The mean is weighted by the pooling weights, the in-subspace deviations
        from it shrunk by b_k (:func:`clair_stats.refine`).

        Parameters
        ----------
        decomposition : Decomposition or FactoredDecomposition
            Step 1 on these updates (its basis Q for factored updates).
        subspace : numpy.ndarray, shape (p, r)
            A^, orthonormal columns.
        collaborative : numpy.ndarray of bool, shape (K,)
            S^, the clients to refine.
        refined_rank : int or None
            Factored updates only: the rank t of the refined factors (None:
            each client's own rank); ignored for dense updates.
        weights : numpy.ndarray of shape (K,), optional
            The pooling weights pi_k of Thetabar; default None, equal over S^.
        shrinkage : numpy.ndarray of shape (K,), optional
            b_k in [0, 1]; default None, b_k = 0.

        Returns
        -------
        numpy.ndarray of shape (K, p, q), or RefinedFactors
            The refined updates, dense or as factors like the input.
        """

    def restore(
        self, refined: np.ndarray | RefinedFactors, side: str
    ) -> np.ndarray | RefinedFactors:
        """Refined updates of ``side`` back in the orientation of the input.

        Parameters
        ----------
        refined : numpy.ndarray of shape (K, p, q), or RefinedFactors
            The output of :meth:`refine` on the oriented updates.
        side : {"left", "right"}
            The ``side`` the updates were oriented to; ``"right"`` transposes
            back.

        Returns
        -------
        numpy.ndarray of shape (K, p, q), or RefinedFactors
            The refined updates in the input's orientation.
        """


@dataclass(frozen=True)
class DenseUpdates:
    """Updates held as a (K, p, q) float64 array.

    Parameters
    ----------
    data : numpy.ndarray, shape (K, p, q)
        The client updates Theta^_k, float64 (as :func:`as_updates` checks them).
    """

    data: np.ndarray
    factored = False

    @property
    def shape(self) -> tuple[int, int, int]:
        """(K, p, q) of the updates."""
        return self.data.shape

    def oriented(self, side: str) -> DenseUpdates:
        """The updates themselves, or their transposes (a view) for "right".

        Parameters
        ----------
        side : {"left", "right"}
            ``"left"`` keeps the updates, ``"right"`` transposes every one.

        Returns
        -------
        DenseUpdates
            Updates of shape (K, p, q) or (K, q, p).
        """
        if side == "right":
            return DenseUpdates(self.data.transpose(0, 2, 1))
        return self

    def decompose(self, **options) -> Decomposition:
        """Step 1: :func:`clair_stats.decompose` on the array.

        Parameters
        ----------
        **options
            Keyword arguments of :func:`clair_stats.decompose`.

        Returns
        -------
        Decomposition
            The dense decomposition.
        """
        return decompose(self.data, **options)

    def coordinates(self, decomposition: Decomposition) -> Coordinates:
        """The updates as their own coordinates (no basis), with the centre c^.

        Parameters
        ----------
        decomposition : Decomposition
            Step 1 on these updates; only its centre is used.

        Returns
        -------
        Coordinates
            ``blocks`` the updates, ``basis`` None.
        """
        return Coordinates(self.data, None, decomposition.center)

    def residual_gram(
        self,
        decomposition: Decomposition,
        subspace: np.ndarray,
        center: np.ndarray | None,
        scale: float = 1.0,
    ) -> np.ndarray:
        """<P_A^perp (Theta^_j - c), P_A^perp (Theta^_k - c)> / scale^2, (K, K).

        Parameters
        ----------
        decomposition : Decomposition
            Step 1 on these updates (not used: the updates are their own
            coordinates).
        subspace : numpy.ndarray, shape (p, r)
            A, orthonormal columns.
        center : numpy.ndarray of shape (p, q), or None
            c; None for c = 0.
        scale : float, default 1.0
            The unit the updates are divided by before the inner products.

        Returns
        -------
        numpy.ndarray, shape (K, K)
            The Gram matrix of the off-subspace residuals.
        """
        return _gram(
            self.data / scale, subspace, None if center is None else center / scale
        )

    def inside_gram(
        self, decomposition: Decomposition, subspace: np.ndarray, scale: float = 1.0
    ) -> np.ndarray:
        """<P_A Theta^_j, P_A Theta^_k> / scale^2, (K, K): the full Gram matrix
        minus the off-subspace one (:meth:`residual_gram`).

        Parameters
        ----------
        decomposition : Decomposition
            Step 1 on these updates (not used).
        subspace : numpy.ndarray, shape (p, r)
            A, orthonormal columns.
        scale : float, default 1.0
            The unit the updates are divided by before the inner products.

        Returns
        -------
        numpy.ndarray, shape (K, K)
            The Gram matrix of the in-subspace parts.
        """
        empty = np.zeros((subspace.shape[0], 0))
        total = self.residual_gram(decomposition, empty, None, scale)
        return total - self.residual_gram(decomposition, subspace, None, scale)

    def refine(
        self,
        decomposition: Decomposition,
        subspace: np.ndarray,
        collaborative: np.ndarray,
        refined_rank: int | None,
        weights: np.ndarray | None = None,
        shrinkage: np.ndarray | None = None,
    ) -> np.ndarray:
        """Step 4 on the array (:func:`clair_stats.refine`).

        Parameters
        ----------
        decomposition : Decomposition
            Step 1 on these updates (not used).
        subspace : numpy.ndarray, shape (p, r)
            A^, orthonormal columns.
        collaborative : numpy.ndarray of bool, shape (K,)
            S^, the clients to refine.
        refined_rank : int or None
            Not used (dense updates are refined in full).
        weights : numpy.ndarray of shape (K,), optional
            The pooling weights pi_k of Thetabar; default None, equal over S^.
        shrinkage : numpy.ndarray of shape (K,), optional
            b_k in [0, 1]; default None, b_k = 0.

        Returns
        -------
        numpy.ndarray, shape (K, p, q)
            Theta~_k for k in S^, Theta^_k otherwise (a new array).
        """
        return refine(self.data, subspace, collaborative, weights, shrinkage)

    def restore(self, refined: np.ndarray, side: str) -> np.ndarray:
        """The refined array, transposed back for ``side="right"``.

        Parameters
        ----------
        refined : numpy.ndarray, shape (K, p, q)
            The output of :meth:`refine` on the oriented updates.
        side : {"left", "right"}
            The ``side`` the updates were oriented to.

        Returns
        -------
        numpy.ndarray
            The refined updates in the input's orientation, C-contiguous.
        """
        return np.ascontiguousarray(
            refined.transpose(0, 2, 1) if side == "right" else refined
        )


@dataclass(frozen=True)
class FactoredUpdates:
    """Updates held as LoRA factors (:class:`~clair_stats.LowRankUpdates`).

    Parameters
    ----------
    data : LowRankUpdates
        The factors s_k, B_k, A_k of the client updates Theta^_k = s_k B_k A_k.
    """

    data: LowRankUpdates
    factored = True

    @property
    def shape(self) -> tuple[int, int, int]:
        """(K, p, q) of the full updates (never formed)."""
        return self.data.shape

    def oriented(self, side: str) -> FactoredUpdates:
        """The factors themselves, or those of the transposes for "right".

        Parameters
        ----------
        side : {"left", "right"}
            ``"left"`` keeps the updates, ``"right"`` transposes every one
            (B_k and A_k swap roles).

        Returns
        -------
        FactoredUpdates
            Factored updates of shape (K, p, q) or (K, q, p).
        """
        return FactoredUpdates(self.data.transpose()) if side == "right" else self

    def decompose(self, **options) -> FactoredDecomposition:
        """Step 1 on the core of the factors (:func:`clair_stats.decompose`).

        Parameters
        ----------
        **options
            Keyword arguments of :func:`clair_stats.decompose`.

        Returns
        -------
        FactoredDecomposition
            The decomposition, held on the core.
        """
        return decompose(self.data, **options)

    def coordinates(self, decomposition: FactoredDecomposition) -> Coordinates:
        """The core blocks C_k in the basis Q, with the core's centre.

        Parameters
        ----------
        decomposition : FactoredDecomposition
            Step 1 on these updates: its core data, basis Q and core centre.

        Returns
        -------
        Coordinates
            ``blocks`` the core blocks (K, R, m), ``basis`` Q.
        """
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
        """<P_A^perp (Theta^_j - c), P_A^perp (Theta^_k - c)> / scale^2, (K, K).

        From the factors, never forming a p x q product: with a centre, the
        inner products of the core blocks (one shared row basis); at no
        subspace, from the core blocks and the clients' row bases (no product
        with the p-row factors); otherwise from the Gram matrices of
        P_A^perp s_k B_k and of the A_k.

        Parameters
        ----------
        decomposition : FactoredDecomposition
            Step 1 on these updates: its core data and basis Q (with a centre).
        subspace : numpy.ndarray, shape (p, r)
            A, orthonormal columns (in span(Q) with a centre).
        center : numpy.ndarray of shape (R, m), or None
            c in the core coordinates of :meth:`coordinates`; None for c = 0.
        scale : float, default 1.0
            The unit the updates are divided by before the inner products.

        Returns
        -------
        numpy.ndarray, shape (K, K)
            The Gram matrix of the off-subspace residuals.
        """
        if center is not None:  # a shared row basis: the core's inner products
            return _gram(
                decomposition.core_data / scale,
                decomposition.basis.T @ subspace,
                center / scale,
            )
        if subspace.shape[1] == 0 and not decomposition.problem.center:
            return _core_gram(decomposition) / scale**2
        # <G_j A_j, G_k A_k> = sum((G_j^T G_k) * (A_j A_k^T)), G_k = s_k P_A^perp B_k
        left = self._left
        left = (left - subspace @ (subspace.T @ left)) / scale
        return self._blocks((left.T @ left) * self._row_gram)

    def inside_gram(
        self,
        decomposition: FactoredDecomposition,
        subspace: np.ndarray,
        scale: float = 1.0,
    ) -> np.ndarray:
        """<P_A Theta^_j, P_A Theta^_k> / scale^2, (K, K), from the factors.

        sum((H_j^T H_k) * (A_j A_k^T)) with H_k = s_k A^T B_k (r x r_k): what
        ``residual_gram`` at no subspace minus ``residual_gram`` at A gives, without
        the two p-row Gram matrices and without their cancellation.

        Parameters
        ----------
        decomposition : FactoredDecomposition
            Step 1 on these updates (not used).
        subspace : numpy.ndarray, shape (p, r)
            A, orthonormal columns.
        scale : float, default 1.0
            The unit the updates are divided by before the inner products.

        Returns
        -------
        numpy.ndarray, shape (K, K)
            The Gram matrix of the in-subspace parts.
        """
        coords = (subspace.T @ self._left) / scale
        return self._blocks((coords.T @ coords) * self._row_gram)

    @functools.cached_property
    def _left(self) -> np.ndarray:
        """[s_1 B_1, ..., s_K B_K], p x sum_k r_k (kept for the Gram matrices)."""
        data = self.data
        return np.hstack([data.scaling[k] * data.B[k] for k in range(data.n_clients)])

    @functools.cached_property
    def _row_gram(self) -> np.ndarray:
        """[A_j A_k^T], sum_k r_k x sum_k r_k (independent of the subspace)."""
        rows = np.vstack(list(self.data.A))
        return rows @ rows.T

    def _blocks(self, product: np.ndarray) -> np.ndarray:
        """The K x K sums of the r_j x r_k blocks of ``product``."""
        edges = np.cumsum([0, *(b.shape[1] for b in self.data.B)])[:-1]
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
        """Step 4 on the factors (:func:`clair_stats.solvers.factored.refine_factored`).

        Parameters
        ----------
        decomposition : FactoredDecomposition
            Step 1 on these updates; its basis Q, core blocks and row bases are
            reused.
        subspace : numpy.ndarray, shape (p, r)
            A^, orthonormal columns.
        collaborative : numpy.ndarray of bool, shape (K,)
            S^, the clients to refine.
        refined_rank : int or None
            The rank t of every refined factorisation; None for each client's
            own LoRA rank r_k.
        weights : numpy.ndarray of shape (K,), optional
            The pooling weights pi_k of Thetabar; default None, equal over S^.
        shrinkage : numpy.ndarray of shape (K,), optional
            b_k in [0, 1]; default None, b_k = 0.

        Returns
        -------
        RefinedFactors
            B~_k A~_k for k in S^, the client's own factors otherwise.
        """
        return refine_factored(
            self.data,
            subspace,
            collaborative,
            rank=refined_rank,
            weights=weights,
            shrinkage=shrinkage,
            decomposition=decomposition,
        )

    def restore(self, refined: RefinedFactors, side: str) -> RefinedFactors:
        """The refined factors, those of the transposes for ``side="right"``.

        Parameters
        ----------
        refined : RefinedFactors
            The output of :meth:`refine` on the oriented updates.
        side : {"left", "right"}
            The ``side`` the updates were oriented to.

        Returns
        -------
        RefinedFactors
            The refined factors in the input's orientation.
        """
        return refined.transpose() if side == "right" else refined


def _core_gram(decomposition: FactoredDecomposition) -> np.ndarray:
    """<Theta^_j, Theta^_k>, (K, K), from the core of a decomposition without a
    centre: Theta^_k = Q C_k V_k^T with Q and the V_k isometries, so the inner
    product is sum((C_j^T C_k) * (V_j^T V_k)), two Gram matrices of K m columns
    (R and q rows) and no product with the p-row factors."""
    core = decomposition.core_data
    n_clients, _, width = core.shape
    flat = stack(core)
    rows = np.zeros((decomposition.shape[2], n_clients * width))
    for k, w in enumerate(decomposition.widths):
        rows[:, k * width : k * width + w] = decomposition.row_bases[k]
    product = (flat.T @ flat) * (rows.T @ rows)
    return product.reshape(n_clients, width, n_clients, width).sum(axis=(1, 3))


def _gram(
    blocks: np.ndarray, subspace: np.ndarray, center: np.ndarray | None
) -> np.ndarray:
    """<R_j, R_k> for the residuals R_k = P_A^perp (X_k - c) of blocks in a shared
    row basis, shape (K, K)."""
    outside = off_subspace_residuals(blocks, subspace, center)
    outside = outside.reshape(outside.shape[0], -1)
    return outside @ outside.T


def as_updates(updates: object) -> DenseUpdates | FactoredUpdates:
    """Wrap LowRankUpdates or a (K, p, q) array (validated) in the interface.

    Parameters
    ----------
    updates : LowRankUpdates or array_like of shape (K, p, q)
        The client updates; an array is checked by
        :func:`~clair_stats.core.validation.check_updates` and made float64.

    Returns
    -------
    DenseUpdates or FactoredUpdates
        :class:`FactoredUpdates` for LowRankUpdates, :class:`DenseUpdates`
        otherwise.
    """
    if isinstance(updates, LowRankUpdates):
        return FactoredUpdates(updates)
    return DenseUpdates(check_updates(updates))

r"""One draw of the federated model: truth, estimates and the hidden structure.

:class:`FederatedSample` is what
:meth:`~clair_stats.simulate.model.FederatedModel.sample` returns (and, extended
by the fits, what :func:`~clair_stats.simulate.regression.sample_regression`
returns): the preliminary estimates, the truth, span(A), the collaborative set S,
the backbone and the margins, with the split of the truth into
:math:`L_0 + S_0`. It has its own module so that both generators can import it
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from clair_stats.simulate._draws import readonly

__all__ = ["FederatedSample", "SampleGenerator"]

FloatArray = NDArray[np.float64]


class SampleGenerator(Protocol):
    """What a sample needs of its generator (:class:`FederatedModel` is one).

    Written as a protocol so that this module, and the regression generator that
    builds on samples, need not import the model (no import cycle, even for type
    checkers).
    """

    p: int
    q: int
    rank: int
    n_clients: int
    contamination_type: str | tuple[str, ...]

    def sample(
        self, noise: float = 0.0, seed: int | np.random.Generator | None = None
    ) -> FederatedSample:
        """Draw one instance.

        Parameters
        ----------
        noise : float, default 0.0
            The noise level tau of the preliminary estimates (0: noiseless).
        seed : int or numpy.random.Generator, optional
            The seed or generator of the draw; default None, fresh entropy.

        Returns
        -------
        FederatedSample
            The instance.
        """


@dataclass(frozen=True, eq=False)
class FederatedSample:
    r"""One draw of a :class:`~clair_stats.simulate.model.FederatedModel`.

    The truth, the preliminary estimates and the hidden structure of the instance.
    All arrays are read-only.

    Parameters
    ----------
    updates : ndarray, shape (K, p, q)
        Preliminary estimates :math:`\hat\Theta_k = \Theta_k + E_k`.
    truth : ndarray, shape (K, p, q)
        :math:`\Theta_k`.
    subspace : ndarray, shape (p, r)
        A, with :math:`A^T A = I_r`.
    benign : ndarray of bool, shape (K,)
        True on the collaborative set S.
    backbone : ndarray, shape (p, q)
        :math:`\Theta_0` (zeros when ``center=False``).
    margin : ndarray, shape (K,)
        :math:`\delta_k = \|P_A^\perp (\Theta_k - \Theta_0)\|_F` for every client
        (benign clients give :math:`\|H_k\|_F`).
    noise : float
        tau.
    model : FederatedModel
        The generator.
    """

    updates: FloatArray
    truth: FloatArray
    subspace: FloatArray
    benign: NDArray[np.bool_]
    backbone: FloatArray
    margin: FloatArray
    noise: float
    model: SampleGenerator

    @property
    def n_clients(self) -> int:
        """K."""
        return self.model.n_clients

    @property
    def p(self) -> int:
        """p, the number of rows of each update."""
        return self.model.p

    @property
    def q(self) -> int:
        """q, the number of columns of each update."""
        return self.model.q

    @property
    def rank(self) -> int:
        """r."""
        return self.model.rank

    @property
    def gamma(self) -> float:
        """Contamination fraction ``|S^c|`` / K of this instance."""
        return float(np.count_nonzero(~self.benign)) / self.n_clients

    @property
    def contaminated(self) -> NDArray[np.bool_]:
        """True on S^c."""
        return ~self.benign

    @cached_property
    def low_rank_truth(self) -> FloatArray:
        r"""L0 blocks: :math:`P_A (\Theta_k - \Theta_0) = A B_k^T` on S, 0 on S^c."""
        A = self.subspace
        L0 = A @ (A.T @ (self.truth - self.backbone))
        L0[~self.benign] = 0.0
        return readonly(L0)

    @cached_property
    def sparse_truth(self) -> FloatArray:
        r"""S0 blocks: 0 on S, :math:`\Theta_k - \Theta_0` on S^c."""
        S0 = self.truth - self.backbone
        S0[self.benign] = 0.0
        return readonly(S0)

    def __repr__(self) -> str:
        return (
            f"FederatedSample(K={self.n_clients}, p={self.p}, q={self.q}, "
            f"r={self.rank}, benign={int(self.benign.sum())}, "
            f"contaminated={int(self.contaminated.sum())}, "
            f"type={self.model.contamination_type!r}, noise={self.noise:g})"
        )

"""The three CLAIR programs as frozen specifications (docs/programs.md §3.1).

All act on the stacked matrix M = [Theta^_1, ..., Theta^_K] in R^{p x Kq}, with
L low rank, S block sparse (block S_k = columns kq .. (k+1)q - 1) and an optional
unpenalized centre c in R^{p x q} repeated over the blocks (c 1^T):

- P0 (``mode="exact"``):
  min ||L||_* + lam sum_k w_k ||S_k||_F   s.t.  L + S + c 1^T = M;
- P1 (``mode="penalized"``):
  min 1/2 ||M - L - S - c 1^T||_F^2 + mu ||L||_* + mu lam sum_k w_k ||S_k||_F;
- P1c (``mode="constrained"``):
  min ||L||_* + lam sum_k w_k ||S_k||_F   s.t.  ||M - L - S - c 1^T||_F <= eps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from clair_stats.core.penalties import BlockFrobenius, NuclearNorm

__all__ = ["MODES", "Problem", "block_mean", "remove_block_mean", "repeat_center"]

Mode = Literal["exact", "penalized", "constrained"]
MODES: tuple[str, ...] = ("exact", "penalized", "constrained")
PROBLEM_NAMES = {"exact": "P0", "penalized": "P1", "constrained": "P1c"}


def block_mean(x: np.ndarray, n_clients: int) -> np.ndarray:
    """Mean of the K blocks of X (p, Kq): (1/K) sum_k X_k, shape (p, q).

    Parameters
    ----------
    x : numpy.ndarray, shape (p, Kq)
        A stacked matrix.
    n_clients : int
        K, the number of blocks.

    Returns
    -------
    numpy.ndarray, shape (p, q)
        The mean block.
    """
    return x.reshape(x.shape[0], n_clients, -1).mean(axis=1)


def remove_block_mean(x: np.ndarray, n_clients: int) -> np.ndarray:
    """Pi(X) = X - mean_k(X_k) 1^T, the projection onto sum_k X_k = 0.

    Parameters
    ----------
    x : numpy.ndarray, shape (p, Kq)
        A stacked matrix.
    n_clients : int
        K, the number of blocks.

    Returns
    -------
    numpy.ndarray, shape (p, Kq)
        ``x`` with the mean block subtracted from every block, a new array.
    """
    blocks = x.reshape(x.shape[0], n_clients, -1)
    return (blocks - blocks.mean(axis=1, keepdims=True)).reshape(x.shape)


def repeat_center(c: np.ndarray | None, n_clients: int) -> np.ndarray | float:
    """c 1^T: the centre c (p, q) repeated over the K blocks, or 0.0 without one.

    Parameters
    ----------
    c : numpy.ndarray, shape (p, q), or None
        The centre; None for a program without one.
    n_clients : int
        K, the number of blocks.

    Returns
    -------
    numpy.ndarray, shape (p, Kq), or float
        c repeated K times side by side, or the scalar 0.0 when ``c`` is None
        (it broadcasts in the residual).
    """
    return 0.0 if c is None else np.tile(c, (1, n_clients))


@dataclass(frozen=True)
class Problem:
    """One of the programs P0, P1, P1c with its tuning parameters.

    Parameters
    ----------
    mode : {"exact", "penalized", "constrained"}
        P0, P1 or P1c.
    lam : float
        lam > 0, the weight of the block penalty relative to the nuclear norm.
    weights : numpy.ndarray, shape (K,)
        Block weights w_k > 0.
    center : bool
        Whether the unpenalized centre c is part of the program.
    mu : float or None
        mu > 0 for P1.
    eps : float or None
        eps >= 0 for P1c.
    """

    mode: Mode
    lam: float
    weights: np.ndarray = field(repr=False)
    center: bool = False
    mu: float | None = None
    eps: float | None = None

    @property
    def name(self) -> str:
        """ "P0", "P1" or "P1c"."""
        return PROBLEM_NAMES[self.mode]

    @property
    def n_clients(self) -> int:
        """K."""
        return int(self.weights.size)

    @property
    def block_penalty(self) -> BlockFrobenius:
        """sum_k w_k ||S_k||_F (without lam)."""
        return BlockFrobenius(self.weights)

    def regularizer(self, low_rank: np.ndarray, sparse: np.ndarray) -> float:
        """||L||_* + lam sum_k w_k ||S_k||_F for stacked L, S of shape (p, Kq).

        Parameters
        ----------
        low_rank : numpy.ndarray, shape (p, Kq)
            The low-rank part L.
        sparse : numpy.ndarray, shape (p, Kq)
            The block-sparse part S.

        Returns
        -------
        float
            The penalty, without the factor mu of P1.
        """
        return NuclearNorm().value(low_rank) + self.lam * self.block_penalty.value(
            sparse
        )

    def residual(
        self,
        data: np.ndarray,
        low_rank: np.ndarray,
        sparse: np.ndarray,
        center: np.ndarray | None,
    ) -> np.ndarray:
        """M - L - S - c 1^T (stacked, p x Kq).

        Parameters
        ----------
        data : numpy.ndarray, shape (p, Kq)
            The stacked updates M.
        low_rank : numpy.ndarray, shape (p, Kq)
            The low-rank part L.
        sparse : numpy.ndarray, shape (p, Kq)
            The block-sparse part S.
        center : numpy.ndarray, shape (p, q), or None
            The centre c; None for no centre.

        Returns
        -------
        numpy.ndarray, shape (p, Kq)
            The residual, a new array.
        """
        return data - low_rank - sparse - repeat_center(center, self.n_clients)

    def objective(
        self,
        data: np.ndarray,
        low_rank: np.ndarray,
        sparse: np.ndarray,
        center: np.ndarray | None = None,
    ) -> float:
        """The program's objective at (L, S, c); constraints are not checked.

        P0 and P1c: ||L||_* + lam sum_k w_k ||S_k||_F. P1: 1/2 ||M - L - S -
        c 1^T||_F^2 + mu (||L||_* + lam sum_k w_k ||S_k||_F).

        Parameters
        ----------
        data : numpy.ndarray, shape (p, Kq)
            The stacked updates M (used by P1 only).
        low_rank : numpy.ndarray, shape (p, Kq)
            The low-rank part L.
        sparse : numpy.ndarray, shape (p, Kq)
            The block-sparse part S.
        center : numpy.ndarray, shape (p, q), optional
            The centre c (used by P1 only); default None, no centre.

        Returns
        -------
        float
            The objective value.
        """
        reg = self.regularizer(low_rank, sparse)
        if self.mode != "penalized":
            return reg
        res = self.residual(data, low_rank, sparse, center)
        return 0.5 * float(np.vdot(res, res)) + self.mu * reg

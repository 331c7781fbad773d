r"""T1, exact recovery (docs/claims.md §4.2): incoherence, the condition, the lam.

Noiseless data :math:`M = L_0 + S_0`, :math:`L_0 = [A B_k^T \text{ on } S,\ 0
\text{ on } S^c]` (p x Kq) with thin SVD :math:`U \Sigma V^T`, :math:`V_k` the
q x r block of V of client k. The incoherence is

.. math::

    \mu = \max_{k \in S} \frac{(1 - \gamma) K}{r} \|V_k\|_F^2 \;\ge 1,

and Theorem T1 of [2]_ (the block analogue of Xu, Caramanis, Sanghavi 2012 [1]_,
Theorem 1) states: if

.. math::

    \frac{\gamma}{1 - \gamma} \le \frac{9}{121\, \mu\, r}
    \quad\text{and}\quad \lambda = \frac{3}{7 \sqrt{\gamma K}},

every solution of P0 has col(L^) = span(A) and block support of S^ equal to S^c.

The functions take an *instance*: any object with ``low_rank_truth`` (K, p, q),
``benign`` (K,) bool, ``rank``, ``gamma`` and ``n_clients`` attributes, such as
:class:`clair_stats.FederatedSample` or the instances of ``theory_checks/``.

References
----------
.. [1] H. Xu, C. Caramanis, S. Sanghavi, "Robust PCA via outlier pursuit",
   IEEE Transactions on Information Theory 58(5), 2012.
.. [2] He, Chen, Feng, "Federated LoRA fine-tuning for LLMs via collaborative
   alignment", arXiv:2605.21217, 2026.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import numpy as np

from clair_stats.core.linalg import stack
from clair_stats.core.validation import (
    check_fraction,
    check_int,
    check_mask,
    check_positive,
)

__all__ = [
    "T1_CONSTANT",
    "T1Condition",
    "incoherence",
    "right_singular_blocks",
    "t1_c_lam",
    "t1_condition",
    "t1_lam",
    "t1_max_gamma",
]

#: The constant C of T1's condition gamma / (1 - gamma) <= C / (mu r)
#: (Xu, Caramanis, Sanghavi 2012, Theorem 1): C = 9 / 121.
T1_CONSTANT = 9.0 / 121.0


class Instance(Protocol):
    """What the T1 formulas read from an instance (e.g. a ``FederatedSample``)."""

    @property
    def low_rank_truth(self) -> np.ndarray: ...  # L0 blocks, (K, p, q)

    @property
    def benign(self) -> np.ndarray: ...  # S, (K,) bool

    @property
    def rank(self) -> int: ...  # r

    @property
    def gamma(self) -> float: ...  # |S^c| / K

    @property
    def n_clients(self) -> int: ...  # K


class T1Condition(NamedTuple):
    """T1's condition gamma / (1 - gamma) <= 9 / (121 mu r) on one instance.

    Parameters
    ----------
    holds : bool
        ``lhs <= rhs``.
    lhs : float
        gamma / (1 - gamma).
    rhs : float
        9 / (121 mu r), mu from :func:`incoherence`.
    """

    holds: bool
    lhs: float
    rhs: float


def right_singular_blocks(
    sample: Instance,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Thin SVD of the stacked L0 (p x Kq), truncated to the model rank r.

    Parameters
    ----------
    sample : instance
        With ``low_rank_truth`` (K, p, q) and ``rank`` r.

    Returns
    -------
    U : numpy.ndarray, shape (p, r)
        Left singular vectors (a basis of span(A)).
    sigma : numpy.ndarray, shape (r,)
        The r nonzero singular values, decreasing.
    V : numpy.ndarray, shape (Kq, r)
        Right singular vectors; :math:`V_k` = ``V[k q:(k + 1) q]``.

    Raises
    ------
    ValueError
        If L0 has rank below r (sigma_r = 0 relative to sigma_1): then V, and
        mu, are not defined by the model.
    """
    L0 = np.asarray(sample.low_rank_truth, dtype=float)
    if L0.ndim != 3:
        raise ValueError(
            f"low_rank_truth must have shape (K, p, q), got {L0.shape}; pass the "
            "blocks L0_k = A B_k^T (0 on contaminated clients) stacked on axis 0."
        )
    r = int(sample.rank)
    if not 1 <= r <= min(L0.shape[1], L0.shape[0] * L0.shape[2]):
        raise ValueError(f"rank r = {r} must be in [1, min(p, Kq)] for L0 {L0.shape}.")
    U, sigma, Vt = np.linalg.svd(stack(L0), full_matrices=False)
    if not sigma[0] > 0 or sigma[r - 1] <= 1e-12 * sigma[0]:
        raise ValueError(
            f"L0 has rank below r = {r} (singular values {sigma[: r + 1]}); mu is "
            "defined for L0 of rank exactly r: check the instance's rank."
        )
    return U[:, :r], sigma[:r], Vt[:r].T


def incoherence(sample: Instance) -> float:
    r"""The incoherence mu of L0 (docs/claims.md §4).

    .. math::

        \mu = \max_{k \in S} \frac{(1 - \gamma) K}{r} \|V_k\|_F^2,

    with V the right singular vectors of the stacked L0 (:func:`right_singular_blocks`).
    Since :math:`\sum_{k \in S} \|V_k\|_F^2 = r` and :math:`|S| = (1 - \gamma) K`,
    mu >= 1, with equality when every benign block carries the same share of V.

    Parameters
    ----------
    sample : instance
        With ``low_rank_truth`` (K, p, q), ``benign`` (K,) and ``rank``.

    Returns
    -------
    float
        mu.
    """
    _, _, V = right_singular_blocks(sample)
    benign = check_mask(sample.benign, "benign", np.shape(sample.low_rank_truth)[0])
    K = benign.size
    r = int(sample.rank)
    if not benign.any():
        raise ValueError("mu needs at least one benign client; benign is all False.")
    q = V.shape[0] // K
    block_sq = np.sum(V.reshape(K, q, r) ** 2, axis=(1, 2))
    gamma = float(np.count_nonzero(~benign)) / K
    return float(np.max(block_sq[benign]) * (1.0 - gamma) * K / r)


def t1_condition(sample: Instance) -> T1Condition:
    r"""Check T1's condition :math:`\gamma / (1 - \gamma) \le 9 / (121 \mu r)`.

    Parameters
    ----------
    sample : instance
        With ``low_rank_truth``, ``benign``, ``rank`` and ``gamma``.

    Returns
    -------
    T1Condition
        ``(holds, lhs, rhs)``; mu is recomputed from the SVD of L0.
    """
    gamma = check_fraction(float(sample.gamma), "gamma", zero_ok=True)
    lhs = gamma / (1.0 - gamma)
    rhs = T1_CONSTANT / (incoherence(sample) * int(sample.rank))
    return T1Condition(bool(lhs <= rhs), lhs, rhs)


def t1_max_gamma(mu: float, rank: int) -> float:
    r"""The largest gamma that meets T1's condition for given mu and r.

    Solving :math:`\gamma / (1 - \gamma) \le C / (\mu r)` for gamma gives
    :math:`\gamma \le C / (\mu r + C)`, C = 9/121.

    Parameters
    ----------
    mu : float
        Incoherence, >= 1 for any L0 (smaller values are accepted, > 0).
    rank : int
        r >= 1.

    Returns
    -------
    float
        gamma* = C / (mu r + C).
    """
    mu, rank = check_positive(mu, "mu"), check_int(rank, "rank", 1)
    return T1_CONSTANT / (mu * rank + T1_CONSTANT)


def t1_c_lam(gamma: float) -> float:
    r"""T1's lam in units of 1 / sqrt(K): :math:`\lambda \sqrt{K} = 3 / (7\sqrt\gamma)`.

    Comparable with the default :math:`\lambda \sqrt K` = ``DEFAULT_C_LAM``.

    Parameters
    ----------
    gamma : float
        Contamination fraction, in (0, 1).

    Returns
    -------
    float
        3 / (7 sqrt(gamma)).
    """
    gamma = check_fraction(
        gamma,
        "gamma",
        why=" T1 needs at least one contaminated and one benign client.",
    )
    return 3.0 / (7.0 * math.sqrt(gamma))


def t1_lam(sample: Instance) -> float:
    r"""The theory value :math:`\lambda = 3 / (7 \sqrt{\gamma K})` of T1.

    Parameters
    ----------
    sample : instance
        With ``gamma`` in (0, 1) and ``n_clients`` K.

    Returns
    -------
    float
        lam; it needs gamma > 0 (with no contaminated client T1 has no lam).
    """
    return t1_c_lam(float(sample.gamma)) / math.sqrt(int(sample.n_clients))

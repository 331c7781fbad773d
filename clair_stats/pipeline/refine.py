"""Step 4 of CLAIR: refine the collaborative clients (docs/pipeline.md §3.4)."""

from __future__ import annotations

import numpy as np

__all__ = ["refine"]


def refine(
    updates: np.ndarray, subspace: np.ndarray, collaborative: np.ndarray
) -> np.ndarray:
    """Keep each collaborative client's in-subspace part, average the rest.

    .. math::

        \\tilde\\Theta_k = P_{\\hat A} \\hat\\Theta_k
            + P_{\\hat A}^\\perp \\bar\\Theta, \\qquad
        \\bar\\Theta = \\frac{1}{|\\hat S|} \\sum_{j \\in \\hat S} \\hat\\Theta_j,
        \\qquad k \\in \\hat S;

    clients outside S^ keep their local estimate.

    Parameters
    ----------
    updates : numpy.ndarray, shape (K, p, q)
        The local estimates Theta^_k.
    subspace : numpy.ndarray, shape (p, r)
        A^ with orthonormal columns (r = 0 is allowed: then every collaborative
        client gets the mean).
    collaborative : numpy.ndarray of bool, shape (K,)
        S^. With no collaborative client the updates are returned unchanged.

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        Theta~_k (a new array).

    References
    ----------
    He, Chen, Feng (2026). Federated LoRA fine-tuning for LLMs via collaborative
    alignment. arXiv:2605.21217.
    """
    updates = np.asarray(updates, dtype=float)
    collaborative = np.asarray(collaborative, dtype=bool)
    if updates.ndim != 3:
        raise ValueError(f"updates must have shape (K, p, q), got {updates.shape}.")
    n_clients, p, _ = updates.shape
    if subspace.ndim != 2 or subspace.shape[0] != p:
        raise ValueError(
            f"subspace must have shape (p, r) = ({p}, r), got {subspace.shape}."
        )
    if collaborative.shape != (n_clients,):
        raise ValueError(
            f"collaborative must have shape (K,) = ({n_clients},), got "
            f"{collaborative.shape}."
        )
    refined = updates.copy()
    if not collaborative.any():
        return refined
    mean = updates[collaborative].mean(axis=0)
    # P_A Theta_k + P_A^perp mean = mean + P_A (Theta_k - mean)
    deviation = updates[collaborative] - mean
    refined[collaborative] = mean + np.einsum(
        "pr,krq->kpq", subspace, np.einsum("pr,kpq->krq", subspace, deviation)
    )
    return refined

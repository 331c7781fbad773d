"""Step 4 of CLAIR: refine the collaborative clients (docs/pipeline.md §3.4)."""

from __future__ import annotations

import numpy as np

__all__ = ["distinct_weights", "refine"]


def refine(
    updates: np.ndarray,
    subspace: np.ndarray,
    collaborative: np.ndarray,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Keep each collaborative client's in-subspace part, average the rest.

    .. math::

        \\tilde\\Theta_k = P_{\\hat A} \\hat\\Theta_k
            + P_{\\hat A}^\\perp \\bar\\Theta, \\qquad
        \\bar\\Theta = \\sum_{j \\in \\hat S} \\pi_j \\hat\\Theta_j,
        \\qquad k \\in \\hat S;

    clients outside S^ keep their local estimate. The pooling weights pi_j are
    1 / |S^| by default (the paper's mean); :func:`clair_stats.clair` passes
    weights that count a group of near-identical updates once
    (docs/pipeline.md §3.4).

    Parameters
    ----------
    updates : numpy.ndarray, shape (K, p, q)
        The local estimates Theta^_k.
    subspace : numpy.ndarray, shape (p, r)
        A^ with orthonormal columns (r = 0 is allowed: then every collaborative
        client gets the mean).
    collaborative : numpy.ndarray of bool, shape (K,)
        S^. With no collaborative client the updates are returned unchanged.
    weights : numpy.ndarray, shape (K,), optional
        Nonnegative pooling weights (those outside S^ are ignored), normalised
        to sum to one over S^; default equal.

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
    if weights is None:
        mean = updates[collaborative].mean(axis=0)
    else:
        pool = np.asarray(weights, dtype=float)
        if pool.shape != (n_clients,) or not (
            np.all(np.isfinite(pool))
            and np.all(pool >= 0)
            and pool[collaborative].sum() > 0
        ):
            raise ValueError(
                "weights must be K nonnegative finite numbers, positive somewhere "
                "on the collaborative set."
            )
        pool = pool[collaborative]
        mean = np.tensordot(pool / pool.sum(), updates[collaborative], axes=1)
    # P_A Theta_k + P_A^perp mean = mean + P_A (Theta_k - mean)
    deviation = updates[collaborative] - mean
    refined[collaborative] = mean + np.einsum(
        "pr,krq->kpq", subspace, np.einsum("pr,kpq->krq", subspace, deviation)
    )
    return refined


def distinct_weights(
    gram: np.ndarray, mean_energy: np.ndarray, df: float, level: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    r"""Pooling weights that count a group of near-identical clients once.

    Two clients j, k whose residuals R_j = P_A^^perp (Theta^_j - c^) carry
    independent noise are apart by D_jk = ||R_j - R_k||_F^2, with mean
    m_j + m_k (m_k the mean of ||R_k||_F^2 under the null) and, for iid noise,

    .. math:: \frac{D_{jk}}{m_j + m_k}\, \nu \sim \chi^2_\nu .

    A pair below the lower ``level`` / (n (n - 1) / 2) quantile of that law
    (Bonferroni over the pairs) is closer than independent noise allows: the
    two updates are copies, or near-copies, of one another. The groups are the
    connected components of those pairs, and each client gets weight
    1 / |its group|, so that a group weighs as much as one client. Independent
    benign clients are merged with probability at most ``level`` in all.

    Parameters
    ----------
    gram : numpy.ndarray, shape (n, n)
        <R_j, R_k>.
    mean_energy : numpy.ndarray, shape (n,)
        m_k > 0.
    df : float
        nu: (p - r) q for iid noise, else an effective number (Satterthwaite).
    level : float
        Family-wise probability of merging two independent clients.

    Returns
    -------
    weights : numpy.ndarray, shape (n,)
        1 / |group of k|.
    groups : numpy.ndarray of int, shape (n,)
        The group label of each client.
    """
    import scipy.sparse
    import scipy.sparse.csgraph
    import scipy.stats

    gram = np.asarray(gram, dtype=float)
    n = gram.shape[0]
    if n < 2:
        return np.ones(n), np.zeros(n, dtype=int)
    diag = np.diag(gram)
    distance = np.maximum(diag[:, None] + diag[None, :] - 2.0 * gram, 0.0)
    scaled = distance * df / (mean_energy[:, None] + mean_energy[None, :])
    cut = scipy.stats.chi2.ppf(level / (n * (n - 1) / 2), df)
    close = scaled < cut
    np.fill_diagonal(close, False)
    _, groups = scipy.sparse.csgraph.connected_components(
        scipy.sparse.csr_matrix(close), directed=False
    )
    sizes = np.bincount(groups)
    return 1.0 / sizes[groups], groups

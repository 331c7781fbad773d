"""Step 4 of CLAIR: refine the collaborative clients (docs/pipeline.md §3.4)."""

from __future__ import annotations

import numpy as np

__all__ = [
    "close_by_angle",
    "close_by_distance",
    "copy_groups",
    "distinct_weights",
    "exact_copies",
    "refine",
]


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


def copy_groups(close: np.ndarray) -> np.ndarray:
    """Groups of clients that are pairwise close (complete linkage), as labels.

    Client k (in index order) joins the first group all of whose members it is
    close to, else starts a new one. Every pair inside a group is close, so one
    client close to everybody (an update at the benign mean, say) cannot chain
    clients that are not close to one another into one group.

    Parameters
    ----------
    close : numpy.ndarray of bool, shape (n, n)
        Symmetric: whether clients j and k are copies of one another.

    Returns
    -------
    numpy.ndarray of int, shape (n,)
        The group label of each client, 0, 1, ... in order of first member.
    """
    close = np.asarray(close, dtype=bool)
    n = close.shape[0]
    labels = np.full(n, -1)
    groups: list[list[int]] = []
    for k in range(n):
        for label, members in enumerate(groups):
            if close[k, members].all():
                members.append(k)
                labels[k] = label
                break
        else:
            labels[k] = len(groups)
            groups.append([k])
    return labels


def close_by_distance(
    gram: np.ndarray, mean_energy: np.ndarray, df: float, level: float = 1e-3
) -> np.ndarray:
    r"""Pairs of updates closer to one another than independent noise allows.

    For clients j, k with independent noise and no other difference,
    D_jk = ||X_j - X_k||_F^2 has mean m_j + m_k and, for iid noise,
    :math:`\nu D_{jk} / (m_j + m_k) \sim \chi^2_\nu`. A pair below the lower
    ``level`` / (n (n - 1) / 2) quantile (Bonferroni over the pairs) is close.

    Parameters
    ----------
    gram : numpy.ndarray, shape (n, n)
        <X_j, X_k>.
    mean_energy : numpy.ndarray, shape (n,)
        m_k > 0, the mean of ||X_k - X_k'||^2 / 2 for an independent copy X_k'.
    df : float
        nu.
    level : float
        Family-wise probability of calling two independent clients close.

    Returns
    -------
    numpy.ndarray of bool, shape (n, n)
    """
    import scipy.stats

    n = gram.shape[0]
    scaled = _distances(gram) * df / (mean_energy[:, None] + mean_energy[None, :])
    close = scaled < scipy.stats.chi2.ppf(level / max(n * (n - 1) / 2, 1), df)
    np.fill_diagonal(close, True)
    return close


def exact_copies(gram: np.ndarray, rtol: float) -> np.ndarray:
    """Pairs of noiseless updates that are copies: ||X_j - X_k||_F <= rtol
    max_k ||X_k||_F (round-off, where no noise level tells copies apart).

    Parameters
    ----------
    gram : numpy.ndarray, shape (n, n)
        <X_j, X_k>.
    rtol : float
        Relative tolerance.

    Returns
    -------
    numpy.ndarray of bool, shape (n, n)
    """
    return _distances(gram) <= rtol**2 * np.max(np.diag(gram))


def _distances(gram: np.ndarray) -> np.ndarray:
    """||X_j - X_k||_F^2 from the Gram matrix (clipped at 0 against round-off)."""
    diag = np.diag(gram)
    return np.maximum(diag[:, None] + diag[None, :] - 2.0 * gram, 0.0)


def close_by_angle(gram: np.ndarray, df: float, level: float = 1e-3) -> np.ndarray:
    r"""Pairs of residuals more aligned than independent noise allows.

    Two independent isotropic Gaussian vectors in nu dimensions have cosine
    cos_jk with :math:`(1 + \cos)/2 \sim \mathrm{Beta}((\nu - 1)/2, (\nu - 1)/2)`
    (sd about 1 / sqrt(nu)), whatever their norms. A pair above the upper
    ``level`` / (n (n - 1) / 2) quantile (Bonferroni over the pairs) is close:
    copies (cos = 1), near-copies, and updates that share a common offset
    larger than their noise. Unlike a distance rule, a residual near zero (an
    update at the mean) is close to nobody.

    Parameters
    ----------
    gram : numpy.ndarray, shape (n, n)
        <R_j, R_k>.
    df : float
        nu (for non-isotropic noise an effective number, e.g. Satterthwaite's).
    level : float
        Family-wise probability of calling two independent clients close.

    Returns
    -------
    numpy.ndarray of bool, shape (n, n)
    """
    import scipy.stats

    n = gram.shape[0]
    norm = np.sqrt(np.maximum(np.diag(gram), 0.0))
    outer = np.outer(norm, norm)
    cosine = np.divide(gram, outer, out=np.zeros_like(gram), where=outer > 0)
    half = (df - 1.0) / 2.0
    cut = 2.0 * scipy.stats.beta.isf(level / max(n * (n - 1) / 2, 1), half, half) - 1
    close = cosine > cut
    np.fill_diagonal(close, True)
    return close


def distinct_weights(close: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooling weights that count a group of copies once: 1 / |group of k|.

    Parameters
    ----------
    close : numpy.ndarray of bool, shape (n, n)
        Which pairs are copies (:func:`close_by_angle`, :func:`close_by_distance`).

    Returns
    -------
    weights : numpy.ndarray, shape (n,)
    groups : numpy.ndarray of int, shape (n,)
        The labels of :func:`copy_groups`.
    """
    groups = copy_groups(close)
    sizes = np.bincount(groups)
    return 1.0 / sizes[groups], groups

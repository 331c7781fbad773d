r"""Baselines (docs/pipeline.md §6), each returning the estimate every client uses.

Every function takes the local estimates :math:`\hat\Theta_k`, shape (K, p, q), and
returns a new (K, p, q) array: row k is the matrix client k ends up with. The
aggregators (FedAvg, median, trimmed mean, geometric median, Krum) give every
client the same matrix; ``local``, ``svd_refine`` and ``oracle_clair`` are
client-specific.

- :func:`local`: :math:`\hat\Theta_k` itself (local fine-tuning).
- :func:`fedavg`: the mean of all clients (non-robust federated averaging).
- :func:`coordinate_median`, :func:`trimmed_mean`: coordinate-wise robust means
  [2]_.
- :func:`geometric_median`: Weiszfeld [3]_ with the Vardi-Zhang fix [4]_.
- :func:`krum`, :func:`multi_krum`: Byzantine-tolerant selection [1]_.
- :func:`svd_refine`: plain SVD subspace + the CLAIR refinement, no robustness
  (no outlier-pursuit decomposition [5]_).
- :func:`oracle_clair`: the CLAIR refinement [6]_ with the true A and S.

References
----------
.. [1] P. Blanchard, E. M. El Mhamdi, R. Guerraoui, J. Stainer, "Machine learning
   with adversaries: Byzantine tolerant gradient descent", NeurIPS 2017.
.. [2] D. Yin, Y. Chen, K. Ramchandran, P. Bartlett, "Byzantine-robust distributed
   learning: towards optimal statistical rates", ICML 2018.
.. [3] E. Weiszfeld, "Sur le point pour lequel la somme des distances de n points
   donnés est minimum", Tohoku Mathematical Journal 43, 1937.
.. [4] Y. Vardi, C.-H. Zhang, "The multivariate L1-median and associated data
   depth", PNAS 97(4), 2000.
.. [5] H. Xu, C. Caramanis, S. Sanghavi, "Robust PCA via outlier pursuit",
   IEEE Transactions on Information Theory 58(5), 2012.
.. [6] He, Chen, Feng, "Federated LoRA fine-tuning for LLMs via collaborative
   alignment", arXiv:2605.21217, 2026.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.stats
from numpy.typing import NDArray

from clair_stats.core.exceptions import ConvergenceWarning
from clair_stats.core.linalg import top_subspace
from clair_stats.core.validation import (
    check_int,
    check_interval,
    check_mask,
    check_orthonormal,
    check_positive,
    check_updates,
)
from clair_stats.pipeline.refine import refine

__all__ = [
    "coordinate_median",
    "fedavg",
    "geometric_median",
    "krum",
    "local",
    "multi_krum",
    "oracle_clair",
    "svd_refine",
    "trimmed_mean",
]

FloatArray = NDArray[np.float64]


# --------------------------------------------------------------------------- helpers
def _broadcast(point: FloatArray, n_clients: int) -> FloatArray:
    """The (p, q) aggregate repeated for each of the K clients (a new array)."""
    return np.repeat(point[None], n_clients, axis=0)


def _check_byzantine(n_byzantine: object, n_clients: int) -> int:
    """f as an int with 0 <= f and 2f + 2 < K (the condition of Krum)."""
    f = check_int(n_byzantine, "n_byzantine", 0)
    if not 2 * f + 2 < n_clients:
        most = (n_clients - 3) // 2
        fix = (
            f"with K = {n_clients} clients at most n_byzantine = {most} is allowed"
            if most >= 0
            else "Krum needs at least 3 clients"
        )
        raise ValueError(
            f"Krum needs K > 2 n_byzantine + 2, got K = {n_clients} and "
            f"n_byzantine = {f}; {fix}."
        )
    return f


# ---------------------------------------------------------------------- aggregators
def local(updates: object) -> FloatArray:
    r"""Local fine-tuning: every client keeps its own estimate.

    .. math:: \tilde\Theta_k = \hat\Theta_k.

    Parameters
    ----------
    updates : array_like, shape (K, p, q)
        The local estimates Theta^_k.

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        A copy of ``updates`` (float64).
    """
    return check_updates(updates).copy()


def fedavg(updates: object) -> FloatArray:
    r"""Federated averaging: every client gets the mean of all clients.

    .. math:: \tilde\Theta_k = \frac1K \sum_{j=1}^K \hat\Theta_j.

    Equal weights (the clients' sample sizes are not modelled here). Not robust:
    one client can move the mean arbitrarily far.

    Parameters
    ----------
    updates : array_like, shape (K, p, q)
        The local estimates Theta^_k.

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        The mean, repeated for every client.
    """
    updates = check_updates(updates)
    return _broadcast(updates.mean(axis=0), updates.shape[0])


def coordinate_median(updates: object) -> FloatArray:
    r"""Coordinate-wise median of the clients, given to every client.

    .. math::

        (\tilde\Theta_k)_{ab} = \operatorname{median}_{j = 1..K}
            (\hat\Theta_j)_{ab};

    with an even K the median of an entry is the mean of its two middle values.

    Parameters
    ----------
    updates : array_like, shape (K, p, q)
        The local estimates Theta^_k.

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        The median, repeated for every client.

    References
    ----------
    Yin, Chen, Ramchandran, Bartlett (2018). Byzantine-robust distributed learning:
    towards optimal statistical rates. ICML.
    """
    updates = check_updates(updates)
    return _broadcast(np.median(updates, axis=0), updates.shape[0])


def trimmed_mean(updates: object, trim: float = 0.2) -> FloatArray:
    r"""Coordinate-wise trimmed mean of the clients, given to every client.

    For each entry (a, b), sort the K values :math:`(\hat\Theta_j)_{ab}`, drop the
    :math:`m = \lfloor \beta K \rfloor` smallest and m largest (:math:`\beta` =
    ``trim``) and average the rest:

    .. math::

        (\tilde\Theta_k)_{ab} = \frac{1}{K - 2m} \sum_{i = m+1}^{K-m}
            (\hat\Theta)_{ab}^{(i)},

    (:func:`scipy.stats.trim_mean`: the count is rounded down, trimming
    conservatively). ``trim = 0`` is the mean.

    Parameters
    ----------
    updates : array_like, shape (K, p, q)
        The local estimates Theta^_k.
    trim : float
        beta in [0, 0.5), the fraction cut from each end; at least one value
        per entry remains.

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        The trimmed mean, repeated for every client.

    References
    ----------
    Yin, Chen, Ramchandran, Bartlett (2018). Byzantine-robust distributed learning:
    towards optimal statistical rates. ICML.
    """
    updates = check_updates(updates)
    trim = check_interval(
        trim,
        "trim",
        0.0,
        0.5,
        why=" It is the fraction cut from each end; for the median use "
        "coordinate_median.",
    )
    point = scipy.stats.trim_mean(updates, trim, axis=0)
    return _broadcast(np.asarray(point, dtype=np.float64), updates.shape[0])


def geometric_median(
    updates: object, tol: float = 1e-10, max_iter: int = 1000
) -> FloatArray:
    r"""Geometric median of the clients (Weiszfeld, Vardi-Zhang), given to all.

    .. math::

        \tilde\Theta_k = \arg\min_{Y \in R^{p \times q}}
            \sum_{j=1}^K \|\hat\Theta_j - Y\|_F.

    Weiszfeld's iteration on the flattened vectors x_j,
    :math:`T(y) = \sum_j w_j x_j / \sum_j w_j` with :math:`w_j = 1/\|x_j - y\|`,
    is undefined when the iterate y hits a data point. The Vardi-Zhang fix: with
    :math:`\eta` the number of data points equal to y, the sums over the other
    points, :math:`\tilde T(y)` and :math:`R(y) = \sum_{x_j \ne y} (x_j - y) /
    \|x_j - y\|`, and :math:`\rho = \|R(y)\|`,

    .. math::

        T(y) = (1 - \eta/\rho)^+\, \tilde T(y) + \min(1, \eta/\rho)\, y;

    y is the median iff :math:`\rho \le \eta` (zero is in the subdifferential),
    and then the iteration stops. Points within 8 machine epsilons (times the
    spread of the data) of y count as equal to it. The iteration starts at the
    mean and stops when a step is at most ``tol`` times the spread
    :math:`\max_j \|x_j - \bar x\|`. Near a data point that is the median,
    Weiszfeld converges only linearly, so at the end the data point nearest to
    the iterate is tested by the same condition and, if it is the median, it is
    returned exactly. The minimiser is unique unless the points
    are collinear (an even number of them: any point of the middle segment).

    Parameters
    ----------
    updates : array_like, shape (K, p, q)
        The local estimates Theta^_k.
    tol : float
        Relative step tolerance, > 0.
    max_iter : int
        Iteration limit, >= 1.

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        The geometric median, repeated for every client.

    Warns
    -----
    ConvergenceWarning
        When ``max_iter`` is reached before the step falls below the tolerance;
        the last iterate is returned.

    References
    ----------
    Weiszfeld (1937). Sur le point pour lequel la somme des distances de n points
    donnés est minimum. Tohoku Mathematical Journal 43.
    Vardi, Zhang (2000). The multivariate L1-median and associated data depth.
    PNAS 97(4), 1423-1426.
    """
    updates = check_updates(updates)
    tol = check_positive(tol, "tol")
    max_iter = check_int(max_iter, "max_iter", 1)
    n_clients, p, q = updates.shape
    center = updates.mean(axis=0).ravel()
    X = updates.reshape(n_clients, -1) - center  # translation equivariant
    spread = float(np.max(np.linalg.norm(X, axis=1)))
    if spread == 0.0:  # all clients agree
        return _broadcast(center.reshape(p, q), n_clients)
    coincide = 8 * np.finfo(np.float64).eps * spread
    y = np.zeros_like(center)  # the mean
    converged = False
    step = np.inf
    for _ in range(max_iter):
        diff = X - y
        dist = np.linalg.norm(diff, axis=1)
        at_y = dist <= coincide
        others = ~at_y
        if not others.any():  # cannot happen for spread > 0; kept as a guard
            converged = True
            break
        w = 1.0 / dist[others]
        t_tilde = w @ X[others] / w.sum()  # Weiszfeld step over the other points
        eta = int(at_y.sum())
        if eta:
            rho = float(np.linalg.norm(w @ diff[others]))  # ||R(y)||
            if rho <= eta:  # y (a data point) is the median
                converged = True
                break
            y_new = (1.0 - eta / rho) * t_tilde + (eta / rho) * y
        else:
            y_new = t_tilde
        step = float(np.linalg.norm(y_new - y))
        y = y_new
        if step <= tol * spread:
            converged = True
            break
    # Near a data point x_j that is the median, Weiszfeld converges only linearly
    # (rate ||R(x_j)|| / eta_j); when the nearest data point meets the optimality
    # condition, return it exactly.
    nearest = int(np.argmin(np.linalg.norm(X - y, axis=1)))
    if _is_median(X, X[nearest], coincide):
        return _broadcast(updates[nearest], n_clients)
    if not converged:
        warnings.warn(
            f"geometric_median did not converge in max_iter={max_iter} iterations "
            f"(last step {step:.2e} > tol * spread = {tol * spread:.2e}); raise "
            "max_iter or tol.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return _broadcast((y + center).reshape(p, q), n_clients)


def _is_median(X: FloatArray, y: FloatArray, coincide: float) -> bool:
    """Whether y is a geometric median of the rows of X: ||R(y)|| <= eta(y)."""
    diff = X - y
    dist = np.linalg.norm(diff, axis=1)
    others = dist > coincide
    rho = float(np.linalg.norm((diff[others] / dist[others, None]).sum(axis=0)))
    return rho <= np.count_nonzero(~others)


def _krum_scores(X: FloatArray, n_byzantine: int) -> FloatArray:
    """Krum score of every row of X (K, d): sum of squared distances to its
    K - f - 2 nearest other rows."""
    n_clients = X.shape[0]
    sq_dist = np.empty((n_clients, n_clients))
    for i in range(n_clients):  # direct differences: exact for near-equal rows
        sq_dist[i] = np.sum((X - X[i]) ** 2, axis=1)
    np.fill_diagonal(sq_dist, np.inf)  # a client is not its own neighbour
    n_neighbours = n_clients - n_byzantine - 2
    return np.sort(sq_dist, axis=1)[:, :n_neighbours].sum(axis=1)


def krum(updates: object, n_byzantine: int) -> FloatArray:
    r"""Krum: every client gets the update of the most central client.

    With f = ``n_byzantine`` and :math:`i \to j` meaning that j is among the
    K - f - 2 clients closest to i (Frobenius distance, j != i),

    .. math::

        s(i) = \sum_{i \to j} \|\hat\Theta_i - \hat\Theta_j\|_F^2, \qquad
        \tilde\Theta_k = \hat\Theta_{i^*}, \quad i^* = \arg\min_i s(i)

    (ties go to the lowest index). Requires K > 2f + 2.

    Parameters
    ----------
    updates : array_like, shape (K, p, q)
        The local estimates Theta^_k.
    n_byzantine : int
        f >= 0, the number of Byzantine clients to tolerate.

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        Theta^_{i*}, repeated for every client.

    References
    ----------
    Blanchard, El Mhamdi, Guerraoui, Stainer (2017). Machine learning with
    adversaries: Byzantine tolerant gradient descent. NeurIPS.
    """
    return multi_krum(updates, n_byzantine, m=1)


def multi_krum(updates: object, n_byzantine: int, m: int | None = None) -> FloatArray:
    r"""Multi-Krum: every client gets the mean of the m lowest-score clients.

    With the Krum scores s(i) of :func:`krum` (f = ``n_byzantine``) and
    :math:`I_m` the m clients of lowest score (ties to the lowest index),

    .. math::

        \tilde\Theta_k = \frac1m \sum_{i \in I_m} \hat\Theta_i.

    m = 1 is Krum; m = K is FedAvg. The scores are computed once (not
    recomputed after each selection). Requires K > 2f + 2.

    Parameters
    ----------
    updates : array_like, shape (K, p, q)
        The local estimates Theta^_k.
    n_byzantine : int
        f >= 0, the number of Byzantine clients to tolerate.
    m : int, optional
        Number of clients averaged, 1 <= m <= K; default K - f. With
        m > K - f at least m - (K - f) of the selected clients may be Byzantine.

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        The mean of the selected updates, repeated for every client.

    References
    ----------
    Blanchard, El Mhamdi, Guerraoui, Stainer (2017). Machine learning with
    adversaries: Byzantine tolerant gradient descent. NeurIPS.
    """
    updates = check_updates(updates)
    n_clients = updates.shape[0]
    f = _check_byzantine(n_byzantine, n_clients)
    if m is None:
        m = n_clients - f
    m = check_int(m, "m", 1)
    if m > n_clients:
        raise ValueError(f"m must be <= K = {n_clients} (clients averaged), got {m}.")
    scores = _krum_scores(updates.reshape(n_clients, -1), f)
    selected = np.argsort(scores, kind="stable")[:m]
    return _broadcast(updates[selected].mean(axis=0), n_clients)


# ------------------------------------------------------------ subspace + refinement
def svd_refine(updates: object, rank: int) -> FloatArray:
    r"""Plain SVD subspace plus the CLAIR refinement, every client collaborative.

    With :math:`M = [\hat\Theta_1, \dots, \hat\Theta_K] \in R^{p \times Kq}`
    and :math:`\hat A` its top-r left singular vectors (no low-rank + sparse
    split, so no robustness to contaminated clients),

    .. math::

        \tilde\Theta_k = P_{\hat A} \hat\Theta_k + P_{\hat A}^\perp \bar\Theta,
        \qquad \bar\Theta = \frac1K \sum_{j=1}^K \hat\Theta_j,
        \qquad k = 1, \dots, K.

    When :math:`\sigma_r(M) = \sigma_{r+1}(M)` the subspace is not unique and the
    one LAPACK returns is used.

    Parameters
    ----------
    updates : array_like, shape (K, p, q)
        The local estimates Theta^_k.
    rank : int
        r, 1 <= r <= min(p, Kq). r = p returns the updates unchanged.

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        Theta~_k.

    References
    ----------
    He, Chen, Feng (2026). Federated LoRA fine-tuning for LLMs via collaborative
    alignment. arXiv:2605.21217.
    """
    updates = check_updates(updates)
    n_clients, p, q = updates.shape
    rank = check_int(rank, "rank", 1)
    if rank > min(p, n_clients * q):
        raise ValueError(
            f"rank must be in [1, min(p, Kq)] = [1, {min(p, n_clients * q)}] for "
            f"updates of shape (K, p, q) = {updates.shape}, got {rank}."
        )
    return refine(updates, top_subspace(updates, rank), np.ones(n_clients, dtype=bool))


def oracle_clair(updates: object, subspace: object, benign: object) -> FloatArray:
    r"""Oracle CLAIR: the refinement with the true subspace A and benign set S.

    .. math::

        \tilde\Theta_k = P_A \hat\Theta_k + P_A^\perp \bar\Theta_S,
        \qquad \bar\Theta_S = \frac{1}{|S|} \sum_{j \in S} \hat\Theta_j,
        \qquad k \in S;

    clients outside S keep their local estimate (and with S empty nothing
    changes). With iid :math:`N(0, \tau^2)` noise and no heterogeneity its
    mean squared error per benign client is
    :math:`r q \tau^2 + (p - r) q \tau^2 / |S|` (T4, docs/claims.md §4.5).

    Parameters
    ----------
    updates : array_like, shape (K, p, q)
        The local estimates Theta^_k.
    subspace : array_like, shape (p, r)
        A with orthonormal columns (checked to 1e-8); 0 <= r <= p.
    benign : array_like of bool, shape (K,)
        True on S.

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        Theta~_k.

    References
    ----------
    He, Chen, Feng (2026). Federated LoRA fine-tuning for LLMs via collaborative
    alignment. arXiv:2605.21217.
    """
    updates = check_updates(updates)
    n_clients, p, _ = updates.shape
    subspace = check_orthonormal(subspace, "subspace", p=p)
    benign = check_mask(benign, "benign", n_clients)
    return refine(updates, subspace, benign)

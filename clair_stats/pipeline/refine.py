"""Step 4 of CLAIR: refine the collaborative clients (docs/pipeline.md §3.4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clair_stats.core.lowrank import LowRankUpdates
from clair_stats.core.results import RefinedFactors
from clair_stats.core.validation import check_shrinkage

__all__ = [
    "Refinement",
    "Shrinkage",
    "close_by_angle",
    "close_by_distance",
    "copy_groups",
    "distinct_weights",
    "pair_cosines",
    "pair_distances",
    "exact_copies",
    "in_subspace_shrinkage",
    "refine",
    "refine_clients",
    "shrinkage_factors",
]


def refine(
    updates: np.ndarray,
    subspace: np.ndarray,
    collaborative: np.ndarray,
    weights: np.ndarray | None = None,
    shrinkage: float | np.ndarray | None = None,
) -> np.ndarray:
    """Keep each collaborative client's in-subspace part, average the rest.

    .. math::

        \\tilde\\Theta_k = \\bar\\Theta
            + (1 - b_k) P_{\\hat A} (\\hat\\Theta_k - \\bar\\Theta), \\qquad
        \\bar\\Theta = \\sum_{j \\in \\hat S} \\pi_j \\hat\\Theta_j,
        \\qquad k \\in \\hat S;

    clients outside S^ keep their local estimate. With b_k = 0 (the default)
    this is the paper's P_A^ Theta^_k + P_A^^perp Thetabar: each client keeps its
    in-subspace part; with b_k = 1 every collaborative client gets Thetabar
    (FedAvg over S^); :func:`shrinkage_factors` estimates b_k from the data
    (docs/pipeline.md §3.4). The pooling weights pi_j are 1 / ``|S^|`` by default
    (the paper's mean); :func:`clair_stats.clair` passes weights that count a
    group of near-identical updates once.

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
    shrinkage : float or numpy.ndarray of shape (K,), optional
        b_k in [0, 1], the share of each collaborative client's in-subspace
        deviation from Thetabar that is pooled away (those outside S^ are
        ignored); default 0.

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
    keep = 1.0 - check_shrinkage(shrinkage, n_clients)[collaborative]
    # P_A Theta_k + P_A^perp mean = mean + P_A (Theta_k - mean)
    deviation = updates[collaborative] - mean
    inside = np.einsum("pr,kpq->krq", subspace, deviation) * keep[:, None, None]
    refined[collaborative] = mean + np.einsum("pr,krq->kpq", subspace, inside)
    return refined


@dataclass(frozen=True)
class Shrinkage:
    """The in-subspace pooling of step 4 (docs/pipeline.md §3.4).

    Parameters
    ----------
    factors : numpy.ndarray, shape (K,)
        b_k (0 outside the pooled set).
    between : float
        T^, the estimated energy of a client's in-subspace deviation from the
        mean that is not noise (per client, in the units of the Gram matrix).
    noise : numpy.ndarray, shape (K,)
        v_k, the in-subspace noise energy of each client.
    spread : float
        sum_k pi_k ||P_A (Theta^_k - Thetabar)||^2, the observed spread.
    dof : float
        D = (n_eff - 1) r q, the dimension of the deviations (n_eff =
        1 / sum_k pi_k^2).
    """

    factors: np.ndarray
    between: float
    noise: np.ndarray
    spread: float
    dof: float


def shrinkage_factors(
    inside_gram: np.ndarray,
    noise_energy: np.ndarray,
    weights: np.ndarray,
    dim: int,
) -> Shrinkage:
    r"""Empirical-Bayes shrinkage of in-subspace deviations towards the mean.

    Model: y_k = P_A Theta^_k = theta_k + e_k with e_k of energy E||e_k||^2 =
    v_k (``noise_energy``; r q sigma_k^2 for iid noise of sd sigma_k) and the
    theta_k spread around their mean with energy T per client. The Bayes rule
    (linear in y_k) is theta~_k = ybar + (1 - b_k)(y_k - ybar) with b_k = v_k /
    (v_k + T). T is estimated by the method of moments from the weighted spread
    S = sum_k pi_k ||y_k - ybar||^2 (ybar = sum pi_k y_k), whose mean is

    .. math:: E S = T (1 - \sum_k \pi_k^2) + \sum_k \pi_k v_k (1 - \pi_k),

    with the James-Stein factor D / (D - 2) on S (D = (n_eff - 1) ``dim``,
    n_eff = 1 / sum pi_k^2), so that with equal weights and equal v_k the
    factor is the positive-part James-Stein (Lindley) one, b = min(1, (D - 2)
    v / (dim S')), S' = sum_k ||y_k - ybar||^2: its risk exceeds that of the
    best b (chosen knowing theta) by less than 4 sigma^2 over all n clients
    (docs/claims.md §4.5), and it is never far from the better of b = 0 (keep
    y_k) and b = 1 (the mean).

    Parameters
    ----------
    inside_gram : numpy.ndarray, shape (n, n)
        <y_j, y_k> over the n pooled clients.
    noise_energy : numpy.ndarray, shape (n,)
        v_k > 0.
    weights : numpy.ndarray, shape (n,)
        pi_k > 0, summing to one.
    dim : int
        r q, the number of coordinates of each y_k.

    Returns
    -------
    Shrinkage
        With ``factors`` of shape (n,).

    References
    ----------
    Efron, Morris (1973). Stein's estimation rule and its competitors: an
    empirical Bayes approach. JASA 68, 117-130.
    Morris (1983). Parametric empirical Bayes inference: theory and
    applications. JASA 78, 47-55.
    """
    gram = np.asarray(inside_gram, dtype=float)
    v = np.asarray(noise_energy, dtype=float)
    pi = np.asarray(weights, dtype=float)
    n = pi.size
    concentration = float(np.sum(pi**2))
    n_eff = 1.0 / concentration
    dof = (n_eff - 1.0) * dim
    spread = max(float(pi @ np.diag(gram) - pi @ gram @ pi), 0.0)
    if n < 2 or dof <= 2.0:
        # too few clients to tell their spread from noise: keep each client's part
        return Shrinkage(np.zeros(n), np.inf, v, spread, dof)
    noise = float(np.sum(pi * v * (1.0 - pi)))
    between = max((spread * dof / (dof - 2.0) - noise) / (1.0 - concentration), 0.0)
    total = v + between
    factors = np.divide(v, total, out=np.ones(n), where=total > 0)
    return Shrinkage(np.clip(factors, 0.0, 1.0), between, v, spread, dof)


def copy_groups(close: np.ndarray, strength: np.ndarray | None = None) -> np.ndarray:
    """Groups of clients that are pairwise close (complete linkage), as labels.

    Every pair inside a group is close, so one client close to everybody (an
    update at the benign mean, say) cannot chain clients that are not close to
    one another into one group.

    With ``strength`` (how close each pair is; larger is closer), the groups are
    complete-linkage clusters: starting from single clients, the two groups whose
    weakest pair is strongest are merged, as long as every pair between them is
    close. The result does not depend on the order of the clients (up to exact
    ties of strength, as between exact copies, which are interchangeable).
    Without it, client k (in index order) joins the first group all of whose
    members it is close to, else starts a new one: when closeness is not
    transitive (j close to k and k to l, but not j to l) the groups then depend
    on the order.

    Parameters
    ----------
    close : numpy.ndarray of bool, shape (n, n)
        Symmetric: whether clients j and k are copies of one another.
    strength : numpy.ndarray, shape (n, n), optional
        Symmetric closeness of each pair (e.g. the cosine of
        :func:`pair_cosines`, or minus a scaled distance).

    Returns
    -------
    numpy.ndarray of int, shape (n,)
        The group label of each client, 0, 1, ... in order of first member.
    """
    close = np.asarray(close, dtype=bool)
    n = close.shape[0]
    if strength is not None:
        return _complete_linkage(close, np.asarray(strength, dtype=float))
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


def _complete_linkage(close: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """Complete-linkage groups of :func:`copy_groups` (labels in order of first
    member)."""
    n = close.shape[0]
    link = np.where(close, strength, -np.inf)
    np.fill_diagonal(link, -np.inf)
    owner = np.arange(n)  # the group (its first client) each client belongs to
    active = np.ones(n, dtype=bool)
    while True:
        masked = np.where(np.outer(active, active), link, -np.inf)
        best = np.argmax(masked)
        i, j = divmod(int(best), n)
        if not np.isfinite(masked[i, j]):
            break
        i, j = min(i, j), max(i, j)
        # the merged group's link to any other is its weakest pair's
        link[i] = np.minimum(link[i], link[j])
        link[:, i] = link[i]
        link[i, i] = -np.inf
        active[j] = False
        owner[owner == j] = i
    _, labels = np.unique(owner, return_inverse=True)
    return labels.ravel()


def pair_cosines(gram: np.ndarray) -> np.ndarray:
    """cos_jk = <X_j, X_k> / (||X_j|| ||X_k||) from the Gram matrix (0 where a
    norm is 0).

    Parameters
    ----------
    gram : numpy.ndarray, shape (n, n)
        <X_j, X_k>, the Gram matrix of n updates (or of their residuals).

    Returns
    -------
    numpy.ndarray, shape (n, n)
        The cosines cos_jk, in [-1, 1] up to round-off.
    """
    norm = np.sqrt(np.maximum(np.diag(gram), 0.0))
    outer = np.outer(norm, norm)
    return np.divide(gram, outer, out=np.zeros_like(gram), where=outer > 0)


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
    scaled = pair_distances(gram) * df / (mean_energy[:, None] + mean_energy[None, :])
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
    return pair_distances(gram) <= rtol**2 * np.max(np.diag(gram))


def pair_distances(gram: np.ndarray) -> np.ndarray:
    """||X_j - X_k||_F^2 from the Gram matrix (clipped at 0 against round-off).

    Parameters
    ----------
    gram : numpy.ndarray, shape (n, n)
        <X_j, X_k>, the Gram matrix of n updates (or of their residuals).

    Returns
    -------
    numpy.ndarray, shape (n, n)
        The squared distances ||X_j - X_k||_F^2, >= 0.
    """
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
    cosine = pair_cosines(gram)
    half = (df - 1.0) / 2.0
    cut = 2.0 * scipy.stats.beta.isf(level / max(n * (n - 1) / 2, 1), half, half) - 1
    close = cosine > cut
    np.fill_diagonal(close, True)
    return close


def distinct_weights(
    close: np.ndarray, strength: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pooling weights that count a group of copies once: 1 / (size of k's group).

    Parameters
    ----------
    close : numpy.ndarray of bool, shape (n, n)
        Which pairs are copies (:func:`close_by_angle`, :func:`close_by_distance`).
    strength : numpy.ndarray, shape (n, n), optional
        How close each pair is, for groups that do not depend on the order of
        the clients (:func:`copy_groups`).

    Returns
    -------
    weights : numpy.ndarray, shape (n,)
    groups : numpy.ndarray of int, shape (n,)
        The labels of :func:`copy_groups`.
    """
    groups = copy_groups(close, strength)
    sizes = np.bincount(groups)
    return 1.0 / sizes[groups], groups


def in_subspace_shrinkage(
    work,
    subspace: np.ndarray,
    collaborative: np.ndarray,
    pool: np.ndarray,
    noise: np.ndarray,
    shrink: str | float,
    *,
    decomposition=None,
    scale: float = 1.0,
) -> Shrinkage:
    """b_k over S^ by the rule of ``shrink`` (0 outside S^).

    ``"auto"``: :func:`shrinkage_factors` on the in-subspace Gram matrix of S^,
    <P_A Theta^_j, P_A Theta^_k> = the full Gram minus the off-subspace one
    (:meth:`clair_stats.pipeline.paths.Updates.inside_gram`; factored updates
    compute it from the factors directly, never multiplied out), with the noise
    energies v_k =
    ``noise``; ``"none"`` or a number: that b for every client of S^.

    Parameters
    ----------
    work : Updates
        The (oriented) updates.
    subspace : numpy.ndarray, shape (p, r)
        A^.
    collaborative : numpy.ndarray of bool, shape (K,)
        S^, not empty.
    pool : numpy.ndarray, shape (K,)
        pi_k, summing to one over S^.
    noise : numpy.ndarray, shape (K,)
        v_k, in the units of the Gram matrix (``scale`` squared).
    shrink : {"auto", "none"} or float
        The rule: ``"auto"`` estimates b_k (empirical Bayes), ``"none"`` gives
        b = 0, a number in [0, 1] is that b for every client of S^.
    decomposition, scale
        Passed to ``inside_gram``.

    Returns
    -------
    Shrinkage
        With arrays of shape (K,).
    """
    n_clients, _, q = work.shape
    if not (isinstance(shrink, str) and shrink == "auto"):
        b = 0.0 if shrink == "none" else float(shrink)
        factors = np.where(collaborative, b, 0.0)
        return Shrinkage(factors, np.nan, np.zeros(n_clients), np.nan, np.nan)
    members = np.flatnonzero(collaborative)
    inside = work.inside_gram(decomposition, subspace, scale)
    found = shrinkage_factors(
        inside[np.ix_(members, members)],
        noise[members],
        pool[members] / pool[members].sum(),
        subspace.shape[1] * q,
    )
    factors = np.zeros(n_clients)
    factors[members] = found.factors
    energies = np.zeros(n_clients)
    energies[members] = found.noise
    return Shrinkage(factors, found.between, energies, found.spread, found.dof)


@dataclass(frozen=True)
class Refinement:
    """What :func:`refine_clients` returns.

    Parameters
    ----------
    refined : numpy.ndarray of shape (K, p, q), or RefinedFactors
        Theta~_k (as factors truncated by SVD for LowRankUpdates).
    subspace : numpy.ndarray, shape (p, r)
        The A^ used (refitted on S^ with ``final_subspace="kept"``).
    shrinkage : Shrinkage or None
        b_k and its estimate (None when S^ is empty or r = 0).
    """

    refined: np.ndarray | RefinedFactors
    subspace: np.ndarray
    shrinkage: Shrinkage | None


def refine_clients(
    updates: np.ndarray | LowRankUpdates,
    subspace: np.ndarray,
    collaborative: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    shrink: str | float = "auto",
    final_subspace: str = "kept",
    sigma: float | np.ndarray | None = None,
    refined_rank: int | None = None,
) -> Refinement:
    """Step 4 with CLAIR's defaults, for updates whose S^ is already known.

    For pipelines that form S^ themselves (one verdict over several modules of
    a LoRA adapter, :mod:`clair_stats.lora.verdict`) and then refine each
    module as :func:`clair_stats.clair` would: A^ refitted on S^
    (``final_subspace="kept"``: the top-r left singular vectors of the kept
    updates, weighted by pi_k), then :func:`refine` with b_k from
    :func:`shrinkage_factors` (``shrink="auto"``), v_k = r q sigma_k^2 with
    sigma_k given or the median rule on the off-subspace energies at the
    ``subspace`` passed in (docs/pipeline.md §3.4). Factored updates are never
    multiplied out.

    Parameters
    ----------
    updates : numpy.ndarray of shape (K, p, q), or LowRankUpdates
        Theta^_k.
    subspace : numpy.ndarray, shape (p, r)
        A^ of step 2 (orthonormal columns).
    collaborative : numpy.ndarray of bool, shape (K,)
        S^.
    weights : numpy.ndarray, shape (K,), optional
        Pooling weights pi_k on S^ (default equal).
    shrink : {"auto", "none"} or float
        As in :func:`clair_stats.clair`.
    final_subspace : {"kept", "detection"}
        As in :func:`clair_stats.clair` (``"detection"``: ``subspace`` as given).
    sigma : float or numpy.ndarray of shape (K,), optional
        Per-entry noise sd of the updates (default: the median rule).
    refined_rank : int, optional
        LowRankUpdates only: the rank of the refined factors
        (:func:`clair_stats.solvers.factored.refine_factored`).

    Returns
    -------
    Refinement
    """
    from clair_stats.core.linalg import off_subspace_energy, top_subspace
    from clair_stats.core.validation import check_choice
    from clair_stats.pipeline.detection import median_rule
    from clair_stats.pipeline.paths import as_updates

    work = as_updates(updates)
    collaborative = np.asarray(collaborative, dtype=bool)
    check_choice(final_subspace, "final_subspace", ("kept", "detection"))
    if isinstance(shrink, str):
        check_choice(shrink, "shrink", ("auto", "none"))
    else:
        check_shrinkage(shrink, 1)
    n_clients, p, q = work.shape
    if collaborative.shape != (n_clients,):
        raise ValueError(
            f"collaborative must have shape (K,) = ({n_clients},), got "
            f"{collaborative.shape}."
        )
    rank = subspace.shape[1]
    members = np.flatnonzero(collaborative)

    def finish(basis: np.ndarray, factors: np.ndarray | None, pool=None):
        if work.factored:
            from clair_stats.solvers.factored import refine_factored

            return refine_factored(
                work.data,
                basis,
                collaborative,
                rank=refined_rank,
                weights=pool,
                shrinkage=factors,
            )
        return refine(work.data, basis, collaborative, pool, factors)

    if members.size == 0 or rank == 0:
        return Refinement(finish(subspace, None, weights), subspace, None)
    pool = np.ones(n_clients) if weights is None else np.asarray(weights, float)
    pool = np.where(collaborative, pool, 0.0)
    pool = pool / pool.sum()
    if sigma is None:
        energy = off_subspace_energy(work.data, subspace)
        sd = np.full(n_clients, np.sqrt(median_rule(energy, (p - rank) * q)))
    else:
        sd = np.broadcast_to(np.asarray(sigma, dtype=float), (n_clients,))
    if final_subspace == "kept" and members.size * q >= rank:
        if work.factored:
            data = work.data
            weighted = LowRankUpdates(
                list(data.B),
                list(data.A),
                data.scaling * np.sqrt(np.where(collaborative, pool, 1.0)),
            )
            subspace = top_subspace(
                weighted, rank, clients=collaborative, start=subspace
            )
        else:
            from clair_stats.pipeline.trimmed import subset_fit

            subspace, _ = subset_fit(work.data, collaborative, rank, weights=pool)
    noise = rank * q * sd**2
    shrinkage = in_subspace_shrinkage(
        work, subspace, collaborative, pool, noise, shrink
    )
    return Refinement(finish(subspace, shrinkage.factors, pool), subspace, shrinkage)

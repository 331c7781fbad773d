r"""Flower's own server-side aggregators on (K, p, q) arrays (the ``flower`` extra).

Each function here takes the local estimates :math:`\hat\Theta_k`, shape
(K, p, q), as the baselines of :mod:`clair_stats.evaluation.baselines` do, hands
them to the matching function of ``flwr.server.strategy.aggregate`` (Flower
1.42.0, pinned by the extra) and returns the aggregate repeated for every client,
shape (K, p, q). Nothing is reimplemented: the point is to run the aggregators a
Flower deployment runs, so that our baselines can be checked against them
(tests/test_flower.py).

Flower takes a list of ``(parameters, num_examples)`` pairs, one per client, where
``parameters`` is a list of layers. Each client here is one layer, the p x q
matrix :math:`\hat\Theta_k`, with ``num_examples = 1``: every client weighs the
same, as in our baselines. Flower's mean (FedAvg [1]_) and multi-Krum [3]_ weight
clients by ``num_examples``; its median and trimmed mean [2]_, Krum selection [3]_
and Bulyan [4]_ ignore it.

Where the definitions agree and differ (measured in tests/test_flower.py):

- mean, coordinate median, trimmed mean, Krum: the same as
  :func:`~clair_stats.evaluation.baselines.fedavg`,
  :func:`~clair_stats.evaluation.baselines.coordinate_median`,
  :func:`~clair_stats.evaluation.baselines.trimmed_mean` and
  :func:`~clair_stats.evaluation.baselines.krum`, ties included (the mean to
  rounding, the others bit for bit);
- multi-Krum: the same scores and the same unweighted mean of the kept clients,
  but clients whose scores tie exactly at the m-th place are chosen by numpy's
  default (unstable) ``argsort`` in Flower and by lowest index in
  :func:`~clair_stats.evaluation.baselines.multi_krum`; both are the paper's
  definition, which leaves ties open.

``flwr`` is imported on the first call (through
:func:`clair_stats.core.optional.require`), never by ``import clair_stats``.

References
----------
.. [1] H. B. McMahan, E. Moore, D. Ramage, S. Hampson, B. Agüera y Arcas,
   "Communication-efficient learning of deep networks from decentralized data",
   AISTATS 2017.
.. [2] D. Yin, Y. Chen, K. Ramchandran, P. Bartlett, "Byzantine-robust distributed
   learning: towards optimal statistical rates", ICML 2018.
.. [3] P. Blanchard, E. M. El Mhamdi, R. Guerraoui, J. Stainer, "Machine learning
   with adversaries: Byzantine tolerant gradient descent", NeurIPS 2017.
.. [4] E. M. El Mhamdi, R. Guerraoui, S. Rouault, "The hidden vulnerability of
   distributed learning in Byzantium", ICML 2018.
"""

from __future__ import annotations

import warnings
from types import ModuleType

import numpy as np
from numpy.typing import NDArray

from clair_stats.core.optional import require
from clair_stats.core.validation import check_int, check_interval, check_updates
from clair_stats.evaluation.baselines import _broadcast, _check_byzantine

__all__ = [
    "FLOWER_AGGREGATORS",
    "flower_bulyan",
    "flower_krum",
    "flower_mean",
    "flower_median",
    "flower_multi_krum",
    "flower_trimmed_mean",
]

FloatArray = NDArray[np.float64]

FLOWER_AGGREGATORS: tuple[str, ...] = (
    "flower_mean",
    "flower_median",
    "flower_trimmed_mean",
    "flower_krum",
    "flower_multi_krum",
    "flower_bulyan",
)


# --------------------------------------------------------------------------- helpers
def _aggregate_module() -> ModuleType:
    """``flwr.server.strategy.aggregate``, or ImportError naming the extra."""
    with warnings.catch_warnings():
        # typer (imported by Flower's logger) uses click names that click 8.5
        # deprecates; the warning is about Flower's dependencies, not this call.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="typer")
        return require(
            "flwr.server.strategy.aggregate",
            "flower",
            "running Flower's aggregators (clair_stats.evaluation.flower)",
        )


def _results(updates: FloatArray) -> list[tuple[list[FloatArray], int]]:
    """Flower's input: one ``([Theta^_k], num_examples=1)`` pair per client."""
    return [([update], 1) for update in updates]


def _point(layers: list[FloatArray]) -> FloatArray:
    """The (p, q) aggregate from Flower's one-layer answer."""
    (point,) = layers
    return np.asarray(point, dtype=np.float64)


# ---------------------------------------------------------------------- aggregators
def flower_mean(updates: object) -> FloatArray:
    r"""Flower's FedAvg: ``flwr.server.strategy.aggregate.aggregate``.

    .. math:: \tilde\Theta_k = \frac{\sum_j n_j \hat\Theta_j}{\sum_j n_j}
        = \frac1K \sum_{j=1}^K \hat\Theta_j,

    Flower weights client j by its ``num_examples`` :math:`n_j`; every client is
    passed with :math:`n_j = 1`, so this is the plain mean of
    :func:`~clair_stats.evaluation.baselines.fedavg` (equal to rounding).

    Parameters
    ----------
    updates : array_like, shape (K, p, q)
        The local estimates Theta^_k.

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        The mean, repeated for every client.

    References
    ----------
    McMahan, Moore, Ramage, Hampson, Agüera y Arcas (2017). Communication-efficient
    learning of deep networks from decentralized data. AISTATS.
    """
    updates = check_updates(updates)
    point = _aggregate_module().aggregate(_results(updates))
    return _broadcast(_point(point), updates.shape[0])


def flower_median(updates: object) -> FloatArray:
    r"""Flower's coordinate-wise median: ``aggregate.aggregate_median``.

    .. math::

        (\tilde\Theta_k)_{ab} = \operatorname{median}_{j = 1..K}
            (\hat\Theta_j)_{ab};

    with an even K the mean of the two middle values (``numpy.median``). Flower
    ignores ``num_examples`` here (each client is passed with 1). The same as
    :func:`~clair_stats.evaluation.baselines.coordinate_median`.

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
    point = _aggregate_module().aggregate_median(_results(updates))
    return _broadcast(_point(point), updates.shape[0])


def flower_trimmed_mean(updates: object, trim: float = 0.2) -> FloatArray:
    r"""Flower's coordinate-wise trimmed mean: ``aggregate.aggregate_trimmed_avg``.

    For each entry, drop the :math:`m = \lfloor \beta K \rfloor` smallest and m
    largest of the K values (:math:`\beta` = ``trim``, Flower's
    ``proportiontocut``) and average the rest:

    .. math::

        (\tilde\Theta_k)_{ab} = \frac{1}{K - 2m} \sum_{i = m+1}^{K-m}
            (\hat\Theta)_{ab}^{(i)}.

    Flower ignores ``num_examples`` here (each client is passed with 1). The cut
    is counted as in :func:`~clair_stats.evaluation.baselines.trimmed_mean`
    (rounded down), so the two agree.

    Parameters
    ----------
    updates : array_like, shape (K, p, q)
        The local estimates Theta^_k.
    trim : float
        beta in [0, 0.5), the fraction cut from each end.

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
        why=" It is the fraction cut from each end; for the median use flower_median.",
    )
    point = _aggregate_module().aggregate_trimmed_avg(_results(updates), trim)
    return _broadcast(_point(point), updates.shape[0])


def flower_krum(updates: object, n_byzantine: int) -> FloatArray:
    r"""Flower's Krum: ``aggregate.aggregate_krum`` with ``to_keep=0``.

    With f = ``n_byzantine`` and :math:`i \to j` meaning that j is among the
    K - f - 2 clients closest to i (squared Euclidean distance, j != i),

    .. math::

        s(i) = \sum_{i \to j} \|\hat\Theta_i - \hat\Theta_j\|_F^2, \qquad
        \tilde\Theta_k = \hat\Theta_{i^*}, \quad i^* = \arg\min_i s(i)

    (``numpy.argmin``: ties go to the lowest index). Flower ignores
    ``num_examples`` here (each client is passed with 1). Requires K > 2f + 2,
    the paper's condition, checked here as in
    :func:`~clair_stats.evaluation.baselines.krum`; Flower itself would go on
    below it with :math:`\max(1, K - f - 2)` neighbours. The same as
    :func:`~clair_stats.evaluation.baselines.krum`.

    Parameters
    ----------
    updates : array_like, shape (K, p, q)
        The local estimates Theta^_k.
    n_byzantine : int
        f >= 0, Flower's ``num_malicious``.

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        Theta^_{i*}, repeated for every client.

    References
    ----------
    Blanchard, El Mhamdi, Guerraoui, Stainer (2017). Machine learning with
    adversaries: Byzantine tolerant gradient descent. NeurIPS.
    """
    updates = check_updates(updates)
    f = _check_byzantine(n_byzantine, updates.shape[0])
    point = _aggregate_module().aggregate_krum(
        _results(updates), num_malicious=f, to_keep=0
    )
    return _broadcast(_point(point), updates.shape[0])


def flower_multi_krum(
    updates: object, n_byzantine: int, m: int | None = None
) -> FloatArray:
    r"""Flower's multi-Krum: ``aggregate.aggregate_krum`` with ``to_keep=m``.

    With the Krum scores s(i) of :func:`flower_krum` and :math:`I_m` the m
    clients of lowest score,

    .. math::

        \tilde\Theta_k = \frac{\sum_{i \in I_m} n_i \hat\Theta_i}
            {\sum_{i \in I_m} n_i} = \frac1m \sum_{i \in I_m} \hat\Theta_i:

    Flower averages the kept clients with ``aggregate``, weighted by
    ``num_examples`` :math:`n_i`; every client is passed with :math:`n_i = 1`,
    so the mean is unweighted, as in the paper. Flower takes :math:`I_m` from
    numpy's default ``argsort`` of the scores, which is not stable: among
    clients whose scores tie exactly at the m-th place the choice is numpy's,
    where :func:`~clair_stats.evaluation.baselines.multi_krum` takes the lowest
    indices. Requires K > 2f + 2 (checked here).

    Parameters
    ----------
    updates : array_like, shape (K, p, q)
        The local estimates Theta^_k.
    n_byzantine : int
        f >= 0, Flower's ``num_malicious``.
    m : int, optional
        Number of clients averaged (Flower's ``to_keep``), 1 <= m <= K; default
        K - f, as in :func:`~clair_stats.evaluation.baselines.multi_krum`.

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        The mean of the kept updates, repeated for every client.

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
    m = check_int(m, "m", 1)  # Flower reads to_keep = 0 as plain Krum
    if m > n_clients:
        raise ValueError(f"m must be <= K = {n_clients} (clients averaged), got {m}.")
    point = _aggregate_module().aggregate_krum(
        _results(updates), num_malicious=f, to_keep=m
    )
    return _broadcast(_point(point), n_clients)


def flower_bulyan(updates: object, n_byzantine: int) -> FloatArray:
    r"""Flower's Bulyan over Krum: ``aggregate.aggregate_bulyan``.

    With f = ``n_byzantine``, :math:`\theta = K - 2f` and
    :math:`\beta = \theta - 2f`: Krum (``aggregate_krum``, f, ``to_keep=0``)
    picks a client, which is removed, and again, until :math:`\theta` clients
    are picked; then for each entry (a, b), with :math:`\mu_{ab}` the median of
    the picked clients' values, the :math:`\beta` values closest to
    :math:`\mu_{ab}` are averaged:

    .. math::

        (\tilde\Theta_k)_{ab} = \frac1\beta \sum_{i \in B_{ab}}
            (\hat\Theta_i)_{ab}, \qquad
        B_{ab} = \text{the } \beta \text{ picked clients closest to } \mu_{ab}.

    Flower ignores ``num_examples`` here (each client is passed with 1). As the
    remaining set shrinks, Flower's Krum takes :math:`\max(1, n - f - 2)`
    neighbours among the n clients left. Flower has no other Bulyan rule (its
    Krum is the only selection it accepts), and
    :mod:`~clair_stats.evaluation.baselines` none at all: with f = 0 it is the
    mean.

    Parameters
    ----------
    updates : array_like, shape (K, p, q)
        The local estimates Theta^_k.
    n_byzantine : int
        f >= 0, Flower's ``num_malicious``; K >= 4f + 3 is required.

    Returns
    -------
    numpy.ndarray, shape (K, p, q)
        The Bulyan aggregate, repeated for every client.

    Raises
    ------
    ValueError
        When K < 4f + 3, saying the largest f that K clients allow.

    References
    ----------
    El Mhamdi, Guerraoui, Rouault (2018). The hidden vulnerability of distributed
    learning in Byzantium. ICML.
    """
    updates = check_updates(updates)
    n_clients = updates.shape[0]
    f = check_int(n_byzantine, "n_byzantine", 0)
    if n_clients < 4 * f + 3:
        most = (n_clients - 3) // 4
        fix = (
            f"with K = {n_clients} clients at most n_byzantine = {most} is allowed, "
            f"and n_byzantine = {f} needs at least {4 * f + 3} clients"
            if most >= 0
            else "Bulyan needs at least 3 clients"
        )
        raise ValueError(
            f"Bulyan needs K >= 4 n_byzantine + 3, got K = {n_clients} and "
            f"n_byzantine = {f}; {fix}."
        )
    agg = _aggregate_module()
    point = agg.aggregate_bulyan(
        _results(updates),  # a fresh list: Flower pops the picked clients from it
        num_malicious=f,
        aggregation_rule=agg.aggregate_krum,
        to_keep=0,
    )
    return _broadcast(_point(point), n_clients)

"""Flower's aggregators (flwr 1.42.0) against our baselines, on (K, p, q) arrays.

:mod:`clair_stats.evaluation.flower` calls ``flwr.server.strategy.aggregate``
itself; these tests compare it with :mod:`clair_stats.evaluation.baselines` on
seeded random updates of several shapes, K odd and even, with and without ties
(updates on a half-integer grid, so that entries, distances and scores tie
exactly, and a duplicated client). "Agrees" means a relative difference
``max |Flower - ours| / max |Theta^|`` of at most 1e-12 (relative to the scale of
the updates: an entry of the mean can cancel to near zero).

Agree (measured on the cases below: multi-Krum's mean 1e-16, as Flower sums the
kept clients in another order; FedAvg, median, trimmed mean and Krum 0, i.e. bit
for bit):

- FedAvg (McMahan et al. 2017) with every ``num_examples`` equal to 1;
- coordinate median (Yin et al. 2018), K odd and even (mean of the middle two);
- trimmed mean (Yin et al. 2018): both cut floor(beta K) values at each end, so the
  paper's definition (stated for an integer beta K) is extended the same way;
- Krum (Blanchard et al. 2017): the same K - f - 2 neighbours, the same scores (to
  rounding: Flower squares a norm, we sum squares), ties to the lowest index
  (``numpy.argmin`` in Flower, a stable sort in ours);
- multi-Krum whenever no two scores tie at the m-th place: the same kept set and
  the same unweighted mean of it (Flower's weighted mean with equal weights).

Differ (pinned down below): multi-Krum's choice among clients whose scores tie
exactly at the m-th place. The paper keeps "the m vectors of best score" and leaves
ties open; ours keeps the lowest indices, Flower keeps ``numpy.argsort(scores)[:m]``
with numpy's default sort, which is not stable, so its choice can depend on the
numpy build and the processor. Measured with numpy 2.4.6 on an AVX2 processor:
between clients x and -x (equal scores) it often keeps the higher index, and the
aggregates then differ by up to 0.67 of max |Theta^|.

Bulyan (El Mhamdi et al. 2018) has no baseline of ours: its precondition K >= 4f + 3,
its f = 0 case (the mean) and that it stays in the range of the data are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable

import numpy as np
import pytest

from clair_stats.evaluation import baselines, flower

RTOL = 1e-12

# (K, p, q, ties): K odd and even, a scalar, a vector and matrices.
CASES = [
    (5, 1, 1, False),
    (6, 3, 2, False),
    (7, 4, 3, False),
    (10, 6, 5, False),
    (11, 2, 2, False),
    (20, 3, 1, False),
    (5, 1, 1, True),
    (6, 3, 2, True),
    (9, 2, 3, True),
    (12, 4, 2, True),
    (21, 1, 1, True),
]
IDS = [f"K{k}-p{p}-q{q}-{'ties' if t else 'noties'}" for k, p, q, t in CASES]


def make_updates(n_clients: int, p: int, q: int, ties: bool) -> np.ndarray:
    """Seeded (K, p, q) updates; with ``ties`` on a half-integer grid, client 1 a
    copy of client 0 (exact ties of entries, distances and Krum scores)."""
    rng = np.random.default_rng([n_clients, p, q, int(ties)])
    updates = rng.standard_normal((n_clients, p, q))
    if ties:
        updates = np.round(2.0 * updates) / 2.0
        updates[1] = updates[0]
    return updates


def relative_difference(a: np.ndarray, b: np.ndarray, updates: np.ndarray) -> float:
    """max |a - b| over max |Theta^|: the error relative to the data's scale."""
    return float(np.max(np.abs(a - b)) / np.max(np.abs(updates)))


def krum_scores(updates: np.ndarray, n_byzantine: int) -> np.ndarray:
    """The paper's Krum score: sum of squared distances to the K - f - 2 nearest
    other clients (Blanchard et al. 2017, eq. of Krum)."""
    X = updates.reshape(len(updates), -1)
    sq = np.array([[np.sum((x - y) ** 2) for y in X] for x in X])
    np.fill_diagonal(sq, np.inf)
    return np.sort(sq, axis=1)[:, : len(X) - n_byzantine - 2].sum(axis=1)


def byzantine_counts(n_clients: int) -> range:
    """Every f with K > 2f + 2 (Krum's condition)."""
    return range((n_clients - 3) // 2 + 1)


# ------------------------------------------------------------------------- agree
@pytest.mark.parametrize(("n_clients", "p", "q", "ties"), CASES, ids=IDS)
def test_mean_agrees(n_clients, p, q, ties):
    """Flower's ``aggregate`` with equal num_examples is FedAvg's mean."""
    updates = make_updates(n_clients, p, q, ties)
    diff = relative_difference(
        flower.flower_mean(updates), baselines.fedavg(updates), updates
    )
    assert diff <= RTOL


@pytest.mark.parametrize(("n_clients", "p", "q", "ties"), CASES, ids=IDS)
def test_median_agrees(n_clients, p, q, ties):
    """Flower's ``aggregate_median`` is the coordinate median, K odd and even."""
    updates = make_updates(n_clients, p, q, ties)
    diff = relative_difference(
        flower.flower_median(updates), baselines.coordinate_median(updates), updates
    )
    assert diff <= RTOL


@pytest.mark.parametrize("trim", [0.0, 0.1, 0.2, 0.25, 0.3, 0.45])
@pytest.mark.parametrize(("n_clients", "p", "q", "ties"), CASES, ids=IDS)
def test_trimmed_mean_agrees(n_clients, p, q, ties, trim):
    """Flower's ``aggregate_trimmed_avg`` is our trimmed mean, for beta K whole or
    not."""
    updates = make_updates(n_clients, p, q, ties)
    diff = relative_difference(
        flower.flower_trimmed_mean(updates, trim),
        baselines.trimmed_mean(updates, trim),
        updates,
    )
    assert diff <= RTOL


@pytest.mark.parametrize(("n_clients", "trim", "cut"), [(7, 0.2, 1), (10, 0.29, 2)])
def test_trimmed_mean_cuts_floor_beta_k(n_clients, trim, cut):
    """Both cut floor(beta K) values at each end: Yin et al.'s beta-trimmed mean,
    whose beta K is a whole number, rounded down (7 * 0.2 = 1.4 -> 1)."""
    updates = make_updates(n_clients, 3, 2, ties=False)
    ordered = np.sort(updates, axis=0)
    paper = ordered[cut : n_clients - cut].mean(axis=0)
    for ours in (flower.flower_trimmed_mean, baselines.trimmed_mean):
        assert relative_difference(ours(updates, trim)[0], paper, updates) <= RTOL


@pytest.mark.parametrize(("n_clients", "p", "q", "ties"), CASES, ids=IDS)
def test_krum_agrees(n_clients, p, q, ties):
    """Flower's Krum picks the same client as ours (ties to the lowest index),
    the one of least score by the paper's definition, for every allowed f."""
    updates = make_updates(n_clients, p, q, ties)
    for f in byzantine_counts(n_clients):
        chosen = int(np.argmin(krum_scores(updates, f)))  # first minimum
        theirs = flower.flower_krum(updates, f)
        assert np.array_equal(theirs, baselines.krum(updates, f)), f
        assert np.array_equal(theirs[0], updates[chosen]), f


@pytest.mark.parametrize(("n_clients", "p", "q", "ties"), CASES, ids=IDS)
def test_multi_krum_agrees_without_a_tie_at_the_cut(n_clients, p, q, ties):
    """Where the m-th and (m+1)-th smallest scores differ, Flower's multi-Krum
    keeps the same m clients as ours and averages them without weights."""
    updates = make_updates(n_clients, p, q, ties)
    compared = 0
    for f in byzantine_counts(n_clients):
        ordered = np.sort(krum_scores(updates, f))
        for m in sorted({1, 2, n_clients - f, n_clients}):
            if m < n_clients and ordered[m - 1] == ordered[m]:
                continue  # a tie at the cut: test_multi_krum_breaks_ties_...
            theirs = flower.flower_multi_krum(updates, f, m)
            ours = baselines.multi_krum(updates, f, m)
            assert relative_difference(theirs, ours, updates) <= RTOL, (f, m)
            compared += 1
    assert compared > 0
    f = byzantine_counts(n_clients)[-1]  # the default m is K - f in both
    default = flower.flower_multi_krum(updates, f)
    assert np.array_equal(default, flower.flower_multi_krum(updates, f, n_clients - f))


def symmetric_updates(n_pairs: int, seed: int) -> np.ndarray:
    """Clients x_1, ..., x_n, -x_1, ..., -x_n on an integer grid: client i and
    i + n have exactly equal Krum scores, with different updates."""
    rng = np.random.default_rng(seed)
    half = rng.integers(-4, 5, size=(n_pairs, 2, 2)).astype(float)
    return np.concatenate([half, -half])


@pytest.mark.parametrize(("n_pairs", "seed"), [(3, 0), (4, 1), (5, 2), (8, 3)])
def test_multi_krum_breaks_ties_differently(n_pairs, seed):
    """Property: at every cut m where scores tie, for every f, both keep m clients
    of least score (the paper's rule, which leaves ties open): ours the lowest
    indices, Flower those of numpy's default (unstable) ``argsort``. The two
    aggregates differ exactly when these orders keep different sets."""
    updates = symmetric_updates(n_pairs, seed)
    n_clients = len(updates)
    cuts = 0
    for f in byzantine_counts(n_clients):
        scores = krum_scores(updates, f)  # exact: integer data
        ordered = np.sort(scores)
        for m in np.flatnonzero(ordered[:-1] == ordered[1:]) + 1:  # a tie at the cut
            lowest_index = np.argsort(scores, kind="stable")[:m]
            numpy_default = np.argsort(scores)[:m]
            for kept in (lowest_index, numpy_default):  # both are the paper's rule
                assert scores[kept].max() == ordered[m - 1]
                assert np.isin(np.flatnonzero(scores < ordered[m - 1]), kept).all()
            ours = baselines.multi_krum(updates, f, int(m))[0]
            theirs = flower.flower_multi_krum(updates, f, int(m))[0]
            own_mean = updates[lowest_index].mean(axis=0)
            numpy_mean = updates[numpy_default].mean(axis=0)
            assert relative_difference(ours, own_mean, updates) <= RTOL
            assert relative_difference(theirs, numpy_mean, updates) <= RTOL
            same_set = set(lowest_index.tolist()) == set(numpy_default.tolist())
            agree = relative_difference(theirs, ours, updates) <= RTOL
            assert agree == same_set, (f, m)
            cuts += 1
    assert cuts > 0


def test_krum_ties_between_symmetric_clients_go_to_the_lowest_index():
    """Exact score ties between different updates: Flower's ``argmin`` and our
    stable sort both take the lowest index."""
    updates = symmetric_updates(4, seed=1)
    for f in byzantine_counts(len(updates)):
        scores = krum_scores(updates, f)
        first = int(np.flatnonzero(scores == scores.min())[0])
        assert np.array_equal(flower.flower_krum(updates, f)[0], updates[first])
        assert np.array_equal(baselines.krum(updates, f)[0], updates[first])


# ------------------------------------------------------------------------ Bulyan
@pytest.mark.parametrize(
    ("n_clients", "n_byzantine", "message"),
    [
        (
            10,
            2,
            "at most n_byzantine = 1 is allowed, and n_byzantine = 2 needs at "
            "least 11 clients",
        ),
        (6, 1, "at most n_byzantine = 0 is allowed"),
        (2, 0, "Bulyan needs at least 3 clients"),
    ],
)
def test_bulyan_precondition(n_clients, n_byzantine, message):
    """K < 4f + 3 raises our ValueError, which says the largest f allowed."""
    updates = make_updates(n_clients, 2, 2, ties=False)
    with pytest.raises(ValueError, match="Bulyan needs K >= 4 n_byzantine \\+ 3") as e:
        flower.flower_bulyan(updates, n_byzantine)
    assert message in str(e.value)
    assert f"K = {n_clients}" in str(e.value)


@pytest.mark.parametrize(("n_clients", "p", "q", "ties"), CASES, ids=IDS)
def test_bulyan_without_byzantine_clients_is_the_mean(n_clients, p, q, ties):
    """f = 0: theta = beta = K, every client is picked and averaged."""
    updates = make_updates(n_clients, p, q, ties)
    diff = relative_difference(
        flower.flower_bulyan(updates, 0), baselines.fedavg(updates), updates
    )
    assert diff <= RTOL


@pytest.mark.parametrize(("n_clients", "n_byzantine"), [(7, 1), (11, 2), (12, 2)])
def test_bulyan_ignores_far_outliers(n_clients, n_byzantine):
    """f clients far away: Bulyan stays within the benign clients' range."""
    updates = make_updates(n_clients, 3, 2, ties=False)
    updates[:n_byzantine] = 1e6
    out = flower.flower_bulyan(updates, n_byzantine)[0]
    benign = updates[n_byzantine:]
    assert np.all(out >= benign.min(axis=0))
    assert np.all(out <= benign.max(axis=0))


# ---------------------------------------------------------------- shape, arguments
CALLS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "flower_mean": flower.flower_mean,
    "flower_median": flower.flower_median,
    "flower_trimmed_mean": lambda u: flower.flower_trimmed_mean(u, 0.2),
    "flower_krum": lambda u: flower.flower_krum(u, 2),
    "flower_multi_krum": lambda u: flower.flower_multi_krum(u, 2),
    "flower_bulyan": lambda u: flower.flower_bulyan(u, 2),
}


def test_every_aggregator_is_listed():
    """FLOWER_AGGREGATORS names the module's aggregators, each in ``__all__``."""
    assert set(flower.FLOWER_AGGREGATORS) == set(CALLS)
    assert set(flower.FLOWER_AGGREGATORS) < set(flower.__all__)


@pytest.mark.parametrize("name", flower.FLOWER_AGGREGATORS)
@pytest.mark.parametrize("n_clients", [11, 12])
def test_aggregate_is_broadcast_to_every_client(name, n_clients):
    """Each returns a new float64 (K, p, q) array whose K rows are equal, and
    leaves the updates unchanged."""
    updates = make_updates(n_clients, 4, 3, ties=False)
    before = updates.copy()
    out = CALLS[name](updates)
    assert out.shape == updates.shape
    assert out.dtype == np.float64
    assert np.array_equal(out, np.repeat(out[:1], n_clients, axis=0))
    assert not np.shares_memory(out, updates)
    assert np.array_equal(updates, before)


def test_arguments_are_checked_as_in_the_baselines():
    """The baselines' validators: Krum's K > 2f + 2, m <= K, trim in [0, 0.5)."""
    updates = make_updates(6, 2, 2, ties=False)
    with pytest.raises(ValueError, match="Krum needs K > 2 n_byzantine \\+ 2"):
        flower.flower_krum(updates, 2)
    with pytest.raises(ValueError, match="Krum needs K > 2 n_byzantine \\+ 2"):
        flower.flower_multi_krum(updates, 2)
    with pytest.raises(ValueError, match="m must be <= K = 6"):
        flower.flower_multi_krum(updates, 1, 7)
    with pytest.raises(ValueError, match="m must be >= 1"):
        flower.flower_multi_krum(updates, 1, 0)
    with pytest.raises(ValueError, match="trim"):
        flower.flower_trimmed_mean(updates, 0.5)
    with pytest.raises(ValueError, match="updates"):
        flower.flower_mean(np.zeros((3, 2)))


# ------------------------------------------------------------------ the import
def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_clair_stats_does_not_load_flwr():
    """``import clair_stats`` (and of this module) leaves flwr unloaded until an
    aggregator is called."""
    done = run(
        """
        import json, sys
        import clair_stats
        before = "flwr" in sys.modules
        from clair_stats.evaluation import flower
        module = "flwr" in sys.modules
        flower.flower_mean([[[1.0]], [[2.0]]])
        print(json.dumps([before, module, "flwr" in sys.modules]))
        """
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [False, False, True]


def test_without_flwr_the_error_names_the_extra():
    """Where flwr is not installed, a call says to install ``clair_stats[flower]``."""
    done = run(
        """
        import importlib.abc, sys

        class NotInstalled(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "flwr":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NotInstalled())
        from clair_stats.evaluation.flower import flower_median
        flower_median([[[1.0]], [[2.0]], [[3.0]]])
        """
    )
    assert done.returncode != 0
    assert "pip install 'clair_stats[flower]'" in done.stderr

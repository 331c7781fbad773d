"""Tests of the docs/pipeline.md §6 baselines, clair_stats.evaluation.baselines.

Closed forms on hand-made arrays, the defining property of the geometric median,
Krum's choice under far outliers, the noiseless fixed point of ``svd_refine`` and
the T4 (docs/claims.md §4.5) oracle mean squared error of ``oracle_clair``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from clair_stats.core.exceptions import ConvergenceWarning
from clair_stats.evaluation.baselines import (
    coordinate_median,
    fedavg,
    geometric_median,
    krum,
    local,
    multi_krum,
    oracle_clair,
    svd_refine,
    trimmed_mean,
)
from clair_stats.simulate.model import FederatedModel


def scalars(values: list[float]) -> np.ndarray:
    """K clients with p = q = 1."""
    return np.asarray(values, dtype=float)[:, None, None]


def unit_vectors_sum(points: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sum_j (x_j - y) / ||x_j - y||: minus the gradient of sum_j ||x_j - y||."""
    diff = points - y
    return (diff / np.linalg.norm(diff, axis=1, keepdims=True)).sum(axis=0)


def assert_broadcast(result: np.ndarray, point: np.ndarray) -> None:
    """Every client holds ``point``."""
    for k in range(result.shape[0]):
        np.testing.assert_allclose(result[k], point, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ local, fedavg
def test_local_is_a_writable_copy() -> None:
    updates = np.arange(12.0).reshape(2, 3, 2)
    updates.setflags(write=False)
    result = local(updates)
    np.testing.assert_array_equal(result, updates)
    result[0, 0, 0] = -1.0  # writable, and the input is untouched
    assert updates[0, 0, 0] == 0.0


def test_fedavg_closed_form() -> None:
    updates = np.array([[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 12.0]]])
    result = fedavg(updates)
    assert result.shape == updates.shape
    assert_broadcast(result, np.array([[3.0, 6.0]]))


# ------------------------------------------------------- coordinate-wise estimators
def test_coordinate_median_odd_count_mixes_clients() -> None:
    # entry 0: (1, 5, 3) -> 3 from client 2; entry 1: (4, 2, 9) -> 4 from client 0
    updates = np.array([[[1.0], [4.0]], [[5.0], [2.0]], [[3.0], [9.0]]])
    assert_broadcast(coordinate_median(updates), np.array([[3.0], [4.0]]))


def test_coordinate_median_even_count_averages_middle_pair() -> None:
    assert_broadcast(coordinate_median(scalars([0.0, 1.0, 3.0, 100.0])), [[2.0]])


@pytest.mark.parametrize(
    ("trim", "expected"),
    [
        # column 0 = (5, 1, 100, 3, -50) sorted (-50, 1, 3, 5, 100);
        # column 1 = (0, 0, 0, 0, 10).
        (0.0, [11.8, 2.0]),  # no cut: the mean
        (0.2, [3.0, 0.0]),  # floor(0.2 * 5) = 1 cut each end: mean(1, 3, 5)
        (0.3, [3.0, 0.0]),  # floor(1.5) = 1: trims conservatively
        (0.4, [3.0, 0.0]),  # floor(2.0) = 2: the median
    ],
)
def test_trimmed_mean_hand_computed(trim: float, expected: list[float]) -> None:
    updates = np.array([[5.0, 0.0], [1.0, 0.0], [100.0, 0.0], [3.0, 0.0], [-50.0, 10]])
    result = trimmed_mean(updates[:, None, :], trim=trim)
    assert_broadcast(result, np.array([expected]))


def test_trimmed_mean_default_resists_one_outlier() -> None:
    result = trimmed_mean(scalars([1.0, 2.0, 3.0, 4.0, 1e9]))  # trim = 0.2
    assert_broadcast(result, [[3.0]])


# -------------------------------------------------------------- geometric median
def test_geometric_median_collinear_odd_count_is_middle_point() -> None:
    rng = np.random.default_rng(0)
    offset, direction = rng.standard_normal(6), rng.standard_normal(6)
    direction /= np.linalg.norm(direction)
    t = np.array([0.0, 1.0, 2.0, 7.0, 100.0])  # the mean, t = 22, is far off
    points = offset + t[:, None] * direction
    result = geometric_median(points.reshape(5, 3, 2))
    assert_broadcast(result, (offset + 2.0 * direction).reshape(3, 2))


def test_geometric_median_start_on_optimal_data_point() -> None:
    """Symmetric cross {0, +-e1, +-e2}: the mean is the data point 0, which is the
    median; plain Weiszfeld divides by zero there (Vardi-Zhang does not)."""
    points = np.array([[0.0, 0.0], [1, 0], [-1, 0], [0, 1], [0, -1]])
    result = geometric_median(points[:, :, None])
    assert np.isfinite(result).all()
    assert_broadcast(result, np.zeros((2, 1)))


def test_geometric_median_leaves_non_optimal_data_point() -> None:
    """Points -3, 0, 1, 1, 1 on a line: the start (the mean) is the data point 0,
    where ||R|| = 2 > 1, so the iteration must move, to the triple point 1."""
    points = np.array([[0.0, 0.0], [1, 0], [1, 0], [1, 0], [-3, 0]])
    assert_broadcast(geometric_median(points[:, :, None]), np.array([[1.0], [0.0]]))


def test_geometric_median_one_vardi_zhang_step_by_hand() -> None:
    """Same points, one iteration from y = 0 (a data point, eta = 1). Over the other
    points: weights 1, 1, 1, 1/3, so T~ = (3 - 1) / (3 + 1/3) = 0.6 and
    R = 3 (1) + (-1) = 2; the step is (1 - 1/2) 0.6 + (1/2) 0 = 0.3 (plain
    Weiszfeld dropping the point would give 0.6)."""
    points = np.array([[0.0, 0.0], [1, 0], [1, 0], [1, 0], [-3, 0]])
    with pytest.warns(ConvergenceWarning):
        result = geometric_median(points[:, :, None], max_iter=1)
    assert_broadcast(result, np.array([[0.3], [0.0]]))


def test_geometric_median_symmetric_configuration() -> None:
    """A configuration symmetric about c (x and 2c - x both present) has median c."""
    rng = np.random.default_rng(1)
    half = rng.standard_normal((4, 6)) * np.array([1, 2, 3, 1, 5, 1])
    c = rng.standard_normal(6)
    points = np.concatenate([c + half, c - half])
    points = points[rng.permutation(8)]
    assert_broadcast(geometric_median(points.reshape(8, 2, 3)), c.reshape(2, 3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geometric_median_zero_gradient(seed: int) -> None:
    """Defining property: at a median y that is no data point, the unit vectors
    from y to the data sum to zero (while the coordinate median does not)."""
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((7, 6)) * rng.uniform(0.5, 5.0, size=6)
    points[0] += 40.0  # one far client
    y = geometric_median(points.reshape(7, 3, 2))[0].ravel()
    assert np.min(np.linalg.norm(points - y, axis=1)) > 1e-3  # not a data point
    assert np.linalg.norm(unit_vectors_sum(points, y)) < 1e-7
    med = coordinate_median(points.reshape(7, 3, 2))[0].ravel()
    assert np.linalg.norm(unit_vectors_sum(points, med)) > 1e-3


def test_geometric_median_all_equal() -> None:
    updates = np.ones((4, 2, 3))
    assert_broadcast(geometric_median(updates), np.ones((2, 3)))


def test_geometric_median_warns_at_max_iter() -> None:
    points = np.random.default_rng(0).standard_normal((6, 3, 2))
    with pytest.warns(ConvergenceWarning, match="did not converge in max_iter=1"):
        result = geometric_median(points, max_iter=1)
    assert np.isfinite(result).all()


# ------------------------------------------------------------------ Krum
def test_krum_hand_computed() -> None:
    """Values 0, 1, 3, 10, 20 and f = 1: K - f - 2 = 2 neighbours. Scores:
    0 -> 1 + 9 = 10, 1 -> 1 + 4 = 5, 3 -> 4 + 9 = 13, 10 -> 49 + 81 = 130,
    20 -> 100 + 289 = 389. (With 3 neighbours, 3 would win: 62 < 86.)"""
    updates = scalars([0.0, 1.0, 3.0, 10.0, 20.0])
    assert_broadcast(krum(updates, n_byzantine=1), [[1.0]])
    assert_broadcast(multi_krum(updates, n_byzantine=1, m=2), [[0.5]])
    assert_broadcast(multi_krum(updates, n_byzantine=1, m=3), [[4.0 / 3.0]])
    # default m = K - f = 4: drops only the worst score (20)
    assert_broadcast(multi_krum(updates, n_byzantine=1), [[3.5]])


def far_outliers(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """K = 10 clients, the f = 3 last ones far from the 7 inliers."""
    rng = np.random.default_rng(seed)
    updates = rng.standard_normal((10, 4, 2))
    updates[7:] += 1e3 * rng.standard_normal((3, 4, 2))
    inlier = np.arange(10) < 7
    return updates, inlier


def test_krum_picks_an_inlier() -> None:
    updates, inlier = far_outliers()
    chosen = krum(updates, n_byzantine=3)[0]
    matches = [k for k in range(10) if np.array_equal(updates[k], chosen)]
    assert len(matches) == 1
    assert inlier[matches[0]]


def test_multi_krum_default_m_averages_the_inliers() -> None:
    updates, inlier = far_outliers()
    result = multi_krum(updates, n_byzantine=3)  # m = K - f = 7
    assert_broadcast(result, updates[inlier].mean(axis=0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_krum_with_m_1_is_krum(seed: int) -> None:
    updates = np.random.default_rng(seed).standard_normal((9, 3, 2))
    np.testing.assert_array_equal(multi_krum(updates, 2, m=1), krum(updates, 2))


# ------------------------------------------------------ subspace and refinement
def test_svd_refine_noiseless_low_rank_is_a_fixed_point() -> None:
    """All benign, no noise: Theta_k = A B_k^T lies in span(A), the top-r left
    singular space of M, so P_A^ Theta_k = Theta_k and P_A^^perp Thetabar = 0."""
    sample = FederatedModel(p=20, q=3, rank=3, n_clients=8, contamination=0.0).sample(
        seed=0
    )
    result = svd_refine(sample.updates, rank=3)
    scale = np.linalg.norm(sample.updates)
    np.testing.assert_allclose(result, sample.updates, rtol=0, atol=1e-12 * scale)


def test_svd_refine_differences_span_the_top_singular_space() -> None:
    """After refinement Theta~_k - Theta~_j = P_A^ (Theta^_k - Theta^_j): every
    difference lies in the top-r left singular space of M."""
    sample = FederatedModel(p=15, q=2, rank=2, n_clients=10, contamination=0.2).sample(
        noise=0.3, seed=3
    )
    r = 2
    result = svd_refine(sample.updates, rank=r)
    M = sample.updates.transpose(1, 0, 2).reshape(15, -1)
    U = np.linalg.svd(M)[0][:, :r]
    diffs = (result - result[0]).transpose(1, 0, 2).reshape(15, -1)
    assert np.linalg.norm(diffs - U @ (U.T @ diffs)) < 1e-10 * np.linalg.norm(diffs)
    assert not np.allclose(result, sample.updates)  # it did change something


def test_svd_refine_full_rank_returns_updates() -> None:
    updates = np.random.default_rng(0).standard_normal((4, 5, 2))
    np.testing.assert_allclose(svd_refine(updates, rank=5), updates, atol=1e-12)


def test_oracle_clair_matches_spec_t4() -> None:
    """T4 (docs/claims.md §4.5) by Monte Carlo over clients.

    Benign, Theta_0 = 0, H_k = 0, E_k iid N(0, tau^2) entries. Local error E_k:
    E||E_k||_F^2 = p q tau^2. Oracle error, with P_A^perp Theta_k = 0:
    Theta~_k - Theta_k = P_A E_k + P_A^perp Ebar, the two terms orthogonal, so
    ||.||_F^2 = tau^2 chi^2_{rq} (independent over k) + tau^2 chi^2_{(p-r)q} / K
    (one value shared by all k): mean r q tau^2 + (p - r) q tau^2 / K.
    Standard error of the mean over clients: the per-client sample variance
    estimates only the independent part; the shared part adds its variance
    2 (p - r) q tau^4 / K^2 in full. The check is |mean - formula| <= 4 SE.
    """
    p, q, r, K, tau = 30, 4, 3, 50, 0.1
    sample = FederatedModel(p=p, q=q, rank=r, n_clients=K, contamination=0.0).sample(
        noise=tau, seed=0
    )
    oracle = oracle_clair(sample.updates, sample.subspace, sample.benign)
    sq_oracle = np.sum((oracle - sample.truth) ** 2, axis=(1, 2))
    sq_local = np.sum((local(sample.updates) - sample.truth) ** 2, axis=(1, 2))

    mse_oracle = r * q * tau**2 + (p - r) * q * tau**2 / K
    se_oracle = math.sqrt(
        np.var(sq_oracle, ddof=1) / K + 2 * (p - r) * q * tau**4 / K**2
    )
    assert abs(sq_oracle.mean() - mse_oracle) <= 4 * se_oracle

    mse_local = p * q * tau**2  # independent over clients: the plain SE
    se_local = math.sqrt(np.var(sq_local, ddof=1) / K)
    assert abs(sq_local.mean() - mse_local) <= 4 * se_local

    # the gain G = (p - r) q tau^2 (1 - 1/K) = 1.06 dwarfs both bands (~0.03, 0.06)
    assert sq_oracle.mean() + 4 * se_oracle < sq_local.mean() - 4 * se_local


def test_oracle_clair_ignores_contaminated_clients() -> None:
    """Benign refined estimates do not depend on S^c; S^c keeps its local value."""
    sample = FederatedModel(p=12, q=2, rank=2, n_clients=10, contamination=3).sample(
        noise=0.1, seed=0
    )
    moved = np.array(sample.updates)
    moved[~sample.benign] *= 1e6
    a = oracle_clair(sample.updates, sample.subspace, sample.benign)
    b = oracle_clair(moved, sample.subspace, sample.benign)
    np.testing.assert_allclose(a[sample.benign], b[sample.benign], atol=1e-12)
    np.testing.assert_array_equal(b[~sample.benign], moved[~sample.benign])
    # the non-robust svd_refine is dragged off by the same change
    c = svd_refine(sample.updates, rank=2)[sample.benign]
    d = svd_refine(moved, rank=2)[sample.benign]
    assert np.linalg.norm(c - d) > 1.0


# ------------------------------------------------------------------ bad input
AGGREGATORS: list[Callable[[np.ndarray], np.ndarray]] = [
    local,
    fedavg,
    coordinate_median,
    trimmed_mean,
    geometric_median,
    lambda u: krum(u, 0),
    lambda u: multi_krum(u, 0),
    lambda u: svd_refine(u, 1),
    lambda u: oracle_clair(u, np.eye(3)[:, :1], np.ones(u.shape[0], dtype=bool)),
]


@pytest.mark.parametrize("func", AGGREGATORS)
def test_updates_are_validated(func: Callable[[np.ndarray], np.ndarray]) -> None:
    with pytest.raises(ValueError, match=r"must have shape \(K, p, q\)"):
        func(np.ones((3, 3)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        func(np.full((3, 3, 1), np.nan))


@pytest.mark.parametrize("trim", [-0.1, 0.5, 0.7])
def test_trim_out_of_range(trim: float) -> None:
    with pytest.raises(ValueError, match=r"trim must be in \[0, 0.5\)"):
        trimmed_mean(np.ones((4, 2, 2)), trim=trim)


def test_trim_must_be_a_number() -> None:
    with pytest.raises(TypeError, match=r"trim must be a real number in \[0, 0.5\)"):
        trimmed_mean(np.ones((4, 2, 2)), trim="0.2")  # type: ignore[arg-type]


def test_geometric_median_bad_parameters() -> None:
    updates = np.ones((4, 2, 2))
    with pytest.raises(ValueError, match="tol must be finite and > 0"):
        geometric_median(updates, tol=0.0)
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        geometric_median(updates, max_iter=0)
    with pytest.raises(TypeError, match="max_iter must be an integer"):
        geometric_median(updates, max_iter=10.0)  # type: ignore[arg-type]


def test_krum_bad_n_byzantine() -> None:
    updates = np.ones((5, 2, 2))
    with pytest.raises(ValueError, match="n_byzantine must be >= 0"):
        krum(updates, -1)
    with pytest.raises(ValueError, match=r"K > 2 n_byzantine \+ 2.*at most n_byz"):
        krum(updates, 2)  # 2 * 2 + 2 = 6 >= 5
    with pytest.raises(TypeError, match="n_byzantine must be an integer"):
        krum(updates, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 3 clients"):
        krum(np.ones((2, 2, 2)), 0)


def test_multi_krum_bad_m() -> None:
    updates = np.ones((5, 2, 2))
    with pytest.raises(ValueError, match="m must be >= 1"):
        multi_krum(updates, 1, m=0)
    with pytest.raises(ValueError, match="m must be <= K = 5"):
        multi_krum(updates, 1, m=6)


@pytest.mark.parametrize("rank", [0, 5])
def test_svd_refine_rank_out_of_range(rank: int) -> None:
    updates = np.ones((2, 6, 2))  # min(p, Kq) = min(6, 4) = 4
    with pytest.raises(ValueError, match=r"rank must (be >= 1|be in \[1, min)"):
        svd_refine(updates, rank=rank)


def test_svd_refine_rank_must_be_int() -> None:
    with pytest.raises(TypeError, match="rank must be an integer"):
        svd_refine(np.ones((2, 6, 2)), rank=True)  # type: ignore[arg-type]


def test_oracle_clair_bad_subspace_and_benign() -> None:
    updates = np.ones((4, 5, 2))
    A = np.eye(5)[:, :2]
    benign = np.ones(4, dtype=bool)
    with pytest.raises(ValueError, match="must have p = 5 rows"):
        oracle_clair(updates, np.eye(6)[:, :2], benign)
    with pytest.raises(ValueError, match="orthonormal columns"):
        oracle_clair(updates, 2.0 * A, benign)
    with pytest.raises(ValueError, match=r"shape \(p, r\)"):
        oracle_clair(updates, A[:, 0], benign)
    with pytest.raises(TypeError, match="boolean mask"):
        oracle_clair(updates, A, np.ones(4, dtype=int))
    with pytest.raises(ValueError, match=r"shape \(K,\) = \(4,\)"):
        oracle_clair(updates, A, np.ones(3, dtype=bool))

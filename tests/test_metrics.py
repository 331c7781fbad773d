"""Tests of the metrics of docs/pipeline.md §7 (clair_stats.evaluation.metrics) by
hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clair_stats.evaluation.metrics import (
    DetectionScores,
    client_errors,
    detection_scores,
    principal_angles,
    projection_distance,
    relative_change,
)


def rotated_pair(
    angles: list[float], p: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Bases A, A^ of two r-dim subspaces of R^p at the given principal angles,
    in a random orthonormal frame (needs p >= 2r)."""
    r = len(angles)
    frame = np.linalg.qr(np.random.default_rng(seed).standard_normal((p, p)))[0]
    A = frame[:, :r]
    A_hat = np.cos(angles) * frame[:, :r] + np.sin(angles) * frame[:, r : 2 * r]
    return A_hat, A


def dense_distance(A_hat: np.ndarray, A: np.ndarray, norm: str) -> float:
    """||A^ A^^T - A A^T|| from the p x p projectors."""
    diff = A_hat @ A_hat.T - A @ A.T
    return float(np.linalg.norm(diff, "fro" if norm == "fro" else 2))


def random_basis(p: int, r: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((p, r)))[0]


# ------------------------------------------------------------------ subspaces
def test_one_dimensional_subspaces_at_known_angle() -> None:
    theta = 0.3
    A = np.array([[1.0], [0.0], [0.0]])
    A_hat = np.array([[math.cos(theta)], [math.sin(theta)], [0.0]])
    assert projection_distance(A_hat, A) == pytest.approx(math.sqrt(2) * math.sin(0.3))
    assert projection_distance(A_hat, A, norm="op") == pytest.approx(math.sin(theta))
    np.testing.assert_allclose(principal_angles(A_hat, A), [theta])


def test_two_dimensional_angles_sorted_and_norms() -> None:
    A_hat, A = rotated_pair([0.7, 0.2], p=7)  # deliberately given descending
    np.testing.assert_allclose(principal_angles(A_hat, A), [0.2, 0.7], rtol=1e-12)
    fro = math.sqrt(2 * (math.sin(0.2) ** 2 + math.sin(0.7) ** 2))
    assert projection_distance(A_hat, A) == pytest.approx(fro, rel=1e-12)
    assert projection_distance(A_hat, A, "op") == pytest.approx(math.sin(0.7))
    assert projection_distance(A, A_hat) == pytest.approx(fro, rel=1e-12)  # symmetric


def test_different_ranks() -> None:
    """span(e1) inside span(e1, e2): P^ - P = e2 e2^T, norm 1; one angle, 0."""
    I4 = np.eye(4)
    assert projection_distance(I4[:, :2], I4[:, :1]) == pytest.approx(1.0)
    assert projection_distance(I4[:, :2], I4[:, :1], "op") == pytest.approx(1.0)
    np.testing.assert_allclose(principal_angles(I4[:, :2], I4[:, :1]), [0.0])


def test_zero_subspace() -> None:
    """P^ = 0: the distance is ||P_A||: sqrt(r) (Frobenius), 1 (operator)."""
    A = np.eye(5)[:, :2]
    assert projection_distance(np.zeros((5, 0)), A) == pytest.approx(math.sqrt(2))
    assert projection_distance(np.zeros((5, 0)), A, "op") == pytest.approx(1.0)
    assert projection_distance(np.zeros((5, 0)), np.zeros((5, 0))) == 0.0


@pytest.mark.parametrize(("r_hat", "r"), [(2, 2), (3, 2), (1, 4), (4, 4)])
@pytest.mark.parametrize("norm", ["fro", "op"])
def test_projection_distance_matches_dense_projectors(
    r_hat: int, r: int, norm: str
) -> None:
    for seed in range(3):
        A_hat, A = random_basis(9, r_hat, seed), random_basis(9, r, seed + 10)
        assert projection_distance(A_hat, A, norm) == pytest.approx(
            dense_distance(A_hat, A, norm), rel=1e-10
        )


def test_projection_distance_basis_invariant() -> None:
    A_hat, A = random_basis(8, 3, 0), random_basis(8, 3, 1)
    Q = random_basis(3, 3, 2)  # a rotation within each subspace
    for norm in ("fro", "op"):
        assert projection_distance(A_hat @ Q, A @ Q.T, norm) == pytest.approx(
            projection_distance(A_hat, A, norm), rel=1e-12
        )


def test_projection_distance_accurate_for_tiny_angles() -> None:
    """At angle 1e-10 the distance is sqrt(2) 1e-10 to full relative accuracy
    (r + r^ - 2 ||A^^T A||_F^2 would give about 1e-8 or 0)."""
    A_hat, A = rotated_pair([1e-10, 3e-11], p=6)
    expected = math.sqrt(2 * (math.sin(1e-10) ** 2 + math.sin(3e-11) ** 2))
    assert projection_distance(A_hat, A) == pytest.approx(expected, rel=1e-6)
    assert projection_distance(A_hat, A, "op") == pytest.approx(1e-10, rel=1e-6)


def test_subspace_bad_input() -> None:
    A = np.eye(5)[:, :2]
    with pytest.raises(ValueError, match="orthonormal columns"):
        projection_distance(A + 1e-6, A)
    with pytest.raises(ValueError, match="orthonormal columns"):
        principal_angles(A, 3.0 * A)
    with pytest.raises(ValueError, match="A must have p = 5 rows"):
        projection_distance(A, np.eye(4)[:, :2])
    with pytest.raises(ValueError, match=r"shape \(p, r\).*v\[:, None\]"):
        projection_distance(A[:, 0], A)
    with pytest.raises(ValueError, match="norm must be one of"):
        projection_distance(A, A, norm="nuc")
    with pytest.raises(ValueError, match="at least 1 column"):
        principal_angles(np.zeros((5, 0)), A)
    with pytest.raises(ValueError, match="NaN or infinite"):
        projection_distance(np.full((5, 1), np.nan), A)


# ------------------------------------------------------------------ detection
def test_detection_scores_hand_computed() -> None:
    flagged = np.array([True, True, False, False, True])
    contaminated = np.array([True, False, False, True, True])
    scores = detection_scores(flagged, contaminated)
    assert scores == DetectionScores(
        precision=2 / 3,
        recall=2 / 3,
        exact=False,
        n_flagged=3,
        n_contaminated=3,
        false_positives=1,
        false_negatives=1,
    )
    assert "precision=0.667" in repr(scores)


def test_detection_scores_unbalanced() -> None:
    flagged = np.array([True, False, False, False])
    contaminated = np.array([True, True, True, False])
    scores = detection_scores(flagged, contaminated)
    assert (scores.precision, scores.recall) == (1.0, pytest.approx(1 / 3))
    assert (scores.false_positives, scores.false_negatives) == (0, 2)


def test_detection_scores_empty_conventions() -> None:
    none = np.zeros(4, dtype=bool)
    some = np.array([False, True, False, False])
    nothing_flagged = detection_scores(none, some)
    assert nothing_flagged.precision == 1.0
    assert nothing_flagged.recall == 0.0
    assert not nothing_flagged.exact
    nothing_contaminated = detection_scores(some, none)
    assert nothing_contaminated.recall == 1.0
    assert nothing_contaminated.precision == 0.0
    both = detection_scores(none, none)
    assert (both.precision, both.recall, both.exact) == (1.0, 1.0, True)


def test_detection_scores_exact() -> None:
    mask = np.array([False, True, True, False, False])
    scores = detection_scores(mask, mask.copy())
    assert scores.exact
    assert (scores.precision, scores.recall) == (1.0, 1.0)


def test_detection_scores_bad_input() -> None:
    with pytest.raises(TypeError, match="flagged must be a boolean mask"):
        detection_scores(np.array([1, 0, 1]), np.array([True, False, True]))
    with pytest.raises(ValueError, match=r"contaminated must have shape \(K,\) = \(3"):
        detection_scores(np.array([True, False, True]), np.array([True, False]))


# ------------------------------------------------------------------ estimates
def test_client_errors_hand_computed() -> None:
    truth = np.zeros((3, 2, 1))
    estimates = np.array([[[3.0], [4.0]], [[0.0], [0.0]], [[-1.0], [0.0]]])
    np.testing.assert_allclose(client_errors(estimates, truth), [5.0, 0.0, 1.0])
    np.testing.assert_allclose(client_errors(truth + 1.0, truth + 1.0), 0.0)


def test_client_errors_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="same shape"):
        client_errors(np.zeros((3, 2, 1)), np.zeros((3, 1, 2)))


def test_relative_change_hand_computed() -> None:
    np.testing.assert_allclose(
        relative_change([1.0, 3.0, 2.0], [2.0, 2.0, 2.0]), [-0.5, 0.5, 0.0]
    )


def test_relative_change_bad_input() -> None:
    with pytest.raises(ValueError, match=r"local_errors is 0 for client\(s\) \[1\]"):
        relative_change([1.0, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="errors must be finite and >= 0"):
        relative_change([-1.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="same shape"):
        relative_change([1.0, 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"must have shape \(K,\)"):
        relative_change(np.ones((2, 2)), np.ones((2, 2)))

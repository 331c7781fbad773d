"""clair(): the pipeline of docs/pipeline.md §3 on simulated federations."""

from __future__ import annotations

import numpy as np
import pytest

from clair_stats import FederatedModel
from clair_stats.pipeline.estimator import clair
from clair_stats.pipeline.refine import refine


def _benign_mse(estimates, sample):
    errors = np.sum((estimates - sample.truth) ** 2, axis=(1, 2))
    return float(errors[sample.benign].mean())


def test_noiseless_support_detection_and_refinement_are_exact():
    """Noiseless P0: S^ = S exactly and refinement returns the truth on S."""
    sample = FederatedModel(p=30, q=3, rank=2, n_clients=30).sample(seed=1)
    result = clair(sample.updates, tol=1e-10)
    np.testing.assert_array_equal(result.collaborative, sample.benign)
    assert result.rank == 2
    np.testing.assert_allclose(
        result.refined[sample.benign], sample.truth[sample.benign], atol=1e-6
    )
    # flagged clients keep their local estimate
    np.testing.assert_array_equal(
        result.refined[sample.contaminated], sample.updates[sample.contaminated]
    )


@pytest.mark.parametrize("sigma", [None, 0.05])
def test_well_separated_contamination_is_detected_exactly(sigma):
    """detect='test' flags exactly S^c when delta_min >> tau sqrt((p - r) q)."""
    sample = FederatedModel(p=40, q=4, rank=3, n_clients=40).sample(noise=0.05, seed=0)
    result = clair(sample.updates, rank=3, detect="test", sigma=sigma)
    np.testing.assert_array_equal(result.collaborative, sample.benign)
    assert result.p_values.shape == (40,)
    assert "flagged clients" in result.summary()


def test_side_right_is_the_transposed_problem():
    """side='right' equals running CLAIR on the transposes."""
    sample = FederatedModel(p=6, q=25, rank=2, n_clients=20).sample(seed=2)
    transposed = np.ascontiguousarray(sample.updates.transpose(0, 2, 1))
    right = clair(sample.updates, side="right", tol=1e-10)
    left = clair(transposed, tol=1e-10)
    np.testing.assert_allclose(
        right.refined, left.refined.transpose(0, 2, 1), atol=1e-12
    )
    np.testing.assert_array_equal(right.collaborative, left.collaborative)


def test_center_recovers_a_large_unknown_backbone():
    """center=True: P_A^perp c^ = P_A^perp Theta_0 and exact detection."""
    sample = FederatedModel(
        p=30, q=3, rank=2, n_clients=40, center=True, backbone_scale=100.0
    ).sample(seed=4)
    result = clair(sample.updates, center=True, tol=1e-10)
    a = sample.subspace
    perp = np.eye(30) - a @ a.T
    np.testing.assert_allclose(
        perp @ result.decomposition.center, perp @ sample.backbone, atol=1e-5
    )
    np.testing.assert_array_equal(result.collaborative, sample.benign)


def test_refinement_gain_matches_t4_with_oracle_inputs():
    """Oracle refinement: benign MSE = r q tau^2 + (p - r) q tau^2 / |S| (T4
    (docs/claims.md §4.5)).

    Over R replicates, the mean of the per-client squared errors has a standard
    error estimated from the replicates; the formula must lie within 4 of them.
    """
    p, q, r, k, tau = 20, 2, 2, 10, 0.1
    model = FederatedModel(p=p, q=q, rank=r, n_clients=k, contamination=0.0)
    errors = []
    for seed in range(300):
        sample = model.sample(noise=tau, seed=seed)
        refined = refine(sample.updates, sample.subspace, sample.benign)
        errors.append(np.sum((refined - sample.truth) ** 2, axis=(1, 2)).mean())
    errors = np.asarray(errors)
    predicted = r * q * tau**2 + (p - r) * q * tau**2 / k
    assert abs(errors.mean() - predicted) <= 4 * errors.std(ddof=1) / np.sqrt(300)


def test_clair_beats_local_and_fedavg_on_the_standard_scenario():
    """CLAIR's benign MSE is below local's and FedAvg's (T4: the gain is
    (p - r) q tau^2 (1 - 1/|S|), 85% of the local MSE here)."""
    sample = FederatedModel(p=40, q=4, rank=3, n_clients=40).sample(noise=0.05, seed=7)
    result = clair(sample.updates, rank=3, detect="test")
    local = _benign_mse(sample.updates, sample)
    fedavg = _benign_mse(
        np.broadcast_to(sample.updates.mean(0), sample.updates.shape), sample
    )
    ours = _benign_mse(result.refined, sample)
    assert ours < 0.5 * local
    assert ours < fedavg


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"side": "up"}, "side"),
        ({"detect": "vote"}, "detect"),
        ({"mode": "constrained"}, "mode"),
        ({"mode": "penalized"}, "noiseless"),
        ({"rank": 0}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"detect": "test", "alpha": 1.5}, "alpha"),
        ({"detect": "test", "correction": "sidak2"}, "correction"),
        ({"detect": "test", "alpha": "0.05"}, "alpha"),
        ({"detect": "test", "sigma": -1.0}, "sigma"),
        ({"detect": "test", "sigma": np.ones(3)}, "sigma"),
        ({"detect": "test", "sigma": np.array([np.nan] * 10)}, "sigma"),
        ({"detect": "test", "mode": "exact", "sigma": "a"}, "sigma"),
        ({"support_tol": 0.0}, "support_tol"),
        ({"lam": -1.0}, "lam"),
        ({"weights": np.ones(3)}, "weights"),
        ({"solver": "mosek"}, "solver"),
        ({"center": "yes"}, "center"),
        ({"rank": 11}, "rank"),
    ],
)
def test_bad_arguments(kwargs, match):
    """Each bad argument gets a clear error naming it."""
    sample = FederatedModel(p=10, q=2, rank=2, n_clients=10).sample(seed=0)
    with pytest.raises((ValueError, TypeError), match=match):
        clair(sample.updates, **kwargs)

"""Tests of the docs/model.md §2 generator, clair_stats.simulate.model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clair_stats.simulate.contamination import CONTAMINATION_TYPES
from clair_stats.simulate.model import FederatedModel
from clair_stats.simulate.sample import FederatedSample

P, Q, R, K = 24, 4, 3, 15


def make(**kwargs: object) -> FederatedModel:
    base: dict[str, object] = {"p": P, "q": Q, "rank": R, "n_clients": K}
    base.update(kwargs)
    return FederatedModel(**base)  # type: ignore[arg-type]


def dev(sample: FederatedSample) -> np.ndarray:
    """Theta_k - Theta_0, stacked."""
    return sample.truth - sample.backbone


def proj(sample: FederatedSample, X: np.ndarray) -> np.ndarray:
    """P_A X."""
    A = sample.subspace
    return A @ (A.T @ X)


def fro(X: np.ndarray) -> np.ndarray:
    """Frobenius norm of each block of a (K, p, q) stack."""
    return np.linalg.norm(X, axis=(1, 2))


def benign_rms(sample: FederatedSample) -> float:
    """sqrt(mean over j in S of ||Theta_j - Theta_0||_F^2): the matched norm."""
    return math.sqrt(float(np.mean(fro(dev(sample)[sample.benign]) ** 2)))


# ------------------------------------------------------------------ shapes, basics
@pytest.mark.parametrize("kind", CONTAMINATION_TYPES)
def test_shapes_and_dtypes(kind: str) -> None:
    s = make(contamination_type=kind, center=True).sample(noise=0.1, seed=0)
    for arr in (s.updates, s.truth, s.low_rank_truth, s.sparse_truth):
        assert arr.shape == (K, P, Q)
        assert arr.dtype == np.float64
    assert s.subspace.shape == (P, R)
    assert s.backbone.shape == (P, Q)
    assert s.benign.shape == s.margin.shape == (K,)
    assert s.benign.dtype == np.bool_
    assert (s.n_clients, s.p, s.q, s.rank) == (K, P, Q, R)


def test_subspace_orthonormal() -> None:
    A = make().sample(seed=1).subspace
    np.testing.assert_allclose(A.T @ A, np.eye(R), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("contamination", "expected"),
    [(0.2, 3), (0.0, 0), (4, 4), (0, 0), (K - 1, K - 1), (0.1, 2), (np.int64(5), 5)],
)
def test_benign_count(contamination: float | int, expected: int) -> None:
    # gamma K = 1.5 for 0.1: halves round up.
    model = make(contamination=contamination)
    assert model.n_contaminated == expected
    s = model.sample(seed=2)
    assert int(s.benign.sum()) == K - expected
    np.testing.assert_array_equal(s.contaminated, ~s.benign)
    assert s.gamma == pytest.approx(expected / K)


def test_fraction_rounds_half_up() -> None:
    """gamma K = 2.5 gives 3 contaminated clients (not Python's round-half-even 2)."""
    model = FederatedModel(p=5, q=2, rank=1, n_clients=10, contamination=0.25)
    assert model.n_contaminated == 3
    assert int(model.sample(seed=0).contaminated.sum()) == 3


def test_contaminated_set_is_random() -> None:
    model = make(contamination=5)
    sets = {tuple(np.flatnonzero(model.sample(seed=i).contaminated)) for i in range(5)}
    assert len(sets) > 1


@pytest.mark.parametrize("kind", CONTAMINATION_TYPES)
def test_reproducible_from_seed(kind: str) -> None:
    model = make(contamination_type=kind, heterogeneity=0.3, center=True)
    a, b = model.sample(noise=0.5, seed=7), model.sample(noise=0.5, seed=7)
    c = model.sample(noise=0.5, seed=np.random.default_rng(7))
    for x in (b, c):
        for name in ("updates", "truth", "subspace", "benign", "backbone", "margin"):
            np.testing.assert_array_equal(getattr(a, name), getattr(x, name))
    d = model.sample(noise=0.5, seed=8)
    assert not np.array_equal(a.truth, d.truth)
    assert not np.array_equal(a.updates, d.updates)


def test_truth_does_not_depend_on_noise() -> None:
    model = make(heterogeneity=0.2)
    a, b = model.sample(noise=0.0, seed=3), model.sample(noise=2.0, seed=3)
    np.testing.assert_array_equal(a.truth, b.truth)
    np.testing.assert_array_equal(a.updates, a.truth)
    assert not np.array_equal(b.updates, b.truth)


def test_arrays_read_only() -> None:
    s = make().sample(seed=0)
    for name in ("updates", "truth", "subspace", "benign", "backbone", "margin"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(s, name)[0] = 0
    with pytest.raises(ValueError, match="read-only"):
        s.low_rank_truth[0] = 0


def test_repr_is_short() -> None:
    text = repr(make(contamination=3, contamination_type="margin").sample(seed=0))
    assert "contaminated=3" in text
    assert "'margin'" in text
    assert len(text) < 200


# ------------------------------------------------------------------ benign clients
@pytest.mark.parametrize("eta", [0.0, 0.7, 5.0])
def test_benign_heterogeneity(eta: float) -> None:
    s = make(heterogeneity=eta, center=True).sample(seed=4)
    D = dev(s)[s.benign]
    off = D - proj(s, D)  # H_k = P_A^perp (Theta_k - Theta_0)
    np.testing.assert_allclose(fro(off), eta, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.margin[s.benign], eta, rtol=1e-12, atol=1e-12)
    # P_A H_k = 0: the in-subspace part is A B_k^T, i.e. low_rank_truth.
    np.testing.assert_allclose(proj(s, off), 0.0, atol=1e-12)
    np.testing.assert_allclose(s.low_rank_truth[s.benign] + off, D, rtol=0, atol=1e-12)


def test_signal_scale() -> None:
    """||A B_k^T||_F^2 / s^2 ~ chi^2_{qr}; mean over n clients: 5-sd band."""
    s_scale, n, dof = 2.0, 400, 3 * 2
    model = FederatedModel(
        p=10, q=3, rank=2, n_clients=n, contamination=0, signal_scale=s_scale
    )
    sq = fro(model.sample(seed=5).low_rank_truth) ** 2 / s_scale**2
    assert abs(sq.mean() - dof) < 5 * math.sqrt(2 * dof / n)


# ----------------------------------------------------------------- contamination
def contaminated_sample(kind: str, **kwargs: object) -> FederatedSample:
    s = make(
        contamination=5, contamination_type=kind, heterogeneity=0.4, **kwargs
    ).sample(noise=0.05, seed=11)
    assert s.contaminated.sum() == 5
    return s


@pytest.mark.parametrize("kind", ["random", "orthogonal", "subspace", "in_subspace"])
def test_matched_norm(kind: str) -> None:
    s = contaminated_sample(kind, center=True)
    np.testing.assert_allclose(fro(dev(s)[s.contaminated]), benign_rms(s), rtol=1e-12)


def test_random_is_full_rank_and_off_subspace() -> None:
    s = contaminated_sample("random")
    for block in dev(s)[s.contaminated]:
        assert np.linalg.matrix_rank(block) == Q
    assert np.all(s.margin[s.contaminated] > 0.5 * benign_rms(s))


def test_orthogonal() -> None:
    s = contaminated_sample("orthogonal", center=True)
    D = dev(s)[s.contaminated]
    np.testing.assert_allclose(proj(s, D), 0.0, atol=1e-12)
    np.testing.assert_allclose(s.margin[s.contaminated], benign_rms(s), rtol=1e-12)


def test_subspace_shared_and_different() -> None:
    s = contaminated_sample("subspace")
    D = dev(s)[s.contaminated]
    stacked = np.concatenate(list(D), axis=1)  # p x (5 q), column space = span(A')
    sv = np.linalg.svd(stacked, compute_uv=False)
    assert sv[R - 1] > 1e-6 * sv[0]
    np.testing.assert_allclose(sv[R:], 0.0, atol=1e-10 * sv[0])
    # A' is not A: a nonzero share of the energy lies off span(A).
    assert np.all(s.margin[s.contaminated] > 0.1 * fro(D))


def test_in_subspace() -> None:
    s = contaminated_sample("in_subspace")
    np.testing.assert_allclose(s.margin[s.contaminated], 0.0, atol=1e-12)
    assert np.all(fro(dev(s)[s.contaminated]) > 0)


@pytest.mark.parametrize("delta", [0.0, 0.01, 1.0, 37.5])
def test_margin(delta: float) -> None:
    s = contaminated_sample("margin", margin=delta, center=True)
    D = dev(s)[s.contaminated]
    np.testing.assert_allclose(s.margin[s.contaminated], delta, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fro(D - proj(s, D)), delta, rtol=1e-10, atol=1e-10)
    assert np.all(fro(proj(s, D)) > 0)  # plus an in-subspace part A B'^T


@pytest.mark.parametrize(
    ("kind", "c"), [("scaled", 3.0), ("sign_flip", 1.0), ("scaled", 0.5)]
)
def test_scaled_and_sign_flip(kind: str, c: float) -> None:
    eta = 0.4
    s = contaminated_sample(kind, scale_factor=c)
    np.testing.assert_allclose(s.margin[s.contaminated], c * eta, rtol=1e-12)
    # With s = 0 the block is exactly -c H', so its whole norm is c eta, off span(A).
    s0 = contaminated_sample(kind, scale_factor=c, signal_scale=0.0)
    D0 = dev(s0)[s0.contaminated]
    np.testing.assert_allclose(fro(D0), c * eta, rtol=1e-12)
    np.testing.assert_allclose(proj(s0, D0), 0.0, atol=1e-12)


def test_scaled_energy_is_c_squared_times_benign() -> None:
    """E ||Theta_k - Theta_0||^2 = c^2 (s^2 q r + eta^2) on S^c vs the same /c^2 on S.

    Per-client squared norms are (s^2 chi^2_{qr} + eta^2); with m clients the mean
    has sd s^2 sqrt(2 q r / m). Compare each side to its expectation within 5 sd.
    """
    c, eta, m = 2.0, 1.0, 300
    model = FederatedModel(
        p=12,
        q=2,
        rank=2,
        n_clients=2 * m,
        contamination=m,
        contamination_type="scaled",
        heterogeneity=eta,
        scale_factor=c,
    )
    s = model.sample(seed=12)
    sq = fro(dev(s)) ** 2
    dof, sd = 4, math.sqrt(2 * 4 / m)
    assert abs(sq[s.benign].mean() - (dof + eta**2)) < 5 * sd
    assert abs(sq[s.contaminated].mean() / c**2 - (dof + eta**2)) < 5 * sd


# ---------------------------------------------------------- backbone, noise, L0+S0
def test_backbone() -> None:
    s = make(center=True, backbone_scale=4.5).sample(seed=13)
    assert np.linalg.norm(s.backbone) == pytest.approx(4.5, rel=1e-12)
    s0 = make(center=False).sample(seed=13)
    np.testing.assert_array_equal(s0.backbone, 0.0)


@pytest.mark.parametrize("tau", [0.01, 1.0, 3.0])
def test_noise_level(tau: float) -> None:
    """sqrt(mean E^2) of n iid N(0, tau^2) has sd about tau / sqrt(2 n): 5-sd band.

    n = 40 * 50 * 10 = 20000 entries, so the band is +-2.5% of tau.
    """
    model = FederatedModel(p=50, q=10, rank=3, n_clients=40, center=True)
    s = model.sample(noise=tau, seed=14)
    E = s.updates - s.truth
    n = E.size
    assert abs(math.sqrt(float(np.mean(E**2))) - tau) < 5 * tau / math.sqrt(2 * n)
    assert abs(float(np.mean(E))) < 5 * tau / math.sqrt(n)
    assert s.noise == tau


@pytest.mark.parametrize("kind", CONTAMINATION_TYPES)
def test_decomposition(kind: str) -> None:
    s = make(contamination=4, contamination_type=kind, center=True).sample(seed=15)
    np.testing.assert_allclose(
        s.truth, s.backbone + s.low_rank_truth + s.sparse_truth, rtol=0, atol=1e-12
    )
    assert np.all(fro(s.low_rank_truth[s.contaminated]) == 0)
    assert np.all(fro(s.sparse_truth[s.benign]) == 0)
    L0 = np.concatenate(list(s.low_rank_truth), axis=1)
    assert np.linalg.matrix_rank(L0) == R


# ------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"p": 0}, ValueError, "p must be >= 1"),
        ({"q": -2}, ValueError, "q must be >= 1"),
        ({"rank": 0}, ValueError, "rank must be >= 1"),
        ({"n_clients": 1}, ValueError, "n_clients must be >= 2"),
        ({"p": 3.0}, TypeError, "p must be an integer"),
        ({"rank": P}, ValueError, "rank must be < p"),
        ({"rank": P + 5}, ValueError, "rank must be < p"),
        ({"contamination": 1.0}, ValueError, r"fraction must be in \[0, 1\)"),
        ({"contamination": -0.1}, ValueError, r"fraction must be in \[0, 1\)"),
        ({"contamination": float("nan")}, ValueError, "fraction must be"),
        ({"contamination": K}, ValueError, "at least one client must be benign"),
        ({"contamination": -1}, ValueError, r"count must be in \[0, n_clients - 1\]"),
        ({"contamination": 0.99}, ValueError, "leaving none benign"),
        ({"contamination": True}, TypeError, "not a bool"),
        ({"contamination": "0.2"}, TypeError, "float fraction"),
        ({"contamination_type": "bogus"}, ValueError, "valid types are random"),
        ({"heterogeneity": -1.0}, ValueError, "heterogeneity must be finite and >= 0"),
        (
            {"signal_scale": float("inf")},
            ValueError,
            "signal_scale must be finite and >= 0",
        ),
        (
            {"backbone_scale": -1.0},
            ValueError,
            "backbone_scale must be finite and >= 0",
        ),
        (
            {"scale_factor": float("nan")},
            ValueError,
            "scale_factor must be finite and >= 0",
        ),
        ({"margin": -0.5}, ValueError, "margin must be finite and >= 0"),
        ({"center": 1}, TypeError, "center must be True or False"),
    ],
)
def test_invalid_model(kwargs: dict[str, object], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        make(**kwargs)


@pytest.mark.parametrize(
    ("noise", "exc", "match"),
    [
        (-0.1, ValueError, "noise must be finite and >= 0"),
        (float("nan"), ValueError, "noise must be finite and >= 0"),
        (float("inf"), ValueError, "noise must be finite and >= 0"),
        ("0.1", TypeError, "noise must be a real number"),
    ],
)
def test_invalid_noise(noise: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        make().sample(noise=noise, seed=0)  # type: ignore[arg-type]


def test_several_contamination_types_are_taken_in_turn():
    """A tuple of types: contaminated clients (in client order) alternate types."""
    model = FederatedModel(
        p=20,
        q=2,
        rank=2,
        n_clients=20,
        contamination=6,
        contamination_type=("orthogonal", "in_subspace"),
    )
    sample = model.sample(seed=0)
    margins = sample.margin[sample.contaminated]
    assert np.all(margins[0::2] > 0.1)  # orthogonal: delta_k = the benign norm
    np.testing.assert_allclose(margins[1::2], 0.0, atol=1e-12)  # in_subspace
    with pytest.raises(ValueError, match="unknown contamination_type"):
        FederatedModel(p=5, q=1, rank=1, n_clients=4, contamination_type=("x",))
    with pytest.raises(ValueError, match="at least one type"):
        FederatedModel(p=5, q=1, rank=1, n_clients=4, contamination_type=())

"""The proximal maps, checked by their defining optimality condition.

Z = prox_{t g}(X) iff (X - Z) / t is in the subdifferential of g at Z; for a
norm g with dual norm g°, G is in dg(Z) iff g°(G) <= 1 and <G, Z> = g(Z). The
tests evaluate both conditions with numpy's own SVD and norms, never with the
code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clair_stats.core.penalties import BlockFrobenius, NuclearNorm, block_norms, svt

TOL = 1e-9  # relative; both conditions hold exactly in exact arithmetic


@st.composite
def matrices(draw, low_rank: bool = False):
    """A (p, N) matrix, optionally of low rank plus small noise, and a threshold."""
    p = draw(st.integers(1, 12))
    n = draw(st.integers(1, 30))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if low_rank:
        r = draw(st.integers(1, min(p, n)))
        x = rng.standard_normal((p, r)) @ rng.standard_normal((r, n))
        x += 1e-3 * rng.standard_normal((p, n))
    else:
        x = rng.standard_normal((p, n)) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    sv = np.linalg.svd(x, compute_uv=False)
    # threshold anywhere from below the smallest to above the largest singular value
    # (X - Z) / t loses accuracy as eps ||X|| / t: keep t/sigma_1 away from 0
    t = draw(st.one_of(st.just(0.0), st.floats(1e-6, 1.2))) * sv[0]
    return x, t


def _assert_nuclear_prox(x: np.ndarray, z: np.ndarray, t: float) -> None:
    scale = max(np.linalg.norm(x), 1e-300)
    if t == 0:
        np.testing.assert_allclose(z, x, atol=TOL * scale)
        return
    g = (x - z) / t
    sv_g = np.linalg.svd(g, compute_uv=False)
    nuc_z = np.linalg.svd(z, compute_uv=False).sum()
    assert sv_g[0] <= 1 + TOL * scale / t  # ||G||_op <= 1
    assert abs(np.vdot(g, z) - nuc_z) <= TOL * scale * (1 + scale / t)  # <G,Z>=||Z||_*


@pytest.mark.parametrize("method", ["gram", "svd", "auto"])
@given(data=matrices())
def test_svt_satisfies_prox_optimality(method, data):
    """Property: (X - SVT_t(X)) / t is a subgradient of ||.||_* at SVT_t(X)."""
    x, t = data
    out = svt(x, t, method=method)
    if method == "gram" and t**2 < 1e4 * np.finfo(float).eps * np.vdot(x, x):
        return  # below the Gram route's documented resolution; "auto" avoids it
    _assert_nuclear_prox(x, out.value, t)
    # the reported singular values are those of the output
    sv = np.linalg.svd(out.value, compute_uv=False)
    np.testing.assert_allclose(
        sv[: out.rank], out.singular_values, atol=1e-8 * max(sv[0], 1e-300)
    )
    assert np.all(sv[out.rank :] <= 1e-8 * max(np.linalg.norm(x), 1e-300))


@given(data=matrices(low_rank=True))
def test_svt_on_tall_and_wide_matrices_agree(data):
    """Property: SVT commutes with transposition (the Gram route picks a side)."""
    x, t = data
    np.testing.assert_allclose(
        svt(x.T, t).value.T, svt(x, t).value, atol=1e-9 * np.linalg.norm(x)
    )


def test_svt_matches_the_closed_form_on_a_diagonal_matrix():
    """SVT of diag(5, 3, 1) at t = 2 is diag(3, 1, 0)."""
    out = svt(np.diag([5.0, 3.0, 1.0]), 2.0)
    np.testing.assert_allclose(out.value, np.diag([3.0, 1.0, 0.0]), atol=1e-12)
    assert out.rank == 2
    assert out.nuclear_norm == pytest.approx(4.0)


@given(
    seed=st.integers(0, 2**32 - 1),
    p=st.integers(1, 8),
    q=st.integers(1, 4),
    k=st.integers(1, 10),
    step=st.one_of(st.just(0.0), st.floats(1e-6, 3.0)),
)
def test_block_soft_thresholding_satisfies_prox_optimality(seed, p, q, k, step):
    """Property: (X - Z)/step is a subgradient of sum_k w_k ||Z_k||_F at Z."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, k * q))
    w = rng.uniform(0.2, 2.0, size=k)
    z = BlockFrobenius(w).prox(x, step)
    xb, zb = x.reshape(p, k, q), z.reshape(p, k, q)
    for j in range(k):
        xj, zj = xb[:, j], zb[:, j]
        nz = np.linalg.norm(zj)
        if step == 0:
            np.testing.assert_allclose(zj, xj)
            continue
        gj = (xj - zj) / step
        # dual norm: ||G_k||_F <= w_k ; complementarity: <G_k, Z_k> = w_k ||Z_k||_F
        assert np.linalg.norm(gj) <= w[j] * (1 + 1e-12)
        assert abs(np.vdot(gj, zj) - w[j] * nz) <= 1e-10 * (1 + np.linalg.norm(xj))


def test_penalty_values_and_dual_norms_match_numpy():
    """value and dual_norm of both penalties agree with direct numpy formulas."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 12))
    w = np.array([1.0, 2.0, 0.5, 3.0])
    sv = np.linalg.svd(x, compute_uv=False)
    assert NuclearNorm().value(x) == pytest.approx(sv.sum())
    assert NuclearNorm().dual_norm(x) == pytest.approx(sv[0])
    norms = [np.linalg.norm(x[:, 3 * j : 3 * j + 3]) for j in range(4)]
    np.testing.assert_allclose(block_norms(x, 4), norms)
    assert BlockFrobenius(w).value(x) == pytest.approx(np.dot(w, norms))
    assert BlockFrobenius(w).dual_norm(x) == pytest.approx(max(np.divide(norms, w)))


# ---- the partial (subspace iteration) route of svt --------------------------------


def _spectrum_matrix(p, n, sv, seed=0):
    """U diag(sv) V^T with Haar-random orthonormal U (p, s) and V (n, s)."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((p, sv.size)))[0]
    v = np.linalg.qr(rng.standard_normal((n, sv.size)))[0]
    return (u * sv) @ v.T


def _assert_same_svt(x, t, expect_partial=True, start=None):
    """The partial route equals the thin-SVD route (value, singular values)."""
    ref = svt(x, t, method="svd")
    out = svt(x, t, method="partial", start=start)
    if expect_partial:
        assert out.method == "partial"
    scale = max(np.linalg.norm(x, 2), 1e-300)
    np.testing.assert_allclose(out.value, ref.value, rtol=0, atol=1e-10 * scale)
    assert out.rank == ref.rank
    np.testing.assert_allclose(
        out.singular_values, ref.singular_values, rtol=0, atol=1e-11 * scale
    )
    if t > 0:
        _assert_nuclear_prox(x, out.value, t)
    return out


@pytest.mark.parametrize("shape", [(120, 300), (300, 120), (200, 200)])
def test_partial_svt_equals_full_on_few_large_singular_values(shape):
    """A few large singular values over a noise bulk: same prox as the full SVD."""
    p, n = shape
    rng = np.random.default_rng(1)
    x = _spectrum_matrix(p, n, np.array([40.0, 25.0, 20.0, 12.0, 9.0]), seed=2)
    x += rng.standard_normal((p, n)) / np.sqrt(max(p, n))
    out = _assert_same_svt(x, 5.0)
    assert out.rank == 5
    # the subspace is the kept singular vectors on the small side: a warm start
    assert out.subspace.shape == (min(p, n), 5)
    nearby = x + 1e-3 * rng.standard_normal((p, n)) / np.sqrt(max(p, n))
    _assert_same_svt(nearby, 5.0, start=out.subspace)


@pytest.mark.parametrize("gap", [1e-2, 1e-4, 1e-7])
def test_partial_svt_with_singular_values_clustered_at_the_threshold(gap):
    """Clusters just above and just below t: every value above t is found."""
    t = 3.0
    sv = np.concatenate(
        [
            [10.0, 10.0, 10.0 * (1 + 1e-12)],  # a tight cluster far above t
            t * (1 + gap * np.arange(1, 5)),  # four just above t
            t * (1 - gap * np.arange(1, 5)),  # four just below t
            np.linspace(2.0, 0.1, 60),
        ]
    )
    x = _spectrum_matrix(150, 260, sv, seed=3)
    out = _assert_same_svt(x, t, expect_partial=False)
    assert out.rank == 7


def test_partial_svt_with_threshold_above_every_singular_value():
    """t >= sigma_1: the prox is zero, with no singular values."""
    x = _spectrum_matrix(100, 180, np.linspace(5.0, 1.0, 40), seed=4)
    out = _assert_same_svt(x, 5.5)
    assert out.rank == 0
    assert not np.any(out.value)


def test_partial_svt_of_the_zero_matrix():
    """SVT_t(0) = 0 for every t >= 0, on the partial route and through "auto"."""
    x = np.zeros((900, 1000))
    for t in (0.0, 1.0):
        out = svt(x, t, method="partial")
        assert out.rank == 0
        assert not np.any(out.value)
    auto = svt(x, 1.0)
    assert auto.rank == 0
    assert not np.any(auto.value)


def test_partial_svt_falls_back_when_many_values_exceed_the_threshold():
    """More than a quarter of the singular values above t: the Gram route is used."""
    x = _spectrum_matrix(80, 120, np.linspace(10.0, 1.0, 80), seed=5)
    out = _assert_same_svt(x, 2.0, expect_partial=False)
    assert out.method == "gram"


def test_auto_svt_takes_the_partial_route_only_for_large_matrices():
    """ "auto": partial from min(p, N) = 800 on, Gram below (existing behaviour)."""
    rng = np.random.default_rng(6)
    small = _spectrum_matrix(300, 400, np.array([9.0, 8.0]), seed=7)
    small += 0.1 * rng.standard_normal(small.shape) / 20
    assert svt(small, 1.0).method == "gram"
    large = _spectrum_matrix(800, 900, np.array([9.0, 8.0, 7.0]), seed=8)
    large += rng.standard_normal(large.shape) / 30
    out = svt(large, 2.0)
    assert out.method == "partial"
    ref = svt(large, 2.0, method="gram")
    np.testing.assert_allclose(out.value, ref.value, rtol=0, atol=1e-10 * 9.0)
    np.testing.assert_allclose(out.singular_values, ref.singular_values, atol=1e-10)


@given(
    seed=st.integers(0, 2**32 - 1),
    rank=st.integers(0, 12),
    frac=st.floats(0.05, 1.3),
)
def test_partial_svt_satisfies_prox_optimality(seed, rank, frac):
    """Property: the partial route is the prox (and equals the full SVD route)."""
    rng = np.random.default_rng(seed)
    sv = np.sort(rng.uniform(1.0, 20.0, size=rank))[::-1]
    x = _spectrum_matrix(90, 140, sv, seed=seed) if rank else np.zeros((90, 140))
    x += 0.05 * rng.standard_normal((90, 140)) / np.sqrt(140)
    t = frac * max(np.linalg.norm(x, 2), 1e-300)
    _assert_same_svt(x, t, expect_partial=False)


@pytest.mark.parametrize("rank", [0, 5, 40, 300])
def test_range_svd_of_a_large_low_rank_matrix_equals_the_full_svd(rank):
    """The subspace step's range-basis SVD (min dimension >= 800) is the full one."""
    from clair_stats.core.linalg import left_singular

    sv_true = np.logspace(1, -2, rank)
    x = _spectrum_matrix(820, 900, sv_true, seed=rank) if rank else np.zeros((820, 900))
    u, sv = left_singular(x)
    u_ref, sv_ref, _ = np.linalg.svd(x, full_matrices=False)
    assert sv.shape == sv_ref.shape
    np.testing.assert_allclose(sv, sv_ref, rtol=0, atol=1e-12 * max(sv_ref[0], 1.0))
    k = min(rank, 20)
    if k:  # the leading singular subspaces (well separated here) agree
        proj = u[:, :k] @ u[:, :k].T - u_ref[:, :k] @ u_ref[:, :k].T
        assert np.linalg.norm(proj) <= 1e-9

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

from clair_stats.penalties import BlockFrobenius, NuclearNorm, block_norms, svt

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

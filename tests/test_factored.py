"""CLAIR on LoRA factors (docs/programs.md §5, "LoRA scale") against the dense path.

The factored path solves P0/P1 on the core C_k = Q^T Theta^_k W_k, where Q and
W_k have orthonormal columns. Every quantity the solvers use (nuclear norm, block
norms, inner products, the duality gap) is invariant under these isometries, and
ADMM / block-coordinate descent start from and update quantities that commute
with them (SVT, block soft-thresholding, norms). So the two runs perform the same
iterations on isometric data: they stop at the same iteration and differ only by
rounding. Tolerances:

- Objective: the certified bound |P_1 - P_2| <= gap_1 + gap_2 (each certified
  point is within its gap of the optimum, as in tests/test_solvers.py), and
  relative 1e-8, the agreement required of the factored path (measured: ~1e-15).
- Column space, L^ and S^, statistics: relative 1e-8. Rounding of order eps
  ||M||_F per iteration, carried over at most a few thousand iterations of a
  non-expansive map, stays below 1e4 eps ~ 2e-12; 1e-8 leaves four orders of
  margin and is still far below any statistical scale.
- Support: a block is "in" when ||S_k||_F > 1e-6 ||M||_F (the default); with
  solutions equal to 1e-8 relative, a flip needs a block within 1e-8 ||M||_F of
  that threshold, and the instances below have no block there (asserted).
- Refinement: before truncation (rank = min(p, q)) equal to the dense refinement
  to 1e-10 relative (two SVDs of the same matrix, rounding only); after
  truncation ||Theta~_k - B~_k A~_k||_F equals the reported error to rounding,
  and equals the Eckart-Young optimum sqrt(sum_{i>t} sigma_i(Theta~_k)^2)
  computed from the dense matrix.
"""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.stats
from scipy.sparse.linalg import eigsh

from clair_stats import (
    ConvergenceWarning,
    FederatedModel,
    LowRankUpdates,
    clair,
    decompose,
)
from clair_stats.core.results import FactoredDecomposition, RefinedFactors
from clair_stats.pipeline.refine import refine
from clair_stats.pipeline.subspace import estimate_subspace
from clair_stats.solvers.factored import reduce_updates, span_basis

REL = 1e-8
SUPPORT_TOL = 1e-6


# ----------------------------------------------------------------- instances
def random_factors(seed: int = 0, p: int = 24, q: int = 18) -> LowRankUpdates:
    """Unequal ranks, per-client scaling, benign B_k near a shared 2-dim span.

    Clients 0 and 1 are contaminated (Gaussian B_k). Benign B_k = U G_k + 0.02
    noise, so the stack of B_k is full rank but badly conditioned.
    """
    rng = np.random.default_rng(seed)
    ranks = [2, 3, 1, 2, 3, 2, 4, 2, 1, 2, 3, 2]
    u = np.linalg.qr(rng.standard_normal((p, 2)))[0]
    b, a = [], []
    for k, r in enumerate(ranks):
        if k < 2:
            b.append(rng.standard_normal((p, r)))
        else:
            b.append(
                u @ rng.standard_normal((2, r)) + 0.02 * rng.standard_normal((p, r))
            )
        a.append(rng.standard_normal((r, q)) / np.sqrt(q))
    return LowRankUpdates(b, a, scaling=rng.uniform(0.5, 2.0, len(ranks)))


def model_factors(seed: int = 3) -> LowRankUpdates:
    """Noiseless docs/model.md §2 model (rank 2): each Theta_k = B_k A_k from its SVD.

    The benign column spaces all lie in span(A): the stack of B_k is rank
    deficient, which the reduction must handle exactly.
    """
    sample = FederatedModel(p=20, q=6, rank=2, n_clients=14, contamination=3).sample(
        seed=seed
    )
    b, a = [], []
    for theta in sample.updates:
        u, s, vt = np.linalg.svd(theta, full_matrices=False)
        keep = max(int(np.sum(s > 1e-10 * s[0])), 1)
        b.append(u[:, :keep] * s[:keep])
        a.append(vt[:keep])
    return LowRankUpdates(b, a)


INSTANCES = {"random": random_factors, "model": model_factors}


def _projection_distance(a1: np.ndarray, a2: np.ndarray) -> float:
    return float(np.linalg.norm(a1 @ a1.T - a2 @ a2.T))


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        return fn(*args, **kwargs)


# ----------------------------------------------------------------- LowRankUpdates
def test_low_rank_updates_shapes_and_products():
    rng = np.random.default_rng(0)
    b = [rng.standard_normal((7, 2)), rng.standard_normal((7, 3))]
    a = [rng.standard_normal((2, 5)), rng.standard_normal((3, 5))]
    upd = LowRankUpdates(b, a, scaling=[2.0, -0.5])
    assert upd.shape == (2, 7, 5)
    assert upd.ranks == (2, 3)
    assert (upd.n_clients, upd.p, upd.q) == (2, 7, 5)
    dense = upd.dense()
    np.testing.assert_allclose(dense[0], 2.0 * b[0] @ a[0], rtol=1e-14)
    np.testing.assert_allclose(dense[1], -0.5 * b[1] @ a[1], rtol=1e-14)
    np.testing.assert_allclose(upd.client(-1), dense[1], rtol=1e-14)
    np.testing.assert_allclose(
        upd.transpose().dense(), dense.transpose(0, 2, 1), rtol=1e-14
    )
    np.testing.assert_allclose(
        upd.norms(), np.linalg.norm(dense.reshape(2, -1), axis=1), rtol=1e-12
    )
    assert "K=2, p=7, q=5, r=2..3" in repr(upd)


def test_low_rank_updates_accept_stacked_arrays_and_are_immutable():
    rng = np.random.default_rng(1)
    b = rng.standard_normal((3, 6, 2)).astype(np.float32)
    a = rng.standard_normal((3, 2, 4)).astype(np.float32)
    upd = LowRankUpdates(b, a)
    assert upd.dtype == np.float32
    assert upd.B[0].dtype == np.float64
    np.testing.assert_allclose(upd.dense(), b.astype(float) @ a.astype(float))
    with pytest.raises(AttributeError, match="immutable"):
        upd.scaling = 2.0
    with pytest.raises(ValueError, match="read-only"):
        upd.B[0][0, 0] = 1.0


GOOD_B = [np.ones((5, 2)), np.ones((5, 2))]
GOOD_A = [np.ones((2, 3)), np.ones((2, 3))]


@pytest.mark.parametrize(
    ("b", "a", "scaling", "error", "match"),
    [
        ([np.ones((5, 2))], [np.ones((2, 3))], None, ValueError, "at least two"),
        (GOOD_B, GOOD_A[:1], None, ValueError, "B holds 2 clients and A holds 1"),
        (
            [np.ones((5, 2)), np.ones((4, 2))],
            GOOD_A,
            None,
            ValueError,
            "client 1: B_k has 4 rows",
        ),
        (
            GOOD_B,
            [np.ones((2, 3)), np.ones((2, 4))],
            None,
            ValueError,
            "client 1: A_k has 4 columns",
        ),
        (
            GOOD_B,
            [np.ones((2, 3)), np.ones((3, 3))],
            None,
            ValueError,
            "client 1: B_k is 5 x 2 but A_k is 3 x 3",
        ),
        (
            [np.ones((5, 0)), np.ones((5, 0))],
            [np.ones((0, 3)), np.ones((0, 3))],
            None,
            ValueError,
            "rank r_k = 0",
        ),
        (
            [np.ones((5, 2)), np.full((5, 2), np.nan)],
            GOOD_A,
            None,
            ValueError,
            "client 1: B_k contains NaN",
        ),
        (GOOD_B, [np.ones((2, 3)), np.ones(3)], None, ValueError, "client 1: A_k"),
        (np.ones((2, 5)), GOOD_A, None, ValueError, "3-D array"),
        (
            [np.ones((5, 2)), np.ones((5, 2)) * 1j],
            GOOD_A,
            None,
            TypeError,
            "must be real",
        ),
        ([np.ones((5, 2)), np.array([["a"] * 2] * 5)], GOOD_A, None, TypeError, "real"),
        ("B", GOOD_A, None, TypeError, "3-D array"),
        (GOOD_B, GOOD_A, [1.0, 2.0, 3.0], ValueError, "one per client"),
        (GOOD_B, GOOD_A, [1.0, 0.0], ValueError, r"client\(s\) \[1\]"),
        (GOOD_B, GOOD_A, np.nan, ValueError, "finite and nonzero"),
        (GOOD_B, GOOD_A, True, TypeError, "scaling"),
    ],
)
def test_low_rank_updates_validation(b, a, scaling, error, match):
    with pytest.raises(error, match=match):
        LowRankUpdates(b, a, scaling)


# ----------------------------------------------------------------- reduction
@pytest.mark.parametrize("make", INSTANCES.values(), ids=INSTANCES.keys())
@pytest.mark.parametrize("shared", [False, True])
def test_reduction_is_an_exact_isometric_core(make, shared):
    upd = make()
    dense = upd.dense()
    red = reduce_updates(upd, shared_rows=shared)
    q_basis = red.basis
    np.testing.assert_allclose(
        q_basis.T @ q_basis, np.eye(q_basis.shape[1]), atol=1e-13
    )
    scale = float(np.max(upd.norms()))
    for k in range(upd.n_clients):
        w = red.row_basis(k)
        np.testing.assert_allclose(w.T @ w, np.eye(w.shape[1]), atol=1e-13)
        lifted = q_basis @ red.core[k][:, : w.shape[1]] @ w.T
        np.testing.assert_allclose(lifted, dense[k], atol=1e-12 * scale)
        assert not np.any(red.core[k][:, red.widths[k] :])  # padding is zero
    # ||Theta^_k||_F^2 - ||C_k||_F^2 is rounding only (resolution ~ sqrt(eps))
    assert np.all(red.reduction_error <= 1e-6 * upd.norms())


def test_model_instance_core_is_smaller_than_sum_of_ranks():
    """Benign column spaces lie in span(A): R = r + sum over S^c of r_k, not sum r_k."""
    upd = model_factors()
    red = reduce_updates(upd)
    assert red.basis.shape[1] < sum(upd.ranks)
    assert red.basis.shape[1] <= 2 + 3 * max(upd.ranks)


def test_span_basis_of_zero_and_rank_deficient_columns():
    rng = np.random.default_rng(4)
    basis, coeffs = span_basis(np.zeros((6, 3)))
    assert (basis.shape, coeffs.shape) == ((6, 0), (0, 3))
    g = rng.standard_normal((9, 2)) @ rng.standard_normal((2, 5))
    basis, coeffs = span_basis(g)
    assert basis.shape == (9, 2)
    np.testing.assert_allclose(basis @ coeffs, g, atol=1e-13 * np.abs(g).max())


@pytest.mark.parametrize("condition", [1.0, 1e4])
def test_implicit_span_basis_is_the_explicit_one(condition):
    """SpanBasis (Q kept as F T^-1) applies Q and Q^T as the formed basis does.

    One Cholesky pass (well-conditioned columns) and two (condition 1e4, beyond
    ONE_PASS_MAX_CONDITION): Q @ x, Q.T @ y and numpy.asarray(Q) agree with
    span_basis(..., implicit=False) to 1e-12, and the coefficients are equal.
    """
    rng = np.random.default_rng(7)
    u, _ = np.linalg.qr(rng.standard_normal((300, 40)))
    v, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    g = (u * np.geomspace(1.0, 1.0 / condition, 40)) @ v.T
    explicit, coeffs = span_basis(g)
    implicit, coeffs2 = span_basis(g, implicit=True)
    np.testing.assert_array_equal(coeffs, coeffs2)
    x, y = rng.standard_normal((40, 3)), rng.standard_normal((300, 3))
    np.testing.assert_allclose(implicit @ x, explicit @ x, atol=1e-12)
    np.testing.assert_allclose(implicit.T @ y, explicit.T @ y, atol=1e-12)
    dense = np.asarray(implicit)
    np.testing.assert_allclose(dense, explicit, atol=1e-12)
    np.testing.assert_allclose(dense.T @ dense, np.eye(40), atol=1e-12)
    assert implicit.shape == explicit.shape
    assert implicit.T.shape == (40, 300)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("make", INSTANCES.values(), ids=INSTANCES.keys())
def test_gram_of_whole_updates_from_the_core(make, side):
    """<Theta^_j, Theta^_k> from the core blocks and row bases (no p-row product)
    equals the inner products of the dense updates to 1e-12 of the largest."""
    from clair_stats.pipeline.paths import as_updates

    upd = make()
    work = as_updates(upd).oriented(side)
    dec = _quiet(decompose, work.data, tol=1e-10)
    p = work.shape[1]
    gram = work.residual_gram(dec, np.zeros((p, 0)), None, 2.0)
    dense = upd.dense().reshape(upd.n_clients, -1)
    truth = dense @ dense.T / 4.0
    np.testing.assert_allclose(gram, truth, atol=1e-12 * np.abs(truth).max())


def test_zero_client_and_all_zero_updates():
    rng = np.random.default_rng(5)
    b = [rng.standard_normal((8, 2)), np.zeros((8, 2)), rng.standard_normal((8, 1))]
    a = [rng.standard_normal((2, 5)), rng.standard_normal((2, 5)), np.ones((1, 5))]
    upd = LowRankUpdates(b, a)
    red = reduce_updates(upd)
    assert red.widths[1] == 0
    fact = _quiet(decompose, upd, tol=1e-10)
    dense = _quiet(decompose, upd.dense(), tol=1e-10)
    assert fact.info.objective == pytest.approx(dense.info.objective, rel=REL)
    with pytest.raises(ValueError, match="every update is zero"):
        decompose(LowRankUpdates([np.zeros((4, 1))] * 2, [np.ones((1, 3))] * 2))


# ----------------------------------------------------------------- decompose
PROBLEMS = [("exact", None), ("penalized", 0.5)]


@pytest.mark.parametrize("make", INSTANCES.values(), ids=INSTANCES.keys())
@pytest.mark.parametrize(("mode", "mu"), PROBLEMS, ids=["P0", "P1"])
@pytest.mark.parametrize("center", [False, True], ids=["plain", "center"])
def test_decompose_factored_equals_dense(make, mode, mu, center):
    upd = make()
    fact = _quiet(decompose, upd, mode=mode, mu=mu, center=center, tol=1e-10)
    dense = _quiet(decompose, upd.dense(), mode=mode, mu=mu, center=center, tol=1e-10)
    assert isinstance(fact, FactoredDecomposition)
    assert fact.shape == dense.low_rank.shape
    # certified bracket of the optimum, and the relative target
    assert abs(fact.info.objective - dense.info.objective) <= (
        fact.info.duality_gap + dense.info.duality_gap + 1e-12 * dense.info.objective
    )
    assert fact.info.objective == pytest.approx(dense.info.objective, rel=REL)
    assert fact.data_norm == pytest.approx(dense.data_norm, rel=1e-12)
    # support: same blocks, none near the threshold
    norms = dense.block_norms / dense.data_norm
    assert np.all(np.abs(norms - SUPPORT_TOL) > 1e-3 * SUPPORT_TOL)
    np.testing.assert_array_equal(fact.support(), dense.support())
    np.testing.assert_allclose(
        fact.block_norms, dense.block_norms, atol=REL * dense.data_norm
    )
    assert fact.rank() == dense.rank()
    r = dense.rank()
    sv_f, sv_d = fact.singular_values(), dense.singular_values()
    np.testing.assert_allclose(sv_f[:r], sv_d[:r], rtol=REL)
    a_f, _ = estimate_subspace(fact, rank=r)
    a_d, _ = estimate_subspace(dense, rank=r)
    assert _projection_distance(a_f, a_d) <= REL
    lifted = fact.dense()
    scale = REL * dense.data_norm
    np.testing.assert_allclose(lifted.low_rank, dense.low_rank, atol=scale)
    np.testing.assert_allclose(lifted.sparse, dense.sparse, atol=scale)
    if center:
        np.testing.assert_allclose(fact.center, dense.center, atol=scale)
    else:
        assert fact.center is None
    assert "core" in repr(fact)
    assert "core" in fact.summary()


def test_decompose_factored_rejects_warm_start_and_bad_rank():
    upd = random_factors()
    first = decompose(upd)
    with pytest.raises(ValueError, match="init"):
        decompose(upd, init=first)
    r_core = first.core_shape[0]
    with pytest.raises(ValueError, match="rank of the core"):
        estimate_subspace(first, rank=r_core + 1)


# ----------------------------------------------------------------- clair
@pytest.mark.parametrize("make", INSTANCES.values(), ids=INSTANCES.keys())
@pytest.mark.parametrize(("mode", "mu"), PROBLEMS, ids=["P0", "P1"])
@pytest.mark.parametrize("center", [False, True], ids=["plain", "center"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_clair_factored_equals_dense(make, mode, mu, center, side):
    """detect='test' on the noisy instance; 'support' on the noiseless model one.

    (The median rule of the test is meaningless on noiseless data: benign
    clients have zero off-subspace energy up to rounding.)
    """
    upd = make()
    detect = "test" if make is random_factors else "support"
    if make is model_factors and side == "right":
        upd = upd.transpose()  # the shared space is then the row space
    kwargs = dict(
        rank=2, mode=mode, mu=mu, center=center, side=side, detect=detect, tol=1e-10
    )
    dense = _quiet(clair, upd.dense(), test="chi2", **kwargs)
    fact = _quiet(clair, upd, test="chi2", **kwargs)
    if detect == "test":  # the default test, the empirical null, agrees too
        z_dense = _quiet(clair, upd.dense(), **kwargs).statistics
        z_fact = _quiet(clair, upd, **kwargs).statistics
        # z = (log E - med) / s: a relative change REL of every E_k moves log E,
        # the median and s by at most REL, 2 REL / s, so z by (2 + 2 |z|) REL / s
        logs = np.log(dense.statistics)
        spread = 1.4826 * np.median(np.abs(logs - np.median(logs)))
        bound = (2 + 2 * np.abs(z_dense)) * REL / spread
        assert np.all(np.abs(z_fact - z_dense) <= bound)
    full = _quiet(clair, upd, test="chi2", refined_rank=min(upd.p, upd.q), **kwargs)
    assert _projection_distance(fact.subspace, dense.subspace) <= REL
    np.testing.assert_array_equal(fact.collaborative, dense.collaborative)
    assert not dense.collaborative.all()  # there is something to flag
    if detect == "test":
        _check_same_test(fact, dense)
    _check_refinement(upd, fact, full, dense)


def _check_same_test(fact, dense):
    np.testing.assert_allclose(fact.statistics, dense.statistics, rtol=REL)
    # p-values: d log P(chi^2 > T) / dT is bounded by 1/2 + (df/2 - 1)/T for the
    # chi^2 tail, so a relative change REL in T moves log p by at most
    # REL * (T/2 + df/2)
    bound = REL * (dense.statistics / 2 + dense.test.df / 2) + 1e-12
    log_p = np.log(np.maximum(fact.p_values, 1e-300))
    log_d = np.log(np.maximum(dense.p_values, 1e-300))
    assert np.all(np.abs(log_p - log_d) <= bound)
    assert fact.test.df == dense.test.df


def _check_refinement(upd, fact, full, dense):
    # before truncation the refinement is the dense one
    scale = float(np.max(np.abs(dense.refined)))
    assert isinstance(full.refined, RefinedFactors)
    np.testing.assert_allclose(full.refined.dense(), dense.refined, atol=1e-10 * scale)
    np.testing.assert_allclose(full.refined.truncation_error, 0.0, atol=1e-10 * scale)
    # after truncation: the reported error is the actual and the optimal one
    refined = fact.refined
    assert refined.ranks == upd.ranks  # default: the clients' own LoRA ranks
    actual = np.linalg.norm(
        (refined.dense() - dense.refined).reshape(upd.n_clients, -1), axis=1
    )
    np.testing.assert_allclose(refined.truncation_error, actual, atol=1e-10 * scale)
    for k in range(upd.n_clients):
        sv = np.linalg.svd(dense.refined[k], compute_uv=False)
        optimal = np.sqrt(np.sum(sv[refined.ranks[k] :] ** 2))
        assert refined.truncation_error[k] == pytest.approx(optimal, abs=1e-10 * scale)
    flagged = ~fact.collaborative
    assert np.all(refined.truncation_error[flagged] == 0.0)


def test_clair_factored_support_detection_on_noiseless_model():
    upd = model_factors()
    dense = _quiet(clair, upd.dense(), tol=1e-10)
    fact = _quiet(clair, upd, tol=1e-10)
    np.testing.assert_array_equal(fact.collaborative, dense.collaborative)
    assert fact.rank == dense.rank
    assert _projection_distance(fact.subspace, dense.subspace) <= REL


def test_clair_factored_median_rule_uses_the_full_degrees_of_freedom():
    """sigma^2 = median_k E_k / median(chi^2_{(p - r) q}) with the original p, q."""
    upd = random_factors()
    fact = _quiet(clair, upd, rank=2, detect="test", test="chi2", tol=1e-10)
    p, q = upd.p, upd.q
    assert fact.test.df == (p - 2) * q
    variance = fact.test.noise_sd**2
    energy = fact.statistics * variance
    expected = np.median(energy) / scipy.stats.chi2.median((p - 2) * q)
    np.testing.assert_allclose(variance, expected, rtol=1e-12)


def test_clair_factored_sigma_rule_for_mu_uses_the_full_shape():
    """mode='auto' with sigma: mu = sigma (sqrt(p) + sqrt(Kq)) of the (K, p, q) data."""
    upd = random_factors()
    fact = _quiet(clair, upd, rank=2, sigma=0.01, tol=1e-10)
    k, p, q = upd.shape
    assert fact.decomposition.problem.mu == pytest.approx(
        0.01 * (np.sqrt(p) + np.sqrt(k * q)), rel=1e-15
    )


def test_refined_factors_round_trip_and_transpose():
    upd = random_factors()
    result = _quiet(clair, upd, rank=2, detect="test", refined_rank=3, tol=1e-10)
    refined = result.refined
    expected = np.where(result.collaborative, 3, upd.ranks)
    assert refined.ranks == tuple(expected.tolist())
    again = refined.as_updates()
    np.testing.assert_allclose(again.dense(), refined.dense(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(
        refined.transpose().dense(), refined.dense().transpose(0, 2, 1), atol=1e-15
    )
    assert "RefinedFactors" in repr(refined)


def test_refined_rank_needs_factored_updates():
    with pytest.raises(ValueError, match="refined_rank applies to LowRankUpdates"):
        clair(random_factors().dense(), refined_rank=2)


def test_refine_on_dense_equals_factored_refinement_of_a_given_subspace():
    """refine() and the factored refinement agree for any subspace and set S^."""
    from clair_stats.solvers.factored import refine_factored

    upd = random_factors(seed=7)
    rng = np.random.default_rng(7)
    subspace = np.linalg.qr(rng.standard_normal((upd.p, 3)))[0]
    members = rng.random(upd.n_clients) < 0.7
    out = refine_factored(upd, subspace, members, rank=min(upd.p, upd.q))
    expected = refine(upd.dense(), subspace, members)
    np.testing.assert_allclose(
        out.dense(), expected, atol=1e-12 * np.abs(expected).max()
    )


# ----------------------------------------------------------------- memory
def test_factored_clair_never_forms_the_stacked_matrix():
    """Peak traced memory stays far below one p x q matrix, let alone p x Kq.

    p = q = 3000, K = 12, r_k = 2: the stacked M would take p K q 8 bytes =
    864 MB, a single client 72 MB; the factored path needs O((p + q) sum r_k)
    plus the core (R = 2 + 2 * 2 rows here).
    """
    rng = np.random.default_rng(8)
    p = q = 3000
    n_clients, rank = 12, 2
    u = np.linalg.qr(rng.standard_normal((p, rank)))[0]
    b = [u @ rng.standard_normal((rank, rank)) for _ in range(n_clients)]
    b[0] = rng.standard_normal((p, rank))
    b[1] = rng.standard_normal((p, rank))
    a = [rng.standard_normal((rank, q)) / np.sqrt(q) for _ in range(n_clients)]
    upd = LowRankUpdates(b, a)
    tracemalloc.start()
    try:
        result = _quiet(clair, upd, tol=1e-9)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_client = p * q * 8
    assert peak < one_client / 4, f"peak {peak / 2**20:.1f} MB"
    assert result.flagged.tolist() == [0, 1]
    assert result.refined.shape == (n_clients, p, q)


def test_lanczos_truncation_is_the_optimal_one(monkeypatch):
    """The Lanczos path (large refined cores) returns the truncated SVD too.

    Its error sqrt(||F||_F^2 - sum_{i <= t} sigma_i^2) is a difference of
    squares: rounding of n eps ||F||_F^2 in it moves the error by at most
    sqrt(n eps) ||F||_F, below 1.1e-7 ||F||_F for n <= 50 columns here.
    """
    import clair_stats.solvers.factored as factored

    upd = random_factors()
    kwargs = dict(rank=2, detect="test", tol=1e-10)
    dense = _quiet(clair, upd.dense(), **kwargs)
    monkeypatch.setattr(factored, "ITERATIVE_SVD_MIN", 4)
    calls = []

    def counted(*args, **kw):
        calls.append(1)
        return eigsh(*args, **kw)

    monkeypatch.setattr(factored, "eigsh", counted)
    refined = _quiet(clair, upd, **kwargs).refined
    assert len(calls) == int(dense.collaborative.sum())  # the Lanczos path ran
    diff = (refined.dense() - dense.refined).reshape(upd.n_clients, -1)
    actual = np.linalg.norm(diff, axis=1)
    floor = 1.1e-7 * refined.refined_norm
    assert np.all(np.abs(refined.truncation_error - actual) <= floor)
    for k in np.flatnonzero(dense.collaborative):
        sv = np.linalg.svd(dense.refined[k], compute_uv=False)
        optimal = np.sqrt(np.sum(sv[refined.ranks[k] :] ** 2))
        assert abs(refined.truncation_error[k] - optimal) <= floor[k]
        assert refined.truncation_error[k] > 1e3 * floor[k]  # a real truncation


@pytest.mark.parametrize("lanczos", [False, True], ids=["svd", "lanczos"])
@pytest.mark.parametrize("rows", ["generic", "overlapping"])
@pytest.mark.parametrize("center", [False, True], ids=["plain", "center"])
def test_refine_factored_reusing_the_decomposition_equals_refine(
    monkeypatch, center, rows, lanczos
):
    """decomposition= (Q, core and row bases of step 1 reused) gives refine().

    ``overlapping``: every A_k within 1e-5 of one matrix, so the Gram matrix of
    the right singular vectors is ill conditioned and the explicit row basis
    (CholeskyQR2) is taken instead of the implicit one. ``lanczos``: the route
    of large cores (eigendecomposition of D^T D, Lanczos per client; at full
    rank its dense fallback) forced on this small instance.
    """
    import clair_stats.solvers.factored as factored
    from clair_stats.solvers.factored import refine_factored

    upd = random_factors(seed=11, p=30, q=40)
    if rows == "overlapping":
        rng = np.random.default_rng(12)
        base = rng.standard_normal((4, upd.q)) / np.sqrt(upd.q)
        a = [base[:r] + 1e-5 * rng.standard_normal((r, upd.q)) for r in upd.ranks]
        upd = LowRankUpdates(list(upd.B), a, scaling=upd.scaling)
    if lanczos:
        monkeypatch.setattr(factored, "ITERATIVE_SVD_MIN", 4)
    dec = _quiet(decompose, upd, center=center, tol=1e-10)
    rng = np.random.default_rng(13)
    subspace = dec.basis @ np.linalg.qr(rng.standard_normal((dec.basis.shape[1], 2)))[0]
    members = np.ones(upd.n_clients, dtype=bool)
    members[[0, 1, 5]] = False
    pi = rng.uniform(0.5, 2.0, upd.n_clients)
    b = rng.uniform(0.0, 1.0, upd.n_clients)
    expected = refine(upd.dense(), subspace, members, pi, b)
    full = refine_factored(
        upd,
        subspace,
        members,
        rank=min(upd.p, upd.q),
        weights=pi,
        shrinkage=b,
        decomposition=dec,
    )
    scale = np.abs(expected).max()
    np.testing.assert_allclose(full.dense(), expected, atol=1e-10 * scale)
    # truncated: the reported error is the Eckart-Young one and the real one
    cut = refine_factored(
        upd, subspace, members, rank=2, weights=pi, shrinkage=b, decomposition=dec
    )
    floor = 1.1e-7 * cut.refined_norm
    for k in np.flatnonzero(members):
        sv = np.linalg.svd(expected[k], compute_uv=False)
        optimal = np.sqrt(np.sum(sv[2:] ** 2))
        assert abs(cut.truncation_error[k] - optimal) <= floor[k]
        actual = np.linalg.norm(cut.dense()[k] - expected[k])
        assert abs(actual - optimal) <= floor[k]
        assert abs(cut.refined_norm[k] - np.linalg.norm(expected[k])) <= floor[k]


def test_factored_path_runs_blas_on_the_configured_threads(monkeypatch):
    """reduce_updates and refine_factored run inside factored_blas_threads()."""
    from threadpoolctl import threadpool_info

    import clair_stats.solvers.factored as factored

    seen = []
    original = factored.client_svds

    def spy(updates):
        seen.append(
            {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
        )
        return original(updates)

    monkeypatch.setattr(factored, "client_svds", spy)
    factored.reduce_updates(random_factors())
    assert seen == [{factored.FACTORED_BLAS_THREADS}]
    monkeypatch.setattr(factored, "FACTORED_BLAS_THREADS", None)
    with factored.factored_blas_threads():
        pass  # None: no limit, a no-op context

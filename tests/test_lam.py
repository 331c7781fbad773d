"""lam="auto" (clair_stats.pipeline.lam.select_lam, docs/programs.md §3.1.7): the
instances the fixed default misses, q = 1, the window of a scanned instance, the
P1 path, factored and centred updates, weights, cost and the errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clair_stats import (
    DEFAULT_C_LAM,
    FederatedModel,
    LamSelection,
    LowRankUpdates,
    decompose,
    select_lam,
)
from clair_stats.pipeline import lam as lam_module
from clair_stats.theory.t1 import right_singular_blocks

TOL = 1e-9


def exact(result, sample) -> bool:
    """Exact recovery as in the studies: support = contaminated set, rank r,
    converged, ||P_A^ - P_A||_F <= 1e-6."""
    dense = result.dense() if hasattr(result, "dense") else result
    u, _, _ = np.linalg.svd(np.hstack(list(dense.low_rank)), full_matrices=False)
    top = u[:, : sample.rank]
    a = sample.subspace
    error = np.linalg.norm(top @ top.T - a @ a.T)
    return bool(
        result.info.converged
        and error <= 1e-6
        and np.array_equal(result.support(), sample.contaminated)
        and result.rank() == sample.rank
    )


@pytest.fixture(scope="module")
def high_leverage():
    """p = 30, q = 2, r = 8, K = 40, 4 orthogonal clients: a benign ||V_k||_F
    exceeds 4 / sqrt(K), so the default flags a benign client."""
    model = FederatedModel(
        30, 2, 8, 40, contamination=0.1, contamination_type="orthogonal"
    )
    return model.sample(seed=1)


def test_auto_recovers_where_a_benign_block_of_v_exceeds_the_default(high_leverage):
    """Property (docs/programs.md §3.1.4, the floor): c = 4 fails once the largest
    benign ||V_k||_F exceeds 4 / sqrt(K); lam="auto" recovers exactly there."""
    sample = high_leverage
    _, _, v = right_singular_blocks(sample)
    q, n_clients = sample.updates.shape[2], sample.updates.shape[0]
    blocks = np.linalg.norm(v.reshape(n_clients, q, -1), axis=(1, 2))
    assert blocks[sample.benign].max() > DEFAULT_C_LAM / math.sqrt(n_clients)
    default = decompose(sample.updates, tol=TOL)
    assert not exact(default, sample)
    assert (default.support() & sample.benign).any()  # a benign client flagged
    sel = select_lam(sample.updates, tol=TOL)
    assert exact(sel.decomposition, sample)
    assert sel.lam > DEFAULT_C_LAM / math.sqrt(n_clients)
    assert sel.c == pytest.approx(sel.lam * math.sqrt(n_clients))


@pytest.fixture(scope="module")
def q1_instance():
    """q = 1, K = 20, r = 5, 8 random clients: no lam recovers exactly (L^ keeps
    part of the contaminated columns where the support is right)."""
    model = FederatedModel(30, 1, 5, 20, contamination=0.4, contamination_type="random")
    return model.sample(seed=0)


def test_q1_no_single_lam_works_but_auto_does(q1_instance):
    """Known limit of a fixed lam at q = 1 (the calibration study's empty windows):
    on a fine scan no lam gives exact recovery; the reweighted solve of the rule
    does, and its lam lies where the support alone is exact."""
    sample = q1_instance
    n_clients = sample.updates.shape[0]
    grid = np.geomspace(1.5, 0.999 * math.sqrt(n_clients), 25) / math.sqrt(n_clients)
    fits = [decompose(sample.updates, lam=lam, tol=TOL) for lam in grid]
    assert not any(exact(fit, sample) for fit in fits)
    right = [
        lam
        for lam, fit in zip(grid, fits, strict=True)
        if np.array_equal(fit.support(), sample.contaminated)
    ]
    assert right  # the support alone has a window
    sel = select_lam(sample.updates, tol=TOL)
    assert exact(sel.decomposition, sample)
    assert min(right) / 1.1 <= sel.lam < sel.ceiling  # inside, up to a grid step
    # the flagged clients' weights were reduced, the others kept
    np.testing.assert_allclose(
        sel.weights, np.where(sample.contaminated, lam_module.REWEIGHT, 1.0)
    )
    np.testing.assert_allclose(sel.decomposition.problem.weights, sel.weights)


def test_chosen_lam_is_inside_the_window_of_a_scanned_instance():
    """On an instance with a wide window, the chosen lam lies in it and has a
    margin: the reweighted program recovers at lam / 1.15 and lam * 1.15 too."""
    model = FederatedModel(30, 5, 2, 50, contamination=0.2, contamination_type="random")
    sample = model.sample(seed=3)
    n_clients = 50
    grid = np.geomspace(1.0, 0.999 * math.sqrt(5 * n_clients), 30) / math.sqrt(
        n_clients
    )
    window = [
        lam
        for lam in grid
        if exact(decompose(sample.updates, lam=lam, tol=TOL), sample)
    ]
    sel = select_lam(sample.updates, tol=TOL)
    assert min(window) <= sel.lam <= max(window)
    assert exact(sel.decomposition, sample)
    for factor in (1 / 1.15, 1.15):
        nearby = decompose(
            sample.updates, lam=sel.lam * factor, weights=sel.weights, tol=TOL
        )
        assert exact(nearby, sample), factor


def test_cost_is_bounded_and_recorded(high_leverage):
    sel = select_lam(high_leverage.updates, tol=TOL)
    assert isinstance(sel, LamSelection)
    assert sel.n_solves == len(sel.path) + 1
    assert sel.n_solves <= lam_module.MAX_PATH + 1
    assert np.all(np.diff(sel.path) < 0)  # decreasing from the ceiling
    assert sel.path[0] < sel.ceiling == pytest.approx(math.sqrt(2))
    assert sel.supports.shape == (len(sel.path), 40)
    assert sel.ranks.shape == (len(sel.path),)
    assert sel.plateau[0] <= sel.lam <= sel.plateau[1]
    assert not sel.fallback
    assert "widest plateau" in sel.rule
    assert "LamSelection(lam=" in repr(sel)
    few = select_lam(high_leverage.updates, tol=TOL, max_path=4)
    assert few.n_solves <= 5


def test_decompose_auto_returns_the_final_solve(high_leverage):
    sel = select_lam(high_leverage.updates, tol=TOL)
    res = decompose(high_leverage.updates, lam="auto", tol=TOL)
    assert res.problem.lam == sel.lam
    np.testing.assert_array_equal(res.support(), sel.decomposition.support())
    np.testing.assert_allclose(res.low_rank, sel.decomposition.low_rank, atol=1e-10)


def test_no_contamination_flags_nobody():
    """gamma = 0: the only admissible support is the empty one (L^ of rank r)."""
    sample = FederatedModel(30, 2, 2, 20, contamination=0).sample(seed=0)
    sel = select_lam(sample.updates, tol=TOL)
    assert not sel.decomposition.support().any()
    assert sel.decomposition.rank() == 2


def test_centre_and_weights():
    model = FederatedModel(30, 4, 2, 20, contamination=0.2, center=True)
    sample = model.sample(seed=1)
    sel = select_lam(sample.updates, center=True, tol=TOL)
    assert exact(sel.decomposition, sample)
    weights = np.linspace(1.0, 2.0, 20)
    weighted = select_lam(sample.updates, center=True, weights=weights, tol=TOL)
    assert np.array_equal(weighted.decomposition.support(), sample.contaminated)
    assert weighted.ceiling == pytest.approx(2.0 / 1.0)  # sqrt(q) / min w
    np.testing.assert_allclose(
        weighted.weights, np.where(sample.contaminated, 0.1, 1.0) * weights
    )


def test_factored_updates_run_on_the_core():
    rng = np.random.default_rng(0)
    n_clients, p, q, r = 20, 40, 30, 2
    basis = np.linalg.qr(rng.normal(size=(p, r)))[0]
    left = [basis @ rng.normal(size=(r, 2)) for _ in range(n_clients)]
    bad = [0, 5, 9, 13]
    for k in bad:
        left[k] = rng.normal(size=(p, 2))
    right = [rng.normal(size=(2, q)) for _ in range(n_clients)]
    updates = LowRankUpdates(left, right)
    sel = select_lam(updates, tol=TOL)
    fac = sel.decomposition
    assert type(fac).__name__ == "FactoredDecomposition"
    np.testing.assert_array_equal(np.nonzero(fac.support())[0], bad)
    assert fac.rank() == r
    # the ceiling is the core block's: sqrt(min(R, max_k r_k)) = sqrt(2) < sqrt(q)
    assert sel.ceiling == pytest.approx(math.sqrt(2))
    assert decompose(updates, lam="auto", tol=TOL).problem.lam == sel.lam


def test_penalized_detects_no_worse_than_the_default_on_noisy_data():
    """P1 with mu = tau (sqrt(p) + sqrt(Kq)): the rule takes the admissible point
    of smallest lam; on this draw c = 4 flags benign clients at the noise edge
    and lam="auto" does not, with a subspace no worse."""
    tau, p, q, n_clients = 0.1, 30, 2, 50
    model = FederatedModel(p, q, 2, n_clients, contamination=0.2)
    sample = model.sample(noise=tau, seed=2)
    mu = tau * (math.sqrt(p) + math.sqrt(n_clients * q))

    def scores(res):
        u, _, _ = np.linalg.svd(np.hstack(list(res.low_rank)), full_matrices=False)
        top, a = u[:, :2], sample.subspace
        errors = int(np.sum(res.support() != sample.contaminated))
        return errors, float(np.linalg.norm(top @ top.T - a @ a.T))

    default = decompose(sample.updates, mode="penalized", mu=mu)
    sel = select_lam(sample.updates, mode="penalized", mu=mu)
    assert sel.decomposition.problem.mode == "penalized"
    assert "lowest" in sel.rule
    d_errors, d_sub = scores(default)
    a_errors, a_sub = scores(sel.decomposition)
    assert a_errors <= d_errors
    assert a_sub <= 1.05 * d_sub


def test_invalid_inputs_get_clear_errors(high_leverage):
    updates = high_leverage.updates
    with pytest.raises(ValueError, match="mode in"):
        select_lam(updates, mode="constrained")
    with pytest.raises(ValueError, match="needs mu"):
        select_lam(updates, mode="penalized")
    with pytest.raises(ValueError, match="max_path"):
        select_lam(updates, max_path=1)
    with pytest.raises(ValueError, match="reweight"):
        select_lam(updates, reweight=0.0)
    with pytest.raises(ValueError, match="weights"):
        select_lam(updates, weights=np.ones(3))
    with pytest.raises(TypeError, match="'auto'"):
        decompose(updates, lam="automatic")
    first = decompose(updates)
    with pytest.raises(ValueError, match="omit init"):
        decompose(updates, lam="auto", init=first)
    with pytest.raises(ValueError, match="constrained"):
        decompose(updates, lam="auto", mode="constrained", eps=1.0, solver="cvxpy")

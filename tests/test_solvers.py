"""The fast solvers against the cvxpy reference, and noiseless exact recovery.

Tolerances and why they are what they are:

- Objective. Any certified pair brackets the optimum p*: P_i - gap_i <= p* <= P_i,
  so two certified solutions satisfy |P_1 - P_2| <= max(gap_1, gap_2). This bound is
  asserted as is (it needs no tuning) together with the required relative
  agreement 1e-6, which both solvers reach at tol 1e-10 (proximal) and 1e-8
  (Clarabel).
- Solutions. P1 is 1/2-strongly convex in the fitted value F = L + S + c 1^T, so
  1/2 ||F_i - F*||_F^2 <= gap_i and ||F_1 - F_2||_F <= sqrt(2 gap_1) + sqrt(2 gap_2).
  L and S separately (and P0) have no such bound; we assert 1e-4 ||M||_F, the
  square root of the objective tolerance, the accuracy a first-order solver at
  that gap can promise on a sharp (not strongly convex) problem.
- Column space. Wedin's theorem: ||P_1 - P_2||_F <= 2 ||L_1 - L_2||_F /
  (sigma_r(L_1) - ||L_1 - L_2||_op), with r the rank of the proximal solution
  (exact zeros after thresholding).
- Support. A block is "in" when ||S_k||_F > 1e-3 ||M||_F: ten times the solution
  tolerance, so that a block can flip only if its norm lies within 1e-4 ||M||_F of
  the threshold.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clair_stats import (
    CONTAMINATION_TYPES,
    FederatedModel,
    decompose,
    duality_gap,
)
from clair_stats.core.certificates import operator_norm
from clair_stats.core.linalg import stack
from clair_stats.core.problems import Problem
from clair_stats.solvers.admm import admm_p0
from clair_stats.solvers.base import SafeguardedAnderson
from clair_stats.solvers.bcd import bcd_p1


@st.composite
def instances(draw, center: bool = False):
    """A small instance of every contamination type, q = 1 and q > 1, noisy or not."""
    p = draw(st.integers(4, 8))
    q = draw(st.integers(1, 3))
    n_clients = draw(st.integers(4, 10))
    rank = draw(st.integers(1, min(2, p - 1)))
    model = FederatedModel(
        p=p,
        q=q,
        rank=rank,
        n_clients=n_clients,
        contamination=draw(st.integers(0, n_clients // 2)),
        contamination_type=draw(st.sampled_from(CONTAMINATION_TYPES)),
        heterogeneity=draw(st.sampled_from([0.0, 0.3])),
        center=center,
        backbone_scale=3.0,
    )
    sample = model.sample(
        noise=draw(st.sampled_from([0.0, 0.05])), seed=draw(st.integers(0, 2**31))
    )
    weights = None
    if draw(st.booleans()):
        weights = np.random.default_rng(n_clients).uniform(0.5, 2.0, n_clients)
    return sample.updates, weights, draw(st.floats(0.02, 0.5))


def _subspace(low_rank_stacked: np.ndarray, rank: int) -> np.ndarray:
    u = np.linalg.svd(low_rank_stacked, full_matrices=False)[0][:, :rank]
    return u @ u.T


class CheckAgainstCvxpy:
    """Mixin: one subclass per problem; class attributes set the problem."""

    mode = "exact"
    center = False
    cvxpy_solver = "CLARABEL"
    cvxpy_tol = 1e-8
    proximal_tol = 1e-10
    objective_rtol = 1e-6
    solution_tol = 1e-4
    support_threshold = 1e-3

    def _solve(self, updates, weights, mu_fraction):
        m = stack(np.asarray(updates, dtype=float))
        kwargs = {"mode": self.mode, "center": self.center, "weights": weights}
        if self.mode == "penalized":
            kwargs["mu"] = mu_fraction * operator_norm(m)
        fast = decompose(updates, tol=self.proximal_tol, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # cvxpy's own chatter
            ref = decompose(
                updates,
                solver="cvxpy",
                cvxpy_solver=self.cvxpy_solver,
                tol=self.cvxpy_tol,
                **kwargs,
            )
        return m, fast, ref

    def _certificate(self, m, result):
        return duality_gap(
            result.problem,
            m,
            stack(result.low_rank),
            stack(result.sparse),
            result.center,
            stack(result.dual),
        )

    def check(self, updates, weights, mu_fraction):
        m, fast, ref = self._solve(updates, weights, mu_fraction)
        norm_m = np.linalg.norm(m)
        assert fast.info.converged, fast.info
        assert fast.info.relative_gap <= self.proximal_tol
        # certificates recomputed here with the exact operator norm
        cert_fast, cert_ref = self._certificate(m, fast), self._certificate(m, ref)
        assert cert_fast.relative_gap <= 10 * self.proximal_tol
        bracket = max(cert_fast.gap, cert_ref.gap) + 1e-12 * abs(cert_fast.primal)
        assert abs(cert_fast.primal - cert_ref.primal) <= bracket
        assert fast.info.objective == pytest.approx(
            ref.info.objective, rel=self.objective_rtol, abs=1e-12 * norm_m
        )

        l_fast, l_ref = stack(fast.low_rank), stack(ref.low_rank)
        s_fast, s_ref = stack(fast.sparse), stack(ref.sparse)
        assert np.linalg.norm(l_fast - l_ref) <= self.solution_tol * norm_m
        assert np.linalg.norm(s_fast - s_ref) <= self.solution_tol * norm_m
        if self.mode == "penalized":
            fit_fast = m - fast.problem.residual(m, l_fast, s_fast, fast.center)
            fit_ref = m - ref.problem.residual(m, l_ref, s_ref, ref.center)
            bound = np.sqrt(2 * max(cert_fast.gap, 0)) + np.sqrt(
                2 * max(cert_ref.gap, 0)
            )
            assert np.linalg.norm(fit_fast - fit_ref) <= bound + 1e-12 * norm_m

        sv = np.linalg.svd(l_fast, compute_uv=False)
        rank = int(np.sum(sv > 1e-9 * norm_m))
        if rank:
            diff = l_fast - l_ref
            denominator = sv[rank - 1] - np.linalg.norm(diff, 2)
            if denominator > 0:
                distance = np.linalg.norm(
                    _subspace(l_fast, rank) - _subspace(l_ref, rank)
                )
                assert distance <= 2 * np.linalg.norm(diff) / denominator + 1e-12

        in_fast = fast.block_norms > self.support_threshold * norm_m
        in_ref = ref.block_norms > self.support_threshold * norm_m
        np.testing.assert_array_equal(in_fast, in_ref)


class TestP0(CheckAgainstCvxpy):
    @given(instance=instances())
    def test_agrees_with_cvxpy(self, instance):
        """Property: ADMM and cvxpy reach the same P0 objective, L, S and support."""
        self.check(*instance)


class TestP0Center(CheckAgainstCvxpy):
    center = True

    @given(instance=instances(center=True))
    def test_agrees_with_cvxpy(self, instance):
        """Property: the same with an unknown centre c (P0 with centre)."""
        self.check(*instance)


class TestP1(CheckAgainstCvxpy):
    mode = "penalized"

    @given(instance=instances())
    def test_agrees_with_cvxpy(self, instance):
        """Property: BCD and cvxpy reach the same P1 objective, L, S and support."""
        self.check(*instance)


class TestP1Center(CheckAgainstCvxpy):
    mode = "penalized"
    center = True

    @given(instance=instances(center=True))
    def test_agrees_with_cvxpy(self, instance):
        """Property: the same for P1 with a centre."""
        self.check(*instance)


class TestP0SCS(CheckAgainstCvxpy):
    cvxpy_solver = "SCS"
    cvxpy_tol = 1e-10

    @settings(max_examples=8)
    @given(instance=instances())
    def test_agrees_with_cvxpy(self, instance):
        """Property: SCS at tight tolerance agrees as well (the benchmark's backend)."""
        self.check(*instance)


# Regimes of docs/programs.md §3.1 (random model; p 30-80, q 1-10, K 20-100, r 2-5,
# gamma
# 0.1-0.4) where the default lam = 4 / sqrt(K) recovers exactly. At q = 1 the
# default is outside the working window for K = 20 and for gamma = 0.4 (measured by
# simulations/lambda_calibration.py); the q = 1 regime below uses lam sqrt(K) = 5.
RECOVERY_REGIMES = [
    # p, q, K, r, gamma, type, center, lam * sqrt(K)
    (30, 2, 20, 2, 0.1, "random", False, None),
    (50, 5, 50, 3, 0.2, "random", False, None),
    (80, 10, 100, 5, 0.3, "random", False, None),
    (40, 10, 20, 5, 0.4, "random", False, None),
    (60, 3, 60, 4, 0.4, "orthogonal", False, None),
    (50, 5, 40, 3, 0.2, "random", True, None),
    (30, 1, 100, 2, 0.1, "random", False, 5.0),
]


@pytest.mark.parametrize(
    ("p", "q", "n_clients", "rank", "gamma", "kind", "center", "c_lam"),
    RECOVERY_REGIMES,
)
@pytest.mark.parametrize("seed", [0, 1])
def test_noiseless_exact_recovery(
    p, q, n_clients, rank, gamma, kind, center, c_lam, seed
):
    """Noiseless P0: col(L^) = span(A) to 1e-6 and block support = S^c exactly."""
    sample = FederatedModel(
        p=p,
        q=q,
        rank=rank,
        n_clients=n_clients,
        contamination=gamma,
        contamination_type=kind,
        center=center,
    ).sample(seed=seed)
    lam = None if c_lam is None else c_lam / np.sqrt(n_clients)
    result = decompose(sample.updates, lam=lam, center=center, tol=1e-10)
    a = sample.subspace
    distance = np.linalg.norm(_subspace(stack(result.low_rank), rank) - a @ a.T)
    assert distance <= 1e-6
    assert result.rank() == rank
    np.testing.assert_array_equal(result.support(), sample.contaminated)
    if center:
        # c is identified up to span(A): c = Theta_0 + A D fits as well, with the
        # B_k shifted by D; P_A^perp c = P_A^perp Theta_0 is what is recovered
        perp = np.eye(p) - a @ a.T
        np.testing.assert_allclose(
            perp @ result.center, perp @ sample.backbone, atol=1e-6
        )


@pytest.mark.parametrize("mode", ["exact", "penalized"])
def test_warm_start(mode):
    """A warm start at the solution stops at once; from a nearby lam it converges
    to the cold-start solution."""
    sample = FederatedModel(p=40, q=4, rank=3, n_clients=50).sample(noise=0.01, seed=3)
    k = sample.n_clients
    kwargs = {"mode": mode, "tol": 1e-9, "mu": 0.1 if mode == "penalized" else None}
    first = decompose(sample.updates, lam=3.8 / np.sqrt(k), **kwargs)
    cold = decompose(sample.updates, lam=4.0 / np.sqrt(k), **kwargs)
    warm = decompose(sample.updates, lam=4.0 / np.sqrt(k), init=first, **kwargs)
    again = decompose(sample.updates, lam=4.0 / np.sqrt(k), init=cold, **kwargs)
    assert warm.info.converged
    assert warm.info.objective == pytest.approx(cold.info.objective, rel=1e-8)
    assert again.info.iterations <= 2 < cold.info.iterations


def test_reported_gap_bounds_the_exact_certificate():
    """The cheap in-loop gap (operator norm bounded) is never below the exact one."""
    sample = FederatedModel(p=30, q=3, rank=2, n_clients=30).sample(noise=0.01, seed=5)
    m = stack(sample.updates)
    for kwargs in ({"mode": "exact"}, {"mode": "penalized", "mu": 0.5}):
        result = decompose(sample.updates, tol=1e-6, **kwargs)
        exact = duality_gap(
            result.problem,
            m,
            stack(result.low_rank),
            stack(result.sparse),
            result.center,
            stack(result.dual),
        )
        assert exact.gap <= result.info.duality_gap * (1 + 1e-9) + 1e-15
        assert exact.gap >= -1e-12 * abs(exact.primal)  # weak duality


class TestConstrained:
    """P1c (cvxpy only): its limits in eps and its certificate."""

    sample = FederatedModel(p=8, q=2, rank=2, n_clients=8, contamination=2).sample(
        noise=0.02, seed=11
    )

    def test_eps_zero_is_p0(self):
        """P1c with eps = 0 has the optimal value of P0."""
        p0 = decompose(self.sample.updates, tol=1e-10)
        p1c = decompose(
            self.sample.updates, mode="constrained", eps=0.0, solver="cvxpy"
        )
        assert p1c.info.objective == pytest.approx(p0.info.objective, rel=1e-6)

    def test_eps_beyond_the_data_gives_zero(self):
        """With eps >= ||M||_F the point L = S = 0 is feasible and optimal."""
        m = stack(self.sample.updates)
        result = decompose(
            self.sample.updates,
            mode="constrained",
            eps=1.01 * np.linalg.norm(m),
            solver="cvxpy",
        )
        assert result.info.objective <= 1e-7 * np.linalg.norm(m)

    @pytest.mark.parametrize("backend", ["SCS", "CLARABEL"])
    def test_certified_and_monotone_in_eps(self, backend):
        """The optimal value falls as eps grows, and each solve is certified."""
        values = []
        for eps in (0.05, 0.2, 0.5):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                result = decompose(
                    self.sample.updates,
                    mode="constrained",
                    eps=eps,
                    solver="cvxpy",
                    cvxpy_solver=backend,
                    tol=1e-9,
                )
            assert result.info.relative_gap <= 1e-4
            values.append(result.info.objective)
        assert values[0] > values[1] > values[2]


def _scaled_problem(sample, mode="exact", mu=None, center=False):
    """M scaled to max |M_ij| = 1 and its program with the default lam."""
    m = stack(sample.updates)
    m = m / np.max(np.abs(m))
    k = sample.n_clients
    problem = Problem(
        mode=mode,
        lam=4.0 / np.sqrt(k),
        weights=np.ones(k),
        center=center,
        mu=mu,
    )
    return problem, m


def _assert_same_solution(fast, plain, m):
    """Both certified, same objective (within their gaps) and the same L and S."""
    assert fast.converged
    assert plain.converged
    bracket = max(fast.duality_gap, plain.duality_gap) + 1e-12 * abs(plain.objective)
    assert abs(fast.objective - plain.objective) <= 2 * bracket
    norm_m = np.linalg.norm(m)
    assert np.linalg.norm(fast.low_rank - plain.low_rank) <= 1e-4 * norm_m
    assert np.linalg.norm(fast.sparse - plain.sparse) <= 1e-4 * norm_m


# noisy instances on which the plain ADMM needs more than 100 iterations to 1e-9
NOISY_REGIMES = [
    # p, q, K, r, gamma, center, tau, seed
    (20, 2, 20, 2, 0.2, False, 0.02, 0),
    (40, 5, 30, 3, 0.2, False, 0.01, 1),
    (30, 2, 30, 2, 0.2, True, 0.03, 2),
]


@pytest.mark.parametrize(
    ("p", "q", "n_clients", "rank", "gamma", "center", "tau", "seed"), NOISY_REGIMES
)
def test_anderson_admm_needs_fewer_iterations(
    p, q, n_clients, rank, gamma, center, tau, seed
):
    """On noisy P0 the accelerated ADMM reaches the certificate (relative gap and
    primal residual 1e-9) in at most 3/4 of the plain iterations, at the same
    solution."""
    sample = FederatedModel(
        p, q, rank, n_clients, contamination=gamma, center=center
    ).sample(noise=tau, seed=seed)
    problem, m = _scaled_problem(sample, center=center)
    options = {"tol": 1e-9, "max_iter": 3000}
    plain = admm_p0(problem, m, accelerate=False, **options)
    fast = admm_p0(problem, m, accelerate=True, **options)
    assert plain.accepted == plain.rejected == 0
    assert fast.accepted > 0
    assert fast.iterations <= 0.75 * plain.iterations, (fast.iterations, plain)
    assert fast.relative_gap <= 1e-9
    assert fast.primal_residual <= 1e-9
    _assert_same_solution(fast, plain, m)


def test_anderson_safeguard_rejections_converge_to_the_same_solution():
    """An instance where some extrapolations fail the safeguard (the residual at
    the extrapolated point is larger): the solver falls back to the plain step,
    is certified, and returns the plain solver's solution."""
    sample = FederatedModel(20, 2, 2, 20, contamination=0.2).sample(noise=0.02, seed=0)
    problem, m = _scaled_problem(sample)
    fast = admm_p0(problem, m, tol=1e-10, max_iter=3000)
    plain = admm_p0(problem, m, tol=1e-10, max_iter=3000, accelerate=False)
    assert fast.rejected > 0
    assert fast.iterations < plain.iterations
    _assert_same_solution(fast, plain, m)


def test_safeguard_returns_the_plain_state_and_clears_the_memory():
    """SafeguardedAnderson: an extrapolation whose residual grows is rejected (the
    stored plain state comes back, the memory is cleared); one whose residual
    falls is accepted."""
    anderson = SafeguardedAnderson(memory=3)
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(4, 5))
    w0 = 3.0 * w1  # collinear: one difference spans the residuals
    assert anderson.propose(w0, -0.5 * w0, plain="T(w0)") is None  # no history
    assert anderson.rejected_step(1.0) is None  # nothing was extrapolated
    target = anderson.propose(w1, -0.5 * w1, plain="T(w1)")
    assert target.shape == w1.shape
    # T(w) = w / 2 on the line of w1 is solved by one secant step: w* = 0
    np.testing.assert_allclose(target, 0.0, atol=1e-8)
    bound = np.linalg.norm(0.5 * w1)
    assert anderson.rejected_step(2.0 * bound) == "T(w1)"
    assert (anderson.rejected, anderson.accepted, len(anderson)) == (1, 0, 0)
    anderson.propose(w0, -0.5 * w0, plain="T(w0)")
    anderson.propose(w1, -0.5 * w1, plain="T(w1)")
    assert anderson.rejected_step(0.5 * bound) is None
    assert (anderson.rejected, anderson.accepted) == (1, 1)


def test_anderson_bcd_needs_fewer_sweeps():
    """On noisy P1 without a centre the accelerated sweeps reach a relative gap of
    1e-9 in at most 3/4 of the plain sweeps, at the same solution; with a centre
    the default leaves the acceleration off."""
    sample = FederatedModel(40, 5, 3, 30, contamination=0.2).sample(noise=0.01, seed=4)
    mu = 0.01 * (np.sqrt(40) + np.sqrt(150))
    problem, m = _scaled_problem(sample, mode="penalized", mu=mu)
    plain = bcd_p1(problem, m, tol=1e-9, max_iter=3000, accelerate=False)
    fast = bcd_p1(problem, m, tol=1e-9, max_iter=3000)
    assert fast.accepted > 0
    assert fast.iterations <= 0.75 * plain.iterations, (fast.iterations, plain)
    _assert_same_solution(fast, plain, m)
    centred = Problem(
        mode="penalized", lam=problem.lam, weights=problem.weights, center=True, mu=mu
    )
    default = bcd_p1(centred, m, tol=1e-6, max_iter=3000)
    assert default.accepted == default.rejected == 0

"""clair() with its defaults, and the guards that replace confident garbage.

docs/pipeline.md §3.5: the noise level is estimated when not given, P1 is solved
on noisy data and P0 on noiseless data (a scale-free rule), the rank is read off
L^, noisy data are tested, and an AssumptionWarning says when the data contradict
an assumption or an argument.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from clair_stats import (
    AssumptionWarning,
    ClairWarning,
    FederatedModel,
    PerformanceWarning,
    clair,
    decompose,
)
from clair_stats.pipeline import decompose as decompose_module


def _quiet_clair(updates, **kwargs):
    """clair() that fails the test on any warning of the library."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClairWarning)
        return clair(updates, **kwargs)


def _readme_sample(seed=0, types="random"):
    model = FederatedModel(
        p=30, q=5, rank=3, n_clients=40, contamination=0.2, contamination_type=types
    )
    return model.sample_regression(n=200, sigma=1.0, seed=seed)


# ------------------------------------------------------------------ defaults
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("types", ["random", ("random", "subspace")])
def test_default_call_flags_exactly_on_the_readme_and_demo_designs(seed, types):
    """The README's sample (random) and the demo's (random + subspace), 3 seeds."""
    sample = _readme_sample(seed, types)
    result = _quiet_clair(sample.updates)
    assert result.rank == 3
    assert result.mode == "penalized"
    assert result.detect == "test"
    assert result.test.method == "empirical"
    np.testing.assert_array_equal(result.collaborative, sample.benign)
    # the estimated noise level is the per-entry sd of the fits: the median
    # rule over 40 clients of chi^2_{135} energies has a relative sd of about
    # 1.25 sqrt(2 / 135) / sqrt(40) / 2 = 1.2%; 10% is 8 of those
    np.testing.assert_allclose(
        np.median(result.noise.sd), np.median(sample.local_sd), rtol=0.1
    )
    assert set(result.rules) >= {"mode", "mu", "rank", "detect", "test"}


@pytest.mark.parametrize("noise", [0.01, 0.1, 0.3])
def test_default_call_flags_exactly_on_direct_noise(noise):
    model = FederatedModel(p=30, q=5, rank=3, n_clients=30, contamination=0.2)
    for seed in range(3):
        sample = model.sample(noise=noise, seed=seed)
        result = _quiet_clair(sample.updates)
        assert result.rank == 3
        np.testing.assert_array_equal(result.collaborative, sample.benign)


def test_default_call_on_noiseless_data_solves_p0_and_reads_the_support():
    sample = FederatedModel(p=30, q=5, rank=3, n_clients=30, contamination=0.2).sample(
        noise=0.0, seed=1
    )
    result = _quiet_clair(sample.updates)
    assert result.mode == "exact"
    assert result.detect == "support"
    assert result.test is None
    assert result.noise.noiseless
    np.testing.assert_array_equal(result.collaborative, sample.benign)


def test_arguments_after_rank_are_keyword_only():
    sample = _readme_sample()
    with pytest.raises(TypeError):
        clair(sample.updates, 3, None)  # lam positionally


def test_the_readme_calls_with_sigma_and_noise_cov_flag_exactly():
    sample = _readme_sample()
    with_sigma = _quiet_clair(sample.updates, rank=3, sigma=sample.local_sd)
    assert with_sigma.detect == "test"
    assert with_sigma.test.method == "chi2"
    np.testing.assert_array_equal(with_sigma.collaborative, sample.benign)
    exact = _quiet_clair(
        sample.updates, noise_cov=sample.noise_cov, noise_df=sample.noise_df
    )
    assert exact.test.method == "weighted_chi2"
    assert exact.rank == 3
    np.testing.assert_array_equal(exact.collaborative, sample.benign)


# -------------------------------------------------------------------- guards
def test_the_regression_noise_passed_as_sigma_is_caught():
    """sample.sigma (1.0) instead of sample.local_sd (0.077): L^ = 0, warned."""
    sample = _readme_sample()
    with pytest.warns(AssumptionWarning) as record:
        clair(sample.updates, rank=3, sigma=sample.sigma)
    text = " ".join(str(w.message) for w in record)
    assert "L^ is zero" in text
    assert "inconsistent" in text


def test_a_penalty_far_too_large_is_caught():
    sample = _readme_sample()
    with pytest.warns(AssumptionWarning, match="L\\^ is zero"):
        clair(sample.updates, rank=3, mu=100.0)


def test_a_sigma_far_too_small_is_caught():
    sample = _readme_sample()
    with pytest.warns(AssumptionWarning) as record:
        result = clair(sample.updates, rank=3, sigma=sample.local_sd / 10)
    text = " ".join(str(w.message) for w in record)
    assert "inconsistent" in text
    assert "majority" in text
    assert result.flagged.size >= 20


def test_the_support_rule_on_noisy_data_warns_that_everyone_is_flagged():
    sample = _readme_sample()
    with pytest.warns(AssumptionWarning, match="detect='test'"):
        result = clair(sample.updates, rank=3, mode="exact", detect="support")
    assert result.flagged.size == 40


def test_testing_noiseless_data_warns_of_round_off():
    sample = FederatedModel(p=30, q=5, rank=3, n_clients=30, contamination=0.2).sample(
        noise=0.0, seed=1
    )
    with pytest.warns(AssumptionWarning, match="round-off"):
        clair(sample.updates, detect="test")


def test_a_contaminated_majority_is_not_silent():
    """18 of 30 contaminated: the benign-majority assumption fails, and it is said."""
    model = FederatedModel(p=30, q=5, rank=3, n_clients=30, contamination=18)
    for seed in range(3):
        sample = model.sample(noise=0.1, seed=seed)
        with pytest.warns(AssumptionWarning, match="majority"):
            clair(sample.updates)


def test_cvxpy_warns_of_its_time_before_solving(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("not solved in this test")

    monkeypatch.setattr(decompose_module, "cvxpy_solve", refuse)
    sample = FederatedModel(p=20, q=5, rank=2, n_clients=120).sample(seed=0)
    with (
        pytest.warns(PerformanceWarning, match="expect about 12 s"),
        pytest.raises(RuntimeError, match="not solved"),
    ):
        decompose(sample.updates, solver="cvxpy")


# --------------------------------------------------------------------- scale
@pytest.mark.parametrize("scale", [1e-300, 2.0**-900, 1e300])
def test_results_do_not_depend_on_the_scale(scale):
    sample = FederatedModel(p=30, q=5, rank=3, n_clients=30, contamination=0.2).sample(
        noise=0.1, seed=1
    )
    base = _quiet_clair(sample.updates)
    scaled = _quiet_clair(sample.updates * scale)
    np.testing.assert_array_equal(scaled.collaborative, base.collaborative)
    assert scaled.rank == base.rank
    # 1e-300 and 1e300 are not powers of two: the data differ by one rounding
    # (1e-16 relative), which the solver's tolerance 1e-7 can amplify but not
    # beyond 1e-10 in these well-conditioned statistics
    np.testing.assert_allclose(scaled.statistics, base.statistics, rtol=1e-10)
    np.testing.assert_allclose(scaled.p_values, base.p_values, rtol=1e-8, atol=1e-300)
    np.testing.assert_allclose(
        scaled.refined / scale, base.refined, atol=1e-10 * np.abs(base.refined).max()
    )
    np.testing.assert_allclose(scaled.noise.sd / scale, base.noise.sd, rtol=1e-10)
    with_sigma = _quiet_clair(sample.updates * scale, sigma=0.1 * scale, rank=3)
    assert np.all(np.isfinite(with_sigma.statistics))
    np.testing.assert_array_equal(with_sigma.collaborative, base.collaborative)


def test_a_tiny_sigma_of_one_client_flags_it_without_error():
    sample = FederatedModel(p=30, q=5, rank=3, n_clients=30, contamination=0.2).sample(
        noise=0.1, seed=1
    )
    sigma = np.full(30, 0.1)
    benign = int(np.flatnonzero(sample.benign)[0])
    sigma[benign] = 1e-300
    result = clair(sample.updates, rank=3, sigma=sigma, mu=0.1 * (30**0.5 + 150**0.5))
    assert not result.collaborative[benign]
    assert result.p_values[benign] == 0.0


def test_the_exact_test_survives_a_low_rank_part_shorter_than_the_rank():
    """rank=3 with L^ = 0 (mu far too large): the directions of A^ that L^ does
    not carry have no leverage, and the exact test's p-values stay finite."""
    sample = _readme_sample()
    with pytest.warns(AssumptionWarning, match="L\\^ is zero"):
        result = clair(
            sample.updates,
            rank=3,
            mu=1e3,
            noise_cov=sample.noise_cov,
            noise_df=sample.noise_df,
        )
    assert np.all(np.isfinite(result.p_values))
    assert np.all((result.p_values >= 0) & (result.p_values <= 1))


def test_noise_cov_with_side_right_is_the_covariance_of_each_row():
    """side='right' shares the row space: noise_cov is then the covariance of each
    row, and the exact test on the transposes equals the one on the updates."""
    sample = _readme_sample()
    kwargs = {"noise_cov": sample.noise_cov, "noise_df": sample.noise_df}
    left = _quiet_clair(sample.updates, **kwargs)
    right = _quiet_clair(
        np.ascontiguousarray(sample.updates.transpose(0, 2, 1)), side="right", **kwargs
    )
    assert right.test.method == "weighted_chi2"
    np.testing.assert_array_equal(right.collaborative, left.collaborative)
    np.testing.assert_allclose(right.p_values, left.p_values, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(
        right.refined, left.refined.transpose(0, 2, 1), atol=1e-12
    )

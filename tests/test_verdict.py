"""The per-module verdict rule of LoRA federations (lora.verdict)."""

from __future__ import annotations

import numpy as np
import pytest

from clair_stats.lora.verdict import client_verdict
from clair_stats.pipeline.empirical_null import energy_p_values
from clair_stats.pipeline.multitest import reject


def test_verdict_is_holm_over_all_pairs_and_any_module():
    """The verdict equals its definition: per-module empirical-null p-values,
    Holm over the K x M pairs, flagged iff any module is rejected, combined
    p-value = min over modules of the adjusted p-values."""
    rng = np.random.default_rng(0)
    energies = np.exp(0.3 * rng.standard_normal((3, 12)))
    energies[1, 4] *= 1e3  # client 4 off the subspace in module 1 only
    energies[:, 9] *= 30.0  # client 9 a little off in every module
    verdict = client_verdict(energies, alpha=0.05)
    _, p = energy_p_values(energies)
    rejected, adjusted = reject(p.ravel(), 0.05, "holm")
    np.testing.assert_array_equal(verdict.module_p_values, p)
    np.testing.assert_array_equal(verdict.rejected, rejected.reshape(3, 12))
    np.testing.assert_array_equal(verdict.adjusted_p_values, adjusted.reshape(3, 12))
    np.testing.assert_array_equal(verdict.flagged, verdict.rejected.any(axis=0))
    np.testing.assert_array_equal(verdict.p_values, adjusted.reshape(3, 12).min(0))
    np.testing.assert_array_equal(verdict.flagged, verdict.p_values <= 0.05)
    assert verdict.flagged[4]  # one module is enough
    assert verdict.module_flags[4] == 1
    assert (verdict.n_clients, verdict.n_modules) == (12, 3)
    np.testing.assert_array_equal(verdict.collaborative, ~verdict.flagged)
    assert "alpha=0.05" in repr(verdict)


def test_benign_only_family_wise_error_is_at_most_alpha():
    """Under the null model (iid log-normal energies per module, any location and
    scale per module), the probability that any client is flagged is at most
    alpha = 0.1 (Holm over K x M). 1000 federations of K = 10, M = 4: the count of
    federations with a flag is Binomial(1000, FWER); if FWER were 0.1 the count
    would exceed 100 + 3.1 sd = 129 (sd = sqrt(1000 * 0.09) = 9.5) with
    probability below 1e-3, so a count above 129 means the level is broken."""
    rng = np.random.default_rng(1)
    scale = np.array([0.2, 0.5, 1.0, 2.0])[:, None]
    flags = 0
    for _ in range(1000):
        energies = np.exp(scale * rng.standard_normal((4, 10)) + 5.0 * scale)
        flags += client_verdict(energies, alpha=0.1).flagged.any()
    assert flags <= 129


def test_bad_input_names_the_module():
    energies = np.exp(np.random.default_rng(2).standard_normal((2, 6)))
    energies[1, 3] = 0.0
    with pytest.raises(ValueError, match="module 'v_proj': the off-subspace"):
        client_verdict(energies, modules=["q_proj", "v_proj"])
    with pytest.raises(ValueError, match=r"\(M, K\) array"):
        client_verdict([np.ones(5), np.ones(6)])
    with pytest.raises(ValueError, match="alpha"):
        client_verdict(np.exp(energies + 1.0), alpha=1.5)
    with pytest.raises(ValueError, match="2 rows"):
        client_verdict(np.ones((2, 6)) + np.arange(6), modules=["a"])

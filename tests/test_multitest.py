"""The one implementation of Holm, Benjamini-Hochberg and Bonferroni.

Checked against statsmodels' ``multipletests`` (the reference the rest of the
scientific Python stack uses) on generated p-values: the adjusted p-values to
1e-12 and the decisions exactly, including ties, zeros, ones and p-values at the
thresholds alpha / (m - i + 1) and alpha j / m themselves.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from statsmodels.stats.multitest import multipletests

from clair_stats.pipeline.multitest import METHODS, adjusted_p_values, reject


def _statsmodels(p_values, alpha, method):
    """The reference decisions and adjusted p-values of statsmodels.

    multipletests runs gc.collect() on every call, which scans the whole heap of
    the test session (about 0.1 s a call); objects frozen before the call are not
    scanned, which keeps this reference cheap without changing what it computes.
    """
    gc.freeze()
    try:
        rejected, adjusted, _, _ = multipletests(p_values, alpha=alpha, method=method)
    finally:
        gc.unfreeze()
    return rejected, adjusted


unit = st.floats(0.0, 1.0, allow_nan=False)
#: p-values with many ties and exact 0 and 1 (drawn from a coarse grid half the time)
p_value_lists = st.one_of(
    st.lists(unit, min_size=1, max_size=60),
    st.lists(
        st.sampled_from([0.0, 1e-300, 0.001, 0.01, 0.0125, 0.025, 0.05, 1.0]),
        min_size=1,
        max_size=60,
    ),
)
levels = st.sampled_from([0.01, 0.05, 0.1, 0.2, 0.5])


@pytest.mark.parametrize("method", METHODS)
@given(p_values=p_value_lists, alpha=levels)
@example(p_values=[0.05 / 3, 0.05 / 2, 0.05], alpha=0.05)  # Holm's thresholds exactly
@example(p_values=[0.05 / 3, 2 * 0.05 / 3, 0.05], alpha=0.05)  # BH's thresholds
@example(p_values=[0.0], alpha=0.05)
def test_matches_statsmodels(method, p_values, alpha):
    """Property: decisions equal statsmodels' exactly, adjusted p-values to 1e-12."""
    expected_reject, expected_adjusted = _statsmodels(p_values, alpha, method)
    rejected, adjusted = reject(p_values, alpha, method)
    np.testing.assert_array_equal(rejected, expected_reject)
    np.testing.assert_allclose(adjusted, expected_adjusted, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("method", METHODS)
@given(
    p_values=arrays(
        np.float64, st.tuples(st.integers(1, 6), st.integers(1, 30)), elements=unit
    ),
    alpha=levels,
)
def test_vectorised_rows_equal_one_family_at_a_time(method, p_values, alpha):
    """Property: an (R, m) array is R independent families along the last axis."""
    rejected, adjusted = reject(p_values, alpha, method)
    for row, rej, adj in zip(p_values, rejected, adjusted, strict=True):
        one_rej, one_adj = reject(row, alpha, method)
        np.testing.assert_array_equal(rej, one_rej)
        np.testing.assert_array_equal(adj, one_adj)
    np.testing.assert_array_equal(adjusted_p_values(p_values, method), adjusted)


@pytest.mark.parametrize("method", METHODS)
@given(p_values=p_value_lists, alpha=levels)
def test_rejected_iff_adjusted_at_most_alpha(method, p_values, alpha):
    """Property: away from round-off at the threshold, reject <=> adjusted <= alpha."""
    rejected, adjusted = reject(p_values, alpha, method)
    clear = np.abs(adjusted - alpha) > 1e-12
    np.testing.assert_array_equal(rejected[clear], (adjusted <= alpha)[clear])


def test_no_garbage_collection_per_call(monkeypatch):
    """Unlike statsmodels' multipletests, no gc.collect() on any call."""
    calls = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(a) or 0)
    for method in METHODS:
        reject(np.linspace(0, 1, 50), 0.05, method)
    assert calls == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"p_values": [0.1, 1.5]}, ValueError, r"\[0, 1\]"),
        ({"p_values": [0.1, np.nan]}, ValueError, "NaN"),
        ({"p_values": []}, ValueError, "at least one test"),
        ({"p_values": 0.3}, ValueError, "at least one test"),
        ({"p_values": ["a"]}, TypeError, "real numbers"),
        ({"p_values": [0.1], "alpha": 1.0}, ValueError, "alpha"),
        ({"p_values": [0.1], "alpha": True}, TypeError, "alpha"),
        ({"p_values": [0.1], "method": "fdr_by"}, ValueError, "holm"),
    ],
)
def test_bad_input_is_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        reject(**kwargs)

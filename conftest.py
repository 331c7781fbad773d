"""Hypothesis profiles, one BLAS thread and the full mode's timeout, for all tests.

All profiles are derandomized, so a failure reproduces from the same command. ``ci``
is the default; ``THEORY_CHECKS=full`` selects ``full`` (see
:mod:`theory_checks._mode`); ``HYPOTHESIS_PROFILE=dev|thorough|...`` overrides both.
Tests set their own ``max_examples`` where the cost of one example matters; the
profile value is the fallback.

pytest-timeout's per-test default (``timeout`` in pyproject.toml) is sized for the
default mode. In full mode the theory checks legitimately run for minutes each, so
every test without its own ``timeout`` mark gets :data:`FULL_MODE_TIMEOUT` instead,
unless ``--timeout`` or ``PYTEST_TIMEOUT`` sets one for the run.

The test process runs BLAS on one thread (set once, at configuration). The tests
solve many small problems, for which threads only add synchronisation, and on a
2-core machine with any other load that synchronisation turns into waiting:
measured, ``tests/test_penalties.py`` took 93 s with the default two threads and
5.8 s with one while another process held a core. Subprocesses that the tests
start (notebook kernels, joblib workers) keep their own settings.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from threadpoolctl import threadpool_limits

from theory_checks._mode import MODE

_COMMON = {
    "derandomize": True,
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=20, **_COMMON)
settings.register_profile("dev", max_examples=30, **_COMMON)
settings.register_profile("full", max_examples=200, **_COMMON)
settings.register_profile("thorough", max_examples=300, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", MODE))


def pytest_configure(config: pytest.Config) -> None:
    """One BLAS thread for the whole test process (see the module docstring)."""
    # numpy and scipy each bring a BLAS: load both first, so that both are limited
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401

    config._clair_blas_limit = threadpool_limits(limits=1, user_api="blas")


#: Seconds per test in full mode (the longest file, T1, took 4 min 41 s in all).
FULL_MODE_TIMEOUT = 1800


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """In full mode, give every test without a ``timeout`` mark the full mode's."""
    if MODE != "full" or not config.pluginmanager.hasplugin("timeout"):
        return
    if config.getoption("timeout", None) is not None or os.environ.get(
        "PYTEST_TIMEOUT"
    ):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(FULL_MODE_TIMEOUT))

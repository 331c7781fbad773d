"""Hypothesis profiles and the full mode's timeout, shared by tests/ and theory_checks/.

All profiles are derandomized, so a failure reproduces from the same command. ``ci``
is the default; ``THEORY_CHECKS=full`` selects ``full`` (see
:mod:`theory_checks._mode`); ``HYPOTHESIS_PROFILE=dev|thorough|...`` overrides both.
Tests set their own ``max_examples`` where the cost of one example matters; the
profile value is the fallback.

pytest-timeout's per-test default (``timeout`` in pyproject.toml) is sized for the
default mode. In full mode the theory checks legitimately run for minutes each, so
every test without its own ``timeout`` mark gets :data:`FULL_MODE_TIMEOUT` instead,
unless ``--timeout`` or ``PYTEST_TIMEOUT`` sets one for the run.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

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

"""Hypothesis profiles of theory_checks: ``ci`` (default) and ``full``.

``full`` is selected by ``THEORY_CHECKS=full`` (see :mod:`theory_checks._mode`);
both are derandomized, so every failure reproduces from the same command.
The ``ci`` profile is the same as the one of ``tests/conftest.py``, so running
``pytest tests theory_checks`` in one session gives either suite the settings
it expects. Tests set their own ``max_examples`` from ``FULL`` where the cost of
one example matters; the profile value is the fallback.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from theory_checks._mode import FULL, MODE

_COMMON = {
    "derandomize": True,
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=20, **_COMMON)
settings.register_profile("full", max_examples=200, **_COMMON)
settings.load_profile(MODE)

__all__ = ["FULL"]

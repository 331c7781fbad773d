"""Hypothesis profiles shared by tests/ and theory_checks/.

All are derandomized, so a failure reproduces from the same command. ``ci`` is the
default; ``THEORY_CHECKS=full`` selects ``full`` (see :mod:`theory_checks._mode`);
``HYPOTHESIS_PROFILE=dev|thorough|...`` overrides both. Tests set their own
``max_examples`` where the cost of one example matters; the profile value is the
fallback.
"""

from __future__ import annotations

import os

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

"""Shared test configuration: deterministic hypothesis profiles.

``dev`` (default) and ``ci`` are both derandomized, so a failure reproduces; ``ci``
runs fewer examples to keep ``make test`` short. Select with
``HYPOTHESIS_PROFILE=dev|ci|thorough``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "derandomize": True,
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=20, **_COMMON)
settings.register_profile("dev", max_examples=30, **_COMMON)
settings.register_profile("thorough", max_examples=300, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

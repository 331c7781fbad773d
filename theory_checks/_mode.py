"""The run mode of theory_checks: default (CI) or ``THEORY_CHECKS=full``.

Import ``FULL`` to choose sizes, replicates and numbers of examples::

    from theory_checks._mode import FULL

Default mode targets a run of the whole suite within 6 minutes on 2 cores;
full mode runs the large version (more examples, larger instances).
"""

from __future__ import annotations

import os

__all__ = ["FULL", "MODE"]

#: True when the environment sets ``THEORY_CHECKS=full``.
FULL: bool = os.environ.get("THEORY_CHECKS") == "full"

#: "full" or "ci": the hypothesis profile loaded by the top-level ``conftest.py``.
MODE: str = "full" if FULL else "ci"

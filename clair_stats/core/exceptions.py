"""The library's own warning classes, in one place so that users can filter them.

Every warning that clair_stats issues is a :class:`ClairWarning`, so that
``warnings.simplefilter("error", clair_stats.ClairWarning)`` escalates all of them
and ``"ignore"`` silences all of them; each message says what happened and what
to do. (As scikit-learn gathers its warnings in ``sklearn.exceptions``.)
"""

from __future__ import annotations

__all__ = [
    "AssumptionWarning",
    "ClairWarning",
    "ConvergenceWarning",
    "PerformanceWarning",
]


class ClairWarning(UserWarning):
    """Base class of every warning issued by clair_stats."""


class ConvergenceWarning(ClairWarning):
    """A solver stopped at ``max_iter`` before its certificate met ``tol``."""


class AssumptionWarning(ClairWarning):
    """The data look inconsistent with an assumption of CLAIR or with an argument.

    Issued by :func:`clair_stats.clair` when half or more of the clients are
    flagged (CLAIR assumes a benign majority), when the low-rank part L^ is zero
    or has a lower rank than requested, when a given noise level (``sigma``,
    ``noise_cov`` or ``mu``) is inconsistent with the off-subspace energies, and
    when the noise is at round-off relative to the data (a test would then flag
    clients on numerical error). The result is still returned; the message says
    what to check or pass instead.
    """


class PerformanceWarning(ClairWarning):
    """A call is expected to take long, with the expected time and a faster option."""

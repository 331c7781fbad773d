"""The library's own warning classes, in one place so that users can filter them.

Every warning that clair_stats issues is a :class:`ClairWarning`, so that
``warnings.simplefilter("error", clair_stats.ClairWarning)`` escalates all of them
and ``"ignore"`` silences all of them; each message says what happened and what
to do. (As scikit-learn gathers its warnings in ``sklearn.exceptions``.)
"""

from __future__ import annotations

__all__ = ["ClairWarning", "ConvergenceWarning"]


class ClairWarning(UserWarning):
    """Base class of every warning issued by clair_stats."""


class ConvergenceWarning(ClairWarning):
    """A solver stopped at ``max_iter`` before its certificate met ``tol``."""

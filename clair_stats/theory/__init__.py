"""The formulas of the claims (docs/claims.md), shared by theory_checks/ and studies.

One module per claim: :mod:`~clair_stats.theory.t1` (incoherence, the condition and
lam of exact recovery), :mod:`~clair_stats.theory.t3` (separation ratio and
detection power), :mod:`~clair_stats.theory.t4` (oracle gain and its costs, the
rate predictions of the subspace error). Modules here import
:mod:`clair_stats.core` only.
"""

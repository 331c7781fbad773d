"""The formulas of SPEC §4, shared by theory_checks/ and the studies of simulations/.

One module per claim: :mod:`~clair_stats.theory.t1` (incoherence, the condition and
lam of exact recovery), :mod:`~clair_stats.theory.t3` (separation ratio and
detection power), :mod:`~clair_stats.theory.t4` (oracle gain and its costs).
"""

"""The foundation: what every other subpackage builds on.

Input validation (:mod:`~clair_stats.core.validation`), the library's warning
classes (:mod:`~clair_stats.core.exceptions`), dense linear algebra shared by
every step (:mod:`~clair_stats.core.linalg`: stacking, the top-r subspace of a
stack, the off-subspace energy), factored client updates
(:mod:`~clair_stats.core.lowrank`), the programs P0 / P1 / P1c as frozen
specifications (:mod:`~clair_stats.core.problems`) with their penalties and
proximal maps (:mod:`~clair_stats.core.penalties`), duality-gap certificates
(:mod:`~clair_stats.core.certificates`) and the result objects
(:mod:`~clair_stats.core.results`). Modules here import numpy and scipy and each
other, never another subpackage of clair_stats.
"""

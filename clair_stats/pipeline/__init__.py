"""The CLAIR estimator, step by step (docs/pipeline.md).

:mod:`~clair_stats.pipeline.decompose` (step 1: P0 / P1 / P1c by a solver of
:mod:`clair_stats.solvers`), :mod:`~clair_stats.pipeline.lam` (lam="auto": a
path over lam and a reweighted solve), :mod:`~clair_stats.pipeline.subspace`
(step 2: A^),
:mod:`~clair_stats.pipeline.multitest` and :mod:`~clair_stats.pipeline.detection`
(step 3: the per-client tests and their multiple-testing correction),
:mod:`~clair_stats.pipeline.empirical_null` (step 3 without a noise level: the
robust z-scores of the log energies and their exact null law),
:mod:`~clair_stats.pipeline.refine` (step 4) and
:mod:`~clair_stats.pipeline.estimator` (:func:`~clair_stats.clair`, the four steps
end to end, on dense or factored updates alike). Modules here import
:mod:`clair_stats.solvers` and :mod:`clair_stats.core`, never the simulation,
evaluation, LoRA or experiment subpackages.
"""

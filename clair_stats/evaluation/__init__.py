"""What CLAIR is compared with and how (docs/pipeline.md §6-§7).

:mod:`~clair_stats.evaluation.baselines`: local fitting, FedAvg, the robust
aggregators, plain SVD + refinement and oracle CLAIR, each returning the matrix
every client ends up with. :mod:`~clair_stats.evaluation.metrics`: subspace
distances, detection scores and per-client errors.
:mod:`~clair_stats.evaluation.flower`: Flower's own server-side aggregators run on
the same arrays (the ``flower`` extra; imported by name only, flwr on first call).
Modules here import :mod:`clair_stats.pipeline` (the refinement) and
:mod:`clair_stats.core`.
"""

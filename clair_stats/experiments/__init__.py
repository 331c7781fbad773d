"""Study tooling: the runner, figures, reports and the demo (the ``studies`` extra).

:mod:`~clair_stats.experiments.study` (a seeded grid x replicates, resumable,
parallel with joblib or dask), :mod:`~clair_stats.experiments.plotting` (Monte
Carlo summaries and captioned figures), :mod:`~clair_stats.experiments.reports`
(the jupytext reports of ``notebooks/``) and :mod:`~clair_stats.experiments.demo`
(``clair demo``). This is the top of the package: modules here may import any
other subpackage, and nothing in the library imports them. pandas, joblib, tqdm
and dask are needed here only, and ``import clair_stats`` does not load them.
"""

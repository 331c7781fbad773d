"""Solvers of P0, P1 and P1c on the stacked matrix M (p x Kq) (docs/programs.md).

- :func:`~clair_stats.solvers.admm.admm_p0`: ADMM for P0 (fast);
- :func:`~clair_stats.solvers.bcd.bcd_p1`: exact block-coordinate descent for P1 (fast);
- :func:`~clair_stats.solvers.cvx.cvxpy_solve`: cvxpy for P0, P1, P1c (exact reference);
- :mod:`~clair_stats.solvers.factored`: the reduction of factored (LoRA) updates to a
  (sum_k r_k)-sized core and the lift back.

Every solver stops on (or reports) the certificate of
:mod:`clair_stats.core.certificates`. Modules here import :mod:`clair_stats.core`
only; cvxpy is imported when the reference solver is called.
"""

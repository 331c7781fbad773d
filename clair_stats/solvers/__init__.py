"""Solvers of P0, P1 and P1c on the stacked matrix M (p x Kq).

- :func:`~clair_stats.solvers.admm.admm_p0`: ADMM for P0 (fast);
- :func:`~clair_stats.solvers.bcd.bcd_p1`: exact block-coordinate descent for P1 (fast);
- :func:`~clair_stats.solvers.cvx.cvxpy_solve`: cvxpy for P0, P1, P1c (exact reference).
"""

"""The exact reference: P0, P1 and P1c written in cvxpy.

The nuclear norm makes every program a semidefinite program of size (p + Kq), so this
path is for small instances and for checking the fast solvers (docs/programs.md §5: SCS
took 0.3 s at p x Kq = 20 x 100 and 117 s at 100 x 1000). SCS is the default backend;
Clarabel (interior point, more accurate, more memory) is used with
``cvxpy_solver="CLARABEL"``.

The returned dual matrix is the multiplier of the equality constraint (P0), the
residual (P1), or the multiplier of the norm constraint times the normalised
residual (P1c); the certificate is then computed by
:func:`clair_stats.core.certificates.duality_gap`, exactly as for the fast solvers.
"""

from __future__ import annotations

import numpy as np

from clair_stats.core.certificates import duality_gap
from clair_stats.core.problems import Problem
from clair_stats.solvers.base import SolverOutput

__all__ = ["CVXPY_SOLVERS", "cvxpy_solve"]

CVXPY_SOLVERS = ("SCS", "CLARABEL")


def _solver_options(name: str, tol: float, max_iter: int) -> dict:
    if name == "SCS":
        return {"eps_abs": tol, "eps_rel": tol, "max_iters": max_iter}
    return {
        "tol_gap_abs": tol,
        "tol_gap_rel": tol,
        "tol_feas": tol,
        "max_iter": max_iter,
    }


def cvxpy_solve(
    problem: Problem,
    data: np.ndarray,
    *,
    tol: float,
    max_iter: int,
    verbose: bool = False,
    cvxpy_solver: str = "SCS",
) -> SolverOutput:
    """Solve P0, P1 or P1c on the stacked matrix ``data`` (p, Kq) with cvxpy.

    Parameters
    ----------
    problem : Problem
        The program (P0, P1 or P1c) with its lam, weights, mu or eps and
        centre, written as a cvxpy problem here.
    data : numpy.ndarray, shape (p, Kq)
        M.
    tol : float
        Passed to the backend (SCS: eps_abs = eps_rel = tol; Clarabel: gap and
        feasibility tolerances).
    max_iter : int
        Backend iteration limit.
    verbose : bool
        Backend output.
    cvxpy_solver : {"SCS", "CLARABEL"}
        The cvxpy backend (case-insensitive).

    Returns
    -------
    SolverOutput
    """
    import cvxpy as cp  # imported here: half a second that the fast path never needs

    name = cvxpy_solver.upper()
    if name not in CVXPY_SOLVERS:
        raise ValueError(
            f"cvxpy_solver must be one of {CVXPY_SOLVERS}, got {cvxpy_solver!r}."
        )
    p, n_cols = data.shape
    n_clients = problem.n_clients
    q = n_cols // n_clients
    low_rank = cp.Variable((p, n_cols))
    sparse = cp.Variable((p, n_cols))
    center = cp.Variable((p, q)) if problem.center else None
    fitted = low_rank + sparse
    if center is not None:
        fitted = fitted + cp.hstack([center] * n_clients)
    block_penalty = cp.sum(
        cp.hstack(
            [
                problem.weights[k] * cp.norm(sparse[:, k * q : (k + 1) * q], "fro")
                for k in range(n_clients)
            ]
        )
    )
    regularizer = cp.normNuc(low_rank) + problem.lam * block_penalty
    constraints = []
    if problem.mode == "exact":
        constraints = [fitted == data]
        objective = regularizer
    elif problem.mode == "constrained":
        constraints = [cp.norm(data - fitted, "fro") <= problem.eps]
        objective = regularizer
    else:
        objective = 0.5 * cp.sum_squares(data - fitted) + problem.mu * regularizer
    program = cp.Problem(cp.Minimize(objective), constraints)
    try:
        program.solve(
            solver=name, verbose=verbose, **_solver_options(name, tol, max_iter)
        )
    except cp.error.SolverError as exc:
        raise RuntimeError(
            f"cvxpy/{name} failed on {problem.name} at p x Kq = {p} x {n_cols}: "
            f"{exc}. Try solver='proximal', or cvxpy_solver='SCS' for larger sizes."
        ) from exc
    status = program.status
    if low_rank.value is None:
        raise RuntimeError(f"cvxpy/{name} returned no solution (status {status}).")
    l_val = np.asarray(low_rank.value)
    s_val = np.asarray(sparse.value)
    c_val = None if center is None else np.asarray(center.value)
    residual = problem.residual(data, l_val, s_val, c_val)
    if problem.mode == "exact":
        # cvxpy's multiplier of "fitted == M" enters its Lagrangian as
        # + <nu, fitted - M>, so the certificate's Y (a subgradient of ||L||_*)
        # is -nu
        dual = -np.asarray(constraints[0].dual_value)
    elif problem.mode == "constrained":
        # KKT: Y = nu (M - fitted) / ||M - fitted||_F with nu >= 0 the multiplier
        nu = float(np.asarray(constraints[0].dual_value).ravel()[0])
        res_norm = float(np.linalg.norm(residual))
        dual = nu * residual / res_norm if res_norm > 0 else np.zeros_like(data)
    else:
        dual = residual
    cert = duality_gap(problem, data, l_val, s_val, c_val, dual, residual=residual)
    norm_data = max(float(np.linalg.norm(data)), 1e-300)
    if problem.mode == "exact":
        primal_res = float(np.linalg.norm(residual)) / norm_data
    elif problem.mode == "constrained":
        primal_res = max(float(np.linalg.norm(residual)) - problem.eps, 0.0)
        primal_res /= norm_data
    else:
        primal_res = 0.0
    stats = program.solver_stats
    iterations = stats.num_iters if stats.num_iters is not None else -1
    return SolverOutput(
        low_rank=l_val,
        sparse=s_val,
        center=c_val,
        dual=dual,
        converged=status == cp.OPTIMAL,
        iterations=int(iterations),
        primal_residual=primal_res,
        dual_residual=float("nan"),
        duality_gap=cert.gap,
        relative_gap=cert.relative_gap,
        objective=problem.objective(data, l_val, s_val, c_val),
        message=f"cvxpy status: {status}",
    )

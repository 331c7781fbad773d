"""lam = "auto": a path over lam, a plateau of the detected set, a reweighted solve.

See :func:`select_lam` and docs/programs.md §3.1.7.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from clair_stats.core.exceptions import ConvergenceWarning
from clair_stats.core.linalg import stack
from clair_stats.core.lowrank import LowRankUpdates
from clair_stats.core.penalties import block_norms
from clair_stats.core.results import Decomposition, FactoredDecomposition
from clair_stats.core.validation import check_bool, check_updates, check_weights
from clair_stats.solvers.factored import (
    as_factored,
    factored_blas_threads,
    reduce_updates,
)

__all__ = ["AUTO_MODES", "REWEIGHT", "LamSelection", "select_lam"]

#: The programs lam="auto" serves (P1c, cvxpy only, is left to a given lam).
AUTO_MODES = ("exact", "penalized")
#: Largest number of points of the path (the ratio between them grows when the
#: span ceiling / floor is wide) and the smallest ratio between two of them.
MAX_PATH = 12
MIN_RATIO = 1.1
#: The factor t of the second solve: flagged clients get weight t w_k.
REWEIGHT = 0.1
#: A flagged block must have more than this fraction of its norm off the
#: column space of L^ (noiseless data: the benign blocks have 0 up to the
#: solver's tolerance).
OFF_FLOOR = 1e-4
#: Relative duality gap of the path's solves (the final solve uses ``tol``):
#: the path needs the support and the rank only.
PATH_TOL = 1e-6
#: The path stops once this many points in a row are not admissible after an
#: admissible one (noiseless data: once a benign client is flagged it stays so).
STOP_AFTER = 2
#: The numerical rank threshold of Decomposition.rank(), relative to ||M||_F.
RANK_TOL = 1e-6


@dataclass(frozen=True)
class LamSelection:
    """The lam chosen by :func:`select_lam` and how it was found.

    Parameters
    ----------
    lam : float
        The chosen lam (the final solve's; its weights are ``weights``).
    c : float
        lam sqrt(K).
    path : numpy.ndarray, shape (n,)
        The values of lam solved along the path, decreasing.
    supports : numpy.ndarray of bool, shape (n, K)
        The block support of S^ at each lam of the path.
    ranks : numpy.ndarray of int, shape (n,)
        The numerical rank of L^ at each lam of the path.
    plateau : tuple of float
        (lowest, highest) lam of the chosen run of admissible path points with
        the chosen support, or (nan, nan) when the rule fell back.
    ceiling : float
        sqrt(min(block rows, block columns)) / min_k w_k: at and above it P0 and
        P1 flag nobody, whatever the data.
    weights : numpy.ndarray, shape (K,)
        The block weights of the final solve: the given w_k, times ``reweight``
        (:data:`REWEIGHT`) on the clients flagged at the chosen path point.
    n_solves : int
        Solves done, the final one included.
    seconds : float
        Wall-clock time of the whole selection.
    fallback : bool
        True when no path point was admissible and the rule used lam = min(4 /
        sqrt(K), ceiling / 1.1) with the given weights.
    rule : str
        One line saying what was done.
    decomposition : Decomposition or FactoredDecomposition
        The final solve (what ``decompose(..., lam="auto")`` returns).
    """

    lam: float
    c: float
    path: np.ndarray = field(repr=False)
    supports: np.ndarray = field(repr=False)
    ranks: np.ndarray = field(repr=False)
    plateau: tuple[float, float]
    ceiling: float
    weights: np.ndarray = field(repr=False)
    n_solves: int
    seconds: float
    fallback: bool
    rule: str
    decomposition: Decomposition | FactoredDecomposition = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"LamSelection(lam={self.lam:.4g}, c={self.c:.3g}, plateau="
            f"[{self.plateau[0]:.4g}, {self.plateau[1]:.4g}], {self.n_solves} solves, "
            f"{self.seconds:.3g} s{', fallback' if self.fallback else ''})"
        )


def select_lam(
    updates: np.ndarray | LowRankUpdates,
    mode: str = "exact",
    mu: float | None = None,
    center: bool = False,
    weights: np.ndarray | None = None,
    solver: str = "proximal",
    tol: float | None = None,
    max_iter: int | None = None,
    *,
    max_path: int = MAX_PATH,
    reweight: float = REWEIGHT,
) -> LamSelection:
    """Choose lam from the data: the widest plateau of the detected set.

    P0 and P1 (docs/programs.md §3.1),

    .. math::

        (P0)\\quad \\min_{L,S,c} \\|L\\|_* + \\lambda \\sum_k w_k \\|S_k\\|_F
            \\ \\text{ s.t. } L + S + c 1^T = M,

        (P1)\\quad \\min_{L,S,c} \\tfrac12 \\|M - L - S - c 1^T\\|_F^2
            + \\mu \\|L\\|_* + \\mu\\lambda \\sum_k w_k \\|S_k\\|_F,

    flag nobody for lam w_k >= sqrt(min(p, q)) (the ceiling, §3.1.4; on
    factored updates the core's block shape), and everybody for lam small. In
    between, on data with a benign majority, the set of flagged clients (the
    block support of S^) equals the contaminated set over a range of lam: from
    where the contaminated clients are flagged (just below the ceiling) down to
    where a benign client's block of V (L0 = U Sigma V^T, V_k the rows of V of
    client k's q columns) exceeds lam w_k. The rule finds that range:

    1. **Path.** Solve at lam_j = ceiling / rho^(j - 1/2), j = 1, 2, ..., a log
       grid from the ceiling towards the floor ceiling / sqrt(s K) (c = lam
       sqrt(K) = 1 with unit weights, s = min(block rows, block columns); some
       benign ||V_k||_F >= sqrt(r / K) lies above it), ratio rho = max(1.1,
       sqrt(s K)^(1 / max_path)), each solve warm-started from the previous one
       and stopped at a relative gap of max(1e-6, tol). At each point record
       the support of S^ and the rank of L^, and call the point *admissible*
       when it flags at most K / 2 clients (CLAIR assumes a benign majority),
       L^ is neither 0 nor of full rank min(p, Kq), and every flagged block
       M_k - c^ has a larger fraction of its norm off the column space of L^
       than every unflagged block (and more than 1e-4): a benign block that
       P0 flags for its leverage lies in span(A), inside that column space,
       while a contaminated one stands out of it. The path stops once more
       than K / 2 clients are flagged, L^ = 0, or two points in a row are not
       admissible after an admissible one.
    2. **Choice.** P0 (``mode="exact"``): the longest run of consecutive
       admissible points with one nonempty support (ties: the larger lam; the
       run flagging nobody only if no other exists), and its middle point (the
       upper of two). P1 (``mode="penalized"``): the admissible point of
       smallest lam, since a benign client put in S^ costs P1's L^ little and
       a missed contaminated one much; if it flags nobody, the point of
       smallest lam that flags someone (at most K / 2, L^ != 0), as a minority
       sharing a second subspace is otherwise kept in L^.
    3. **Reweighting.** Solve once more at the chosen lam, at ``tol``, with
       the weights of the clients flagged there multiplied by ``reweight``
       (an adaptive group lasso step: Zou 2006; Wang and Leng 2008). On the
       plateau the contaminated blocks are flagged but, at q = 1 and large
       gamma, only partly moved into S^: L^ keeps a rank above r at every lam
       (no lam recovers exactly; measured on the calibration study's hardest
       regimes). A smaller weight moves them entirely, while the benign
       clients keep lam w_k above their ||V_k||_F.

    When no point is admissible (P0 on noisy data: L^ carries the noise and
    is of full rank at every lam), the rule falls back to lam = min(4 /
    sqrt(K), ceiling / 1.1), the default, with the given weights
    (``fallback=True``).

    Parameters
    ----------
    updates : array_like of shape (K, p, q), or LowRankUpdates
        The local estimates Theta^_k. Factored updates are reduced once to
        their core (:func:`clair_stats.solvers.factored.reduce_updates`) and
        the path runs on it.
    mode : {"exact", "penalized"}
        P0 or P1.
    mu : float, optional
        mu > 0 of P1 (required for ``mode="penalized"``).
    center : bool
        Estimate a common centre c.
    weights : array_like, shape (K,), optional
        Block weights w_k > 0 (default 1); the rule multiplies them.
    solver : {"proximal", "cvxpy"}
        As in :func:`~clair_stats.pipeline.decompose.decompose` (cvxpy: no
        warm starts, small instances only).
    tol, max_iter : optional
        Solver settings of every solve (defaults of ``decompose``).
    max_path : int
        Sets the path's ratio rho = max(1.1, sqrt(s K)^(1 / max_path)), and so
        its largest number of points (>= 2).
    reweight : float
        The factor t in (0, 1] of the final solve's weights on the flagged
        clients; 1 keeps the given weights.

    Returns
    -------
    LamSelection
        The chosen lam, c = lam sqrt(K), the path, its supports and ranks, the
        plateau, the final weights, the number of solves, the rule and the
        final :class:`~clair_stats.core.results.Decomposition` (a
        ``FactoredDecomposition`` for LowRankUpdates), whose ``problem``
        records lam and the final weights.

    Raises
    ------
    ValueError
        For ``mode="constrained"``, a bad ``max_path`` or ``reweight``, and
        whatever :func:`~clair_stats.pipeline.decompose.decompose` refuses
        (mode="penalized" without mu, weights of the wrong shape, ...).

    Notes
    -----
    Cost: the path's solves plus one, at most ``max_path`` + 1 (13 by
    default). Measured on the full grid of the calibration study
    (noiseless P0, 2,304 instances, each timed against one plain solve at the
    chosen lam right after it): a median of 9 solves (at most 12; 7 at q = 1,
    11 at q = 10) and 9.5 times the time of one solve (90th percentile 28.5;
    the points near the ceiling converge slowest); on 120 noisy P1 draws a
    median of 6 solves and 3.7 times one solve at c = 4; with ``center=True``
    11 solves and 18 times one solve; on factored updates 10 solves and 6
    times one core solve (docs/programs.md §3.1.7).

    The rule assumes a benign majority and contamination that stands out of
    the shared subspace (delta_k > 0, docs/model.md §2): clients inside
    span(A) (the ``scaled`` type) are not identifiable and stay unflagged; a
    minority on a second shared subspace is flagged only where the path
    separates it (the phase-transition study, docs/programs.md §3.1.7).

    References
    ----------
    Xu, Caramanis, Sanghavi (2012). Robust PCA via outlier pursuit. IEEE
    Transactions on Information Theory 58(5), 3047-3064.
    Zou (2006). The adaptive lasso and its oracle properties. JASA 101(476).
    Wang, Leng (2008). A note on adaptive group lasso. Computational
    Statistics and Data Analysis 52(12), 5277-5286.
    He, Chen, Feng (2026). Federated LoRA fine-tuning for LLMs via collaborative
    alignment. arXiv:2605.21217.
    """
    if isinstance(updates, LowRankUpdates):  # the core solves on one BLAS thread
        with factored_blas_threads():
            return _select_lam(
                updates,
                mode,
                mu,
                center,
                weights,
                solver,
                tol,
                max_iter,
                max_path,
                reweight,
            )
    return _select_lam(
        updates, mode, mu, center, weights, solver, tol, max_iter, max_path, reweight
    )


def _select_lam(
    updates: np.ndarray | LowRankUpdates,
    mode: str,
    mu: float | None,
    center: bool,
    weights: np.ndarray | None,
    solver: str,
    tol: float | None,
    max_iter: int | None,
    max_path: int,
    reweight: float,
) -> LamSelection:
    """:func:`select_lam` (factored updates: inside their BLAS thread limit)."""
    from clair_stats.pipeline.decompose import DEFAULT_C_LAM, decompose

    start = time.perf_counter()
    if mode not in AUTO_MODES:
        raise ValueError(
            f"lam='auto' chooses lam for mode in {AUTO_MODES}, got mode={mode!r}; "
            "pass a number for lam with mode='constrained'."
        )
    if isinstance(max_path, bool) or not isinstance(max_path, int) or max_path < 2:
        raise ValueError(f"max_path must be an integer >= 2, got {max_path!r}.")
    if not (isinstance(reweight, int | float) and 0 < reweight <= 1):
        raise ValueError(f"reweight must be in (0, 1], got {reweight!r}.")
    reduction = None
    if isinstance(updates, LowRankUpdates):
        reduction = reduce_updates(updates, shared_rows=check_bool(center, "center"))
        data = reduction.core
    else:
        data = check_updates(updates)
    n_clients, rows, cols = data.shape
    w = check_weights(weights, n_clients)
    options = {
        "mode": mode,
        "mu": mu,
        "center": center,
        "solver": solver,
        "tol": tol,
        "max_iter": max_iter,
    }
    warm = solver == "proximal"
    path_options = dict(options)
    path_options["tol"] = max(PATH_TOL, tol or 0.0)

    ceiling = math.sqrt(min(rows, cols)) / float(np.min(w))
    span = math.sqrt(min(rows, cols) * n_clients)
    ratio = max(MIN_RATIO, span ** (1.0 / max_path))
    n_points = max(2, math.ceil(math.log(span) / math.log(ratio)))

    lams, supports, ranks, results, consistent = [], [], [], [], []
    admissible: list[bool] = []
    previous = None
    for j in range(n_points):
        lam = ceiling / ratio ** (j + 0.5)
        res = _solve(decompose, data, lam, w, previous if warm else None, path_options)
        previous = res
        flagged = res.support()
        lams.append(lam)
        supports.append(flagged)
        basis = _column_basis(res)
        ranks.append(basis.shape[1])
        results.append(res)
        consistent.append(_consistent(data, res, flagged, basis))
        admissible.append(
            consistent[-1] and 2 * int(flagged.sum()) <= n_clients and ranks[-1] > 0
        )
        if 2 * int(flagged.sum()) > n_clients or ranks[-1] == 0:
            break
        if any(admissible[:-STOP_AFTER]) and not any(admissible[-STOP_AFTER:]):
            break
    lams_a = np.asarray(lams)
    supports_a = np.asarray(supports, dtype=bool)
    ranks_a = np.asarray(ranks, dtype=int)

    choice = _choose(mode, supports_a, ranks_a, np.asarray(admissible))
    if choice is None:
        lam = min(DEFAULT_C_LAM / math.sqrt(n_clients), ceiling / MIN_RATIO)
        final_w, plateau, fallback, init = w, (math.nan, math.nan), True, None
        rule = (
            f"no admissible point among {len(lams)} on the path (each flags more "
            f"than K/2 clients, has L^ = 0 or of full rank, or flags a block lying "
            f"in L^'s column space): fallback lam = {lam:.4g} (c = "
            f"{lam * math.sqrt(n_clients):.3g})"
        )
    else:
        first, last, mid, how = choice  # path indices, first = largest lam
        lam = float(lams_a[mid])
        plateau = (float(lams_a[last]), float(lams_a[first]))
        flagged = supports_a[mid]
        fallback = False
        final_w = np.where(flagged, w * reweight, w)
        init = results[mid] if warm else None
        rule = (
            f"{how}: {int(flagged.sum())} of {n_clients} clients flagged on "
            f"{last - first + 1} of {len(lams)} path points, lam in "
            f"[{plateau[0]:.4g}, {plateau[1]:.4g}]; lam = {lam:.4g} (c = "
            f"{lam * math.sqrt(n_clients):.3g}), flagged weights x {reweight:g}"
        )
    final = decompose(data, lam=lam, weights=final_w, init=init, **options)
    extra = 1
    n_solves = len(lams) + extra
    if reduction is not None:
        final = as_factored(reduction, final)
    return LamSelection(
        lam=lam,
        c=lam * math.sqrt(n_clients),
        path=lams_a,
        supports=supports_a,
        ranks=ranks_a,
        plateau=plateau,
        ceiling=ceiling,
        weights=final_w,
        n_solves=int(n_solves),
        seconds=time.perf_counter() - start,
        fallback=fallback,
        rule=rule,
        decomposition=final,
    )


def _solve(decompose, data, lam, weights, init, options) -> Decomposition:
    """One solve of the path, its ConvergenceWarning silenced: the path reads the
    support and the rank only; the final solve warns as ``decompose`` does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return decompose(data, lam=lam, weights=weights, init=init, **options)


def _column_basis(res: Decomposition) -> np.ndarray:
    """An orthonormal basis of the column space of L^ (numerical rank: singular
    values above RANK_TOL ||M||_F, as ``Decomposition.rank()``)."""
    u, sv, _ = np.linalg.svd(stack(res.low_rank), full_matrices=False)
    return u[:, sv > RANK_TOL * res.data_norm]


def _off_fraction(
    data: np.ndarray, res: Decomposition, basis: np.ndarray
) -> np.ndarray:
    """||P_perp (M_k - c^)||_F / ||M_k - c^||_F, P_perp off the span of ``basis``."""
    centred = data if res.center is None else data - res.center[None]
    n_clients = centred.shape[0]
    # divided by a power of two near the largest entry (exact), so that the
    # squares of block_norms neither underflow (updates of order 1e-300) nor
    # overflow (1e300): the rule is then the same at every scale
    top = float(np.max(np.abs(centred))) if centred.size else 0.0
    if top > 0:
        centred = centred / 2.0 ** np.round(np.log2(top))
    matrix = stack(centred)
    off = matrix - basis @ (basis.T @ matrix)
    norms = block_norms(matrix, n_clients)
    return block_norms(off, n_clients) / np.maximum(norms, np.finfo(float).tiny)


def _consistent(
    data: np.ndarray, res: Decomposition, flagged: np.ndarray, basis: np.ndarray
) -> bool:
    """L^ is not of full rank, and every flagged block stands off its column space
    more than any other block (and by more than OFF_FLOOR of its norm)."""
    n_clients, rows, cols = data.shape
    if basis.shape[1] >= min(rows, n_clients * cols):
        return False
    if not flagged.any():
        return True
    if flagged.all():
        return False
    frac = _off_fraction(data, res, basis)
    floor = max(OFF_FLOOR, float(np.max(frac[~flagged])))
    return bool(np.min(frac[flagged]) > floor)


def _runs(supports: np.ndarray, admissible: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) path indices of the maximal runs of admissible points with
    one support."""
    out: list[tuple[int, int]] = []
    for j in range(len(supports)):
        if not admissible[j]:
            continue
        if out and out[-1][1] == j - 1 and np.array_equal(supports[j], supports[j - 1]):
            out[-1] = (out[-1][0], j)
        else:
            out.append((j, j))
    return out


def _choose(
    mode: str, supports: np.ndarray, ranks: np.ndarray, admissible: np.ndarray
) -> tuple[int, int, int, str] | None:
    """(first, last, chosen, description) of the rule's choice on the path, or None.

    P0: the longest run of admissible points with one nonempty support (ties:
    the larger lam), its middle point (the upper of two); the run that flags
    nobody only when no other qualifies. P1: the admissible point of
    smallest lam; if it flags nobody, the point of smallest lam that flags
    someone, at most K/2 clients, with L^ != 0.
    """
    runs = _runs(supports, admissible)
    if not runs:
        return None
    if mode == "exact":
        someone = [run for run in runs if supports[run[0]].any()]
        first, last = max(someone or runs, key=lambda run: (run[1] - run[0], -run[0]))
        return first, last, first + (last - first) // 2, "widest plateau"
    first, last = runs[-1]
    if supports[last].any():
        return first, last, last, "lowest admissible point"
    n_clients = supports.shape[1]
    flags = supports.sum(axis=1)
    some = (flags > 0) & (2 * flags <= n_clients) & (ranks > 0)
    if not some.any():
        return first, last, last, "lowest admissible point (nobody flagged)"
    j = int(np.nonzero(some)[0][-1])
    i = j
    while i > 0 and some[i - 1] and np.array_equal(supports[i - 1], supports[j]):
        i -= 1
    return i, j, j, "lowest point flagging someone (the admissible ones flag nobody)"

"""The CLAIR estimator end to end: decompose -> subspace -> detect -> refine.

The rules of its "auto" defaults (docs/pipeline.md §3.5), each recorded in the
result:

- the noise level: ``sigma`` or ``noise_cov`` when given, else estimated by the
  median rule (:mod:`clair_stats.pipeline.noise`);
- ``mode="auto"``: P1 with mu = the noise operator norm when the data are noisy,
  P0 when they are noiseless (the scale-free rule rho <= rho_0);
- ``rank=None``: for P1 the directions of L^ that the median client carries
  above its noise (docs/pipeline.md §3.2); for P0 the numerical rank of L^;
- ``detect="auto"``: the test on noisy data, the support of S^ on noiseless data;
- ``test="auto"``: the weighted chi-square with ``noise_cov``, the chi-square
  with ``sigma``, else the empirical null (no noise level needed);
- ``lam="auto"``: the widest plateau of the flagged set along a warm-started
  path over lam, with the plateau's clients down-weighted in a second solve
  (:mod:`clair_stats.pipeline.lam`), once per program solved;
- ``shrink="auto"``: the in-subspace pooling of step 4 by empirical Bayes, and
  ``final_subspace="kept"``: A^ of step 4 refitted on S^ (docs/pipeline.md §3.4).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.stats

from clair_stats.core.exceptions import AssumptionWarning
from clair_stats.core.lowrank import LowRankUpdates
from clair_stats.core.results import (
    Decomposition,
    FactoredDecomposition,
    RefinedFactors,
)
from clair_stats.core.validation import (
    check_alpha,
    check_choice,
    check_int,
    check_positive,
    check_shrinkage,
)
from clair_stats.pipeline.decompose import DEFAULT_TOL, default_lam
from clair_stats.pipeline.detection import (
    TESTS,
    ClientTest,
    empirical_energy_test,
    energy_test,
    median_rule,
    weighted_energy_test,
)
from clair_stats.pipeline.lam import LamSelection, select_lam
from clair_stats.pipeline.multitest import METHODS, reject
from clair_stats.pipeline.noise import (
    GivenNoise,
    NoiseLevel,
    noise_norm,
    noiseless_threshold,
    optimal_threshold,
)
from clair_stats.pipeline.paths import Coordinates, Updates, as_updates
from clair_stats.pipeline.refine import (
    Shrinkage,
    close_by_angle,
    close_by_distance,
    copy_groups,
    distinct_weights,
    exact_copies,
    in_subspace_shrinkage,
    pair_cosines,
    pair_distances,
)
from clair_stats.pipeline.subspace import estimate_subspace
from clair_stats.pipeline.trimmed import (
    TrimmedFit,
    elemental_size,
    majority_size,
    reweighted,
    subset_fit,
    trimmed_objective,
    trimmed_subspace,
)

__all__ = ["ClairResult", "clair", "shared_subspace"]

SIDES: tuple[str, ...] = ("left", "right")
DETECT_RULES: tuple[str, ...] = ("auto", "support", "test")
REFITS: tuple[str, ...] = ("trimmed", "none")
POOLINGS: tuple[str, ...] = ("distinct", "mean")
SHRINKS: tuple[str, ...] = ("auto", "none")
FINAL_SUBSPACES: tuple[str, ...] = ("kept", "detection")
#: Family-wise probability that the copy rules (docs/pipeline.md §3.4, §3.6)
#: group two independent benign clients.
DUPLICATE_LEVEL = 1e-3
PROGRAM_MODES: tuple[str, ...] = ("auto", "exact", "penalized")
#: A given noise level is flagged when the median energy ratio leaves
#: [1 / 4, 4] (a factor 2 on the standard deviation; docs/pipeline.md §3.5).
NOISE_RATIO_LIMIT = 4.0
#: Re-estimate the noise level at P1's subspace until it moves by less than this.
NOISE_RTOL = 0.1
#: Solves of P1 while re-estimating the noise level, at most.
MAX_NOISE_ROUNDS = 3
#: Holm level of the lower-tail check of the benign majority (false alarms at
#: most this often on data that satisfy the model).
MAJORITY_LEVEL = 1e-3
#: Noiseless updates are copies of one another when they differ by at most this
#: relative to the largest update (in Frobenius norm).
COPY_RTOL = 1e-12
#: Level of the (Bonferroni) chi-square cut below which a client joins the
#: reweighted refit of A^ (docs/pipeline.md §3.6): more liberal than the test's
#: 0.05, since a benign client left out of the fit carries the fit's error as
#: energy (at 0.05 a benign client was flagged in 27% of ALIE federations with a
#: backbone, against 0 of 40 at 0.001).
REWEIGHT_LEVEL = 1e-3
#: Reweighting rounds, at most.
REWEIGHT_ROUNDS = 5
#: Relative tolerance of the numerical rank of L^.
RANK_TOL = 1e-6


@dataclass(frozen=True)
class ClairResult:
    """What :func:`clair` returns.

    Parameters
    ----------
    subspace : numpy.ndarray, shape (p, r) (``side="right"``: (q, r))
        A^, orthonormal columns (r = 0 when no shared direction was found).
    rank : int
        r.
    collaborative : numpy.ndarray of bool, shape (K,)
        S^; the others are flagged as contaminated.
    refined : numpy.ndarray of shape (K, p, q), or RefinedFactors
        Theta~_k for k in S^, Theta^_k otherwise; for LowRankUpdates, factors
        B~_k A~_k of the truncated SVD of Theta~_k with the truncation errors.
    decomposition : Decomposition or FactoredDecomposition
        Step 1 (on the transposes when ``side="right"``).
    test : ClientTest or None
        The per-client test (``detect="test"``).
    detect : str
        The rule used: ``"support"`` or ``"test"`` (``"auto"`` resolved).
    side : str
        ``"left"`` (the shared subspace is in the column space, R^p) or
        ``"right"`` (in the row space, R^q: every step ran on the transposes).
    mode : str
        The program solved: ``"exact"`` (P0) or ``"penalized"`` (P1).
    mu : float or None
        mu of P1 (None for P0).
    noise : NoiseLevel
        The noise level, where it came from, and the noiseless rule.
    rules : dict of str to str
        How each "auto" default was resolved, in words.
    refit : TrimmedFit or None
        The trimmed refit of A^ (and c^) (``refit="trimmed"``): the kept
        majority H, the clients A^ is fitted on, the start that won; None when
        not made. Its energies and objective are in units of u^2, u the power
        of two nearest the root-mean-square client norm.
    pool_weights : numpy.ndarray of shape (K,), or None
        The weights pi_k of Thetabar in step 4 (0 outside S^, summing to 1);
        None when S^ is empty.
    shrinkage : Shrinkage or None
        The in-subspace pooling of step 4: b_k (``factors``, 0 outside S^), the
        estimated spread T^ of the clients inside span(A^) that is not noise,
        their noise energies v_k; None when
        S^ is empty or r = 0. Its energies are in units of u^2, as the refit's.
    detection_subspace : numpy.ndarray of shape (p, r), or None
        The A^ at which step 3 ran (the test's energies are measured there),
        when ``subspace`` was refitted on S^ after it (``final_subspace="kept"``);
        else None (the same as ``subspace``).
    """

    subspace: np.ndarray = field(repr=False)
    rank: int
    collaborative: np.ndarray = field(repr=False)
    refined: np.ndarray | RefinedFactors = field(repr=False)
    decomposition: Decomposition | FactoredDecomposition = field(repr=False)
    test: ClientTest | None = field(repr=False)
    detect: str
    side: str
    mode: str = "exact"
    mu: float | None = None
    noise: NoiseLevel | None = field(default=None, repr=False)
    rules: dict[str, str] = field(default_factory=dict, repr=False)
    refit: TrimmedFit | None = field(default=None, repr=False)
    pool_weights: np.ndarray | None = field(default=None, repr=False)
    shrinkage: Shrinkage | None = field(default=None, repr=False)
    detection_subspace: np.ndarray | None = field(default=None, repr=False)

    @property
    def statistics(self) -> np.ndarray | None:
        """The test's statistics (``detect="test"``), else None."""
        return None if self.test is None else self.test.statistics

    @property
    def p_values(self) -> np.ndarray | None:
        """Uncorrected p-values (``detect="test"``), else None."""
        return None if self.test is None else self.test.p_values

    @property
    def flagged(self) -> np.ndarray:
        """Indices of the clients outside S^."""
        return np.nonzero(~self.collaborative)[0]

    def __repr__(self) -> str:
        test = "" if self.test is None else f", test={self.test.method!r}"
        return (
            f"ClairResult(rank={self.rank}, collaborative="
            f"{int(self.collaborative.sum())}/{self.collaborative.size}, "
            f"flagged={self.flagged.tolist()}, detect={self.detect!r}{test}, "
            f"mode={self.mode!r}, side={self.side!r})"
        )

    def summary(self) -> str:
        """A readable table: rules, rank, lam, flagged clients, solver diagnostics."""
        d = self.decomposition
        n_clients = self.collaborative.size
        program = f"program {d.problem.name}"
        if self.mu is not None:
            program += f", mu = {self.mu:.5g}"
        lines = [
            "CLAIR",
            f"  clients K = {n_clients}, rank r = {self.rank}, side = {self.side}, "
            f"detect = {self.detect}",
            f"  lam = {d.problem.lam:.5g} (lam sqrt(K) = "
            f"{d.problem.lam * np.sqrt(n_clients):.3g}), {program}",
        ]
        if self.noise is not None:
            lines.append(f"  {self.noise.describe()}")
        for name, rule in self.rules.items():
            lines.append(f"  {name}: {rule}")
        lines.append(
            f"  collaborative: {int(self.collaborative.sum())}, flagged: "
            f"{self.flagged.size}"
        )
        if self.flagged.size:
            lines.append("  flagged clients:")
            header = "    client  ||S_k||_F"
            if self.test is not None:
                header += "    statistic  p-value    adjusted"
            lines.append(header)
            norms = d.block_norms
            for k in self.flagged:
                row = f"    {k:6d}  {norms[k]:.3e}"
                if self.test is not None:
                    t = self.test
                    row += (
                        f"  {t.statistics[k]:.4g}  {t.p_values[k]:.3e}  "
                        f"{t.adjusted_p_values[k]:.3e}"
                    )
                lines.append(row)
        if self.test is not None:
            lines.append(f"  test: {self.test.describe()}")
        lines.append(f"  solver: {d.info!r}")
        return "\n".join(lines)


def clair(
    updates: np.ndarray | LowRankUpdates,
    rank: int | None = None,
    *,
    lam: float | str | None = "auto",
    mode: str = "auto",
    detect: str = "auto",
    test: str = "auto",
    alpha: float = 0.05,
    correction: str = "holm",
    sigma: float | np.ndarray | None = None,
    noise_cov: np.ndarray | None = None,
    noise_df: float | np.ndarray | None = None,
    mu: float | None = None,
    center: bool = False,
    refit: str = "trimmed",
    pooling: str = "distinct",
    shrink: str | float = "auto",
    final_subspace: str = "kept",
    side: str = "left",
    weights: np.ndarray | None = None,
    solver: str = "proximal",
    support_tol: float = 1e-6,
    refined_rank: int | None = None,
    **solver_options,
) -> ClairResult:
    """CLAIR: shared subspace, collaborative set and refined client updates.

    Step 1 decomposes M = [Theta^_1, ..., Theta^_K] into L^ + S^ (+ c^ 1^T)
    (:func:`clair_stats.decompose`); step 2 takes A^ = top-r left singular
    vectors of L^; step 3 finds S^ by a test of the off-subspace energies
    E_k = ||P_A^perp (Theta^_k - c^)||_F^2 or from the block support of S^;
    step 4 refits A^ on S^ and refines, for k in S^,

    .. math:: \\tilde\\Theta_k = \\bar\\Theta_{\\hat S}
              + (1 - b_k) P_{\\hat A} (\\hat\\Theta_k - \\bar\\Theta_{\\hat S}),

    b_k estimated from the data (b_k = 0 is the paper's P_A^ Theta^_k +
    P_A^^perp Thetabar; b_k = 1 is FedAvg over S^).

    With no argument but ``updates``, every choice follows a documented rule
    (module docstring, docs/pipeline.md §3.5) recorded in ``result.rules``: the
    noise level is estimated, P1 is solved with mu at the noise operator norm
    (P0 on noiseless data), the rank is read off L^ at that threshold, and the
    clients are tested by the empirical null. A
    :class:`~clair_stats.core.exceptions.AssumptionWarning` says when the data
    contradict an assumption or an argument (half or more of the clients
    flagged, L^ zero or of lower rank than requested, a noise level
    inconsistent with the energies, noise at round-off).

    Parameters
    ----------
    updates : array_like of shape (K, p, q), or LowRankUpdates
        Theta^_k. Factored updates (LoRA adapters) are never multiplied out:
        step 1 runs on a small core (:mod:`clair_stats.solvers.factored`), the
        statistics are computed there with the degrees of freedom of the full
        p x q blocks, and the refined updates come back as factors.
    rank : int, optional
        r. Default: for P1 the directions of L^ that the median client carries
        above its noise (median_k ||u_i^T (Theta^_k - c^)||^2 / (sigma_k^2 q) >
        2 (1 + sqrt(p / (Kq)))^2), then (``refit="trimmed"``) the same rule on
        the trimmed fit's directions at the noise edge of its h clients
        (docs/pipeline.md §3.6); for P0 the numerical rank of L^.
    lam : float, "auto" or None
        ``"auto"`` (default): for P0 (noiseless data, or ``mode="exact"``)
        chosen from the data by a warm-started path over lam, the widest
        plateau of the flagged set, and a second solve that down-weights the
        plateau's clients (:func:`clair_stats.pipeline.lam.select_lam`,
        docs/programs.md §3.1.7); for P1 (noisy data) c_lam / sqrt(K): there
        the test, not the support of S^, finds the contaminated clients, and
        the path rule for P1 misclassified 5 of 30 clients of a default call
        at tau = 0.3 that c_lam / sqrt(K) gets right (``decompose(...,
        lam="auto", mode="penalized")`` runs it). None: c_lam / sqrt(K)
        (:func:`clair_stats.default_lam`). A number: that lam.
    mode : {"auto", "exact", "penalized"}
        P0 or P1. ``"auto"``: P1 when a noise level is given (``sigma``,
        ``noise_cov``, ``mu``) or the data are noisy, P0 on noiseless data.
    detect : {"auto", "support", "test"}
        How S^ is formed (docs/pipeline.md §3.3): ``"auto"`` tests on noisy
        data and reads the support of S^ on noiseless data.
    test : {"auto", "chi2", "weighted_chi2", "empirical"}
        The law of the energies under the null (:mod:`clair_stats.pipeline.detection`).
        ``"auto"``: ``"weighted_chi2"`` with ``noise_cov``, ``"chi2"`` with
        ``sigma``, else ``"empirical"``. ``"chi2"`` without ``sigma`` uses the
        median rule.
    alpha, correction
        Level and correction of the test (``"holm"``, ``"fdr_bh"``,
        ``"bonferroni"``).
    sigma : float or array of shape (K,), optional
        Per-entry noise standard deviation of the updates (for regression fits,
        ``sample.local_sd``, not the noise of the responses): the penalty of P1
        (mu = the noise operator norm) and the chi-square test.
    noise_cov : array of shape (p, p) or (K, p, p), optional
        C_k, the covariance of each column of Theta^_k - Theta_k (for
        ``side="right"``, of each row): the exact weighted chi-square test, and
        sigma_k = sqrt(tr(C_k) / p) for the penalty. Dense updates only. For OLS
        fits C_k = sigma^_k^2 (X_k^T X_k)^{-1} (``sample.noise_cov``).
    noise_df : float or array of shape (K,), optional
        nu_k, when C_k holds a variance estimated from residuals with nu_k
        degrees of freedom (OLS: q (n_k - p); ``sample.noise_df``): the test is
        then of the ratio law, exact with an estimated variance.
    mu : float, optional
        mu of P1; overrides the noise rule for the penalty only (the test keeps
        ``sigma``/``noise_cov`` or its default).
    center : bool
        Estimate an unknown common backbone.
    refit : {"trimmed", "none"}
        ``"trimmed"``: refit A^ (and c^) on the majority of clients that fit
        them best, by least trimmed squares from L^'s subspace and elemental
        starts (docs/pipeline.md §3.6), so that a coordinated minority, which
        the decomposition can put into L^, cannot pull them: its objective is
        bounded whatever floor((K - d) / 2) contaminated clients send, d =
        ceil(r / q) (+ 1 with a centre), and its subspace held at that limit
        for q >= 2 (up to a quarter of the clients for q = 1). L^'s fit is kept
        when the majority fits it as well as its own, up to noise. It costs
        at most 61 starts of a few eigen-decompositions each (a second round
        when copies are found): 2.4-5.1 times the call without it on dense
        updates from 40 x 240 to 200 x 3200, 1.2-1.3 times on LoRA factors
        (benchmarks/results/refit.md). ``"none"``: A^
        from L^ and c^ from the decomposition, as in the paper.
    pooling : {"distinct", "mean"}
        The average Thetabar of step 4 over S^. ``"distinct"``: clients whose
        off-subspace residuals are more aligned than independent noise allows
        (an upper-tail test of their cosines, docs/pipeline.md §3.4) form
        groups that count as one client each, so that identical or
        near-identical updates cannot dominate it (with ``detect="test"``);
        ``"mean"``: the plain mean.
    shrink : {"auto", "none"} or float
        b_k of step 4, the share of each collaborative client's in-subspace
        deviation from Thetabar pooled away. ``"auto"``: empirical Bayes
        (James-Stein) from the spread of the clients inside span(A^) against
        their noise (``noise_cov``, ``sigma``, else the median rule), b_k = v_k /
        (v_k + T^) (docs/pipeline.md §3.4): near 1 (FedAvg over S^) when the
        clients differ inside span(A^) no more than their noise, near 0 when
        they differ much more; to first order never worse than the better of
        the two (docs/claims.md §4.5). ``"none"``: b_k = 0, each client keeps its
        in-subspace part, as in the paper. A number in [0, 1]: that b for all.
    final_subspace : {"kept", "detection"}
        The A^ of step 4. ``"kept"``: refitted on the clients S^ keeps (the top-r
        left singular vectors of their updates, pooled with the weights pi_k,
        about c^ = Thetabar with ``center``): the oracle's subspace when S^ = S.
        ``"detection"``: the A^ of step 3 (L^'s, or the trimmed refit's).
    side : {"left", "right"}
        Share the column space (p-dim) or the row space (apply to transposes).
    weights : array_like, shape (K,), optional
        Block weights w_k.
    solver : {"proximal", "cvxpy"}
        The solver of step 1 (:func:`clair_stats.decompose`): ``"proximal"``
        (default, ADMM for P0, block-coordinate descent for P1) or ``"cvxpy"``
        (the exact reference, small instances only).
    support_tol : float
        Relative tolerance of ``detect="support"``.
    refined_rank : int, optional
        LowRankUpdates only: the rank t of the refined factors B~_k A~_k (the
        truncated SVD of Theta~_k). Default: each client's own rank r_k.
    **solver_options
        ``tol``, ``max_iter``, ``verbose``, ``cvxpy_solver`` for
        :func:`clair_stats.decompose`.

    Returns
    -------
    ClairResult

    Warns
    -----
    AssumptionWarning
        When the data contradict an assumption or an argument (above).
    ConvergenceWarning
        When step 1 stops before its certificate meets ``tol``.

    References
    ----------
    He, Chen, Feng (2026). Federated LoRA fine-tuning for LLMs via collaborative
    alignment. arXiv:2605.21217.
    Xu, Caramanis, Sanghavi (2012). Robust PCA via outlier pursuit. IEEE TIT.
    Imhof (1961). Computing the distribution of quadratic forms in normal
    variables. Biometrika 48, 419-426.

    Examples
    --------
    >>> from clair_stats import FederatedModel, clair
    >>> model = FederatedModel(p=30, q=5, rank=3, n_clients=40, contamination=0.2)
    >>> sample = model.sample_regression(n=200, sigma=1.0, seed=0)
    >>> result = clair(sample.updates)
    >>> result.rank, bool((result.collaborative == sample.benign).all())
    (3, True)
    """
    data = as_updates(updates)
    _check_options(data, detect, test, mode, side, refined_rank, noise_cov)
    check_choice(refit, "refit", REFITS)
    check_choice(pooling, "pooling", POOLINGS)
    check_choice(final_subspace, "final_subspace", FINAL_SUBSPACES)
    if isinstance(shrink, str):
        check_choice(shrink, "shrink", SHRINKS)
    else:
        check_shrinkage(shrink, 1)
    alpha = check_alpha(alpha)
    check_choice(correction, "correction", METHODS)
    support_tol = check_positive(support_tol, "support_tol")
    mu = None if mu is None else check_positive(mu, "mu")
    rank = None if rank is None else check_int(rank, "rank", 1)
    work = data.oriented(side)
    n_clients, p, q = work.shape
    given = GivenNoise.checked(sigma, noise_cov, noise_df, n_clients, p)
    solve = _Solver(work, lam, center, weights, solver, solver_options)
    tol = solver_options.get("tol") or DEFAULT_TOL.get(solver, DEFAULT_TOL["proximal"])
    fit = _Fit.run(work, solve, mode, rank, given, mu, noiseless_threshold(tol))
    fit.rules["lam"] = solve.describe(fit.mode)
    if refit == "trimmed":
        fit = fit.trimmed(
            given, center, select_rank=rank is None and fit.mode == "penalized"
        )
    else:
        fit.rules["refit"] = "none (A^ from L^, c^ from the decomposition)"
    collaborative, test_result, detect_used, rules = _detect(
        fit, work, given, detect, test, alpha, correction, support_tol
    )
    if test_result is not None:
        _check_given_noise(fit, given, test_result, mu_given=mu is not None)
    _check_majority(collaborative, detect_used, fit, test_result)
    pool, rules["pooling"] = _pool_weights(
        fit, given, collaborative, pooling if detect_used == "test" else "mean"
    )
    detection_subspace = None
    if final_subspace == "kept" and pool is not None:
        subspace, rules["final_subspace"] = _kept_subspace(fit, collaborative, pool)
        if subspace is not None:
            detection_subspace, fit = fit.subspace, replace(fit, subspace=subspace)
    else:
        rules["final_subspace"] = "detection (A^ of step 3)"
    shrinkage, rules["shrink"] = _shrinkage(fit, given, collaborative, pool, shrink)
    refined = work.refine(
        fit.decomposition,
        fit.subspace,
        collaborative,
        refined_rank,
        pool,
        None if shrinkage is None else shrinkage.factors,
    )
    return ClairResult(
        subspace=fit.subspace,
        rank=fit.subspace.shape[1],
        collaborative=collaborative,
        refined=work.restore(refined, side),
        decomposition=fit.decomposition,
        test=test_result,
        detect=detect_used,
        side=side,
        mode=fit.mode,
        mu=fit.mu,
        noise=fit.noise_level(given),
        rules={**fit.rules, **rules},
        refit=fit.refit,
        pool_weights=pool,
        shrinkage=shrinkage,
        detection_subspace=detection_subspace,
    )


def shared_subspace(
    updates: np.ndarray | LowRankUpdates,
    rank: int,
    *,
    lam: float | str | None = None,
    center: bool = False,
    refit: str = "trimmed",
    side: str = "left",
    weights: np.ndarray | None = None,
    solver: str = "proximal",
    **solver_options,
) -> tuple[np.ndarray, Decomposition | FactoredDecomposition, TrimmedFit | None]:
    """Steps 1 and 2 of :func:`clair` by P0 at a given rank, with the refit of §3.6.

    For pipelines that test the clients themselves (one verdict over the
    modules of a LoRA adapter, :mod:`clair_stats.lora.adapters`): P0 (which
    needs no noise level), A^ = the top-r left singular vectors of L^, then
    (``refit="trimmed"``) the check against the least-trimmed-squares fit
    with the noise level by the median rule, exactly as :func:`clair` does
    between steps 2 and 3 (docs/pipeline.md §3.6), so that a coordinated
    minority cannot pull A^.

    Parameters
    ----------
    updates : array_like of shape (K, p, q), or LowRankUpdates
        Theta^_k.
    rank : int
        r >= 1.
    lam : float, "auto" or None
        As in :func:`clair` (default None: c_lam / sqrt(K)).
    center, refit, side, weights, solver, **solver_options
        As in :func:`clair`.

    Returns
    -------
    subspace : numpy.ndarray, shape (p, r)
        A^ (of the transposes for ``side="right"``).
    decomposition : Decomposition or FactoredDecomposition
        Step 1 (on the transposes for ``side="right"``).
    refit : TrimmedFit or None
        The trimmed refit (None with ``refit="none"``); its energies are in
        units of u^2 (:class:`ClairResult`).
    """
    check_choice(side, "side", SIDES)
    check_choice(refit, "refit", REFITS)
    rank = check_int(rank, "rank", 1)
    work = as_updates(updates).oriented(side)
    n_clients, p, _ = work.shape
    solve = _Solver(work, lam, center, weights, solver, solver_options)
    tol = solver_options.get("tol") or DEFAULT_TOL.get(solver, DEFAULT_TOL["proximal"])
    fit = _Fit._at(
        work, solve(mode="exact"), "exact", None, rank, noiseless_threshold(tol)
    )
    if refit == "trimmed":
        fit = fit.trimmed(GivenNoise.checked(None, None, None, n_clients, p), center)
    return fit.subspace, fit.decomposition, fit.refit


class _Solver:
    """Step 1's solves; with lam="auto" the first solve of each program picks
    lam and the block weights (:func:`clair_stats.pipeline.lam.select_lam`),
    which the later solves of that program reuse."""

    def __init__(
        self,
        work: Updates,
        lam: float | str | None,
        center: bool,
        weights: np.ndarray | None,
        solver: str,
        options: dict,
    ) -> None:
        if isinstance(lam, str) and lam != "auto":
            raise TypeError(
                f"lam must be a positive real number, None or 'auto', not the str "
                f"{lam!r}; pass float({lam!r}) for a number."
            )
        self.work, self.lam, self.center = work, lam, center
        self.weights, self.solver, self.options = weights, solver, options
        self.selected: dict[str, LamSelection] = {}

    def __call__(
        self, mode: str, mu: float | None = None, pilot: bool = False
    ) -> Decomposition | FactoredDecomposition:
        """Solve ``mode``; a ``pilot`` solve (which only tells noiseless data from
        noisy data and sets the first noise level) and P1 use c_lam / sqrt(K)
        under lam="auto" (:meth:`describe`)."""
        lam, weights = self.lam, self.weights
        if lam == "auto" and (pilot or mode == "penalized"):
            lam = None
        elif lam == "auto":
            if mode not in self.selected:
                selection = select_lam(
                    self.work.data,
                    mode=mode,
                    mu=mu,
                    center=self.center,
                    weights=weights,
                    solver=self.solver,
                    tol=self.options.get("tol"),
                    max_iter=self.options.get("max_iter"),
                )
                self.selected[mode] = selection
                return selection.decomposition
            lam, weights = self.selected[mode].lam, self.selected[mode].weights
        return self.work.decompose(
            lam=lam,
            mode=mode,
            mu=mu,
            center=self.center,
            weights=weights,
            solver=self.solver,
            **self.options,
        )

    def describe(self, mode: str) -> str:
        """How lam was set for ``mode``, in words."""
        n_clients = self.work.shape[0]
        if self.lam == "auto" and mode == "penalized":
            return (
                f"auto -> c_lam / sqrt(K) = {default_lam(n_clients):.5g} (P1, noisy "
                "data: the test, not the support of S^, finds the contaminated "
                "clients, and the refit of §3.6 guards A^; the path rule of P0 "
                "has no exact plateau to find here)"
            )
        if self.lam == "auto":
            chosen = self.selected[mode]
            return (
                f"auto -> {chosen.lam:.5g} (lam sqrt(K) = {chosen.c:.3g}; "
                f"{chosen.n_solves} solves: {chosen.rule})"
            )
        if self.lam is None:
            return f"None -> c_lam / sqrt(K) = {default_lam(n_clients):.5g}"
        return f"{float(self.lam):.5g} (given)"


def _check_options(
    data: Updates,
    detect: str,
    test: str,
    mode: str,
    side: str,
    refined_rank: int | None,
    noise_cov: object,
) -> None:
    """Raise on an unknown option or one that does not apply to ``data``."""
    check_choice(side, "side", SIDES)
    check_choice(detect, "detect", DETECT_RULES)
    check_choice(test, "test", ("auto", *TESTS))
    check_choice(mode, "mode", PROGRAM_MODES)
    if refined_rank is not None and not data.factored:
        raise ValueError(
            "refined_rank applies to LowRankUpdates (factored updates) only; the "
            "refined dense updates are not truncated."
        )
    if noise_cov is not None and data.factored:
        raise ValueError(
            "noise_cov applies to dense updates (K, p, q); for LowRankUpdates use "
            "the default test (the empirical null) or sigma."
        )
    if test == "weighted_chi2" and noise_cov is None:
        raise ValueError("test='weighted_chi2' needs noise_cov (and noise_df).")


def _unit(decomposition: Decomposition | FactoredDecomposition) -> float:
    """A power of two near the root-mean-square client norm ||M||_F / sqrt(K).

    Energies are computed in this unit, so that they neither overflow (updates
    of order 1e300) nor underflow (1e-300); dividing by a power of two is exact.
    """
    rms = decomposition.data_norm / np.sqrt(decomposition.n_clients)
    return float(2.0 ** np.round(np.log2(rms))) if rms > 0 else 1.0


def _warn(message: str) -> None:
    # stacklevel 4: the user's call of clair() (helper -> _Fit/_detect -> clair)
    warnings.warn(message, AssumptionWarning, stacklevel=4)


@dataclass
class _Fit:
    """Steps 1 and 2 with the noise rule: the program, mu, L^, A^ and rho."""

    work: Updates
    decomposition: Decomposition | FactoredDecomposition
    mode: str
    mu: float | None
    subspace: np.ndarray
    unit: float
    threshold: float
    rules: dict[str, str]
    #: c^ in the coordinates of ``work`` (the decomposition's, or the refit's).
    center: np.ndarray | None = None
    #: The trimmed refit of A^ and c^ (docs/pipeline.md §3.6), when made.
    refit: TrimmedFit | None = None

    @functools.cached_property
    def coords(self) -> Coordinates:
        return self.work.coordinates(self.decomposition)

    @classmethod
    def run(
        cls,
        work: Updates,
        solve,
        mode: str,
        rank: int | None,
        given: GivenNoise,
        mu: float | None,
        threshold: float,
    ) -> _Fit:
        n_clients, p, q = work.shape
        rules: dict[str, str] = {}
        if mode == "auto" and (given.sd is not None or mu is not None):
            mode = "penalized"
            rules["mode"] = "auto -> penalized (P1: a noise level was given)"
        if mode == "exact" or (
            mode == "penalized" and (given.sd is not None or mu is not None)
        ):
            if mode == "penalized" and mu is None:
                mu = noise_norm(given.sd, p, n_clients, q)
                rules["mu"] = f"noise operator norm of {given.source}: {mu:.5g}"
            fit = cls._at(work, solve(mode=mode, mu=mu), mode, mu, rank, threshold)
            fit.rules = {**rules, **fit.rules}
            if rank is None and mode == "penalized":
                sd = given.sd if given.sd is not None else fit.median_sd()
                fit = fit.shared(np.broadcast_to(sd, (n_clients,)))
            return fit
        # no noise level given: a pilot P0 (which needs none) tells noiseless
        # data from noisy data and gives the subspace of the first estimate
        pilot = cls._at(
            work, solve(mode="exact", pilot=True), "exact", None, rank, threshold
        )
        if rank is None:
            pilot = pilot.with_rank(pilot.pilot_rank())
        if pilot.rho <= threshold and solve.lam == "auto":
            # noiseless: P0 is the program, solved at the chosen lam
            pilot = cls._at(work, solve(mode="exact"), "exact", None, rank, threshold)
            if rank is None:
                pilot = pilot.with_rank(pilot.pilot_rank())
        if pilot.rho <= threshold:
            if mode == "penalized":
                raise ValueError(
                    f"the updates are noiseless (share of energy outside the "
                    f"subspace rho = {pilot.rho:.2g} <= {threshold:.0e}), so P1 "
                    "has no noise level to set mu from: use mode='exact' (or "
                    "'auto'), or pass mu."
                )
            pilot.rules["mode"] = (
                f"auto -> exact (P0: noiseless, rho = {pilot.rho:.2g} <= "
                f"{threshold:.0e})"
            )
            return pilot
        sd = pilot.median_sd()
        fit = pilot
        for _ in range(MAX_NOISE_ROUNDS):
            mu_k = noise_norm(np.array([sd]), p, n_clients, q)
            fit = cls._at(
                work,
                solve(mode="penalized", mu=mu_k),
                "penalized",
                mu_k,
                rank,
                threshold,
            )
            new = fit.median_sd()
            if abs(new / sd - 1.0) <= NOISE_RTOL:
                break
            sd = new
        if rank is None:
            fit = fit.shared(np.full(n_clients, fit.median_sd()))
        fit.rules = {
            "mode": "auto -> penalized (P1: noisy data; noise level estimated)",
            "mu": (
                f"noise operator norm sigma^ (sqrt(p) + sqrt(Kq)) = {fit.mu:.5g}, "
                "sigma^ by the median rule (pilot: P0)"
            ),
            **fit.rules,
        }
        return fit

    @classmethod
    def _at(
        cls,
        work: Updates,
        decomposition: Decomposition | FactoredDecomposition,
        mode: str,
        mu: float | None,
        rank: int | None,
        threshold: float,
    ) -> _Fit:
        subspace, rule = _subspace(decomposition, work.shape[1], mode, mu, rank)
        fit = cls(
            work,
            decomposition,
            mode,
            mu,
            subspace,
            _unit(decomposition),
            threshold,
            {"rank": rule},
        )
        fit.center = fit.coords.center
        return fit

    @property
    def rank(self) -> int:
        return self.subspace.shape[1]

    def with_rank(self, rank: int) -> _Fit:
        """The same fit with A^ = the top-``rank`` directions of L^."""
        p = self.subspace.shape[0]
        if rank == 0:
            subspace = np.zeros((p, 0))
        else:
            subspace, _ = estimate_subspace(self.decomposition, rank=rank)
        return replace(self, subspace=subspace, rules=dict(self.rules))

    def pilot_rank(self) -> int:
        """The rank of the noise estimate on P0's L^, which needs no noise level.

        The smallest r < p whose median-rule sigma^(r) (at the top-r directions
        of L^) leaves at most r singular values of L^ above the optimal
        threshold for sigma^(r) (:func:`clair_stats.pipeline.noise.optimal_threshold`
        on the p x Kq matrix). sigma^(r) falls as r grows (the directions taken
        out carry signal or noise), so the count above the threshold rises: the
        first r where it does not exceed r is the number of directions that
        stand out of the noise that r implies. On noisy data P0 may put the
        noise in L^ (numerical rank p for small p and K), so that rank is no
        guide; on noiseless data sigma^(r) ~ 0 from the true rank on.
        """
        n_clients, p, q = self.work.shape
        # the numerical-rank directions of L^ and its singular values, one SVD
        basis, sv = estimate_subspace(self.decomposition, tol=RANK_TOL)
        top = min(basis.shape[1], p - 1)
        for r in range(top + 1):
            energy = self.coords.energies(basis[:, :r], self.center, self.unit)
            sd = np.sqrt(median_rule(energy, (p - r) * q)) * self.unit
            cut = optimal_threshold((p, n_clients * q), sd)
            if int(np.sum(sv > cut)) <= r:
                return r
        return top

    def shared(self, sd: np.ndarray) -> _Fit:
        r"""A^ = the directions of L^ that the median client carries above the noise.

        For each left singular vector u_i of L^ (its numerical rank), the energy
        of each client along it, e_ik = ||u_i^T (Theta^_k - c^)||^2, against its
        noise sigma_k^2 q: the direction is shared when

        .. math:: \operatorname{med}_k \frac{e_{ik}}{\sigma_k^2 q} > 2\kappa,
                  \qquad \kappa = \bigl(1 + \sqrt{p / (Kq)}\bigr)^2 .

        Along a fixed direction pure noise gives e_ik / (sigma_k^2 q) ~ chi^2_q / q
        (median at most 1); the top singular directions of noise carry up to
        kappa times that (the Marchenko-Pastur edge over the mean), so 2 kappa
        leaves a factor 2 for the fluctuation of the median. A direction that
        only a minority of clients carries (a group of contaminated clients,
        one client's own directions) has the median client at the noise level
        whatever its singular value: the median has breakdown point 1/2.
        """
        if self.rank == 0:
            return self
        ratio, kappa = self._direction_ratios(self.subspace, self.center, sd)
        keep = ratio > 2.0 * kappa
        fit = replace(self, subspace=self.subspace[:, keep], rules=dict(self.rules))
        fit.rules["rank"] = (
            f"None -> {int(keep.sum())} (directions of L^ whose median client "
            f"carries more than 2 kappa = {2 * kappa:.3g} times its noise; "
            f"{self.rank} directions of L^, median ratios "
            f"{', '.join(f'{x:.3g}' for x in ratio)})"
        )
        if not keep.any():
            _warn(
                "no direction of L^ is carried by the median client above the "
                f"noise (median energy over noise, per direction: "
                f"{', '.join(f'{x:.3g}' for x in ratio)}; threshold "
                f"{2 * kappa:.3g}), so no subspace is shared and the refinement "
                "averages the collaborative clients. Either the signal is weak "
                "(pass rank=r to keep the top r directions anyway), or more than "
                "half of the clients are contaminated, which inflates the "
                "estimated noise level (CLAIR assumes a benign majority)."
            )
        return fit

    def _direction_ratios(
        self, basis: np.ndarray, center: np.ndarray | None, sd: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """med_k ||u_i^T (Theta^_k - c)||^2 / (sigma_k^2 q) per u_i, and kappa."""
        n_clients, p, q = self.work.shape
        energy = self.coords.direction_energies(basis, center, self.unit)
        scaled_sd = np.asarray(sd, dtype=float) / self.unit
        ratio = np.median(energy / (scaled_sd[:, None] ** 2 * q), axis=0)
        return ratio, (1.0 + np.sqrt(p / (n_clients * q))) ** 2

    @functools.cached_property
    def energies(self) -> np.ndarray:
        """E_k / unit^2 at A^."""
        return self.coords.energies(self.subspace, self.center, self.unit)

    @functools.cached_property
    def rho(self) -> float:
        """Share of the typical client's energy outside span(A^)."""
        empty = np.zeros((self.subspace.shape[0], 0))
        total = self.coords.energies(empty, self.center, self.unit)
        med = float(np.median(total))
        return float(np.median(self.energies)) / med if med > 0 else 0.0

    @property
    def df(self) -> int:
        _, p, q = self.work.shape
        return (p - self.subspace.shape[1]) * q

    def trimmed(
        self, given: GivenNoise, center: bool, select_rank: bool = False
    ) -> _Fit:
        """A^ (and c^) checked against a majority of clients (docs/pipeline.md §3.6).

        1. Least trimmed squares by concentration steps
           (:func:`clair_stats.pipeline.trimmed.trimmed_subspace`) from L^'s
           subspace and from elemental starts, each client's energy weighted
           by its noise (1 / sigma_k^2 when given, else equal), on h =
           floor((G + d) / 2) of the G distinct clients, d = ceil(r / q) (+ 1
           with a centre): its objective is bounded whatever floor((G - d) / 2)
           contaminated clients send, and so is the subspace when the benign
           clients it keeps span A well (measured at that limit for q >= 2, up
           to a quarter of the clients for vector updates).
        2. Copies enter once: clients whose updates are closer than
           independent noise allows (the noise level the smaller of the median
           rule at L^ and at a first trimmed fit) form a group represented by
           its first member, and the fit is redone on the distinct clients.
        3. With ``select_rank`` (``rank=None``) the rank rule of :meth:`shared`
           runs on the trimmed fit's directions at the noise edge of h clients,
           and the whole is redone at the smaller rank: L^'s singular vectors
           mix a coordinated minority's direction into the shared ones.
        4. Which fit is used: L^'s when no copies were found and its trimmed
           objective is within r noise directions, sigma^2 r (sqrt(hq) +
           sqrt(p))^2, of the trimmed fit's; else the reweighted fit on the
           clients below the chi-square cut at level REWEIGHT_LEVEL / G (kept
           within the same tolerance, :meth:`_reweight`); else the trimmed fit.
        """
        n_clients, p, q = self.work.shape
        coords = self.coords
        rank, dim = self.rank, coords.blocks.shape[1]
        elemental = elemental_size(rank, coords.blocks.shape[2], center)
        h = majority_size(n_clients, elemental)
        fit = replace(self, rules=dict(self.rules))
        if h >= n_clients or rank >= dim:
            fit.rules["refit"] = (
                f"none (K = {n_clients} clients: a majority is all of them, "
                "nothing to trim)"
                if h >= n_clients
                else f"none (r = {rank} fills the span of the updates)"
            )
            return fit
        sd = self._sd(given)
        scaled_sd = sd / self.unit
        weights = None
        if np.all(scaled_sd > 0) and np.ptp(scaled_sd) > 0:
            # relative to the median client, clipped so that a client with a
            # tiny or huge sigma_k neither overflows nor vanishes
            weights = np.clip(np.median(scaled_sd) / scaled_sd, 1e-6, 1e6) ** 2
        init_center = None if self.center is None else self.center / self.unit
        init = (coords.inward(self.subspace), init_center)
        blocks = coords.blocks / self.unit
        refit = trimmed_subspace(
            blocks, rank, weights=weights, center=center, init=init, h=h
        )
        if given.sd is None:
            # the median rule at L^'s fit is inflated when L^ is pulled (a
            # benign direction missing): the smaller of it and the median rule
            # at the trimmed fit, which a minority can lower only a little
            df = (p - rank) * q
            at_fit = float(np.sqrt(median_rule(refit.energies, df))) * self.unit
            sd = np.minimum(sd, at_fit)
            scaled_sd = sd / self.unit
        # copies enter once: a tight group is otherwise the cheapest h-subset
        reps = self._distinct(given, sd)
        rep_weights = None if weights is None else weights[reps]
        if reps.size < n_clients:
            h = majority_size(reps.size, elemental)
            if h >= reps.size:
                fit.rules["refit"] = (
                    f"none ({reps.size} distinct clients: a majority is all of "
                    "them, nothing to trim)"
                )
                return fit
            blocks = blocks[reps]
            refit = trimmed_subspace(
                blocks, rank, weights=rep_weights, center=center, init=init, h=h
            )
        if select_rank and rank:
            ratio, _ = self._direction_ratios(
                coords.outward(refit.subspace),
                None if refit.center is None else refit.center * self.unit,
                sd,
            )
            # the trimmed fit's directions are fitted to the noise of its h
            # clients: the edge of that noise is (1 + sqrt(p / (hq)))^2
            kappa = (1.0 + np.sqrt(p / (refit.h * q))) ** 2
            shared = int(np.sum(ratio > 2.0 * kappa))
            if shared < rank:
                smaller = self.with_rank(shared)
                smaller.rules["rank"] = (
                    f"None -> {shared} (directions of the trimmed fit whose median "
                    f"client carries more than 2 kappa_h = {2 * kappa:.3g} times its "
                    f"noise; {rank} directions of L^ passed the rule of §3.2, the "
                    f"trimmed fit's median ratios "
                    f"{', '.join(f'{x:.3g}' for x in ratio)})"
                )
                return smaller.trimmed(given, center, select_rank=True)
        # which fit to keep: the trimmed objective of a fit on more clients
        # may exceed the trimmed fit's by the noise that fit absorbs, at most
        # r directions of pure noise, sigma^2 r (sqrt(hq) + sqrt(p))^2
        df = (p - rank) * q
        given_sd = given.sd is not None and np.all(scaled_sd > 0)
        ref_sd = (
            float(np.median(scaled_sd))
            if given_sd
            else float(np.sqrt(median_rule(refit.energies, df)))
        )
        tolerance = rank * ref_sd**2 * (np.sqrt(h * q) + np.sqrt(p)) ** 2
        init_subspace = coords.inward(self.subspace)
        if (
            rank
            and reps.size == n_clients
            and trimmed_objective(blocks, init_subspace, init_center, h, rep_weights)
            <= refit.objective + tolerance
        ):
            # L^ is not pulled (and counts no copy twice): keep the
            # decomposition's fit
            return self._kept_decomposition(refit, reps, center)
        refit = self._reweight(
            refit, blocks, rep_weights, reps, center, scaled_sd, given_sd, tolerance
        )
        fit = replace(
            fit,
            subspace=coords.outward(refit.subspace),
            center=None if refit.center is None else refit.center * self.unit,
        )
        fit.refit = _expand(refit, reps, fit.energies)
        merged = n_clients - reps.size
        fit.rules["refit"] = (
            f"trimmed (A^{' and c^' if center else ''} refitted on the h = "
            f"{refit.h} of {reps.size} distinct clients with the smallest "
            "off-subspace energy"
            + (f", {merged} near-copies left out" if merged else "")
            + f"; its objective is bounded for up to {(reps.size - elemental) // 2}"
            " contaminated; best "
            f"of {refit.n_starts} starts: {refit.start}, {refit.steps} "
            "concentration steps; "
            + (
                f"reweighted on {int(refit.fitted.sum())} clients)"
                if refit.reweighted
                else "not reweighted)"
            )
        )
        return fit

    def _kept_decomposition(
        self, refit: TrimmedFit, reps: np.ndarray, center: bool
    ) -> _Fit:
        """This fit, with the trimmed fit recorded as the check that kept it."""
        fit = replace(self, rules=dict(self.rules))
        kept = replace(
            refit,
            subspace=self.coords.inward(self.subspace),
            center=None if self.center is None else self.center / self.unit,
            fitted=np.ones(reps.size, dtype=bool),
            leverage=np.zeros(reps.size),
            source="decomposition",
        )
        fit.refit = _expand(kept, reps, fit.energies)
        fit.rules["refit"] = (
            f"trimmed check passed (the h = {refit.h} of {reps.size} distinct "
            "clients that fit L^'s subspace"
            + (" and c^" if center else "")
            + " best fit them as well as their own trimmed fit, up to noise: "
            "A^ from L^ kept)"
        )
        return fit

    def _reweight(
        self,
        refit: TrimmedFit,
        blocks: np.ndarray,
        weights: np.ndarray | None,
        reps: np.ndarray,
        center: bool,
        scaled_sd: np.ndarray,
        given_sd: bool,
        tolerance: float,
    ) -> TrimmedFit:
        """Refit on the clients the current fit does not reject, until they repeat.

        The cut is the chi-square one with Bonferroni at REWEIGHT_LEVEL; each
        refit is kept only if the trimmed objective stays within ``tolerance``
        of the trimmed fit's (:func:`clair_stats.pipeline.trimmed.reweighted`).
        """
        _, p, q = self.work.shape
        df = (p - refit.subspace.shape[1]) * q
        cut = scipy.stats.chi2.isf(REWEIGHT_LEVEL / reps.size, df)
        current = refit
        for _ in range(REWEIGHT_ROUNDS):
            if given_sd:
                level = scaled_sd[reps]
            else:  # the median rule at the current fit
                level = np.full(reps.size, np.sqrt(median_rule(current.energies, df)))
            if not np.all(level > 0):
                break
            members = current.energies / level**2 <= cut
            new = reweighted(
                blocks,
                refit,
                members | refit.kept,
                weights=weights,
                center=center,
                tolerance=tolerance,
            )
            if not new.reweighted:
                break
            repeated = np.array_equal(new.fitted, current.fitted)
            current = new
            if repeated:
                break
        return current

    def _sd(self, given: GivenNoise) -> np.ndarray:
        """sigma_k: given, else the median rule at the current A^ (units of M)."""
        n_clients = self.work.shape[0]
        if given.sd is not None:
            return np.broadcast_to(np.asarray(given.sd, dtype=float), (n_clients,))
        return np.full(n_clients, self.median_sd())

    def _distinct(self, given: GivenNoise, sd: np.ndarray) -> np.ndarray:
        """The first client of each group of near-identical updates (indices)."""
        n_clients, p, q = self.work.shape
        if given.cov is not None:
            trace = np.trace(given.cov, axis1=-2, axis2=-1) / self.unit**2
            square = np.sum(given.cov**2, axis=(-2, -1)) / self.unit**4
            mean = q * np.broadcast_to(trace, (n_clients,))
            df = float(np.min(q * trace**2 / square))
        else:
            mean = (sd / self.unit) ** 2 * p * q
            df = float(p * q)
        gram = self.work.residual_gram(
            self.decomposition, np.zeros((p, 0)), None, self.unit
        )
        distance = pair_distances(gram)
        if np.all(mean > 0):
            close = close_by_distance(gram, mean, df, DUPLICATE_LEVEL)
            distance = distance / (mean[:, None] + mean[None, :])
        else:  # noiseless: exact copies only (equal to 1e-12 relative)
            close = exact_copies(gram, COPY_RTOL)
        groups = copy_groups(close, -distance)
        # each group's medoid represents it: the member nearest the others
        # (the lowest index among exact copies), whatever the clients' order
        spread = np.where(groups[:, None] == groups[None, :], distance, 0.0).sum(1)
        order = np.lexsort((np.arange(n_clients), spread, groups))
        _, first = np.unique(groups[order], return_index=True)
        return np.sort(order[first])

    def median_sd(self) -> float:
        """sigma^ by the median rule at A^, in the units of the updates."""
        if self.df == 0:
            return 0.0
        return float(np.sqrt(median_rule(self.energies, self.df))) * self.unit

    def noise_level(self, given: GivenNoise) -> NoiseLevel:
        n_clients = self.work.shape[0]
        if given.sd is not None:
            sd, source = given.sd, given.source
        else:
            sd, source = np.full(n_clients, self.median_sd()), "estimated"
        return NoiseLevel(
            sd=sd,
            source=source,
            relative_energy=self.rho,
            threshold=self.threshold,
        )


def _expand(fit: TrimmedFit, reps: np.ndarray, energies: np.ndarray) -> TrimmedFit:
    """A fit on the distinct clients ``reps`` as a fit on all K clients."""
    n_clients = energies.size

    def full(values: np.ndarray, fill: float | bool) -> np.ndarray:
        out = np.full(n_clients, fill, dtype=np.asarray(values).dtype)
        out[reps] = values
        return out

    return replace(
        fit,
        kept=full(fit.kept, False),
        fitted=full(fit.fitted, False),
        leverage=full(fit.leverage, 0.0),
        energies=energies,
    )


def _subspace(
    decomposition: Decomposition | FactoredDecomposition,
    p: int,
    mode: str,
    mu: float | None,
    rank: int | None,
) -> tuple[np.ndarray, str]:
    """A^ by the rank rule of the module docstring, with the guards on L^."""
    # the numerical-rank directions of L^ (one SVD; A^ itself when rank=None)
    basis, _ = estimate_subspace(decomposition, tol=RANK_TOL)
    numerical = basis.shape[1]
    if numerical == 0:
        _warn(
            "the low-rank part L^ is zero: no direction is shared by the clients "
            "at this penalty"
            + (
                f" (mu = {mu:.4g} is at least the largest singular value of M - S^)"
                if mu is not None
                else ""
            )
            + ". The subspace is not identified and the refinement averages the "
            "collaborative clients. If a noise level was given, check that it is "
            "the per-entry sd of the updates (e.g. sample.local_sd, not the "
            "regression noise sample.sigma); or pass a smaller mu, or lam."
        )
    if rank is None:
        r = numerical
        rule = f"None -> {r} (numerical rank of L^, tol {RANK_TOL:g} ||M||_F)"
    else:
        r = rank
        rule = f"{r} (given)"
        if 0 < numerical < r:
            _warn(
                f"the low-rank part L^ has rank {numerical}, lower than rank = {r}: "
                f"the last {r - numerical} direction(s) of A^ are arbitrary. "
                "Pass a smaller rank (or rank=None), or a smaller mu or sigma."
            )
    if r == 0:
        return np.zeros((p, 0)), rule
    if r <= numerical:
        return basis[:, :r], rule
    subspace, _ = estimate_subspace(decomposition, rank=r)
    return subspace, rule


def _detect(
    fit: _Fit,
    work: Updates,
    given: GivenNoise,
    detect: str,
    test: str,
    alpha: float,
    correction: str,
    support_tol: float,
) -> tuple[np.ndarray, ClientTest | None, str, dict[str, str]]:
    """Step 3: S^ by the rule of ``detect`` and the law of ``test``."""
    rules: dict[str, str] = {}
    n_clients, p, q = work.shape
    noiseless = fit.rho <= fit.threshold
    if detect == "auto":
        detect = "support" if noiseless else "test"
        rules["detect"] = (
            f"auto -> {detect} ({'noiseless' if noiseless else 'noisy'} data: rho = "
            f"{fit.rho:.3g} {'<=' if noiseless else '>'} {fit.threshold:.0e})"
        )
    if detect == "support":
        collaborative = ~fit.decomposition.support(tol=support_tol)
        if fit.refit is not None:
            # a block that the decomposition put into L^ is off the refitted
            # subspace: the support rule at A^ as well
            limit = support_tol * fit.decomposition.data_norm / fit.unit
            collaborative &= np.sqrt(fit.energies) <= limit
        return collaborative, None, detect, rules
    r = fit.subspace.shape[1]
    if r >= p:
        raise ValueError(
            f"the test needs r < p (an off-subspace complement); got r = {r}, p = {p}."
        )
    if noiseless:
        _warn(
            f"the updates lie in span(A^) up to round-off (share of energy outside "
            f"it rho = {fit.rho:.2g} <= {fit.threshold:.0e}): a test would flag "
            "clients on numerical error. The data look noiseless: use "
            "detect='support' (detect='auto' does)."
        )
    if test == "auto":
        if given.cov is not None:
            test = "weighted_chi2"
        elif given.sd is not None:
            test = "chi2"
        else:
            test = "empirical" if n_clients >= 3 else "chi2"
        rules["test"] = f"auto -> {test}"
    energy = fit.energies
    if test == "empirical":
        result = empirical_energy_test(energy, alpha=alpha, correction=correction)
    elif test == "chi2":
        sd = None if given.sd is None else given.sd / fit.unit
        result = energy_test(
            energy, fit.df, sigma=sd, alpha=alpha, correction=correction
        )
        result = replace(result, noise_sd=result.noise_sd * fit.unit)
    else:
        eig = _leverage_weights(fit, given)
        result = weighted_energy_test(
            energy, eig, q, noise_df=given.df, alpha=alpha, correction=correction
        )
        result = replace(result, noise_sd=given.sd)
    return ~result.rejected, result, detect, rules


def _pool_weights(
    fit: _Fit, given: GivenNoise, collaborative: np.ndarray, pooling: str
) -> tuple[np.ndarray | None, str]:
    """The weights pi_k of Thetabar in step 4, and the rule in words.

    ``"distinct"``: kept clients whose residuals at A^ and c^ are more aligned
    than independent noise allows (:func:`clair_stats.pipeline.refine.close_by_angle`,
    nu = (p - r) q, or with ``noise_cov`` the Satterthwaite number of the
    narrowest client) form groups of pairwise-close clients, each counting as
    one client (docs/pipeline.md §3.4).
    """
    n_clients, p, q = fit.work.shape
    members = np.flatnonzero(collaborative)
    if members.size == 0:
        return None, "none (S^ is empty)"
    pool = np.zeros(n_clients)
    pool[members] = 1.0 / members.size
    if pooling == "mean" or members.size < 2 or fit.df < 2:
        return pool, "mean (equal weights over S^)"
    df = float(fit.df)
    if given.cov is not None:
        from clair_stats.pipeline.weighted_chi2 import projected_eigenvalues

        eig = projected_eigenvalues(given.cov[members] / fit.unit**2, fit.subspace)
        df = float(np.min(q * eig.sum(axis=1) ** 2 / np.sum(eig**2, axis=1)))
    gram = fit.work.residual_gram(
        fit.decomposition, fit.subspace, fit.center, fit.unit
    )[np.ix_(members, members)]
    weights, groups = distinct_weights(
        close_by_angle(gram, df, DUPLICATE_LEVEL), pair_cosines(gram)
    )
    pool[members] = weights / weights.sum()
    sizes = np.bincount(groups)
    merged = sizes[sizes > 1]
    return pool, (
        f"distinct ({members.size} clients of S^ in {sizes.size} groups"
        + (
            f"; groups of near-identical residuals of sizes {sorted(merged.tolist())} "
            "each count as one client"
            if merged.size
            else "; no near-identical residuals"
        )
        + f", angle rule at family-wise level {DUPLICATE_LEVEL:g})"
    )


def _kept_subspace(
    fit: _Fit, collaborative: np.ndarray, pool: np.ndarray
) -> tuple[np.ndarray | None, str]:
    """A^ refitted on S^ (pooled with the weights pi_k), and the rule in words.

    None when there is nothing to refit: r = 0, or S^ spans fewer than r
    directions (|S^| q < r).
    """
    _, _, q = fit.work.shape
    members = np.flatnonzero(collaborative)
    if fit.rank == 0 or members.size * q < fit.rank:
        return None, (
            "detection (A^ of step 3: "
            + ("r = 0)" if fit.rank == 0 else f"|S^| q = {members.size * q} < r)")
        )
    coords = fit.coords
    subspace, _ = subset_fit(
        coords.blocks / fit.unit,
        collaborative,
        fit.rank,
        weights=np.where(collaborative, pool, 1.0),
        center=fit.center is not None,
    )
    return coords.outward(subspace), (
        f"kept (A^ refitted on the {members.size} clients of S^, weighted by pi_k"
        + (", about their weighted mean" if fit.center is not None else "")
        + ")"
    )


def _shrinkage(
    fit: _Fit,
    given: GivenNoise,
    collaborative: np.ndarray,
    pool: np.ndarray | None,
    shrink: str | float,
) -> tuple[Shrinkage | None, str]:
    """b_k of step 4 by the rule of ``shrink``, and the rule in words.

    ``"auto"``: :func:`clair_stats.pipeline.refine.shrinkage_factors` on the
    in-subspace Gram matrix of S^ (the full Gram minus the off-subspace one)
    with the in-subspace noise energies v_k = q tr(A^^T C_k A^) (``noise_cov``),
    r q sigma_k^2 (``sigma``), else r q sigma^2 with sigma^ the median rule at A^.
    """
    n_clients, p, q = fit.work.shape
    if pool is None or fit.rank == 0:
        return None, "none (" + ("S^ is empty)" if pool is None else "r = 0)")
    rank = fit.rank
    if given.cov is not None:
        inside = np.einsum("pr,kps,sr->k", fit.subspace, given.cov, fit.subspace)
        noise = q * np.broadcast_to(inside, (n_clients,)) / fit.unit**2
        source = "noise_cov"
    else:
        sd = given.sd if given.sd is not None else fit.median_sd()
        noise = rank * q * (np.broadcast_to(sd, (n_clients,)) / fit.unit) ** 2
        source = given.source if given.sd is not None else "sigma^ by the median rule"
    # energies in units of u^2, as the refit's (a scale of 1e300 squares to inf)
    result = in_subspace_shrinkage(
        fit.work,
        fit.subspace,
        collaborative,
        pool,
        noise,
        shrink,
        decomposition=fit.decomposition,
        scale=fit.unit,
    )
    if not (isinstance(shrink, str) and shrink == "auto"):
        b = 0.0 if shrink == "none" else float(shrink)
        return result, (
            f"{'none' if shrink == 'none' else 'given'} (b = {b:.3g} for all of S^)"
        )
    kept = result.factors[collaborative]
    return result, (
        f"auto (empirical Bayes: b_k = v_k / (v_k + T^), T^ = "
        f"{result.between:.4g} the in-subspace spread beyond noise, v_k the "
        f"in-subspace noise energy from {source}; b_k in "
        f"[{kept.min():.3g}, {kept.max():.3g}] over S^)"
    )


def _leverage_weights(fit: _Fit, given: GivenNoise) -> np.ndarray:
    """Eigenvalues of the exact test's null law, corrected for the leverage of A^.

    A^ is fitted through every client, so it absorbs part of client k's own
    noise: E_k at A^ falls short of the energy at a fixed subspace by the
    fraction h_k / q, with h_k = sum_i ||u_i^T L^_k||^2 / ||u_i^T L^||^2 the
    leverage of client k's q columns in the singular directions u_i of L^ that
    span A^ (sum_k h_k = r). Measured over 60-100 replicates of OLS fits
    (p = 20, K = 20-60, n / p = 4): the mean deficit is r / (K q) (0.090,
    0.018, 0.098, 0.016 for q = 1, 5, 2 with r = 4, and 2 with K = 60) and its
    slope against h_k is 0.89, 0.20, 0.53, 0.48, against 1 / q = 1, 0.2, 0.5,
    0.5. Without the correction the test was conservative (FWER 0.020-0.034 at
    a nominal 0.05 for n / p >= 2 in the detection study, against 0.036-0.053
    with the true A). So the weights are lambda_kj (1 - h_k / q), lambda_kj the
    eigenvalues of P_A^^perp C_k P_A^^perp (docs/pipeline.md §3.3.4).
    """
    from clair_stats.pipeline.weighted_chi2 import projected_eigenvalues

    _, _, q = fit.work.shape
    eig = projected_eigenvalues(given.cov / fit.unit**2, fit.subspace)
    if fit.rank == 0:
        return eig
    if fit.refit is not None and fit.refit.source != "decomposition":
        # A^ fitted on the trimmed or reweighted set alone: the clients outside
        # it have no leverage on it, so their energies follow the null law
        factor = np.maximum(1.0 - fit.refit.leverage / q, 0.5)
        return eig * factor[:, None]
    low_rank = np.asarray(fit.decomposition.low_rank) / fit.unit
    along = np.einsum("pr,kpq->krq", fit.subspace, low_rank)  # u_i^T L^_k
    energy = np.sum(along**2, axis=2)  # (K, r)
    total = energy.sum(axis=0)
    # a direction of A^ that L^ does not carry (a given rank above that of L^,
    # warned of) has no leverage
    share = np.divide(energy, total, out=np.zeros_like(energy), where=total > 0)
    leverage = share.sum(axis=1)  # h_k
    # first order only: a client that carries half of a direction (h_k / q >
    # 1/2) is not corrected further
    factor = np.maximum(1.0 - leverage / q, 0.5)
    return eig * factor[:, None]


def _check_given_noise(
    fit: _Fit, given: GivenNoise, result: ClientTest, *, mu_given: bool
) -> None:
    """Warn when a given sigma, noise_cov or mu contradicts the energies.

    Under the null each E_k has mean e_k = sigma_k^2 (p - r) q (or q tr(P_A^perp
    C_k)); the median of E_k / e_k over the clients is about 1 (and stays within
    a factor 2 of it with fewer than half contaminated and df >= 2 with K >= 10).
    A ratio outside [1/4, 4] means the level is off by more than a factor 2 in
    standard deviation.
    """
    if result.method == "empirical":
        ratio, what = None, None
    elif result.method == "chi2" and result.estimated_noise:
        ratio, what = None, None
    else:
        ratio = float(np.median(result.statistics))
        if result.method == "chi2":
            ratio /= result.df
        what = given.source
    if ratio is not None and not (1 / NOISE_RATIO_LIMIT <= ratio <= NOISE_RATIO_LIMIT):
        _warn(
            f"the given noise level ({what}) is inconsistent with the data: the "
            f"median client's off-subspace energy is {ratio:.3g} times what it "
            "implies (about 1 expected). It must be the noise of the updates "
            "themselves: for regression fits sample.local_sd or sample.noise_cov "
            "(not the noise of the responses, sample.sigma). Omit it to have it "
            "estimated."
        )
    if mu_given and given.sd is None:
        # mu given by the caller: compare with the noise the energies show
        n_clients, p, q = fit.work.shape
        sd = fit.median_sd()
        if sd > 0 and fit.subspace.shape[1] > 0:
            implied = noise_norm(np.array([sd]), p, n_clients, q)
            ratio = fit.mu / implied
            if not (1 / NOISE_RATIO_LIMIT <= ratio <= NOISE_RATIO_LIMIT):
                _warn(
                    f"mu = {fit.mu:.4g} is {ratio:.3g} times the noise operator "
                    f"norm the energies show ({implied:.4g}, from sigma^ = "
                    f"{sd:.4g} by the median rule). Omit mu to have it set from "
                    "the estimated noise level."
                )


def _check_majority(
    collaborative: np.ndarray, detect: str, fit: _Fit, test: ClientTest | None
) -> None:
    """Warn when the benign-majority assumption looks violated.

    Two signs: half or more of the clients are flagged; or, with a noise level
    estimated from the clients themselves, some clients have off-subspace
    energies far *below* the others' (the lower tail of the same null law,
    Holm at level MAJORITY_LEVEL = 0.001; under the null this warns with
    probability at most 0.001). Such clients fit the shared subspace much
    better than the majority: if they are the benign ones, the majority is
    contaminated and the median-based noise level and scores are theirs.
    """
    n_clients = collaborative.size
    flagged = int(n_clients - collaborative.sum())
    if flagged and 2 * flagged >= n_clients:
        hint = (
            "On noisy data the support of S^ holds the noise of every client: use "
            "detect='test' (detect='auto' does)."
            if detect == "support" and fit.rho > fit.threshold
            else "If the noise level was given, check that it is the per-entry sd "
            "of the updates; else more than half of the clients may be "
            "contaminated, which no method that assumes a benign majority can "
            "resolve."
        )
        _warn(
            f"{flagged} of {n_clients} clients are flagged: CLAIR assumes that "
            "fewer than half are contaminated (a benign majority), so the flags "
            f"and the refinement are unreliable. {hint}"
        )
        return
    low = _lower_tail(test)
    if low is None:
        return
    rejected, _ = reject(low, MAJORITY_LEVEL, "holm")
    if rejected.any():
        which = np.flatnonzero(rejected)
        _warn(
            f"client(s) {which[:10].tolist()} have off-subspace energies far below "
            f"the others' (lower-tail p-values down to {low.min():.2g}): they fit "
            "the shared subspace much better than the majority. If they are the "
            "benign clients, more than half are contaminated and CLAIR's benign-"
            "majority assumption fails (the noise level and the scores are then "
            "the contaminated clients'). If their noise is smaller (more data), "
            "pass per-client sigma or noise_cov."
        )


def _lower_tail(test: ClientTest | None) -> np.ndarray | None:
    """P(statistic <= observed) under the null, when the noise is self-estimated."""
    if test is None:
        return None
    if test.method == "empirical":
        from clair_stats.pipeline.empirical_null import null_law

        # Z = (X - m) / s is symmetric: P(Z <= z) = P(Z >= -z)
        return null_law(test.statistics.size).sf(-test.statistics)
    if test.method == "chi2" and test.estimated_noise:
        import scipy.stats

        return scipy.stats.chi2.cdf(test.statistics, test.df)
    return None

"""The CLAIR estimator end to end: decompose -> subspace -> detect -> refine."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clair_stats.core.lowrank import LowRankUpdates
from clair_stats.core.results import (
    Decomposition,
    FactoredDecomposition,
    RefinedFactors,
)
from clair_stats.core.validation import (
    check_choice,
    check_noise_levels,
    check_positive,
)
from clair_stats.pipeline.detection import ChiSquareTest, energy_test
from clair_stats.pipeline.paths import Updates, as_updates
from clair_stats.pipeline.subspace import estimate_subspace

__all__ = ["ClairResult", "clair"]

SIDES: tuple[str, ...] = ("left", "right")
DETECT_RULES: tuple[str, ...] = ("support", "test")
PROGRAM_MODES: tuple[str, ...] = ("auto", "exact", "penalized")


@dataclass(frozen=True)
class ClairResult:
    """What :func:`clair` returns.

    Attributes
    ----------
    subspace : numpy.ndarray, shape (p, r) (``side="right"``: (q, r))
        A^, orthonormal columns.
    rank : int
        r.
    collaborative : numpy.ndarray of bool, shape (K,)
        S^; the others are flagged as contaminated.
    refined : numpy.ndarray of shape (K, p, q), or RefinedFactors
        Theta~_k for k in S^, Theta^_k otherwise; for LowRankUpdates, factors
        B~_k A~_k of the truncated SVD of Theta~_k with the truncation errors.
    decomposition : Decomposition or FactoredDecomposition
        Step 1 (on the transposes when ``side="right"``).
    test : ChiSquareTest or None
        The per-client test (``detect="test"``).
    detect : str
    side : str
    """

    subspace: np.ndarray = field(repr=False)
    rank: int
    collaborative: np.ndarray = field(repr=False)
    refined: np.ndarray | RefinedFactors = field(repr=False)
    decomposition: Decomposition | FactoredDecomposition = field(repr=False)
    test: ChiSquareTest | None = field(repr=False)
    detect: str
    side: str

    @property
    def statistics(self) -> np.ndarray | None:
        """T_k of the test (``detect="test"``), else None."""
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
        return (
            f"ClairResult(rank={self.rank}, collaborative="
            f"{int(self.collaborative.sum())}/{self.collaborative.size}, "
            f"flagged={self.flagged.tolist()}, detect={self.detect!r}, "
            f"side={self.side!r})"
        )

    def summary(self) -> str:
        """A readable table: rank, lam, flagged clients, solver diagnostics."""
        d = self.decomposition
        lines = [
            "CLAIR",
            f"  clients K = {self.collaborative.size}, rank r = {self.rank}, "
            f"side = {self.side}, detect = {self.detect}",
            f"  lam = {d.problem.lam:.5g} (lam sqrt(K) = "
            f"{d.problem.lam * np.sqrt(self.collaborative.size):.3g}), "
            f"program {d.problem.name}",
            f"  collaborative: {int(self.collaborative.sum())}, flagged: "
            f"{self.flagged.size}",
        ]
        if self.flagged.size:
            lines.append("  flagged clients:")
            header = "    client  ||S_k||_F"
            if self.test is not None:
                header += "    T_k        p-value    adjusted"
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
            lines.append(
                f"  test: chi^2 with {self.test.df} df, noise variance "
                f"{'estimated (median rule)' if self.test.estimated_noise else 'given'}"
            )
        lines.append(f"  solver: {d.info!r}")
        return "\n".join(lines)


def clair(
    updates: np.ndarray | LowRankUpdates,
    rank: int | None = None,
    lam: float | None = None,
    mode: str = "auto",
    detect: str = "support",
    alpha: float = 0.05,
    correction: str = "holm",
    sigma: float | np.ndarray | None = None,
    center: bool = False,
    side: str = "left",
    weights: np.ndarray | None = None,
    solver: str = "proximal",
    mu: float | None = None,
    support_tol: float = 1e-6,
    refined_rank: int | None = None,
    **solver_options,
) -> ClairResult:
    """CLAIR: shared subspace, collaborative set and refined client updates.

    Step 1 decomposes M = [Theta^_1, ..., Theta^_K] into L^ + S^ (+ c^ 1^T)
    (:func:`clair_stats.decompose`); step 2 takes A^ = top-r left singular
    vectors of L^; step 3 finds S^ from the block support of S^ or by the
    chi-square test; step 4 refines, for k in S^,

    .. math:: \\tilde\\Theta_k = P_{\\hat A}\\hat\\Theta_k
              + P_{\\hat A}^\\perp \\bar\\Theta_{\\hat S}.

    Parameters
    ----------
    updates : array_like of shape (K, p, q), or LowRankUpdates
        Theta^_k. Factored updates (LoRA adapters) are never multiplied out:
        step 1 runs on a small core (:mod:`clair_stats.solvers.factored`), the
        statistics are computed there with the degrees of freedom of the full
        p x q blocks, and the refined updates come back as factors.
    rank : int, optional
        r; default the numerical rank of L^.
    lam : float, optional
        Default c_lam / sqrt(K) (:func:`clair_stats.default_lam`).
    mode : {"auto", "exact", "penalized"}
        P0 or P1. ``"auto"``: P1 when ``sigma`` is given (mu = sigma (sqrt(p) +
        sqrt(Kq)), the noise operator norm), else P0.
    detect : {"support", "test"}
        How S^ is formed (docs/pipeline.md §3.3).
    alpha, correction
        Level and correction of the test (``"holm"``, ``"fdr_bh"``).
    sigma : float or array of shape (K,), optional
        Per-entry noise standard deviation; estimated by the median rule in the
        test when omitted.
    center : bool
        Estimate an unknown common backbone.
    side : {"left", "right"}
        Share the column space (p-dim) or the row space (apply to transposes).
    weights : array_like, shape (K,), optional
        Block weights w_k.
    solver : {"proximal", "cvxpy"}
    mu : float, optional
        mu of P1 (overrides the ``sigma`` rule).
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

    References
    ----------
    He, Chen, Feng (2026). Federated LoRA fine-tuning for LLMs via collaborative
    alignment. arXiv:2605.21217.
    Xu, Caramanis, Sanghavi (2012). Robust PCA via outlier pursuit. IEEE TIT.
    """
    data = as_updates(updates)
    _check_options(data, detect, mode, side, refined_rank)
    support_tol = check_positive(support_tol, "support_tol")
    work = data.oriented(side)
    mode, mu = _program(mode, sigma, mu, work.shape)
    decomposition = work.decompose(
        lam=lam,
        mode=mode,
        mu=mu,
        center=center,
        weights=weights,
        solver=solver,
        **solver_options,
    )
    subspace, _ = estimate_subspace(decomposition, rank=rank)
    collaborative, test = _collaborative_set(
        work, decomposition, subspace, detect, support_tol, sigma, alpha, correction
    )
    refined = work.refine(decomposition, subspace, collaborative, refined_rank)
    return ClairResult(
        subspace=subspace,
        rank=subspace.shape[1],
        collaborative=collaborative,
        refined=work.restore(refined, side),
        decomposition=decomposition,
        test=test,
        detect=detect,
        side=side,
    )


def _check_options(
    data: Updates, detect: str, mode: str, side: str, refined_rank: int | None
) -> None:
    """Raise on an unknown option or one that does not apply to ``data``."""
    check_choice(side, "side", SIDES)
    check_choice(detect, "detect", DETECT_RULES)
    check_choice(mode, "mode", PROGRAM_MODES)
    if refined_rank is not None and not data.factored:
        raise ValueError(
            "refined_rank applies to LowRankUpdates (factored updates) only; the "
            "refined dense updates are not truncated."
        )


def _program(
    mode: str,
    sigma: float | np.ndarray | None,
    mu: float | None,
    shape: tuple[int, int, int],
) -> tuple[str, float | None]:
    """Step 1's program and mu (docs/programs.md §3.1): the rule of ``mode="auto"``.

    ``"auto"`` is P1 when ``sigma`` or ``mu`` is given, else P0. P1 without mu
    takes mu = max_k sigma_k (sqrt(p) + sqrt(Kq)), the operator norm of iid
    N(0, sigma^2) noise on the p x Kq matrix M.
    """
    n_clients, p, q = shape
    if mode == "auto":
        mode = "penalized" if (sigma is not None or mu is not None) else "exact"
    if mode != "penalized":
        return mode, None
    if mu is None:
        if sigma is None:
            raise ValueError(
                "mode='penalized' needs mu or sigma (mu = sigma (sqrt(p) + "
                "sqrt(Kq)) is used when sigma is given)."
            )
        tau = check_noise_levels(sigma, n_clients)
        mu = float(np.max(tau)) * (np.sqrt(p) + np.sqrt(n_clients * q))
    return mode, mu


def _collaborative_set(
    work: Updates,
    decomposition: Decomposition | FactoredDecomposition,
    subspace: np.ndarray,
    detect: str,
    support_tol: float,
    sigma: float | np.ndarray | None,
    alpha: float,
    correction: str,
) -> tuple[np.ndarray, ChiSquareTest | None]:
    """Step 3: S^ from the support of S^, or by the test on the energies E_k."""
    if detect == "support":
        return ~decomposition.support(tol=support_tol), None
    _, p, q = work.shape
    r = subspace.shape[1]
    if r >= p:
        raise ValueError(
            f"the test needs r < p (an off-subspace complement); got r = {r}, p = {p}."
        )
    energy = work.energies(decomposition, subspace)
    test = energy_test(
        energy, (p - r) * q, sigma=sigma, alpha=alpha, correction=correction
    )
    return ~test.rejected, test

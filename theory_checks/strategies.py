"""Shared hypothesis strategies and instance builders of theory_checks.

T1 (docs/claims.md §4, exact recovery): :func:`t1_instances` draws noiseless instances
whose condition gamma/(1-gamma) <= 9/(121 mu r) holds by construction up to a
rejection when a draw admits no contaminated client; the tests recompute mu
from the SVD of L0 and check the condition with ``hypothesis.assume``. The
instance is rebuilt from its parameters and seed by :func:`make_t1_instance`, so
a counterexample is pinned by a line of numbers in
``theory_checks/regressions/t1_cases.py``. The T1 formulas (mu, the condition,
the theory lam) live in :mod:`clair_stats.theory.t1`, shared with the studies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from clair_stats.theory.t1 import (
    T1_CONSTANT,
    incoherence,
    right_singular_blocks,
    t1_condition,
    t1_lam,
)
from theory_checks._mode import FULL

__all__ = [
    "T1Instance",
    "incoherence",
    "make_t1_instance",
    "right_singular_blocks",
    "benign_factors",
    "factor_incoherence",
    "t1_condition",
    "t1_instances",
    "t1_lam",
]


@dataclass(frozen=True, eq=False)
class T1Instance:
    """A noiseless instance M = L0 + S0 with contaminated blocks orthogonal to A.

    Attributes
    ----------
    updates : ndarray, shape (K, p, q)
        Theta_k = L0_k + S0_k (no noise).
    subspace : ndarray, shape (p, r)
        A, orthonormal columns.
    benign : ndarray of bool, shape (K,)
        The collaborative set S.
    low_rank_truth, sparse_truth : ndarray, shape (K, p, q)
        L0 (A B_k^T on S, 0 on S^c) and S0 (0 on S, P_A^perp G_k on S^c).
    params : dict
        The arguments of :func:`make_t1_instance` that rebuild the instance.
    """

    updates: np.ndarray
    subspace: np.ndarray
    benign: np.ndarray
    low_rank_truth: np.ndarray
    sparse_truth: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def n_clients(self) -> int:
        return int(self.updates.shape[0])

    @property
    def rank(self) -> int:
        return int(self.subspace.shape[1])

    @property
    def contaminated(self) -> np.ndarray:
        return ~self.benign

    @property
    def gamma(self) -> float:
        return float(np.count_nonzero(~self.benign)) / self.n_clients

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"make_t1_instance({args})"

    def _repr_pretty_(self, printer, cycle) -> None:
        # hypothesis prints falsifying examples with this: the rebuild call,
        # ready to paste into regressions/t1_cases.py, not the arrays
        printer.text(repr(self))


def _tight_frame(n_rows: int, r: int) -> np.ndarray:
    """Harmonic tight frame: n_rows x r, every row of norm sqrt(r), F^T F = n_rows I.

    Columns: a constant column when r is odd, then sqrt(2) cos and sqrt(2) sin of
    2 pi j m / n_rows for m = 1 .. floor(r/2); orthogonal when n_rows > r.
    """
    j = np.arange(n_rows)[:, None]
    cols = [np.ones((n_rows, 1))] if r % 2 else []
    for m in range(1, r // 2 + 1):
        angle = 2.0 * np.pi * m * j / n_rows
        cols += [np.sqrt(2.0) * np.cos(angle), np.sqrt(2.0) * np.sin(angle)]
    return np.hstack(cols)


def benign_factors(
    n_benign: int, q: int, r: int, jitter: float, seed: int
) -> np.ndarray:
    """The stacked benign factors B (|S| q x r) of :func:`make_t1_instance`.

    A harmonic tight frame (rows permuted, rotated by a random orthogonal r x r
    matrix) plus ``jitter`` times iid N(0, 1) entries. It depends on the seed and
    on |S|, q, r only (not on K or the contamination), so mu can be computed
    before the number of contaminated clients is chosen.
    """
    rng = np.random.default_rng([seed, 1])
    frame = _tight_frame(n_benign * q, r)[rng.permutation(n_benign * q)]
    rotation, _ = np.linalg.qr(rng.standard_normal((r, r)))
    return frame @ rotation + jitter * rng.standard_normal((n_benign * q, r))


def factor_incoherence(B: np.ndarray, q: int) -> float:
    r"""mu of L0 = A B^T from the benign factors alone: (|S|/r) max_k ||V_k||_F^2.

    V spans col(B), so ||V_k||_F^2 = tr(B_k (B^T B)^{-1} B_k^T); (1 - gamma) K = |S|.
    """
    n_benign = B.shape[0] // q
    r = B.shape[1]
    leverage = np.sum(B * np.linalg.solve(B.T @ B, B.T).T, axis=1)
    return float(np.max(leverage.reshape(n_benign, q).sum(axis=1)) * n_benign / r)


def make_t1_instance(
    p: int,
    q: int,
    r: int,
    n_clients: int,
    n_contaminated: int,
    jitter: float = 0.0,
    signal_scale: float = 1.0,
    outlier_ratio: float = 1.0,
    seed: int = 0,
) -> T1Instance:
    r"""Build a noiseless T1 instance from its parameters (deterministic in ``seed``).

    Benign blocks: L0_k = s A B_k^T with B from :func:`benign_factors`. With
    ``jitter = 0``, B^T B is a multiple of I_r and every ||B_k||_F is equal, so
    mu = 1 exactly; the jitter raises mu. Contaminated blocks (type
    ``orthogonal``, Xu et al.'s setting): S0_k = P_A^perp G_k rescaled to
    Frobenius norm ``outlier_ratio`` times the benign root-mean-square block norm
    times a factor 2^u, u uniform in [-1, 1] (per client).
    """
    if not 1 <= n_contaminated < n_clients:
        raise ValueError("need 1 <= n_contaminated < n_clients")
    n_benign = n_clients - n_contaminated
    B = benign_factors(n_benign, q, r, jitter, seed)
    rng = np.random.default_rng([seed, 2])
    A, _ = np.linalg.qr(rng.standard_normal((p, r)))
    benign = np.ones(n_clients, dtype=bool)
    benign[rng.choice(n_clients, size=n_contaminated, replace=False)] = False
    L0 = np.zeros((n_clients, p, q))
    for i, k in enumerate(np.flatnonzero(benign)):
        L0[k] = signal_scale * A @ B[i * q : (i + 1) * q].T
    rho = math.sqrt(float(np.mean(np.sum(L0[benign] ** 2, axis=(1, 2)))))

    S0 = np.zeros((n_clients, p, q))
    for k in np.flatnonzero(~benign):
        G = rng.standard_normal((p, q))
        G -= A @ (A.T @ G)
        size = outlier_ratio * rho * 2.0 ** rng.uniform(-1.0, 1.0)
        S0[k] = G * (size / np.linalg.norm(G))
    params = {
        "p": p,
        "q": q,
        "r": r,
        "n_clients": n_clients,
        "n_contaminated": n_contaminated,
        "jitter": jitter,
        "signal_scale": signal_scale,
        "outlier_ratio": outlier_ratio,
        "seed": seed,
    }
    return T1Instance(L0 + S0, A, benign, L0, S0, params)


@st.composite
def t1_instances(
    draw,
    p_range: tuple[int, int] | None = None,
    q_range: tuple[int, int] = (1, 3),
    r_range: tuple[int, int] = (1, 2),
    benign_range: tuple[int, int] | None = None,
    max_cells: int | None = None,
    max_columns: int | None = None,
    max_contaminated: int = 3,
    max_jitter: float = 0.5,
) -> T1Instance:
    """Noiseless T1 instances inside the condition by construction.

        Draws r, q, p, the number |S| of benign clients, the jitter and the seed,
        builds the benign factors and computes mu from them (it does not depend on
        the contaminated clients); then the number of contaminated clients n_c is
        drawn in [1, min(max_contaminated, n_max)] with n_max the largest n_c that
        meets gamma/(1-gamma) = n_c/|S| <= 9/(121 mu r); half of the draws take n_c =
        n_max (the boundary). When n_max = 0 (jitter too large for |S|), the draw is
        rejected with ``assume``. Scales: signal scale s log-uniform in [1e-2, 1e2]
        (P0 is homogeneous: it must not matter) and contaminated norms 0.2 to 5 times
        the benign norm. ``max_cells`` bounds p * K q and ``max_columns`` bounds K q
    (for the cvxpy reference, whose nuclear-norm cone has size p + K q: Clarabel
    took 5 s at p x Kq = 6 x 50 and 80-110 s at 6 x 100 here).
    """
    p_lo, p_hi = p_range or ((10, 60) if FULL else (10, 40))
    s_lo, s_hi = benign_range or ((27, 200) if FULL else (27, 117))
    r = draw(st.integers(*r_range), label="r")
    q = draw(st.integers(*q_range), label="q")
    p = draw(st.integers(max(p_lo, r + 2), max(p_hi, r + 2)), label="p")
    bounds = [] if max_cells is None else [max_cells // (p * q)]
    bounds += [] if max_columns is None else [max_columns // q]
    max_k = min(bounds) if bounds else None
    if max_k is not None:
        s_hi = min(s_hi, max_k - 1)
    assume(s_lo <= s_hi)
    n_benign = draw(st.integers(s_lo, s_hi), label="n_benign")
    jitter = draw(st.floats(0.0, max_jitter), label="jitter")
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    mu = factor_incoherence(benign_factors(n_benign, q, r, jitter, seed), q)
    n_max = min(max_contaminated, math.floor(n_benign * T1_CONSTANT / (mu * r)))
    assume(n_max >= 1)
    if max_k is not None:
        n_max = min(n_max, max_k - n_benign)
        assume(n_max >= 1)
    at_boundary = draw(st.booleans(), label="at_boundary")
    n_c = n_max if at_boundary else draw(st.integers(1, n_max), label="n_c")
    return make_t1_instance(
        p=p,
        q=q,
        r=r,
        n_clients=n_benign + n_c,
        n_contaminated=n_c,
        jitter=jitter,
        signal_scale=10.0 ** draw(st.floats(-2.0, 2.0), label="log10_scale"),
        outlier_ratio=draw(st.floats(0.2, 5.0), label="outlier_ratio"),
        seed=seed,
    )

"""Helpers of the T3 (detection), T4 (oracle gain) and rate checks (docs/claims.md §4).

Everything here is a deterministic function of its arguments (fixed seeds): the
Monte Carlo runs, the Wilson intervals and the first-order predictions the tests
compare them with. The T3 predictions (separation ratio, power of the test, ratio
threshold) live in :mod:`clair_stats.theory.t3`, shared with the studies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from statsmodels.stats.proportion import proportion_confint
from threadpoolctl import threadpool_limits

from clair_stats import FederatedModel, clair
from clair_stats.pipeline.multitest import reject
from clair_stats.theory.t3 import predicted_power, ratio_threshold, separation_ratio

__all__ = [
    "DetectionRun",
    "monte_carlo_runtime",
    "predicted_power",
    "ratio_threshold",
    "run_detection",
    "separation_ratio",
    "wilson",
]


@contextmanager
def monte_carlo_runtime() -> Iterator[None]:
    """Run many small fits fast on a shared machine: one BLAS thread.

    The fits are small, and threads oversubscribe 2 shared cores (measured: 4-10x
    slower without the limit). The limit is lifted on exit.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def wilson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (statsmodels)."""
    lo, hi = proportion_confint(successes, trials, alpha=1 - level, method="wilson")
    return float(lo), float(hi)


# ------------------------------------------------------------------------ T3
@dataclass(frozen=True)
class DetectionRun:
    """Replicates of CLAIR's chi-square test on the regression generator.

    Attributes
    ----------
    p_values : ndarray, shape (R, K)
        Uncorrected p-values of ``clair(..., detect="test", sigma=local_sd)``.
    contaminated : ndarray of bool, shape (R, K)
        The true S^c of each replicate.
    """

    p_values: np.ndarray
    contaminated: np.ndarray

    def flagged(self, alpha: float) -> np.ndarray:
        """(R, K) Holm rejections at level alpha (the S^c-hat of each replicate)."""
        return reject(self.p_values, alpha, "holm")[0]

    def exact(self, alpha: float) -> np.ndarray:
        """(R,) indicator of S^ = S."""
        return np.all(self.flagged(alpha) == self.contaminated, axis=1)


def run_detection(
    p: int,
    q: int,
    r: int,
    n_clients: int,
    n_contaminated: int,
    delta: float,
    n: int,
    replicates: int,
    sigma: float = 1.0,
    seed: int = 0,
) -> DetectionRun:
    """``replicates`` draws of the ``margin`` model (delta_k = delta exactly) fitted
    by OLS with n samples per client, then CLAIR with rank r and the test."""
    model = FederatedModel(
        p=p,
        q=q,
        rank=r,
        n_clients=n_clients,
        contamination=n_contaminated,
        contamination_type="margin",
        margin=delta,
    )
    pvals = np.empty((replicates, n_clients))
    bad = np.empty((replicates, n_clients), dtype=bool)
    with monte_carlo_runtime():
        for i in range(replicates):
            sample = model.sample_regression(n, sigma=sigma, seed=seed + i)
            res = clair(sample.updates, rank=r, detect="test", sigma=sample.local_sd)
            pvals[i] = res.p_values
            bad[i] = sample.contaminated
    return DetectionRun(p_values=pvals, contaminated=bad)

r"""
Null calibration: the empirical null against the chi-square with estimated sigma
================================================================================

**Question.** With no noise level given, ``clair(updates)`` tests the clients by
the empirical null (``test="auto"`` -> ``"empirical"``, docs/pipeline.md §3.3.5:
log off-subspace energy of each client against the others' median and MAD, with
the exact law of that score); ``test="chi2"`` without ``sigma`` is the chi-square
test with sigma estimated by the median rule (§3.3.3). Which of the two keeps the
family-wise error (FWER, Holm at alpha = 0.05) at its nominal level, as the number
of clients K grows from 10 to 200, under iid noise and under OLS fits, and what
does each cost in power?

**Grid** (full mode). p = 20, q = 5, r = 2 (df = (p - r) q = 90), benign Theta_k
= A B_k^T (no heterogeneity, no centre). K in {10, 20, 50, 100, 200}; three noise
models:

* ``iid``: ``FederatedModel(...).sample(noise=tau, seed)`` with tau = 0.25, about
  the per-entry sd of the OLS fits at n / p = 2 (1 / sqrt(n - p - 1) = 0.23): the
  chi-square law holds exactly (up to the estimation of A and sigma);
* ``ols2``, ``ols8``: ``FederatedModel(...).sample_regression(n, sigma=1, seed)``
  with n / p = 2 (n = 40) and 8 (n = 160): each column of the error of
  Theta^_k is N(0, sigma^2 (X_k^T X_k)^{-1}), so the chi-square law with one
  scalar sigma is wrong by the spread of the weights (§3.3.4).

Contamination: ``none`` (benign-only federations) and gamma = 0.2 of the clients
of type ``random``, ``orthogonal``, ``subspace``, ``in_subspace`` and ``margin``
(:data:`clair_stats.CONTAMINATION_TYPES`; ``scaled`` and ``sign_flip`` are left
out: without heterogeneity they lie in span(A), as ``in_subspace`` does). The
matched types have the benign norm sqrt(q r) = 3.2: an off-subspace energy of
about 9-10 on top of the noise's (p - r) q tau^2 = 5.6 (iid), 90 / (n - p - 1) =
4.7 (``ols2``) and 0.65 (``ols8``), so about 2.6, 3 and 15 times the benign
median energy; ``margin`` clients have an
in-subspace part plus an off-subspace part of norm exactly delta at the T3
separation ratio 1 (:func:`clair_stats.theory.t3.margin_for_ratio`: delta = sigma
sqrt((p - r) q / n) for OLS, tau sqrt((p - r) q) for iid noise), where the
chi-square test with the true sigma detects a client with probability 0.98 (iid),
0.94 (``ols8``) and 0.46 (``ols2``) at K = 20 (first-order, leverage-corrected).
``in_subspace`` clients have delta = 0: they are not identifiable, and their
"power" is a false-positive rate.

Replicates. The study's replicates come in blocks of 20 (the configuration key
``block``, which only enters the seed). A benign-only cell has 25 blocks, 500
federations, so that an FWER of 0.05 has a Wilson 95% interval of about +-0.02;
at K = 200, the expensive K (the 200 OLS fits and the solves take 2-4 times as
long as at K <= 50), 20 blocks, 400 federations (+-0.022). A contaminated cell
has 3 blocks, 60 federations: the power is averaged over 2-40 contaminated
clients per federation, and the FWER of the benign clients is pooled over the
five types (300 federations per (noise, K)). 7,200 + 4,500 = 11,700 replicates.
``--quick``: noise ``iid`` and ``ols2``, K in {10, 50}, ``none`` and ``margin``,
block 0, 8 replicates (64 replicates, about 10 s), a subset of the full grid with
the same seeds.

**One replicate** (:func:`run`). One federation, then one call ``clair(updates,
rank=r, test="empirical")`` (the true rank, so both tests see the same A^; P1 with
mu from the median-rule sigma^, Holm at alpha = 0.05). With ``rank`` given, steps
1-2 do not depend on ``test`` (the rank is re-read from the kept clients only when
``rank=None``), so ``clair(..., test="chi2")`` solves the same programs and tests
the same energies: the run recomputes E_k = ||P_A^^perp Theta^_k||_F^2 at clair's
A^, asserts that they reproduce clair's empirical z-scores (to 1e-9), and applies
the chi-square test with the median rule to them
(:func:`clair_stats.pipeline.detection.energy_test`, the function clair calls for
``test="chi2"``). A second clair call would double the cost (the P0 pilot and the
P1 solves) for the same numbers; ``tests/test_sim_null_calibration.py`` checks that
the chi-square row equals ``clair(..., rank=r, test="chi2")`` (same subspace, same
p-values) on samples of every noise model. Two rows, ``test`` = ``"empirical"``
and ``"chi2"``: ``fwer_event`` (a benign client flagged), ``min_benign_adjusted``
(the smallest Holm-adjusted p-value of a benign client: the FWER at any level),
``power`` (fraction of the contaminated clients flagged; None when there are
none), ``exact`` (S^ = S), the per-client rates of benign clients with a raw
p-value below 0.05 and below alpha / K (Holm's first cut), and the fit's
``subspace_error``, ``sigma_ratio`` (median-rule sigma^ over the true per-entry sd
of the benign clients), ``converged`` and ``assumption_warnings``.

**Reading the figures.**

* ``fwer.png``: FWER against K (log scale), one column per noise model, both
  tests, Wilson 95% bands, the nominal 0.05 (black). Top row: benign-only
  federations (500 per point). Bottom row: the benign clients of the contaminated
  federations, pooled over the five types (500 per point).
* ``power.png``: per-client detection probability against K, one column per
  contamination type; colour = noise model, solid = empirical null, dashed =
  chi-square with the median rule; t bands over the replicates. Bottom row:
  P(S^ = S).
* ``summary.md``: per noise model one table (rows K) with both tests' FWER
  (benign-only, and benign clients of contaminated federations), power per type
  and P(S^ = S); then the cells whose FWER interval lies above 0.05.
  ``summary.csv``: every (noise, K, type, test) with its rates and intervals.

**Full-grid results** (11,700 federations; 13.5 minutes of wall time with
``--jobs 2`` on the shared 2-core machine at load 3-4, 11.9 minutes of CPU time,
1,542 s of summed replicate time, which counts the waits of that load). FWER at
alpha = 0.05 (benign-only: 500 federations per cell, 400 at K = 200; "contam.":
the benign clients of the contaminated federations, 300 per cell, pooled over
the types) and per-client power at gamma = 0.2, as empirical null / chi-square
with the median-rule sigma:

====  ===  =====  =====  ======  ======  =========  =========  =========  =========
noise K    FWER   FWER   contam. contam. random     orthog.    subspace   margin
           emp.   chi2   emp.    chi2
====  ===  =====  =====  ======  ======  =========  =========  =========  =========
iid   10   0.044  0.072  0.007   0.023   0.58/1.00  0.66/1.00  0.50/1.00  0.36/0.96
iid   20   0.024  0.050  0.010   0.020   0.83/1.00  0.80/1.00  0.81/1.00  0.42/0.96
iid   50   0.028  0.050  0.000   0.020   0.87/1.00  0.99/1.00  0.74/1.00  0.43/0.95
iid   100  0.016  0.048  0.003   0.010   0.89/1.00  0.95/1.00  0.83/0.99  0.35/0.94
iid   200  0.010  0.065  0.000   0.010   0.89/1.00  0.97/1.00  0.83/0.99  0.26/0.90
ols2  10   0.052  0.438  0.017   0.253   0.33/1.00  0.46/1.00  0.36/1.00  0.03/0.50
ols2  20   0.052  0.620  0.020   0.373   0.44/1.00  0.56/1.00  0.38/1.00  0.01/0.36
ols2  50   0.072  0.856  0.007   0.580   0.36/1.00  0.42/1.00  0.45/1.00  0.01/0.30
ols2  100  0.100  0.956  0.013   0.720   0.27/1.00  0.49/1.00  0.17/1.00  0.00/0.26
ols2  200  0.120  0.988  0.027   0.923   0.19/1.00  0.29/1.00  0.14/1.00  0.00/0.22
ols8  10   0.022  0.106  0.010   0.070   1.00/1.00  1.00/1.00  1.00/1.00  0.17/0.89
ols8  20   0.036  0.118  0.007   0.070   1.00/1.00  1.00/1.00  1.00/1.00  0.19/0.88
ols8  50   0.024  0.180  0.013   0.060   1.00/1.00  1.00/1.00  1.00/1.00  0.14/0.86
ols8  100  0.024  0.162  0.007   0.057   1.00/1.00  1.00/1.00  1.00/1.00  0.14/0.82
ols8  200  0.030  0.175  0.003   0.077   1.00/1.00  1.00/1.00  1.00/1.00  0.07/0.76
====  ===  =====  =====  ======  ======  =========  =========  =========  =========

``in_subspace`` clients (delta = 0) are flagged at most 0.017 (empirical) and
0.083 (chi-square) of the time. Step 1 converged in every fit; an
AssumptionWarning came in at most 1.7% of the fits of a cell.

* **The empirical null is not calibrated on OLS fits at n / p = 2 from K = 50 on**:
  FWER 0.072 [0.052, 0.098], 0.100 [0.077, 0.129], 0.120 [0.092, 0.156] at K =
  50, 100, 200 (Wilson 95%), growing with K; benign clients cross Holm's first
  cut alpha / K 1.8-2.6 times as often as nominal. Why (measured with the true A,
  100 federations of K = 200, 20,000 benign clients): the law assumes normal log
  energies, but at n / p = 2 the null mean of E_k, q tr(P_A^perp (X_k^T X_k)^{-1}),
  varies between clients with a right-skewed log (skewness 0.29; clients whose
  design is nearly singular), so log E_k is right-skewed (0.125) and, standardised
  by its median and MAD, exceeds 3.5 3.7 times as often as a normal (4: 13 times).
  Holm's first cut alpha / K is at z = 5.7, 4.1, 3.7, 3.6 and 3.7 for K = 10,
  20, 50, 100 and 200 (at small K the law's own tails, from the noisy MAD of
  K - 1 values, are heavy and cover the skew: 0.052 at K = 10 and 20); from
  K = 50 on the cut sits where the right tail of log E_k is several times the
  normal one, and the FWER sums that excess over more clients as K grows. At
  n / p = 8 and with iid noise log E_k is left-skewed (-0.09, -0.16) and the test
  is conservative (0.010-0.044; with iid noise more so as K grows).
* The chi-square test with the median rule is calibrated only with iid noise at
  K = 20-200 (0.048-0.065; 0.072 [0.052, 0.098] at K = 10, where the median of 10
  energies is a noisy sigma^2); on OLS fits its FWER is 0.44-0.99 at n / p = 2
  and 0.11-0.18 at n / p = 8, the miscalibration of the iid law docs/pipeline.md
  §3.3.4 describes, here with sigma estimated.
* Power: the empirical null pays for its calibration. On ``margin`` clients at
  T3 ratio 1 it flags 0.26-0.43 (iid) and 0.07-0.19 (``ols8``) where the
  chi-square flags 0.90-0.96 and 0.76-0.89, and almost none at ``ols2``
  (<= 0.033). Even the gross matched types (energy about 3 times the benign one)
  are found only 0.50-0.99 (iid) and 0.14-0.56 (``ols2``) of the time: the 20%
  contaminated clients inflate the others' MAD (measured: by 1.4-1.6 times, the
  contaminated clients' median z falling from 6.5 to 4.6 at K = 50-200, random,
  iid), a scale the chi-square test takes from df instead. With gamma = 0.2
  the FWER of the benign clients falls for both tests (the contaminated clients
  raise the median too): at most 0.027 for the empirical null.
* P(S^ = S) on benign-only federations is 1 - FWER; with contamination it falls
  with K for both tests (more contaminated clients to find), e.g. ``margin``
  iid 0.25 -> 0.00 (empirical) and 0.90 -> 0.02 (chi-square) from K = 10 to 200
  (``summary.md``).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clair_stats import AssumptionWarning, ConvergenceWarning, FederatedModel, clair
from clair_stats.core.linalg import off_subspace_energy
from clair_stats.evaluation.metrics import projection_distance
from clair_stats.experiments.plotting import proportion_summary, wilson_interval
from clair_stats.experiments.study import Study, study_main, study_parser
from clair_stats.pipeline.detection import empirical_energy_test, energy_test
from clair_stats.theory.t3 import margin_for_ratio

#: The fixed model: p, q, r, Holm's level, the OLS noise sd, the iid noise sd tau,
#: the contaminated fraction and the T3 separation ratio of the margin clients.
P, Q, R, ALPHA = 20, 5, 2, 0.05
SIGMA, TAU, GAMMA, MARGIN_RATIO = 1.0, 0.25, 0.2, 1.0
#: Noise model -> n / p of the OLS fits (None: iid noise of sd TAU).
NOISE_MODELS: dict[str, float | None] = {"iid": None, "ols2": 2.0, "ols8": 8.0}
#: The two tests, in the order of the rows and legends.
TESTS: tuple[str, ...] = ("empirical", "chi2")
#: Contamination types of the contaminated cells ("none": benign-only federations).
TYPES: tuple[str, ...] = ("random", "orthogonal", "subspace", "in_subspace", "margin")
FULL_K: tuple[int, ...] = (10, 20, 50, 100, 200)
FULL_NOISE: tuple[str, ...] = ("iid", "ols2", "ols8")
FULL_TYPES: tuple[str, ...] = ("none", *TYPES)
#: A block is FULL_REPLICATES = 20 replicates (the configuration key ``block``);
#: blocks per benign-only cell (500 federations; 400 at K = 200, the expensive K)
#: and per contaminated cell (60 federations).
FULL_REPLICATES = 20
BENIGN_BLOCKS, BENIGN_BLOCKS_LARGE_K, LARGE_K = 25, 20, 200
CONTAMINATED_BLOCKS = 3
QUICK_K: tuple[int, ...] = (10, 50)
QUICK_NOISE: tuple[str, ...] = ("iid", "ols2")
QUICK_TYPES: tuple[str, ...] = ("none", "margin")
QUICK_REPLICATES = 8
#: Relative tolerance of the check that the recomputed energies are clair's.
CHECK_RTOL = 1e-9


# ------------------------------------------------------------------ one replicate
def n_samples(noise: str) -> int | None:
    """The samples per client n of an OLS noise model (None for iid noise)."""
    ratio = NOISE_MODELS[noise]
    return None if ratio is None else int(round(ratio * P))


def margin(noise: str) -> float:
    """delta of the ``margin`` clients: the T3 separation ratio MARGIN_RATIO.

    OLS: delta = rho sigma sqrt((p - r) q / n); iid noise: tau in the place of
    sigma / sqrt(n), delta = rho tau sqrt((p - r) q).
    """
    n = n_samples(noise)
    if n is None:
        return margin_for_ratio(MARGIN_RATIO, TAU, P, Q, R, 1)
    return margin_for_ratio(MARGIN_RATIO, SIGMA, P, Q, R, n)


def _sample(config: dict[str, Any], seed: int) -> tuple[Any, np.ndarray]:
    """The federation of a configuration and the true per-entry sd of each client."""
    noise, kind = str(config["noise"]), str(config["type"])
    gamma = 0.0 if kind == "none" else float(config["gamma"])
    model = FederatedModel(
        P,
        Q,
        R,
        int(config["K"]),
        contamination=gamma,
        contamination_type="random" if kind == "none" else kind,
        margin=margin(noise),
    )
    n = n_samples(noise)
    if n is None:
        sample = model.sample(noise=TAU, seed=seed)
        return sample, np.full(model.n_clients, TAU)
    sample = model.sample_regression(n, sigma=SIGMA, seed=seed)
    return sample, SIGMA * np.sqrt(np.asarray(sample.gram_inverse_trace) / P)


def _row(test: Any, bad: np.ndarray, shared: dict[str, Any]) -> dict[str, Any]:
    """The rates of one test on one federation."""
    flagged = np.asarray(test.rejected, dtype=bool)
    p_values = np.asarray(test.p_values)
    benign = ~bad
    n_bad = int(bad.sum())
    return {
        "test": test.method,
        "n_flagged": int(flagged.sum()),
        "n_false": int(np.sum(flagged & benign)),
        "fwer_event": bool(np.any(flagged & benign)),
        "min_benign_adjusted": float(np.min(test.adjusted_p_values[benign])),
        "power": float(np.mean(flagged[bad])) if n_bad else None,
        "exact": bool(np.array_equal(flagged, bad)),
        "benign_rate_05": float(np.mean(p_values[benign] <= 0.05)),
        "benign_rate_tail": float(np.mean(p_values[benign] <= ALPHA / bad.size)),
        **shared,
    }


def run(config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One replicate: one federation, clair with the empirical null, and the
    chi-square test with the median rule at the same A^.

    Parameters
    ----------
    config : dict
        ``noise`` (a key of :data:`NOISE_MODELS`), ``K`` (int), ``type``
        (``"none"`` or a contamination type), ``gamma`` (float: 0.0 for
        ``"none"``, else the contaminated fraction) and ``block`` (int, a block of
        replicates; it only enters the seed).
    seed : int
        Seed of the federation (all randomness).

    Returns
    -------
    list of dict
        Two rows, ``test`` = ``"empirical"`` and ``"chi2"`` (module docstring):
        ``n_contaminated``, ``n_flagged``, ``n_false`` (benign clients flagged),
        ``fwer_event``, ``min_benign_adjusted``, ``power`` (None without
        contaminated clients), ``exact``, ``benign_rate_05``,
        ``benign_rate_tail`` (benign clients with raw p <= 0.05, <= alpha / K),
        and for the fit (equal in both rows) ``subspace_error`` (||P_A^ -
        P_A||_F), ``sigma_ratio``, ``converged``, ``assumption_warnings`` and
        ``clair_seconds``.
    """
    sample, true_sd = _sample(config, seed)
    updates = np.asarray(sample.updates)
    bad = np.asarray(sample.contaminated, dtype=bool)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AssumptionWarning)
        warnings.simplefilter("always", ConvergenceWarning)
        result = clair(updates, rank=R, test="empirical", alpha=ALPHA)
    seconds = time.perf_counter() - start
    if result.test is None or result.test.method != "empirical":
        raise RuntimeError(f"clair did not run the empirical null: {result!r}")
    # the energies clair tested, at the A^ of its step 3 (step 4 refits A^ on
    # S^ afterwards): they must give its own z-scores
    tested = (
        result.subspace
        if result.detection_subspace is None
        else result.detection_subspace
    )
    energy = off_subspace_energy(updates, tested)
    empirical = empirical_energy_test(energy, alpha=ALPHA)
    if not np.allclose(
        empirical.statistics, result.statistics, rtol=CHECK_RTOL, atol=CHECK_RTOL
    ):
        raise AssertionError("the recomputed energies are not those clair tested")
    chi2 = energy_test(energy, (P - R) * Q, alpha=ALPHA)
    shared = {
        "n_contaminated": int(bad.sum()),
        "subspace_error": projection_distance(tested, sample.subspace),
        "sigma_ratio": float(result.noise.sd[0] / np.median(true_sd[~bad])),
        "converged": not any(
            issubclass(w.category, ConvergenceWarning) for w in caught
        ),
        "assumption_warnings": sum(
            issubclass(w.category, AssumptionWarning) for w in caught
        ),
        "clair_seconds": seconds,
    }
    return [_row(result.test, bad, shared), _row(chi2, bad, shared)]


# ------------------------------------------------------------------------- study
def parser() -> argparse.ArgumentParser:
    """The command line: the runner's options (see the module docstring)."""
    return study_parser(
        "FWER and power of clair's empirical null against the chi-square test with "
        "the median-rule sigma, over K and noise models (see the module docstring)."
    )


def configurations(quick: bool) -> list[dict[str, Any]]:
    """The configurations of the quick or the full grid.

    Full grid: benign-only cells (``type="none"``, ``gamma=0.0``) have blocks 0 to
    BENIGN_BLOCKS - 1 (BENIGN_BLOCKS_LARGE_K - 1 at K = LARGE_K), contaminated
    cells blocks 0 to CONTAMINATED_BLOCKS - 1. Quick grid: block 0 only.
    """
    noises = QUICK_NOISE if quick else FULL_NOISE
    ks = QUICK_K if quick else FULL_K
    types = QUICK_TYPES if quick else FULL_TYPES
    configs = []
    for noise in noises:
        for k in ks:
            for kind in types:
                benign = kind == "none"
                if quick:
                    blocks = 1
                elif benign:
                    blocks = BENIGN_BLOCKS_LARGE_K if k == LARGE_K else BENIGN_BLOCKS
                else:
                    blocks = CONTAMINATED_BLOCKS
                configs.extend(
                    {
                        "noise": noise,
                        "K": int(k),
                        "type": kind,
                        "gamma": 0.0 if benign else GAMMA,
                        "block": block,
                    }
                    for block in range(blocks)
                )
    return configs


def build(args: argparse.Namespace) -> Study:
    """The study: the quick or the full grid.

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`parser` (``quick``).

    Returns
    -------
    Study
    """
    return Study(
        name="null_calibration",
        run=run,
        configs=configurations(args.quick),
        replicates=QUICK_REPLICATES if args.quick else FULL_REPLICATES,
        version="1",
    )


# ------------------------------------------------------------------------ tables
def fwer_table(frame: pd.DataFrame) -> pd.DataFrame:
    """FWER at alpha = 0.05 per (noise, K, test) and setting, Wilson 95%.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``noise``, ``K``, ``test``, ``setting`` (``"benign-only"``: the
        federations without contamination; ``"contaminated"``: the benign clients
        of the contaminated federations, pooled over the types), ``successes``,
        ``replicates``, ``fwer``, ``lo``, ``hi`` and ``above`` (the interval lies
        above the nominal 0.05: not calibrated).
    """
    data = frame.assign(
        setting=np.where(frame["type"] == "none", "benign-only", "contaminated")
    )
    keys = ["noise", "K", "test", "setting"]
    out = proportion_summary(data, keys, "fwer_event")
    out = out.rename(columns={"n": "replicates", "rate": "fwer"})
    out["above"] = out["lo"] > ALPHA
    return out


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (noise, K, type, test): every rate of the module docstring.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``noise``, ``K``, ``type``, ``test``, ``replicates``; ``fwer``,
        ``fwer_lo``, ``fwer_hi`` (Wilson 95%; among the benign clients);
        ``power``, ``power_lo``, ``power_hi`` (mean over replicates of the
        fraction of contaminated clients flagged, t 95%; NaN for ``"none"``);
        ``exact``, ``exact_lo``, ``exact_hi`` (P(S^ = S), Wilson 95%);
        ``rate_05`` (benign clients with raw p <= 0.05) and ``tail_ratio`` (the
        rate of benign clients with raw p <= alpha / K, over alpha / K: 1 for an
        exact law, above 1 where the law's tail is too light); ``sigma_ratio``,
        ``subspace_error``, ``warnings`` (mean AssumptionWarnings per fit) and
        ``converged`` (share of fits whose step 1 converged).
    """
    from scipy import stats

    out = []
    keys = ["noise", "K", "type", "test"]
    for key, rows in frame.groupby(keys, sort=True):
        n = len(rows)
        fwer = int(rows["fwer_event"].sum())
        exact = int(rows["exact"].sum())
        (f_lo, e_lo), (f_hi, e_hi) = wilson_interval(
            np.array([fwer, exact]), np.array([n, n])
        )
        power = pd.to_numeric(rows["power"], errors="coerce").dropna()
        if len(power):
            mean = float(power.mean())
            half = (
                float(stats.t.ppf(0.975, len(power) - 1) * power.std(ddof=1))
                / np.sqrt(len(power))
                if len(power) > 1
                else np.nan
            )
        else:
            mean = half = np.nan
        out.append(
            {
                **dict(zip(keys, key, strict=True)),
                "replicates": n,
                "fwer": fwer / n,
                "fwer_lo": f_lo,
                "fwer_hi": f_hi,
                "power": mean,
                "power_lo": max(0.0, mean - half) if np.isfinite(half) else np.nan,
                "power_hi": min(1.0, mean + half) if np.isfinite(half) else np.nan,
                "exact": exact / n,
                "exact_lo": e_lo,
                "exact_hi": e_hi,
                "rate_05": float(rows["benign_rate_05"].mean()),
                "tail_ratio": float(rows["benign_rate_tail"].mean())
                * int(key[1])
                / ALPHA,
                "sigma_ratio": float(rows["sigma_ratio"].mean()),
                "subspace_error": float(rows["subspace_error"].mean()),
                "warnings": float(rows["assumption_warnings"].mean()),
                "converged": float(rows["converged"].mean()),
            }
        )
    return pd.DataFrame(out)


def _cell(value: float, lo: float | None = None, hi: float | None = None) -> str:
    """A rate for a markdown cell: '0.046 [0.030, 0.069]' or '-'."""
    if value is None or not np.isfinite(value):
        return "-"
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{value:.3f}"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def noise_table(fwer: pd.DataFrame, table: pd.DataFrame, noise: str) -> list[str]:
    """The markdown table of one noise model: rows K; FWER of both tests
    (benign-only, and benign clients of contaminated federations) and, per
    contamination type, the power as 'empirical / chi2'."""
    types = [t for t in TYPES if t in set(table["type"])]
    head = ["K", "reps", "FWER empirical", "FWER chi2"]
    head += ["reps (contam.)", "FWER contam. empirical", "FWER contam. chi2"]
    head += [f"power {t}" for t in types]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fw = fwer[fwer["noise"] == noise]
    tb = table[table["noise"] == noise]
    for k in sorted(tb["K"].unique()):
        cells = [str(int(k))]
        for setting in ("benign-only", "contaminated"):
            rows = fw[(fw["K"] == k) & (fw["setting"] == setting)]
            reps = rows["replicates"].max() if len(rows) else np.nan
            cells.append("-" if not np.isfinite(reps) else str(int(reps)))
            for test in TESTS:
                row = rows[rows["test"] == test]
                if row.empty:
                    cells.append("-")
                    continue
                r = row.iloc[0]
                mark = " **(above)**" if r["above"] else ""
                cells.append(_cell(r["fwer"], r["lo"], r["hi"]) + mark)
        for kind in types:
            pair = []
            for test in TESTS:
                row = tb[(tb["K"] == k) & (tb["type"] == kind) & (tb["test"] == test)]
                pair.append("-" if row.empty else _cell(row.iloc[0]["power"]))
            cells.append(" / ".join(pair))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def not_calibrated(fwer: pd.DataFrame) -> pd.DataFrame:
    """The (noise, K, test, setting) whose FWER interval lies above 0.05."""
    return fwer[fwer["above"]].reset_index(drop=True)


# ----------------------------------------------------------------------- figures
#: Colour of each test and each noise model, line style of each test.
TEST_COLOUR = {"empirical": "tab:blue", "chi2": "tab:red"}
TEST_LABEL = {"empirical": "empirical null", "chi2": "chi-square, median-rule sigma"}
NOISE_COLOUR = {"iid": "tab:green", "ols2": "tab:purple", "ols8": "tab:orange"}
TEST_STYLE = {"empirical": "-", "chi2": "--"}


def noise_label(noise: str) -> str:
    """A noise model in words."""
    n = n_samples(noise)
    if n is None:
        return f"iid noise, tau = {TAU:g}"
    return f"OLS fits, n/p = {NOISE_MODELS[noise]:g} (n = {n})"


def _k_axis(ax: Any, ks: list[int]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.minorticks_off()


def _sqrt_axis(ax: Any) -> None:
    """A square-root y axis on [0, 1]: small rates stay readable next to 1."""
    ax.set_yscale("function", functions=(np.sqrt, np.square))
    ax.set_ylim(0, 1.0)
    ax.set_yticks([0, 0.01, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_yticklabels(["0", "0.01", "0.05", "0.1", "0.2", "0.4", "0.6", "0.8", "1"])


def _fwer_figure(fwer: pd.DataFrame, folder: Path, note: str) -> None:
    """``fwer.png``: FWER against K, one column per noise model; top benign-only,
    bottom the benign clients of contaminated federations."""
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import save_figure

    noises = [n for n in NOISE_MODELS if n in set(fwer["noise"])]
    settings = [s for s in ("benign-only", "contaminated") if s in set(fwer["setting"])]
    ks = sorted(int(k) for k in fwer["K"].unique())
    fig, axes = plt.subplots(
        len(settings),
        len(noises),
        figsize=(3.9 * len(noises) + 0.4, 3.2 * len(settings)),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    for i, setting in enumerate(settings):
        for j, noise in enumerate(noises):
            ax = axes[i, j]
            rows = fwer[(fwer["noise"] == noise) & (fwer["setting"] == setting)]
            for test in TESTS:
                t = rows[rows["test"] == test].sort_values("K")
                ax.plot(
                    t["K"],
                    t["fwer"],
                    "o-",
                    ms=4,
                    color=TEST_COLOUR[test],
                    label=TEST_LABEL[test],
                )
                ax.fill_between(
                    t["K"], t["lo"], t["hi"], color=TEST_COLOUR[test], alpha=0.2, lw=0
                )
            ax.axhline(ALPHA, color="black", lw=1, label=f"nominal {ALPHA:g}")
            _k_axis(ax, ks)
            _sqrt_axis(ax)
            ax.grid(alpha=0.3)
            reps = int(rows["replicates"].min()) if len(rows) else 0
            where = "benign-only" if setting == "benign-only" else "benign clients"
            ax.set_title(f"{noise_label(noise)}\n{where}, >= {reps} per K", fontsize=9)
            if i == len(settings) - 1:
                ax.set_xlabel("clients K (log scale)")
        axes[i, 0].set_ylabel(
            "FWER at alpha = 0.05 (sqrt scale)\n"
            + (
                "benign-only federations"
                if setting == "benign-only"
                else "benign clients, contaminated fed."
            )
        )
    axes[0, 0].legend(fontsize=7, loc="upper left")
    save_figure(
        fig,
        folder / "fwer.png",
        "Family-wise error rate (a benign client flagged; Holm at alpha = 0.05) of "
        "clair's empirical null and of the chi-square test with the median-rule "
        "sigma, against the number of clients K, with Wilson 95% bands; black: the "
        "nominal 0.05. Top: benign-only federations; bottom: the benign clients of "
        f"federations with {GAMMA:g} K contaminated clients, pooled over the "
        f"contamination types. p = {P}, q = {Q}, r = {R} (given); {note}.",
    )
    plt.close(fig)


def _power_figure(table: pd.DataFrame, folder: Path, note: str) -> None:
    """``power.png``: power (top) and P(S^ = S) (bottom) against K, one column
    per contamination type."""
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import save_figure

    types = [t for t in TYPES if t in set(table["type"])]
    noises = [n for n in NOISE_MODELS if n in set(table["noise"])]
    ks = sorted(int(k) for k in table["K"].unique())
    fig, axes = plt.subplots(
        2,
        len(types),
        figsize=(3.3 * len(types) + 0.6, 6.4),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    for j, kind in enumerate(types):
        for noise in noises:
            for test in TESTS:
                t = table[
                    (table["type"] == kind)
                    & (table["noise"] == noise)
                    & (table["test"] == test)
                ].sort_values("K")
                style = {
                    "color": NOISE_COLOUR[noise],
                    "ls": TEST_STYLE[test],
                    "marker": "o" if test == "empirical" else "s",
                    "ms": 3,
                }
                for ax, value in ((axes[0, j], "power"), (axes[1, j], "exact")):
                    ax.plot(
                        t["K"], t[value], **style, label=f"{noise}, {TEST_LABEL[test]}"
                    )
                    ax.fill_between(
                        t["K"],
                        t[f"{value}_lo"],
                        t[f"{value}_hi"],
                        color=NOISE_COLOUR[noise],
                        alpha=0.12,
                        lw=0,
                    )
        title = kind + (
            " (delta = 0: not identifiable)" if kind == "in_subspace" else ""
        )
        if kind == "margin":
            title += f" (T3 ratio {MARGIN_RATIO:g})"
        axes[0, j].set_title(title, fontsize=9)
        axes[1, j].set_xlabel("clients K (log scale)")
        for ax in axes[:, j]:
            _k_axis(ax, ks)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("P(contaminated client flagged)")
    axes[1, 0].set_ylabel("P(S^ = S)")
    # the legend goes where no curve is: the in_subspace panel's upper part
    spare = types.index("in_subspace") if "in_subspace" in types else len(types) - 1
    axes[0, spare].legend(fontsize=6, loc="upper right")
    save_figure(
        fig,
        folder / "power.png",
        "Top: per-client detection probability (mean over replicates of the "
        "fraction of contaminated clients flagged, t 95% bands) against K, one "
        "panel per contamination type; colour: noise model (iid: "
        f"tau = {TAU:g}; ols2 / ols8: OLS fits at n/p = 2 / 8); solid circles: "
        "empirical null, dashed squares: chi-square with the median-rule sigma. "
        "Bottom: P(S^ = S), Wilson 95% bands. "
        f"{GAMMA:g} K contaminated clients, Holm at alpha = {ALPHA:g}; {note}.",
    )
    plt.close(fig)


def report(frame: pd.DataFrame, folder: Path, args: argparse.Namespace) -> None:
    """Write ``fwer.png``, ``power.png``, ``summary.csv``, ``fwer.csv`` and
    ``summary.md`` into ``folder``.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame (:meth:`clair_stats.experiments.study.ResultStore.frame`).
    folder : pathlib.Path
        Where to write.
    args : argparse.Namespace
        From :func:`parser` (``quick``).
    """
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fwer = fwer_table(frame)
    table = summary_table(frame)
    fwer.to_csv(folder / "fwer.csv", index=False)
    table.to_csv(folder / "summary.csv", index=False)
    per_fit = frame[frame["test"] == TESTS[0]]
    mode = "quick" if args.quick else "full"
    note = f"{mode} grid, {len(per_fit)} federations"
    _fwer_figure(fwer, folder, note)
    _power_figure(table, folder, note)
    seconds = per_fit["seconds"].sum()
    lines = [
        "# Null calibration: empirical null against chi-square with median-rule sigma",
        "",
        f"{note}; p = {P}, q = {Q}, r = {R} (given to clair), Holm at alpha = "
        f"{ALPHA:g}; contaminated federations have {GAMMA:g} K contaminated "
        f"clients, margin clients at T3 ratio {MARGIN_RATIO:g}; {seconds:.0f} s "
        "of replicate time.",
        "",
        "FWER: a benign client flagged, Wilson 95% interval; '(above)': the "
        "interval lies above 0.05. Power: mean fraction of the contaminated "
        "clients flagged, 'empirical / chi2'.",
        "",
    ]
    for noise in [n for n in NOISE_MODELS if n in set(frame["noise"])]:
        lines += [f"## {noise}: {noise_label(noise)}", ""]
        lines += noise_table(fwer, table, noise)
        lines += ["", "P(S^ = S), 'empirical / chi2':", ""]
        lines += _exact_lines(table, noise)
        lines.append("")
    bad = not_calibrated(fwer)
    lines += ["## Not calibrated (FWER interval above 0.05)", ""]
    if bad.empty:
        lines.append("None: every interval reaches 0.05 or below.")
    else:
        for r in bad.itertuples(index=False):
            lines.append(
                f"- {r.noise}, K = {r.K}, {r.test}, {r.setting}: FWER "
                f"{_cell(r.fwer, r.lo, r.hi)} ({r.successes}/{r.replicates})"
            )
    benign = table[(table["type"] == "none")]
    lines += [
        "",
        "## Tail calibration of the benign p-values (benign-only federations)",
        "",
        "Rate of benign clients with raw p <= alpha / K over alpha / K (1: exact "
        "tail at Holm's first cut; above 1: too many small p-values), and with "
        "raw p <= 0.05.",
        "",
        "| noise | K | test | tail ratio | P(p <= 0.05) | sigma^ / sd |",
        "|---|---|---|---|---|---|",
    ]
    for r in benign.itertuples(index=False):
        lines.append(
            f"| {r.noise} | {r.K} | {r.test} | {r.tail_ratio:.2f} | "
            f"{r.rate_05:.3f} | {r.sigma_ratio:.3f} |"
        )
    lines.append("")
    (folder / "summary.md").write_text("\n".join(lines))


def _exact_lines(table: pd.DataFrame, noise: str) -> list[str]:
    """P(S^ = S) per K and type of one noise model, 'empirical / chi2'."""
    kinds = [t for t in ("none", *TYPES) if t in set(table["type"])]
    lines = ["| K | " + " | ".join(kinds) + " |", "|" + "---|" * (len(kinds) + 1)]
    tb = table[table["noise"] == noise]
    for k in sorted(tb["K"].unique()):
        cells = [str(int(k))]
        for kind in kinds:
            pair = []
            for test in TESTS:
                row = tb[(tb["K"] == k) & (tb["type"] == kind) & (tb["test"] == test)]
                pair.append("-" if row.empty else f"{row.iloc[0]['exact']:.3f}")
            cells.append(" / ".join(pair))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the study and write its report (see :func:`parser` for the options)."""
    return study_main(build, report, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

r"""
Oracle gain: where does CLAIR beat local fitting, and what does pooling add?
============================================================================

**Question.** T4 (docs/claims.md §4.5) says that refining a benign client's estimate
with the shared subspace gains G = (p - r) q tau^2 (1 - 1/m) over local fitting when
A and S are known, and loses the costs of benign heterogeneity, het = eta^2 (1 -
1/m), and of estimating A, sub = r (p - r) tau^2 / m - r eta^2 / (q m) (first
order; :mod:`clair_stats.theory.t4`). The paper's refinement keeps each client's
part inside span(A^), and with it r q tau^2 of noise; CLAIR's default (since
version 2 of this study) pools it too, Theta~_k = Thetabar + (1 - b_k) P_A^
(Theta^_k - Thetabar) with an empirical-Bayes b_k (``shrink="auto"``), whose
first-order risk is ``shrinkage_mse`` and which is never worse than the better of
keeping (b = 0) and pooling (b = 1, FedAvg) by more than 4 tau^2 / m per client
(Stein/Lindley, with A, S, tau known). Over a map of the heterogeneity eta and of
the number of clients K, and over a map of the spread delta of homogeneous
clients, where does each refinement beat local fitting, how much does pooling
add, and do the T4 predictions hold?

**Grid.** Direct-noise generator (docs/model.md §2.3 (a)): p = 20, r = 2, tau =
0.3, gamma = 0.1 contaminated clients of type ``random`` (norm matched to the
benign clients), K in {5, 10, 20, 40, 80}; two families of configurations:

* ``heterogeneous`` (version 1's map): ``FederatedModel`` with benign B_k iid
  N(0, 1) entries (delta = s = 1 = tau / 0.3 inside span(A), no common part) and
  H_k of norm eta, q in {1, 3}, eta / eta_0 in {0, 0.25, ..., 2} (9 values),
  eta_0 = tau sqrt((p - r) q);
* ``homogeneous``: :func:`homogeneous_sample`, B_k = Bbar + Z_k with Bbar^T Bbar
  = q I_r (common part, s = 1) and Z_k iid N(0, delta^2), eta = 0, q = 3 (a
  common part spanning span(A) needs q >= r), delta / tau in {0, 0.5, 1, 2, 5,
  20}.

24 replicates per cell (120 cells, 2,880 replicates). ``--quick``: K in {10, 40},
eta / eta_0 in {0, 0.5, 1, 1.5, 2}, delta / tau in {0, 1, 5}, 4 replicates (104),
a subset of the full grid (same seeds).

Measured cost (one process, one BLAS thread, on the shared 2-core machine under a
load of 8-14, beside a training run): quick, 104 replicates, 19 s of replicate
time; full, 2,880 replicates, 2,145 s of replicate time (22 min wall with
``--jobs 2``).

**One replicate.** The instance, then one ``clair(updates, rank=r,
detect="test", sigma=tau)`` (defaults otherwise: P1 with mu = tau (sqrt(p) +
sqrt(Kq)), lam = 4 / sqrt(K), Holm at 0.05, A^ refitted on S^, shrink="auto").
MSE = mean over the benign clients of ||Theta~_k - Theta_k||_F^2, for

* ``oracle``: the paper's refinement with the true A and S (b = 0);
* ``oracle_pooled``: the pooled refinement with the true A and S and b^ from
  tau (``refine_clients(..., final_subspace="detection", sigma=tau)``): the
  setting of the Stein/Lindley bound;
* ``fedavg``: the mean over the true S (b = 1);
* ``known_s``: the pooled refinement with A^ refitted on the true S and b^;
* ``clair_paper``: CLAIR as in version 1 (the A^ of step 3, b = 0; equal to
  ``clair(shrink="none", final_subspace="detection")``);
* ``clair_keep``, ``clair_pool``: CLAIR's S^, A^ and pooling weights with b = 0
  (``shrink="none"``) and b = 1 (FedAvg over S^);
* ``clair``: CLAIR's default.

The rebuilt ones come from the one fit with :func:`~clair_stats.refine`
(``tests/test_sim_oracle_gain.py`` checks they equal ``clair`` with those
options). The relative gain of a method is (local MSE - its MSE) / (p q tau^2).
Positive: the method beats local.

**Reading the figures.** ``gain_map.png`` (heterogeneity map) and
``gain_map_homogeneous.png``: rows q, columns CLAIR as in version 1, CLAIR's
default and FedAvg; colour and number, the Monte Carlo mean relative gain (blue:
beats local); dashed, eta = eta_0. ``gain_vs_eta.png`` and
``gain_vs_delta.png``: gains against the map's axis, one colour per K, solid with
95% t bands = Monte Carlo, dashed = T4 prediction (local - ``shrinkage_mse`` at
b = 0, b* or 1). ``benign_flagged.png``: the fraction of benign clients CLAIR's
test flags on the heterogeneity map. ``summary.md`` / ``summary.csv``: per cell
and method the prediction and the Monte Carlo mean with its interval, the sign
counts; ``excess.csv`` and its section of ``summary.md``: the pooled refinements
against the better of keep and pool, paired, with the 4 tau^2 / m bound.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clair_stats import AssumptionWarning, ConvergenceWarning, FederatedModel, clair
from clair_stats.evaluation.baselines import oracle_clair
from clair_stats.experiments.study import Study, grid, study_main, study_parser
from clair_stats.pipeline.refine import refine, refine_clients
from clair_stats.theory.t4 import (
    local_mse,
    oracle_gain,
    shrinkage_excess_bound,
    shrinkage_mse,
    zero_gain_heterogeneity,
)

#: Fixed parameters of every configuration.
P, R, TAU, GAMMA = 20, 2, 0.3, 0.1
#: The heterogeneity map: benign B_k iid N(0, 1) entries (FederatedModel, s = 1:
#: spread delta = 1 = tau / 0.3 inside span(A), no common part), H_k of norm eta.
FULL_AXES: dict[str, tuple] = {
    "q": (1, 3),
    "K": (5, 10, 20, 40, 80),
    "eta_ratio": tuple(0.25 * i for i in range(9)),
}
QUICK_AXES: dict[str, tuple] = {
    "q": (1, 3),
    "K": (10, 40),
    "eta_ratio": (0.0, 0.5, 1.0, 1.5, 2.0),
}
#: The homogeneous map: B_k = Bbar + Z_k, Bbar^T Bbar = q I_r (common = s = 1),
#: Z_k iid N(0, delta^2) entries, eta = 0; q = 3 only (a common part spanning
#: span(A) needs q >= r).
FULL_HOMOGENEOUS: dict[str, tuple] = {
    "q": (3,),
    "K": (5, 10, 20, 40, 80),
    "delta_ratio": (0.0, 0.5, 1.0, 2.0, 5.0, 20.0),
}
QUICK_HOMOGENEOUS: dict[str, tuple] = {
    "q": (3,),
    "K": (10, 40),
    "delta_ratio": (0.0, 1.0, 5.0),
}
FULL_REPLICATES, QUICK_REPLICATES = 24, 4
#: Every method of a replicate (one row each).
METHODS = (
    "oracle",
    "oracle_pooled",
    "fedavg",
    "known_s",
    "clair_paper",
    "clair_keep",
    "clair_pool",
    "clair",
)
#: The methods of the maps (columns of the figures).
MAP_METHODS = ("clair_paper", "clair", "fedavg")
#: The methods of the line figures.
LINE_METHODS = ("oracle", "oracle_pooled", "clair_paper", "clair", "fedavg")
TITLES = {
    "oracle": "oracle: true A and S, b = 0",
    "oracle_pooled": r"oracle pooled: true A and S, $\hat b$",
    "fedavg": "FedAvg over the benign set S",
    "known_s": r"$\hat A$ refitted on the true S, $\hat b$",
    "clair_paper": "CLAIR, version 1 (paper's refinement)",
    "clair_keep": r"CLAIR, shrink='none' ($\hat A$ refitted)",
    "clair_pool": r"CLAIR, b = 1 (FedAvg over $\hat S$)",
    "clair": r"CLAIR, default (pooled, $\hat b$)",
}
#: Half-width of the band around zero gain where the sign is not scored, in
#: units of G (as in theory_checks/test_t4_oracle_gain.py).
BAND = 0.25
#: One-sided level of the excess check (Bonferroni over the cells).
EXCESS_LEVEL = 0.05


# ------------------------------------------------------------------ one replicate
def _mse(estimates: np.ndarray, truth: np.ndarray, clients: np.ndarray) -> float:
    """Mean over ``clients`` of ||estimate_k - Theta_k||_F^2."""
    return float(np.mean(np.sum((estimates - truth)[clients] ** 2, axis=(1, 2))))


@dataclass(frozen=True)
class Instance:
    """One draw: what a replicate needs of it.

    Attributes
    ----------
    updates, truth : numpy.ndarray, shape (K, p, q)
        Theta^_k and Theta_k.
    subspace : numpy.ndarray, shape (p, r)
        A.
    benign : numpy.ndarray of bool, shape (K,)
        S.
    """

    updates: np.ndarray
    truth: np.ndarray
    subspace: np.ndarray
    benign: np.ndarray


def homogeneous_sample(
    p: int, q: int, r: int, K: int, gamma: float, delta: float, tau: float, seed: int
) -> Instance:
    r"""A draw of the homogeneous model: benign clients spread around a common part.

    Benign :math:`\Theta_k = A (\bar B + Z_k)^\top`, A (p x r) orthonormal,
    :math:`\bar B = \sqrt{q}\, Q` (Q a q x r matrix with orthonormal columns, so
    :math:`\bar B^\top \bar B = q I_r`: common = 1; needs q >= r), Z_k iid
    N(0, delta^2) entries; the round(gamma K) contaminated clients (the last
    ones) are Gaussian p x q matrices rescaled to the benign root-mean-square
    norm (the ``random`` type); :math:`\hat\Theta_k = \Theta_k + E_k`, E_k iid
    N(0, tau^2) entries.

    Returns
    -------
    Instance
    """
    if q < r:
        raise ValueError(f"the homogeneous model needs q >= r, got q={q}, r={r}")
    rng = np.random.default_rng(seed)
    A = np.linalg.qr(rng.standard_normal((p, r)))[0]
    common = np.sqrt(q) * np.linalg.qr(rng.standard_normal((q, r)))[0]
    n_bad = int(np.floor(gamma * K + 0.5))
    m = K - n_bad
    B = common + delta * rng.standard_normal((m, q, r))
    benign_truth = np.einsum("pr,kqr->kpq", A, B)
    rho = np.sqrt(np.mean(np.sum(benign_truth**2, axis=(1, 2))))
    bad = rng.standard_normal((n_bad, p, q))
    bad *= rho / np.linalg.norm(bad, axis=(1, 2), keepdims=True)
    truth = np.concatenate([benign_truth, bad])
    updates = truth + tau * rng.standard_normal(truth.shape)
    benign = np.r_[np.ones(m, bool), np.zeros(n_bad, bool)]
    return Instance(updates, truth, A, benign)


def draw(config: dict[str, Any], seed: int) -> Instance:
    """The instance of a configuration (its ``family``) and seed."""
    p, q, r, K = (int(config[k]) for k in ("p", "q", "r", "K"))
    tau, gamma = float(config["tau"]), float(config["gamma"])
    if config["family"] == "homogeneous":
        delta = float(config["delta_ratio"]) * tau
        return homogeneous_sample(p, q, r, K, gamma, delta, tau, seed)
    eta = float(config["eta_ratio"]) * zero_gain_heterogeneity(p, q, r, tau)
    model = FederatedModel(
        p=p,
        q=q,
        rank=r,
        n_clients=K,
        contamination=gamma,
        contamination_type="random",
        heterogeneity=eta,
    )
    sample = model.sample(noise=tau, seed=seed)
    return Instance(sample.updates, sample.truth, sample.subspace, sample.benign)


def run(config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One replicate: one direct-noise instance, local vs eight refinements.

    Parameters
    ----------
    config : dict
        ``family`` ("heterogeneous": :class:`~clair_stats.FederatedModel` with
        heterogeneity eta = eta_ratio tau sqrt((p - r) q); "homogeneous":
        :func:`homogeneous_sample` with delta = delta_ratio tau), ``p``, ``q``,
        ``r``, ``K`` (ints), ``tau``, ``gamma``, ``eta_ratio``, ``delta_ratio``
        and ``common`` (floats; the last three describe the benign model, see
        the module docstring).
    seed : int
        Seed of the instance (all randomness).

    Returns
    -------
    list of dict
        One row per method of :data:`METHODS`: ``method``, ``m`` (|S|), ``mse``,
        ``mse_local``, ``gain`` = (mse_local - mse) / (p q tau^2) and ``b``
        (mean b_k over the benign clients the method pools; 0 for b = 0, 1 for
        FedAvg); the clair rows add ``benign_flagged`` and ``missed``
        (clients) and ``converged``.
    """
    p, q, r = (int(config[k]) for k in ("p", "q", "r"))
    tau = float(config["tau"])
    sample = draw(config, seed)
    updates, truth, benign = sample.updates, sample.truth, sample.benign
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded below
        # "all clients flagged" at large eta: recorded as benign_flagged
        warnings.simplefilter("ignore", AssumptionWarning)
        result = clair(updates, rank=r, detect="test", sigma=tau)
    kept, pool = result.collaborative, result.pool_weights
    detection = (
        result.subspace
        if result.detection_subspace is None
        else result.detection_subspace
    )
    pooled = refine_clients(
        updates, sample.subspace, benign, final_subspace="detection", sigma=tau
    )
    known = refine_clients(updates, sample.subspace, benign, sigma=tau)
    mean = updates[benign].mean(axis=0)
    shrink = result.shrinkage
    estimates = {
        "oracle": (oracle_clair(updates, sample.subspace, benign), 0.0),
        "oracle_pooled": (pooled.refined, pooled.shrinkage.factors[benign].mean()),
        "fedavg": (np.broadcast_to(mean, updates.shape), 1.0),
        "known_s": (known.refined, known.shrinkage.factors[benign].mean()),
        "clair_paper": (refine(updates, detection, kept, pool), 0.0),
        "clair_keep": (refine(updates, result.subspace, kept, pool), 0.0),
        "clair_pool": (refine(updates, result.subspace, kept, pool, 1.0), 1.0),
        "clair": (
            result.refined,
            np.nan
            if shrink is None or not np.any(benign & kept)
            else float(shrink.factors[benign & kept].mean()),
        ),
    }
    mse_local = _mse(updates, truth, benign)
    scale = local_mse(p, q, tau)
    rows = []
    for method in METHODS:
        estimate, b = estimates[method]
        mse = _mse(estimate, truth, benign)
        row: dict[str, Any] = {
            "method": method,
            "m": int(benign.sum()),
            "mse": mse,
            "mse_local": mse_local,
            "gain": (mse_local - mse) / scale,
            "b": float(b),
        }
        if method.startswith("clair"):
            flagged = ~kept
            row["benign_flagged"] = int(np.sum(flagged & benign))
            row["missed"] = int(np.sum(~flagged & ~benign))
            row["converged"] = bool(result.decomposition.info.converged)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------- study
def parser() -> argparse.ArgumentParser:
    """The command line: the runner's options (see the module docstring)."""
    return study_parser(
        "Oracle gain (T4): Monte Carlo gain over local fitting of CLAIR with and "
        "without in-subspace pooling and of FedAvg, on a map of heterogeneity "
        "eta x number of clients K and a map of the spread delta of homogeneous "
        "clients, with the T4 predictions (see the module docstring)."
    )


def build(args: argparse.Namespace) -> Study:
    """The study: the quick or the full grid (both maps).

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`parser` (``quick``).

    Returns
    -------
    Study
    """
    axes = QUICK_AXES if args.quick else FULL_AXES
    flat = QUICK_HOMOGENEOUS if args.quick else FULL_HOMOGENEOUS
    fixed = {"p": P, "r": R, "tau": TAU, "gamma": GAMMA}
    configs = [
        {"family": "heterogeneous", **fixed, **c, "delta_ratio": 1 / TAU, "common": 0.0}
        for c in grid(**axes)
    ]
    configs += [
        {"family": "homogeneous", **fixed, **c, "eta_ratio": 0.0, "common": 1.0}
        for c in grid(**flat)
    ]
    return Study(
        name="oracle_gain",
        run=run,
        configs=configs,
        replicates=QUICK_REPLICATES if args.quick else FULL_REPLICATES,
        version="2",
    )


# ------------------------------------------------------------------------ tables
#: Cell keys (a configuration), and with the method.
CELL = [
    "family",
    "p",
    "r",
    "tau",
    "gamma",
    "q",
    "K",
    "eta_ratio",
    "delta_ratio",
    "common",
]
#: b of the T4 prediction of each method: a number, or None for b* (pooled).
_PREDICTED_B: dict[str, float | None] = {
    "oracle": 0.0,
    "oracle_pooled": None,
    "fedavg": 1.0,
    "known_s": None,
    "clair_paper": 0.0,
    "clair_keep": 0.0,
    "clair_pool": 1.0,
    "clair": None,
}
#: Methods whose prediction has A known (estimated_subspace=False).
_KNOWN_A = ("oracle", "oracle_pooled", "fedavg", "clair_pool")


def predicted_mse(
    method: str,
    p: int,
    q: int,
    r: int,
    m: int,
    tau: float,
    eta: float,
    delta: float,
    common: float,
) -> float:
    """The T4 first-order MSE of a method (T4's ``shrinkage_mse``).

    b = 0 (``oracle``, ``clair_paper``, ``clair_keep``), 1 (``fedavg``,
    ``clair_pool``) or b* = tau^2 / (tau^2 + delta^2) (the pooled methods); the
    cost of estimating A is included except for the oracles and FedAvg (at
    b = 1 it is 0 anyway). At b = 0 and common = 0 this is local - (G - het -
    sub) (``clair_paper``, version 1's prediction) and, with A known, the
    oracle's local - (G - het).
    """
    return shrinkage_mse(
        p,
        q,
        r,
        m,
        tau,
        delta,
        eta,
        common,
        b=_PREDICTED_B[method],
        estimated_subspace=method not in _KNOWN_A,
    )


def predictions(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with the T4 prediction of each row's method, relative.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    pandas.DataFrame
        A copy with ``eta``, ``delta``, ``G`` (relative oracle gain),
        ``predicted`` (relative predicted gain, (local - :func:`predicted_mse`)
        / (p q tau^2)) and ``bound`` (the relative excess bound 4 tau^2 / m /
        (p q tau^2), :func:`~clair_stats.theory.t4.shrinkage_excess_bound`).
    """
    out = frame.copy()
    cols = ["p", "q", "r", "m", "tau", "eta_ratio", "delta_ratio", "common", "method"]
    eta, delta, G, pred, bound = [], [], [], [], []
    for p, q, r, m, tau, ratio, d_ratio, common, method in out[cols].itertuples(
        index=False
    ):
        p, q, r, m = int(p), int(q), int(r), int(m)
        e = float(ratio) * zero_gain_heterogeneity(p, q, r, tau)
        d = float(d_ratio) * tau
        scale = local_mse(p, q, tau)
        mse = predicted_mse(method, p, q, r, m, tau, e, d, float(common))
        eta.append(e)
        delta.append(d)
        G.append(oracle_gain(p, q, r, m, tau) / scale)
        pred.append((scale - mse) / scale)
        bound.append(shrinkage_excess_bound(m, tau) / scale)
    out["eta"], out["delta"], out["G"] = eta, delta, G
    out["predicted"], out["bound"] = pred, bound
    return out


def cell_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell and method: prediction, Monte Carlo mean gain, interval, sign.

    Parameters
    ----------
    frame : pandas.DataFrame
        :func:`predictions` of the study's frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``CELL, method, eta, delta, m, G, predicted, mean, lo, hi, n,
        b, sign, benign_flagged`` (``b``: mean b of the method; ``benign_flagged``:
        mean fraction of benign clients CLAIR's test flags, clair rows).
        ``sign`` is ``"agrees"`` when the 95% interval lies strictly on the
        predicted side of 0, ``"disagrees"`` when it lies strictly on the other
        side, ``"inconclusive"`` otherwise, and ``"band"`` when |predicted| <
        0.25 G (not scored).
    """
    from clair_stats.experiments.plotting import mc_summary

    keys = [*CELL, "method"]
    stats = mc_summary(frame, keys, "gain")
    first = frame.groupby(keys, sort=True)[["eta", "delta", "m", "G", "predicted"]]
    out = stats.merge(first.first().reset_index(), on=keys)
    b = frame.groupby(keys, sort=True)["b"].mean().rename("b")
    out = out.merge(b.reset_index(), on=keys)
    flagged = frame[frame["method"] == "clair"].assign(
        frac=lambda d: d["benign_flagged"] / d["m"]
    )
    frac = flagged.groupby(CELL)["frac"].mean().rename("benign_flagged")
    out = out.merge(frac.reset_index(), on=CELL, how="left")
    sign = np.full(len(out), "inconclusive", dtype=object)
    pred = out["predicted"].to_numpy()
    lo, hi = out["lo"].to_numpy(), out["hi"].to_numpy()
    sign[((pred > 0) & (lo > 0)) | ((pred < 0) & (hi < 0))] = "agrees"
    sign[((pred > 0) & (hi < 0)) | ((pred < 0) & (lo > 0))] = "disagrees"
    sign[np.abs(pred) < BAND * out["G"].to_numpy()] = "band"
    out["sign"] = sign
    columns = [*keys, "eta", "delta", "m", "G", "predicted", "mean", "lo", "hi"]
    return out[[*columns, "n", "b", "sign", "benign_flagged"]]


def sign_counts(cells: pd.DataFrame) -> pd.DataFrame:
    """Per method and predicted sign: cells that agree, disagree, are inconclusive.

    Parameters
    ----------
    cells : pandas.DataFrame
        From :func:`cell_table`.

    Returns
    -------
    pandas.DataFrame
        Index (method, predicted sign), columns the ``sign`` categories.
    """
    predicted = np.where(cells["predicted"] > 0, "gain", "loss").astype(object)
    predicted[cells["sign"].to_numpy() == "band"] = "~0 (band)"
    scored = cells.assign(predicted_sign=predicted)
    keys = ["method", "predicted_sign", "sign"]
    table = scored.groupby(keys).size().unstack(fill_value=0)
    for col in ("agrees", "disagrees", "inconclusive", "band"):
        if col not in table.columns:
            table[col] = 0
    return table[["agrees", "disagrees", "inconclusive", "band"]]


#: (pooled method, its keep (b = 0) and pool (b = 1) counterparts on the same
#: subspace and set).
EXCESS_PAIRS = (
    ("oracle_pooled", "oracle", "fedavg"),
    ("clair", "clair_keep", "clair_pool"),
)


def excess_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell: the pooled refinement against the better of keep and pool.

    The Stein/Lindley bound (docs/claims.md §4.5) says E MSE(b^) <= min(E MSE(b =
    0), E MSE(b = 1)) + 4 tau^2 / m when A, S and tau are known, the weights
    equal (``oracle_pooled`` against ``oracle`` and ``fedavg``); for CLAIR
    (``clair`` against ``clair_keep`` and ``clair_pool``: A^, S^, the pooling
    weights of the test) it is first order. With j the comparator of smaller
    mean MSE, d = MSE(b^) - MSE(j) on the same replicates; ``exceeds`` when
    (mean(d) - bound) / SE(d) > z, z the one-sided normal quantile at
    :data:`EXCESS_LEVEL` Bonferroni-corrected over the cells.

    Parameters
    ----------
    frame : pandas.DataFrame
        :func:`predictions` of the study's frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``CELL, m, pooled, better, excess, se, bound, t, exceeds``
        (``excess`` = mean(d), ``se`` and ``bound`` relative to p q tau^2 as the
        gains).
    """
    import scipy.stats

    wide = frame.pivot_table(index=[*CELL, "replicate"], columns="method", values="mse")
    scale = frame.groupby(CELL)[["p", "q", "tau"]].first()
    m = frame.groupby(CELL)["m"].first()
    n_cells = len(m)
    z = float(scipy.stats.norm.isf(EXCESS_LEVEL / max(n_cells, 1)))
    rows = []
    for cell, group in wide.groupby(level=CELL, sort=True):
        p, q, tau = scale.loc[cell]
        unit = local_mse(int(p), int(q), float(tau))
        bound = shrinkage_excess_bound(int(m.loc[cell]), float(tau)) / unit
        for pooled, keep, pool in EXCESS_PAIRS:
            better = keep if group[keep].mean() <= group[pool].mean() else pool
            d = (group[pooled] - group[better]).to_numpy() / unit
            n = d.size
            se = float(np.std(d, ddof=1) / np.sqrt(n)) if n > 1 else np.nan
            excess = float(d.mean())
            if se > 0:
                t = (excess - bound) / se
            elif se == 0:  # every paired difference equal: the excess is exact
                t = np.inf if excess > bound else -np.inf
            else:  # one replicate: nothing to test against
                t = np.nan
            row = dict(zip(CELL, cell, strict=True))
            row.update(
                m=int(m.loc[cell]),
                pooled=pooled,
                better=better,
                excess=excess,
                se=se,
                bound=float(bound),
                t=float(t),
                exceeds=bool(t > z),
            )
            rows.append(row)
    return pd.DataFrame(rows)


def _axis(family: str) -> tuple[str, str]:
    """The varied column of a family's map and its label."""
    if family == "homogeneous":
        return "delta_ratio", r"spread inside span(A), $\delta / \tau$"
    return "eta_ratio", r"heterogeneity $\eta / \eta_0$, $\eta_0 = \tau\sqrt{(p-r)q}$"


def _markdown(
    cells: pd.DataFrame, counts: pd.DataFrame, excess: pd.DataFrame, note: str
) -> str:
    lines = [
        "# Oracle gain (T4): CLAIR with and without pooling, FedAvg, local fitting",
        "",
        f"{note}. Gains are relative: (local MSE - MSE) / (p q tau^2). Predictions: "
        "(local - shrinkage_mse) / (p q tau^2) at b = 0 (oracle, clair_paper, "
        "clair_keep), b = 1 (fedavg, clair_pool) or b* = tau^2 / (tau^2 + "
        "delta^2) (oracle_pooled, known_s, clair), with the cost of estimating A "
        "except for the oracles and FedAvg. Sign: the 95% interval lies on the "
        "predicted side of 0 (agrees), on the other side (disagrees), or "
        f"contains 0 (inconclusive); cells with |prediction| < {BAND:g} G are not "
        "scored (band).",
        "",
        "## Sign of the gain against the prediction (cells)",
        "",
        "| method | predicted | agrees | disagrees | inconclusive | band |",
        "|---|---|---|---|---|---|",
    ]
    for (method, predicted), row in counts.iterrows():
        lines.append(
            f"| {method} | {predicted} | {row['agrees']} | {row['disagrees']} | "
            f"{row['inconclusive']} | {row['band']} |"
        )
    shown = ("oracle", "oracle_pooled", "fedavg", "clair_paper", "clair_keep", "clair")
    lines += [
        "",
        "## Pooling against the better of keep (b = 0) and pool (b = 1)",
        "",
        "Excess = mean MSE(b^) - mean MSE(better of b = 0, b = 1), paired on the "
        "same replicates, relative to p q tau^2; bound = 4 tau^2 / m relative "
        "(docs/claims.md §4.5; exact for the oracle pair, first order for CLAIR). "
        f"Exceeds: (excess - bound) / SE > z (one-sided {EXCESS_LEVEL:g}, "
        "Bonferroni over the cells).",
        "",
        "| pooled | cells | better = keep | better = pool | max excess / bound | "
        "max (excess - bound) / SE | exceeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for pooled, group in excess.groupby("pooled", sort=False):
        pooling = int(group["better"].isin(("fedavg", "clair_pool")).sum())
        lines.append(
            f"| {pooled} | {len(group)} | {len(group) - pooling} | {pooling} | "
            f"{(group['excess'] / group['bound']).max():.2f} | "
            f"{group['t'].max():.2f} | {int(group['exceeds'].sum())} |"
        )
    lines += [
        "",
        "## Cells",
        "",
        "Monte Carlo mean relative gain [T4 prediction]; b: the mean pooling "
        "factor of CLAIR's default (b* in brackets); flagged: fraction of benign "
        "clients flagged by the test.",
        "",
        "| family | q | K | m | eta/eta_0 | delta/tau | "
        + " | ".join(shown)
        + " | b [b*] | flagged |",
        "|---|---|---|---|---|---|" + "---|" * len(shown) + "---|---|",
    ]
    for cell, group in cells.groupby(CELL, sort=True):
        by = group.set_index("method")
        info = dict(zip(CELL, cell, strict=True))
        d_ratio = float(info["delta_ratio"])
        b_star = 1.0 / (1.0 + d_ratio**2)
        entries = [
            f"{by.loc[m_, 'mean']:.3f} [{by.loc[m_, 'predicted']:.3f}]" for m_ in shown
        ]
        lines.append(
            f"| {info['family']} | {info['q']} | {info['K']} | "
            f"{int(by['m'].iloc[0])} | {float(info['eta_ratio']):g} | "
            f"{d_ratio:.3g} | "
            + " | ".join(entries)
            + f" | {by.loc['clair', 'b']:.3f} [{b_star:.3f}] | "
            f"{by.loc['clair', 'benign_flagged']:.2f} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------- figures
def _panels(cells: pd.DataFrame, family: str) -> list[int]:
    """The values of q in a family's rows (one row of panels each)."""
    return sorted(cells.loc[cells["family"] == family, "q"].unique())


def _gain_map(cells: pd.DataFrame, family: str, path: Path, note: str) -> None:
    """One map per (q, method of :data:`MAP_METHODS`): K against the family's axis,
    the mean gain in colour and number."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    from clair_stats.experiments.plotting import save_figure

    column, xlabel = _axis(family)
    data = cells[(cells["family"] == family) & cells["method"].isin(MAP_METHODS)]
    qs = _panels(cells, family)
    # FedAvg loses up to 40 times the scale where the clients differ: the colours
    # saturate at a loss of 1 (the numbers give the value)
    low = min(max(float(data["mean"].min()), -1.0), -0.05)
    high = max(float(data["mean"].max()), 0.05)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=low, vmax=high)
    cmap = plt.get_cmap("RdBu")
    fig, axes = plt.subplots(
        len(qs), len(MAP_METHODS), figsize=(13, 3.3 * len(qs) + 0.8), squeeze=False
    )
    for i, q in enumerate(qs):
        for j, method in enumerate(MAP_METHODS):
            ax = axes[i, j]
            sub = data[(data["q"] == q) & (data["method"] == method)]
            table = sub.pivot(index="K", columns=column, values="mean")
            xs, ks = table.columns.to_numpy(float), table.index.to_numpy(int)
            image = ax.imshow(
                table.to_numpy(), cmap=cmap, norm=norm, origin="lower", aspect="auto"
            )
            for (yi, xi), value in np.ndenumerate(table.to_numpy()):
                shade = abs(norm(value) - 0.5) > 0.35
                ax.text(
                    xi,
                    yi,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="white" if shade else "black",
                    zorder=3,  # above the zero-gain line, on a patch of the cell
                    bbox={
                        "boxstyle": "square,pad=0.15",
                        "facecolor": cmap(norm(value)),
                        "edgecolor": "none",
                    },
                )
            if family == "heterogeneous" and 1.0 in xs:
                ax.axvline(
                    float(np.flatnonzero(xs == 1.0)[0]),
                    color="k",
                    ls="--",
                    lw=1.4,
                    label=r"T4 zero-gain curve $\eta = \eta_0$ (b = 0)",
                )
            ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs], fontsize=7)
            ax.set_yticks(range(len(ks)), [str(k) for k in ks])
            ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(f"q = {q}\nnumber of clients K")
            ax.set_title(TITLES[method], fontsize=10)
        fig.colorbar(
            image,
            cax=axes[i, -1].inset_axes((1.04, 0.0, 0.035, 1.0)),
            label="relative gain over local\n(local MSE - MSE) / (p q $\\tau^2$)",
            extend="min" if float(data["mean"].min()) < low else "neither",
        )
    handles, labels = axes[-1, 0].get_legend_handles_labels()
    if handles:
        axes[-1, 1].legend(
            handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize=8
        )
    what = (
        "heterogeneity eta (benign B_k iid N(0, 1), delta = 1, no common part)"
        if family == "heterogeneous"
        else "the spread delta inside span(A) around a common part (eta = 0)"
    )
    save_figure(
        fig,
        path,
        "Monte Carlo mean relative gain over local fitting (colour and number; "
        f"blue: beats local) on a map of {what} and the number of clients K, for "
        "CLAIR as in version 1 (b = 0), CLAIR's default (pooled, b^) and FedAvg "
        f"over the benign set; colours saturate below {low:g}; {note}.",
    )
    plt.close(fig)


def _gain_lines(frame: pd.DataFrame, family: str, path: Path, note: str) -> None:
    """Gain against the family's axis, one colour per K, Monte Carlo and T4."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from clair_stats.experiments.plotting import mc_summary, save_figure

    column, xlabel = _axis(family)
    data = frame[frame["family"] == family]
    qs = sorted(data["q"].unique())
    ks = sorted(data["K"].unique())
    xs = sorted(data[column].unique())
    position = {x: i for i, x in enumerate(xs)}
    colors = dict(
        zip(ks, plt.get_cmap("viridis")(np.linspace(0, 0.9, len(ks))), strict=True)
    )
    fig, axes = plt.subplots(
        len(qs),
        len(LINE_METHODS),
        figsize=(16, 3.3 * len(qs)),
        squeeze=False,
        sharey=False,  # FedAvg loses far more than the others gain
    )
    for i, q in enumerate(qs):
        for j, method in enumerate(LINE_METHODS):
            ax = axes[i, j]
            sub = data[(data["q"] == q) & (data["method"] == method)]
            stats = mc_summary(sub, ["K", column], "gain")
            pred = sub.groupby(["K", column])["predicted"].first().reset_index()
            for K in ks:
                s, pr = stats[stats["K"] == K], pred[pred["K"] == K]
                x = s[column].map(position)
                ax.plot(x, s["mean"], "o-", ms=3, color=colors[K])
                lo = np.where(np.isfinite(s["lo"]), s["lo"], s["mean"])
                hi = np.where(np.isfinite(s["hi"]), s["hi"], s["mean"])
                ax.fill_between(x, lo, hi, color=colors[K], alpha=0.2, lw=0)
                ax.plot(
                    pr[column].map(position),
                    pr["predicted"],
                    "--",
                    color=colors[K],
                    lw=1,
                )
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs], fontsize=7)
            ax.set_xlabel(xlabel, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"q = {q}\nrelative gain over local (unitless)")
            ax.set_title(TITLES[method], fontsize=9)
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[K], marker="o", ms=3) for K in ks]
    labels = [f"K = {K}" for K in ks]
    handles += [
        Line2D([], [], color="k", marker="o", ms=3),
        Line2D([], [], color="k", ls="--"),
    ]
    labels += ["Monte Carlo (95% band)", "T4 prediction (shrinkage_mse)"]
    axes[0, -1].legend(
        handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8
    )
    save_figure(
        fig,
        path,
        "Relative gain over local fitting, (local MSE - MSE) / (p q tau^2), against "
        f"{'eta / eta_0' if family == 'heterogeneous' else 'delta / tau'} (equally "
        "spaced positions), one colour per K: Monte Carlo mean with 95% t bands "
        "(solid) and the T4 first-order prediction (dashed: shrinkage_mse at b = 0, "
        f"b* or 1 as the method pools); {note}.",
    )
    plt.close(fig)


def _flagged(frame: pd.DataFrame, folder: Path, note: str) -> None:
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import mc_summary, save_figure

    data = frame[
        (frame["method"] == "clair") & (frame["family"] == "heterogeneous")
    ].assign(frac=lambda d: d["benign_flagged"] / d["m"])
    qs = sorted(data["q"].unique())
    ks = sorted(data["K"].unique())
    colors = dict(
        zip(ks, plt.get_cmap("viridis")(np.linspace(0, 0.9, len(ks))), strict=True)
    )
    fig, axes = plt.subplots(1, len(qs), figsize=(9, 3.4), squeeze=False, sharey=True)
    for ax, q in zip(axes[0], qs, strict=True):
        stats = mc_summary(data[data["q"] == q], ["K", "eta_ratio"], "frac")
        for K in ks:
            s = stats[stats["K"] == K]
            ax.plot(
                s["eta_ratio"], s["mean"], "o-", ms=3, color=colors[K], label=f"K = {K}"
            )
            lo = np.where(np.isfinite(s["lo"]), s["lo"], s["mean"])
            hi = np.where(np.isfinite(s["hi"]), s["hi"], s["mean"])
            ax.fill_between(
                s["eta_ratio"],
                np.clip(lo, 0, 1),
                np.clip(hi, 0, 1),
                color=colors[K],
                alpha=0.2,
                lw=0,
            )
        ax.axvline(1.0, color="k", ls=":", label=r"$\eta_0$ (T4 zero gain, b = 0)")
        ax.set_title(f"q = {q}", fontsize=10)
        ax.set_xlabel(r"heterogeneity $\eta / \eta_0$")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("benign clients flagged (fraction)")
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    save_figure(
        fig,
        folder / "benign_flagged.png",
        "Fraction of benign clients flagged by CLAIR's chi-square test (Holm, "
        "alpha = 0.05) against heterogeneity eta / eta_0 (heterogeneity map), Monte "
        f"Carlo mean with 95% t bands (clipped to [0, 1]); {note}.",
    )
    plt.close(fig)


def report(frame: pd.DataFrame, folder: Path, args: argparse.Namespace) -> None:
    """Write ``gain_map.png``, ``gain_map_homogeneous.png``, ``gain_vs_eta.png``,
    ``gain_vs_delta.png``, ``benign_flagged.png``, ``summary.md``,
    ``summary.csv`` and ``excess.csv`` into ``folder``.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.
    folder : pathlib.Path
        Where the files go (created).
    args : argparse.Namespace
        The parsed command line (``quick`` names the grid).
    """
    import matplotlib

    matplotlib.use("Agg")

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = predictions(frame)
    reps = int(data["replicate"].nunique())
    note = (
        f"{'quick' if args.quick else 'full'} grid: direct noise, p = {P}, "
        f"r = {R}, tau = {TAU:g}, gamma = {GAMMA:g} random contamination, "
        f"{reps} replicates per cell"
    )
    cells = cell_table(data)
    cells.to_csv(folder / "summary.csv", index=False)
    excess = excess_table(data)
    excess.to_csv(folder / "excess.csv", index=False)
    counts = sign_counts(cells)
    (folder / "summary.md").write_text(_markdown(cells, counts, excess, note))
    families = set(cells["family"])
    if "heterogeneous" in families:
        _gain_map(cells, "heterogeneous", folder / "gain_map.png", note)
        _gain_lines(data, "heterogeneous", folder / "gain_vs_eta.png", note)
        _flagged(data, folder, note)
    if "homogeneous" in families:
        _gain_map(cells, "homogeneous", folder / "gain_map_homogeneous.png", note)
        _gain_lines(data, "homogeneous", folder / "gain_vs_delta.png", note)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study (its missing replicates) and write the report."""
    return study_main(build, report, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

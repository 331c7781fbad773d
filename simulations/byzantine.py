r"""
Byzantine robustness: benign-client error of CLAIR and of Flower's aggregators
==============================================================================

**Question.** How much of local fitting's error does a *benign* client keep, under
every attack of :mod:`clair_stats.simulate.attacks` (:data:`STUDY_ATTACKS`), as a
fraction gamma of the K clients attacks, for CLAIR (the defaults, told the rank and
the noise level, the paper's estimator), oracle CLAIR and the server-side
aggregators a Flower deployment runs (:mod:`clair_stats.evaluation.flower`)? And
what is each method's worst case over the attacks (the ByzFL convention: methods
are ranked by their worst case)?

**Scenario** (fixed; part of every configuration). p = 40, q = 6, r = 3, K = 40,
direct noise: :math:`\hat\Theta_k = \Theta_k + E_k`, iid :math:`N(0, \tau^2)`
entries, tau = 0.05, so local fitting's error is about
:math:`\tau^2 p q = 0.6` per client. A (p x r) is a random orthonormal basis per
replicate. Three federations (key ``federation``):

* ``heterogeneous``: :math:`\Theta_0 = 0`, benign :math:`\Theta_k = A B_k^T`,
  :math:`B_k` (q x r) iid N(0, 1) entries (a benign client lies about
  :math:`\sqrt{qr} = 4.2` from the benign mean, inside span(A));
* ``backbone``: :math:`\Theta_0` (p x q) iid N(0, 1) entries, unknown to the
  methods, :math:`\Theta_k = \Theta_0 + A B_k^T`; every CLAIR call gets
  ``center=True``;
* ``homogeneous``: :math:`\Theta_0 = 0`, :math:`B_k = B + 0.1 Z_k`, B and
  :math:`Z_k` iid N(0, 1) entries (the in-subspace spread, :math:`0.01 q r =
  0.18`, is a third of local's error: the aggregators' home ground).

Contamination: the last f = round(gamma K) clients attack, gamma in {0.05, ...,
0.45}. Each attacker's honest update (``ctx.own``) is drawn from the benign model
plus noise, as the benign clients' are; what it sends is
``attacks.attack(name, AttackContext(benign=the benign estimates, own=...,
subspace=A, center=Theta_0 or None, noise_sd=tau, rng=..., alpha=0.05))``. At
gamma = 0 there is one configuration per federation, attack ``"none"``.

Draws: ``SeedSequence(seed).spawn(2)`` gives two streams. The first draws A (QR of
a p x r Gaussian), Theta_0 (backbone), B (homogeneous), the B_k or Z_k of all K
clients, then the noise of all K clients; the second is the attack's ``rng``. The
benign data of a seed therefore do not depend on the attack (the runner still
gives each configuration its own seed).

**Methods** (one row each per replicate, :data:`METHODS`):

* ``local``: :math:`\hat\Theta_k`;
* ``clair``: :func:`clair_stats.clair` with every default (``center=True`` in the
  backbone federation): the noise level estimated, the rank by its rule, the
  empirical-null test, the trimmed refit and the distinct pooling;
* ``clair_sigma``: ``clair(M, rank=3, sigma=tau)`` (+ centre);
* ``clair_paper``: ``clair(M, rank=3, detect="test", sigma=tau, refit="none",
  pooling="mean")`` (+ centre): the paper's estimator;
* ``oracle_clair``: the refinement with the true A and S
  (:func:`clair_stats.evaluation.baselines.oracle_clair`);
* Flower's aggregators (:data:`FLOWER_METHODS`), told the true f (an oracle
  advantage): ``flower_mean``, ``flower_median``, ``flower_trimmed_mean`` (trim
  f / K; 0 at gamma = 0), ``flower_krum`` (f), ``flower_multi_krum`` (f, m = K -
  f) and ``flower_bulyan`` (f). Bulyan needs K >= 4f + 3 (f <= 9 here, gamma <=
  0.2): beyond it the row is kept with None metrics and ``skipped`` saying why,
  so every replicate has one row per method and the tables show the gap.

Warnings are recorded per call (``warned``: an AssumptionWarning; ``converged``:
no ConvergenceWarning) and never escape.

**Grid.** Full: 3 federations x (gamma = 0, ``none`` + 9 gammas x 13 attacks) =
354 configurations, 10 replicates (3,540 replicates of 11 methods). Quick: gamma
in {0, 0.45} (no attacker and the largest fraction), every attack, 1 replicate (42
replicates; a subset of the full grid with the same seeds; the report's test runs
it, so it is kept small). ``--replicates`` sets the number of replicates.

**One replicate** (:func:`run`): one federation, one attack, every method; per
method ``relative_mse`` (sum over benign k of :math:`\|\tilde\Theta_k -
\Theta_k\|_F^2` over the same sum for local: 1 is local, 0.1 keeps a tenth of
its error), ``max_client_ratio`` (the largest per-client ratio over benign k),
and for the CLAIR methods the detection scores, the subspace error and where the
refit came from.

**Targets** (:func:`targets`, computed from the frame; in ``worst_case.md``):

* T1: in the heterogeneous and backbone federations the worst case over attacks
  of ``clair``'s mean ``relative_mse`` is <= 0.3 at every gamma <= 0.3 and < 1 at
  every gamma (the same for ``clair_sigma``, reported separately).
* T2: in no replicate does a benign client's error exceed 1.1 times its local
  error: per federation and CLAIR method the largest ``max_client_ratio`` and the
  number of replicates above 1.1. *Beyond Monte Carlo noise*: a flagged client
  keeps its local estimate, ratio exactly 1. A kept benign client refined with
  the true A and a benign pool of m clients has error :math:`P_A E_k +
  P_A^\perp \bar E`, so its ratio is :math:`(X_k + W)/(X_k + Z_k)` with
  :math:`X_k = \|P_A E_k\|^2 \sim \tau^2\chi^2_{rq}` (the in-subspace noise it
  keeps), :math:`Z_k = \|P_A^\perp E_k\|^2 \sim \tau^2\chi^2_{df}`, df = (p - r)
  q = 222, and :math:`W = \|P_A^\perp \bar E\|^2 \approx \tau^2\chi^2_{df}/m`.
  The ratio grows with :math:`X_k` towards 1 but crosses 1 only if W > Z_k: with
  m >= 22 (gamma <= 0.45), :math:`W/\tau^2 <= 15.3` and :math:`Z_k/\tau^2 >=
  135.8` each with probability 1 - 1e-6, so P(max_k ratio > 1) < 41e-6 per
  replicate (simulated: the largest ratio over the 40 clients is 0.16 on average,
  0.26 at its 0.999 quantile). An estimated A^ at distance d = ||P_A^ - P_A||_F
  adds the part of :math:`A (B_k - \bar B)^T` off A^, about :math:`q d^2 / 2`:
  0.0075 at d = 0.05, 1% of local's error. The noise of the ratio therefore never
  reaches 1.1; what can is a gross error (a benign direction lost from A^ costs
  about q = 6, ten times local's error) or attackers kept in the pool. So every
  replicate above 1.1 counts, with no allowance.
* T3: in the homogeneous federation ``clair``'s mean ``relative_mse`` is at most
  1.1 times the best Flower aggregator's at every gamma and attack (means of the
  cell compared; the cells that miss are listed with the ratio).

**Cost** (measured on the shared 2-core machine, one BLAS thread, load about 1;
estimator at commit 1f0fa29). A replicate took 0.15-1.5 s, median 0.22 s, mean
0.53 s: the three CLAIR calls take nearly all of it, the backbone federation's
centred fits the most (1.0 s a replicate against 0.2 s), Flower's aggregators
milliseconds (after Flower's first import, 0.4 s). A quick grid of 81 replicates
(gamma 0, 0.3 and 0.45) took 43 s of replicate time, 38 s of wall time on 2
processes (87 s in an earlier run at load 2). The full grid (3,540 replicates) is
thus about 31 minutes of one core: about 16 minutes on 2 cores at low load, up to
twice that on the loaded machine; the stored run (final estimator) took 22 minutes
with ``--jobs 2``.

**Result** (full grid of version 2, 3,540 replicates, about 25 min on 2 processes
beside other work; docs/findings.md §F12; version 1's figures, before clair()'s copy
groups became complete-linkage clusters, in brackets where they differ). Worst case over
the 13 attacks of the benign relative MSE, ``clair`` (every default): heterogeneous
0.11-0.125 (0.129) for gamma <= 0.3 and at most 0.142 (0.168) up to 0.45; backbone
0.108-0.149 and at most 0.226 (0.224) (margin_1 at 0.45); homogeneous 0.084-0.116
(0.099-0.125), at most 0.361 (0.371) times the best Flower aggregator in every one of
the 118 (gamma, attack) cells. ``clair_sigma``: at most 0.14, 0.288, 0.232 (0.171,
0.285, 0.246). No replicate of either has a benign client above its local error (largest
ratio 1: a flagged client), 0 of 1,180 per federation. The paper's estimator
(``clair_paper``) is local fitting (1.00) from gamma = 0.1 under ALIE in the
heterogeneous and backbone federations and from 0.35 (orthogonal, margin_4) in the
homogeneous one, with 5 (9) replicates where a benign client ends above 1.1 times its
local error (up to 3.18; 2.76). Flower's aggregators: 29-103 times local in the
heterogeneous and backbone federations (benign clients differ inside span(A)); in the
homogeneous one 0.33 at gamma = 0 and 0.33-2.7 (median, trimmed mean, multi-Krum) to 102
(mean) in the worst case. The attacks CLAIR does not flag are the ones it need not flag
(in-subspace, sign flip, IPM, mimic: the attackers' off-subspace parts are benign-like)
and the adaptive one (recall 0.01-0.04, by design), which cost the benign clients
nothing measurable.

**Figures and tables.** ``summary.csv``: Monte Carlo mean and 95% interval of
``relative_mse`` per federation, attack, gamma and method. ``worst_case.csv`` /
``worst_case.md``: per federation, method and gamma the attack with the largest
mean; ``worst_case.md`` also holds the targets and a detection table (precision
and recall of the CLAIR methods per federation and attack, averaged over gamma >
0). ``worst_case.png``: the worst case against gamma, one panel per federation.
``by_attack_<federation>.png``: ``relative_mse`` against gamma, one panel per
attack (the gamma = 0 point is the ``none`` configuration in every panel).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clair_stats import clair
from clair_stats.core.exceptions import AssumptionWarning, ConvergenceWarning
from clair_stats.evaluation import baselines, flower
from clair_stats.evaluation.metrics import detection_scores, projection_distance
from clair_stats.experiments.plotting import log_axis
from clair_stats.experiments.study import Study, grid, study_main, study_parser
from clair_stats.simulate import attacks

#: The methods, in the order of the tables and legends.
METHODS: tuple[str, ...] = (
    "local",
    "clair",
    "clair_sigma",
    "clair_paper",
    "oracle_clair",
    "flower_mean",
    "flower_median",
    "flower_trimmed_mean",
    "flower_krum",
    "flower_multi_krum",
    "flower_bulyan",
)
#: CLAIR calls (rows with detection and subspace metrics).
CLAIR_METHODS: tuple[str, ...] = ("clair", "clair_sigma", "clair_paper")
#: Flower's server-side aggregators.
FLOWER_METHODS: tuple[str, ...] = flower.FLOWER_AGGREGATORS
FEDERATIONS: tuple[str, ...] = ("heterogeneous", "backbone", "homogeneous")
#: The attacks (registry names and variants of clair_stats.simulate.attacks).
ATTACKS: tuple[str, ...] = attacks.STUDY_ATTACKS
#: The attack of the gamma = 0 configurations (no attacker).
NO_ATTACK = "none"
#: The fixed scenario (part of every configuration, so of every seed).
SCENARIO: dict[str, Any] = {"p": 40, "q": 6, "r": 3, "K": 40, "tau": 0.05}
#: The spread of the homogeneous federation's B_k around B.
HOMOGENEOUS_SPREAD = 0.1
FULL_GAMMAS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 10))
QUICK_GAMMAS: tuple[float, ...] = (0.45,)
FULL_REPLICATES, QUICK_REPLICATES = 10, 1
#: The targets' thresholds (module docstring).
T1_LOW_GAMMA, T1_LOW, T1_ALL = 0.3, 0.3, 1.0
T2_RATIO = 1.1
T3_FACTOR = 1.1
#: The keys of a row of :func:`run`, in order.
ROW_KEYS: tuple[str, ...] = (
    "method",
    "relative_mse",
    "max_client_ratio",
    "n_contaminated",
    "method_seconds",
    "warned",
    "converged",
    "skipped",
    "n_flagged",
    "precision",
    "recall",
    "rank",
    "subspace_error",
    "refit_source",
)


# ------------------------------------------------------------------ one replicate
def n_attackers(gamma: float, n_clients: int) -> int:
    """f = round(gamma K), the number of attackers (the last f clients)."""
    return int(round(gamma * n_clients))


def _federation(
    federation: str,
    p: int,
    q: int,
    r: int,
    K: int,
    tau: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(truth, estimates, A, Theta_0 or None) of one federation, all K clients."""
    A = np.linalg.qr(rng.standard_normal((p, r)))[0]
    center = rng.standard_normal((p, q)) if federation == "backbone" else None
    if federation == "homogeneous":
        B = rng.standard_normal((q, r))
        coef = B + HOMOGENEOUS_SPREAD * rng.standard_normal((K, q, r))
    else:
        coef = rng.standard_normal((K, q, r))
    truth = np.einsum("pr,kqr->kpq", A, coef)  # A B_k^T
    if center is not None:
        truth += center
    estimates = truth + tau * rng.standard_normal((K, p, q))
    return truth, estimates, A, center


def _calls(
    updates: np.ndarray,
    A: np.ndarray,
    benign: np.ndarray,
    f: int,
    r: int,
    tau: float,
    center: bool,
) -> dict[str, Callable[[], Any] | None]:
    """Each method as a call without arguments; None where it cannot run."""
    K = updates.shape[0]
    return {
        "local": lambda: updates.copy(),
        "clair": lambda: clair(updates, center=center),
        "clair_sigma": lambda: clair(updates, rank=r, sigma=tau, center=center),
        "clair_paper": lambda: clair(
            updates,
            rank=r,
            detect="test",
            sigma=tau,
            refit="none",
            pooling="mean",
            center=center,
        ),
        "oracle_clair": lambda: baselines.oracle_clair(updates, A, benign),
        "flower_mean": lambda: flower.flower_mean(updates),
        "flower_median": lambda: flower.flower_median(updates),
        "flower_trimmed_mean": lambda: flower.flower_trimmed_mean(updates, f / K),
        "flower_krum": lambda: flower.flower_krum(updates, f),
        "flower_multi_krum": lambda: flower.flower_multi_krum(updates, f, K - f),
        "flower_bulyan": (
            (lambda: flower.flower_bulyan(updates, f)) if K >= 4 * f + 3 else None
        ),
    }


def _timed(call: Callable[[], Any]) -> tuple[Any, float, bool, bool]:
    """(value, seconds, converged, warned) of one call; no warning escapes."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = call()
    seconds = time.perf_counter() - start
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    warned = any(issubclass(w.category, AssumptionWarning) for w in caught)
    return value, seconds, converged, warned


def run(config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One replicate: one federation under one attack, one row per method.

    Parameters
    ----------
    config : dict
        ``federation`` (one of :data:`FEDERATIONS`), ``attack`` (one of
        :data:`ATTACKS`, or ``"none"`` with gamma = 0), ``gamma`` (in [0, 0.5)),
        and the scenario ``p``, ``q``, ``r``, ``K`` (ints, r < p) and ``tau``
        (float > 0); f = round(gamma K) must satisfy K > 2f + 2 (Krum's
        condition).
    seed : int
        Seed of the instance (module docstring, Draws).

    Returns
    -------
    list of dict
        One row per method of :data:`METHODS`: ``method``, ``relative_mse`` (sum
        over benign k of ||Theta~_k - Theta_k||_F^2 over the same sum for local),
        ``max_client_ratio`` (max over benign k of the per-client ratio),
        ``n_contaminated`` (f), ``method_seconds``, ``warned`` (the call issued
        an AssumptionWarning), ``converged`` (it issued no ConvergenceWarning),
        ``skipped`` (why the method did not run, else None; the metrics are then
        None), and for :data:`CLAIR_METHODS` ``n_flagged``, ``precision``,
        ``recall`` (:func:`~clair_stats.evaluation.metrics.detection_scores`),
        ``rank`` (r of A^), ``subspace_error`` (||P_A^ - P_A||_F) and
        ``refit_source`` (``result.refit.source``, or ``"none"``); None for the
        other methods.
    """
    p, q, r, K = (int(config[k]) for k in ("p", "q", "r", "K"))
    tau = float(config["tau"])
    federation, name = config["federation"], config["attack"]
    if federation not in FEDERATIONS:
        raise ValueError(f"federation must be one of {FEDERATIONS}, got {federation!r}")
    f = n_attackers(float(config["gamma"]), K)
    if (name == NO_ATTACK) != (f == 0):
        raise ValueError(
            f"attack {name!r} with gamma = {config['gamma']} (f = {f} attackers): "
            f"use attack {NO_ATTACK!r} exactly when there is no attacker"
        )
    if not K > 2 * f + 2:
        raise ValueError(
            f"K = {K} with {f} attackers breaks Krum's condition K > 2 f + 2; "
            "lower gamma or raise K"
        )
    draws, attack_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)
    )
    truth, local, A, center = _federation(federation, p, q, r, K, tau, draws)
    benign = np.arange(K) < K - f
    updates = local.copy()
    if f:
        ctx = attacks.AttackContext(
            benign=local[benign],
            own=local[~benign],
            subspace=A,
            center=center,
            noise_sd=tau,
            rng=attack_rng,
            alpha=0.05,
        )
        updates[~benign] = attacks.attack(name, ctx)
    local_sq = np.sum((updates - truth)[benign] ** 2, axis=(1, 2))
    calls = _calls(updates, A, benign, f, r, tau, center is not None)
    rows = []
    for method in METHODS:
        row: dict[str, Any] = {"method": method, **dict.fromkeys(ROW_KEYS[1:])}
        row["n_contaminated"] = f
        call = calls[method]
        if call is None:
            row["skipped"] = f"Bulyan needs K >= 4f + 3; K = {K}, f = {f}"
            rows.append(row)
            continue
        value, seconds, converged, warned = _timed(call)
        fit = value if method in CLAIR_METHODS else None
        estimates = value.refined if fit is not None else value
        sq = np.sum((estimates - truth)[benign] ** 2, axis=(1, 2))
        row.update(
            relative_mse=float(sq.sum() / local_sq.sum()),
            max_client_ratio=float(np.max(sq / local_sq)),
            method_seconds=seconds,
            warned=warned,
            converged=converged,
        )
        if fit is not None:
            scores = detection_scores(~fit.collaborative, ~benign)
            row.update(
                n_flagged=scores.n_flagged,
                precision=scores.precision,
                recall=scores.recall,
                rank=int(fit.rank),
                subspace_error=projection_distance(fit.subspace, A),
                refit_source="none" if fit.refit is None else fit.refit.source,
            )
        rows.append(row)
    return rows


# ---------------------------------------------------------------------- the study
def parser() -> argparse.ArgumentParser:
    """The command line: the runner's options and ``--replicates``."""
    out = study_parser(
        "Benign-client error of CLAIR and Flower's aggregators under every attack "
        "of clair_stats.simulate.attacks, worst case over attacks (see the module "
        "docstring)."
    )
    out.add_argument(
        "--replicates",
        type=int,
        default=None,
        help=f"replicates per configuration (default {FULL_REPLICATES} full, "
        f"{QUICK_REPLICATES} quick)",
    )
    return out


def configurations(gammas: Sequence[float]) -> list[dict[str, Any]]:
    """Per federation: gamma = 0 without attack, then every attack x ``gammas``."""
    scenario = {k: [v] for k, v in SCENARIO.items()}
    out = []
    for federation in FEDERATIONS:
        out += grid(
            **scenario, federation=[federation], attack=[NO_ATTACK], gamma=[0.0]
        )
        out += grid(**scenario, federation=[federation], attack=ATTACKS, gamma=gammas)
    return out


def build(args: argparse.Namespace) -> Study:
    """The study: every federation x (no attack at gamma 0 + attack x gamma).

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`parser` (``quick``, ``replicates``).

    Returns
    -------
    Study
    """
    gammas = QUICK_GAMMAS if args.quick else FULL_GAMMAS
    replicates = getattr(args, "replicates", None)
    if replicates is None:
        replicates = QUICK_REPLICATES if args.quick else FULL_REPLICATES
    if replicates < 1:
        raise ValueError(f"--replicates must be >= 1, got {replicates}")
    return Study(
        name="byzantine",
        run=run,
        configs=configurations(gammas),
        replicates=replicates,
        # 2: rerun after clair()'s copy groups became complete-linkage clusters
        # with medoid representatives (CLAIR's errors moved by up to 2%)
        version="2",
    )


# ------------------------------------------------------------------------ tables
KEYS = ["federation", "attack", "gamma", "method"]


def _order(column: pd.Series) -> pd.Series:
    """Sort key: federations and methods in their study order, others as they are."""
    names = {"federation": FEDERATIONS, "method": METHODS}.get(str(column.name))
    return column if names is None else column.map({n: i for i, n in enumerate(names)})


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Monte Carlo mean and 95% interval of ``relative_mse`` per cell and method.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``federation``, ``attack``, ``gamma``, ``method``, ``mean``,
        ``lo``, ``hi``, ``n`` (of ``relative_mse``; skipped rows left out) and
        ``ratio_max`` (the largest ``max_client_ratio`` over the replicates).
    """
    from clair_stats.experiments.plotting import mc_summary

    table = mc_summary(frame, KEYS, "relative_mse")[[*KEYS, "mean", "lo", "hi", "n"]]
    ratio = frame.groupby(KEYS)["max_client_ratio"].max().rename("ratio_max")
    table = table.merge(ratio.reset_index(), on=KEYS)
    return table.sort_values(KEYS, key=_order, kind="stable").reset_index(drop=True)


def worst_case(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (federation, method, gamma): the attack with the largest mean error.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``federation``, ``method``, ``gamma``, ``attack`` (the worst; on
        a tie the first in alphabetical order), ``mean``, ``lo``, ``hi``, ``n``
        (its ``relative_mse`` and interval) and ``ratio_max``.
    """
    table = summary_table(frame)
    keys = ["federation", "method", "gamma"]
    idx = table.sort_values("attack").groupby(keys)["mean"].idxmax()
    out = table.loc[idx, [*keys, "attack", "mean", "lo", "hi", "n", "ratio_max"]]
    return out.sort_values(keys, key=_order, kind="stable").reset_index(drop=True)


def _worst_markdown(worst: pd.DataFrame, federation: str) -> str:
    """One federation's worst case as a markdown table: methods x gamma."""
    part = worst[worst["federation"] == federation]
    gammas = sorted(part["gamma"].unique())
    lines = [
        "| method | " + " | ".join(f"gamma={g:g}" for g in gammas) + " |",
        "|" + "---|" * (len(gammas) + 1),
    ]
    for method in METHODS:
        cells = []
        for g in gammas:
            row = part[(part["method"] == method) & (part["gamma"] == g)]
            if row.empty:
                cells.append("n/a")
            elif method == "local":
                cells.append("1")
            else:
                row = row.iloc[0]
                cells.append(f"{row['mean']:.3g} ({row['attack']})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cells(items: list[str], limit: int = 12) -> str:
    """A list of misses, cut after ``limit`` with the number left out."""
    more = f"; and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def targets(frame: pd.DataFrame) -> pd.DataFrame:
    """The targets T1-T3 of the module docstring, computed from the frame.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame (any grid: the targets look at the gammas it has).

    Returns
    -------
    pandas.DataFrame
        One row per target, federation and method: ``target``, ``federation``,
        ``method``, ``met`` (bool) and ``detail`` (the numbers; where missed,
        the attack, gamma and value of each miss).
    """
    worst = worst_case(frame)
    table = summary_table(frame)
    out = []
    for federation in ("heterogeneous", "backbone"):
        for method in ("clair", "clair_sigma"):
            w = worst[(worst["federation"] == federation) & (worst["method"] == method)]
            if w.empty:
                continue
            low = w[w["gamma"] <= T1_LOW_GAMMA + 1e-9]
            misses = [
                f"gamma={g:g}: {m:.3g} under {a} (> {T1_LOW:g})"
                for g, m, a in zip(
                    low["gamma"], low["mean"], low["attack"], strict=True
                )
                if m > T1_LOW
            ] + [
                f"gamma={g:g}: {m:.3g} under {a} (>= {T1_ALL:g})"
                for g, m, a in zip(w["gamma"], w["mean"], w["attack"], strict=True)
                if m >= T1_ALL
            ]
            top = w.loc[w["mean"].idxmax()]
            detail = (
                f"worst case {low['mean'].max():.3g} over gamma <= {T1_LOW_GAMMA:g}, "
                f"{w['mean'].max():.3g} over all gamma (gamma={top['gamma']:g}, "
                f"{top['attack']})"
            )
            if misses:
                detail += "; missed at " + _cells(misses)
            out.append(("T1", federation, method, not misses, detail))
    for federation in [f for f in FEDERATIONS if f in set(frame["federation"])]:
        for method in CLAIR_METHODS:
            rows = frame[
                (frame["federation"] == federation) & (frame["method"] == method)
            ]
            if rows.empty:
                continue
            top = rows.loc[rows["max_client_ratio"].idxmax()]
            above = int((rows["max_client_ratio"] > T2_RATIO).sum())
            detail = (
                f"largest max_client_ratio {top['max_client_ratio']:.3g} "
                f"({top['attack']}, gamma={top['gamma']:g}, replicate "
                f"{int(top['replicate'])}); {above} of {len(rows)} replicates "
                f"above {T2_RATIO:g}"
            )
            out.append(("T2", federation, method, above == 0, detail))
    homo = table[table["federation"] == "homogeneous"]
    if not homo.empty:
        misses, ratios = [], []
        for (attack, gamma), cell in homo.groupby(["attack", "gamma"]):
            means = cell.set_index("method")["mean"]
            agg = means.reindex(FLOWER_METHODS).dropna()
            if "clair" not in means or agg.empty:
                continue
            ratio = means["clair"] / agg.min()
            ratios.append(ratio)
            if ratio > T3_FACTOR:
                misses.append(
                    (
                        ratio,
                        f"{attack} at gamma={gamma:g}: clair {means['clair']:.3g} vs "
                        f"{agg.idxmin()} {agg.min():.3g} ({ratio:.2f}x)",
                    )
                )
        misses.sort(key=lambda m: -m[0])
        detail = (
            f"clair / best Flower aggregator: at most {max(ratios):.3g} over "
            f"{len(ratios)} cells; {len(misses)} cells above {T3_FACTOR:g}"
        )
        if misses:
            detail += ": " + _cells([m[1] for m in misses])
        out.append(("T3", "homogeneous", "clair", not misses, detail))
    return pd.DataFrame(
        out, columns=["target", "federation", "method", "met", "detail"]
    )


def detection_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean precision, recall and number flagged of the CLAIR methods, gamma > 0.

    Returns
    -------
    pandas.DataFrame
        Index (federation, attack); columns (statistic, method) for statistic in
        ``precision``, ``recall``, ``n_flagged``.
    """
    rows = frame[frame["method"].isin(CLAIR_METHODS) & (frame["gamma"] > 0)].copy()
    for col in ("precision", "recall", "n_flagged"):
        rows[col] = rows[col].astype(float)
    out = rows.pivot_table(
        index=["federation", "attack"],
        columns="method",
        values=["precision", "recall", "n_flagged"],
        aggfunc="mean",
    )
    feds = [f for f in FEDERATIONS if f in out.index.get_level_values(0)]
    out = out.reindex(feds, level=0)
    return out.reindex(
        columns=[m for m in CLAIR_METHODS if m in rows["method"].values], level=1
    )


def _detection_markdown(detection: pd.DataFrame) -> str:
    methods = list(dict.fromkeys(detection.columns.get_level_values(1)))
    head = " | ".join(f"{m} precision / recall" for m in methods)
    lines = [f"| federation | attack | {head} |", "|" + "---|" * (2 + len(methods))]
    for (federation, attack), row in detection.iterrows():
        cells = [
            f"{row[('precision', m)]:.2f} / {row[('recall', m)]:.2f}" for m in methods
        ]
        lines.append(f"| {federation} | {attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _targets_markdown(found: pd.DataFrame) -> str:
    lines = []
    for row in found.itertuples():
        verdict = "met" if row.met else "**not met**"
        lines.append(
            f"- {row.target}, {row.federation}, {row.method}: {verdict}. {row.detail}."
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------ figures
def _style() -> dict[str, dict[str, Any]]:
    """Colour, marker and line style of every method (fixed across figures)."""
    out = {}
    for i, name in enumerate(METHODS):
        clair_like = name in (*CLAIR_METHODS, "oracle_clair")
        out[name] = {
            "marker": "osD^v<>ph*XP"[i],
            "ls": "-" if clair_like else "--",
            "lw": 2.0 if clair_like else 1.2,
            "alpha": 1.0,
        }
    colors = {
        "local": "k",
        "clair": "tab:red",
        "clair_sigma": "tab:blue",
        "clair_paper": "tab:purple",
        "oracle_clair": "tab:green",
        "flower_mean": "tab:brown",
        "flower_median": "tab:orange",
        "flower_trimmed_mean": "tab:olive",
        "flower_krum": "tab:cyan",
        "flower_multi_krum": "tab:pink",
        "flower_bulyan": "tab:gray",
    }
    for name, color in colors.items():
        out[name]["color"] = color
    # local (1 by definition) is drawn wide and pale so that a method equal to it
    # (CLAIR flagging every client) stays visible on top of it
    out["local"].update(ls="-", lw=4.0, alpha=0.3)
    out["oracle_clair"].update(ls=":")
    return out


def _lines(ax: Any, table: pd.DataFrame) -> None:
    style = _style()
    for name in METHODS:
        s = table[table["method"] == name].sort_values("gamma")
        if s.empty:
            continue
        st = style[name]
        ax.plot(
            s["gamma"],
            s["mean"],
            marker=st["marker"],
            ms=4,
            color=st["color"],
            ls=st["ls"],
            lw=st["lw"],
            alpha=st["alpha"],
            label=name,
        )
        ax.fill_between(
            s["gamma"], s["lo"], s["hi"], color=st["color"], alpha=0.12, lw=0
        )


YLABEL = "relative MSE of benign clients\n(1 = local fitting; log)"
XLABEL = r"fraction of attackers $\gamma$ (unitless)"


def report(frame: pd.DataFrame, folder: Path, args: argparse.Namespace) -> None:
    """Write ``summary.csv``, ``worst_case.csv``, ``worst_case.md`` and the figures.

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
    table = summary_table(frame)
    worst = worst_case(frame)
    table.to_csv(folder / "summary.csv", index=False)
    worst.to_csv(folder / "worst_case.csv", index=False)
    mode = "quick" if args.quick else "full"
    note = _note(frame, mode)
    page = _worst_case_page(frame, worst, mode, note)
    (folder / "worst_case.md").write_text(page)
    _worst_case_figure(worst, folder, note)
    for federation in [f for f in FEDERATIONS if f in set(table["federation"])]:
        _by_attack_figure(table, federation, folder, note)


def _note(frame: pd.DataFrame, mode: str) -> str:
    """The grid, the scenario and the replicates, for captions and pages."""
    reps = int(
        frame.groupby(["federation", "attack", "gamma"])["replicate"].nunique().min()
    )
    sc = SCENARIO
    return (
        f"{mode} grid; p={sc['p']}, q={sc['q']}, r={sc['r']}, K={sc['K']}, direct "
        f"noise tau={sc['tau']:g}; {reps} or more replicates per point"
    )


def _worst_case_page(
    frame: pd.DataFrame, worst: pd.DataFrame, mode: str, note: str
) -> str:
    """``worst_case.md``: worst-case tables, the targets and the detection table."""
    parts = [
        f"# Worst case over attacks ({mode} grid)\n",
        "Per method and gamma, the largest mean relative MSE of the benign clients "
        "(sum of ||Theta~_k - Theta_k||_F^2 over benign k, over local fitting's) "
        "over the attacks, and in brackets the attack that attains it (at gamma = 0 "
        "there is no attacker). n/a: Bulyan needs K >= 4f + 3.\n",
    ]
    for federation in [f for f in FEDERATIONS if f in set(worst["federation"])]:
        parts += [f"## {federation}\n", _worst_markdown(worst, federation) + "\n"]
    parts += [
        "## Targets\n",
        "T1: clair's worst case <= 0.3 for gamma <= 0.3 and < 1 at every gamma "
        "(heterogeneous, backbone; clair_sigma separately). T2: no replicate with "
        "a benign client above 1.1 times its local error. T3 (homogeneous): clair's "
        "mean within 1.1 times the best Flower aggregator's in every cell.\n",
        _targets_markdown(targets(frame)) + "\n",
        "## Detection (gamma > 0)\n",
        "Mean precision / recall of the flagged clients against the attackers, "
        "averaged over the replicates and gammas > 0 (precision is 1 when nothing "
        "is flagged).\n",
        _detection_markdown(detection_table(frame)) + "\n",
        f"{note}.\n",
    ]
    return "\n".join(parts)


def _worst_case_figure(worst: pd.DataFrame, folder: Path, note: str) -> None:
    """``worst_case.png``: the worst case against gamma, one panel per federation."""
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import save_figure

    feds = [f for f in FEDERATIONS if f in set(worst["federation"])]
    fig, axes = plt.subplots(
        1, len(feds), figsize=(4.6 * len(feds) + 2, 4.2), sharey=True
    )
    axes = np.atleast_1d(axes)
    for ax, federation in zip(axes, feds, strict=True):
        _lines(ax, worst[worst["federation"] == federation])
        ax.set_title(federation)
        log_axis(ax)
        ax.set_xlabel(XLABEL)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("worst case over attacks:\n" + YLABEL)
    axes[-1].legend(
        fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), title="method"
    )
    save_figure(
        fig,
        folder / "worst_case.png",
        "Worst case over the attacks: per method and gamma the largest mean relative "
        "MSE of the benign clients (1 = local fitting), one panel per federation, "
        f"with the 95% Monte Carlo band of the worst attack; {note}.",
    )
    plt.close(fig)


def _by_attack_figure(
    table: pd.DataFrame, federation: str, folder: Path, note: str
) -> None:
    """``by_attack_<federation>.png``: relative MSE against gamma, one panel per
    attack (four to a row), the gamma = 0 point (no attacker) in every panel."""
    import matplotlib.pyplot as plt

    from clair_stats.experiments.plotting import save_figure

    part = table[table["federation"] == federation]
    clean = part[part["attack"] == NO_ATTACK]
    names = [a for a in ATTACKS if a in set(part["attack"])]
    ncols = 4
    nrows = -(-(len(names) + 1) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.8 * ncols, 3.0 * nrows), sharex=True, sharey=True
    )
    axes = np.atleast_1d(axes).ravel()
    for ax, name in zip(axes, names, strict=False):
        _lines(ax, pd.concat([clean, part[part["attack"] == name]]))
        ax.set_title(name, fontsize=10)
        log_axis(ax)
        ax.grid(alpha=0.3, which="both")
    for i, ax in enumerate(axes[: len(names)]):
        if i % ncols == 0:
            ax.set_ylabel(YLABEL, fontsize=8)
        if i + ncols >= len(names):
            ax.set_xlabel(XLABEL, fontsize=8)
            ax.xaxis.set_tick_params(labelbottom=True)
    for ax in axes[len(names) :]:
        ax.axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[len(names)].legend(handles, labels, loc="center", fontsize=8, title="method")
    fig.suptitle(f"{federation} federation", fontsize=12)
    save_figure(
        fig,
        folder / f"by_attack_{federation}.png",
        f"Mean relative MSE of the benign clients (1 = local fitting) against the "
        f"fraction of attackers in the {federation} federation, one panel per "
        "attack (gamma = 0: no attacker), with 95% Monte Carlo bands; Bulyan stops "
        f"where K<4f+3; {note}.",
    )
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study (its missing replicates) and write the report."""
    return study_main(build, report, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

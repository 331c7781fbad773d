r"""
Verdict rules for LoRA federations: one verdict per client from M modules
========================================================================

**Question.** A LoRA federation is M CLAIR problems (one per adapted module) on the
same K clients, and the refinement needs one collaborative set S^ for all of them.
Two rules were in use:

* ``holm_any`` (``clair adapters``): per module, the empirical-null p-value of
  each client's off-subspace energy (:mod:`clair_stats.pipeline.empirical_null`);
  Holm over all K x M (client, module) p-values at alpha; a client is flagged iff
  any of its modules is rejected;
* ``vote_half`` (the sequence-copying experiment until this study): per module,
  the chi-square test of step 3 (docs/pipeline.md §3.3.2) with sigma by the median rule
  and Holm over the K
  clients at alpha; a client is flagged iff at least half of the modules flag it.

Which one keeps its family-wise error -- the probability that any client benign in
every module is flagged -- at alpha = 0.05, and which finds more contaminated
clients (power: the fraction of contaminated clients flagged)?
``holm_any`` was chosen (:mod:`clair_stats.lora.verdict`), and the copying
experiment now uses it too.

**Data.** (a) Synthetic LoRA federations of
:func:`clair_stats.lora.synthetic.synthetic_federation` (LoRA rank 4 everywhere,
benign B = U G + 0.1 E, contaminated B = strength E): K in {8, 20, 50}, M in {3, 8}
modules (3: the test modules of ``clair adapters``; 8: :data:`MODULES_8`),
round(0.2 K) contaminated clients (2, 4, 10), each contaminated in one module, in
half of the modules (ceil(M / 2)) or in all of them (modules drawn at random per
client), at strength 3 (30 times the benign noise in Frobenius norm) or 0.2 (2
times); and benign-only federations (``pattern="none"``). (b) The sequence-copying
experiment's real LoRA updates (:func:`simulations.copying.federation.train_clients`:
K = 10 clients, 3 contaminated -- trained on another task or on label noise -- 8
modules of 32 x 32, LoRA rank 4), both experiments (homogeneous and heterogeneous
benign clients), the full training of ``simulations/copying``.

**One replicate.** Synthetic: ``federations`` federations drawn from the replicate's
seed (10 benign-only, 5 contaminated). Copying: one trained federation. For every
federation and module, steps 1-3 of CLAIR as ``clair adapters`` runs them
(:func:`clair_stats.lora.adapters.fit_module`: P0 at the default lam, A^ of rank r
= 4 (synthetic) or 2 (copying, as in that experiment), the energies E_km); both
rules then see the same energies. One row per (federation, rule): the flags, the
true contamination, the number of modules that flag each client, and the share of
benign (client, module) pairs whose per-module p-value is at most t for a few t
(the calibration of the per-module p-values). The first row of every federation
keeps its (M, K) energies and the M degrees of freedom (p - r) q, so that other
rules can be evaluated on the same evidence without a rerun.

**Grid.** Full: 6 (K, M) x (1 benign-only + 3 patterns x 2 strengths) = 42
synthetic configurations and 2 copying ones, 40 replicates each: 400 benign-only
and 200 contaminated federations per (K, M) and pattern, 40 copying replicates
per experiment. ``--quick``: K = 8, M = 3, benign-only and all-module contamination
at strength 3, 2 federations per replicate, and the copying homogeneous experiment
with the quick training of ``simulations/copying`` (600 pretraining and 150
fine-tuning steps); 2 replicates. ``--source synthetic|copying`` runs one part.

**Reading the figure** (``verdict_rules.png``). Top: the family-wise error of both
rules (blue ``holm_any``, red ``vote_half``) and of the candidate fix below (green)
with Wilson 95% intervals -- left on benign-only synthetic federations and on
the copying experiment (where 3 of the 10 clients are contaminated), middle on the
contaminated synthetic federations pooled over patterns and strengths, right the
calibration of the per-module p-values of benign pairs, P(p <= t) / t (1 for a
calibrated p-value). Bottom: power against the contamination pattern at strength 3
and 0.2 (one colour per (K, M); solid ``holm_any``, dashed ``vote_half``, dotted
the candidate), and on
the copying experiment. ``summary.md`` / ``summary.csv``: every configuration and
rule with FWER and power and their Wilson intervals, and the copying run time.

**Candidate fix** (``pooled_scale``, evaluated in :func:`report` on the stored
energies, so it needs no rerun): ``holm_any`` with the scale of the log energies
pooled over the modules (location per module, one MAD from all K x M residuals;
exact law by conditional Monte Carlo, :data:`CANDIDATE_DRAWS` draws per (K, M)).

**Results** (full grid, one process on the shared 2-core machine: 88 minutes of
computing, 89 minutes of wall time; 33 minutes for the 9,600 synthetic
federations, 55 for the 80 copying replicates at a median 41 s each, almost all
of it training). ``holm_any`` keeps its level: family-wise error 0.013-0.043 on
benign-only synthetic federations (largest Wilson upper bound 0.067), 0.000-0.035
with contamination, 0.050 and 0.000 on the copying updates. ``vote_half`` does
not: 0.44-0.998, 0.010-0.955, and 0.43 / 0.55 on the copying updates. Power of
``holm_any``: 1.00 at strength 3 for K >= 20 (0.78-0.99 at K = 8), 0.07-0.97 at
strength 0.2, but only 0.32 and 0.13 on the copying updates (``vote_half`` 0.93
and 0.72, at the price of its false flags; it cannot find a client contaminated
in fewer than half of the modules: 0.09-0.36). The candidate keeps the level
(0.022-0.048; 0.000 and 0.050 on the copying updates) and reaches 0.96 and 0.43 on
the copying updates. Details in :mod:`clair_stats.lora.verdict`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from clair_stats.experiments.plotting import (  # noqa: E402
    save_figure,
    wilson_interval,
)
from clair_stats.experiments.study import (  # noqa: E402
    Study,
    grid,
    results_dir,
    study_main,
    study_parser,
)
from clair_stats.lora.adapters import fit_module  # noqa: E402
from clair_stats.lora.synthetic import MODULES, synthetic_federation  # noqa: E402
from clair_stats.lora.verdict import client_verdict  # noqa: E402
from clair_stats.pipeline.detection import energy_test  # noqa: E402
from clair_stats.pipeline.empirical_null import MAD_SCALE, NullLaw  # noqa: E402
from clair_stats.pipeline.multitest import reject  # noqa: E402

NAME = "verdict_rules"
#: Bump when a change alters the results of :func:`run`.
VERSION = "1"
ALPHA = 0.05
RULES = ("holm_any", "vote_half")
#: A candidate fix, evaluated in :func:`report` on the stored energies.
CANDIDATE = "pooled_scale"
ALL_RULES = (*RULES, CANDIDATE)
LABELS = {
    "holm_any": "empirical null, Holm over K x M, any module",
    "vote_half": "chi-square (median rule), Holm per module, half of the modules",
    CANDIDATE: "candidate: empirical null with the scale pooled over modules",
}
#: Eight modules of two decoder layers: path -> (out, in).
MODULES_8 = {
    "model.layers.0.self_attn.q_proj": (24, 16),
    "model.layers.0.self_attn.k_proj": (16, 16),
    "model.layers.0.self_attn.v_proj": (24, 16),
    "model.layers.0.self_attn.o_proj": (16, 24),
    "model.layers.0.mlp.up_proj": (32, 16),
    "model.layers.0.mlp.down_proj": (16, 32),
    "model.layers.1.self_attn.q_proj": (24, 16),
    "model.layers.1.self_attn.v_proj": (24, 16),
}
LORA_RANK = 4
CONTAMINATED_FRACTION = 0.2
PATTERNS = ("one", "half", "all")
STRENGTHS = (3.0, 0.2)  # floats: a key's type enters the seed
FULL_K, FULL_M = (8, 20, 50), (3, 8)
FEDERATIONS = {"none": 10, "contaminated": 5}
REPLICATES, QUICK_REPLICATES = 40, 2
EXPERIMENTS = ("homogeneous", "heterogeneous")
#: Thresholds t of the calibration of the per-module p-values.
THRESHOLDS = (1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.2, 0.5)
#: The configuration keys (every configuration has all of them).
KEYS = (
    "source",
    "K",
    "M",
    "pattern",
    "strength",
    "federations",
    "experiment",
    "training",
)


# ------------------------------------------------------------------ the two rules
def vote_half(
    energies: np.ndarray, dfs: list[int], alpha: float = ALPHA, vote: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rule the copying experiment used: chi-square per module, vote over modules.

    Per module: T_k = E_k / sigma^2 with sigma^2 = median_k E_k / median(chi^2_df)
    (:func:`clair_stats.pipeline.detection.energy_test`), Holm over the K
    clients at ``alpha``. Client k is flagged iff at least ``vote`` x M modules
    flag it.

    Parameters
    ----------
    energies : numpy.ndarray, shape (M, K)
    dfs : list of int
        (p - r) q per module.
    alpha, vote : float

    Returns
    -------
    flagged : numpy.ndarray of bool, shape (K,)
    rejected : numpy.ndarray of bool, shape (M, K)
    p_values : numpy.ndarray, shape (M, K)
        The chi-square p-values, uncorrected.
    """
    tests = [
        energy_test(e, df, alpha=alpha) for e, df in zip(energies, dfs, strict=True)
    ]
    rejected = np.array([t.rejected for t in tests])
    p_values = np.array([t.p_values for t in tests])
    return rejected.sum(axis=0) >= vote * len(tests), rejected, p_values


def _outcome(flagged: np.ndarray, bad: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """What a rule did on one federation: its false flag, the counts of flagged
    benign and contaminated clients, and how many benign (module, client)
    p-values of ``p`` (M, K) fall below each threshold."""
    benign_p = p[:, ~bad]
    return {
        "false_flag": bool(flagged[~bad].any()),
        "n_benign": int((~bad).sum()),
        "n_benign_flagged": int(flagged[~bad].sum()),
        "n_contaminated": int(bad.sum()),
        "n_contaminated_flagged": int(flagged[bad].sum()),
        "benign_pairs": int(benign_p.size),
        "benign_pairs_below": [int((benign_p <= t).sum()) for t in THRESHOLDS],
    }


def _rows(
    energies: np.ndarray, dfs: list[int], contaminated: np.ndarray
) -> list[dict[str, Any]]:
    """Both rules on one federation's (M, K) energies; ``contaminated`` is (M, K)."""
    bad = contaminated.any(axis=0)
    verdict = client_verdict(energies, ALPHA)
    flagged_v, rejected_v, p_v = vote_half(energies, dfs)
    rows = []
    for rule, flagged, rejected, p in (
        ("holm_any", verdict.flagged, verdict.rejected, verdict.module_p_values),
        ("vote_half", flagged_v, rejected_v, p_v),
    ):
        rows.append(
            {
                "rule": rule,
                "flagged": flagged.tolist(),
                "contaminated": bad.tolist(),
                "module_flags": rejected.sum(axis=0).tolist(),
                **_outcome(flagged, bad, p),
                # the federation's evidence, once (other rules can be evaluated
                # on it later without a rerun)
                "energies": energies.tolist() if rule == RULES[0] else None,
                "dfs": list(dfs) if rule == RULES[0] else None,
            }
        )
    return rows


def _fit(updates: Any, rank: int) -> tuple[np.ndarray, int, bool]:
    """Energies, df and convergence of one module (steps 1-3 of clair adapters;
    fit_module records non-convergence instead of warning)."""
    fit = fit_module(updates, rank)
    return fit.energies, fit.df, bool(fit.solver.converged)


# ------------------------------------------------------------------ one replicate
def _synthetic(config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    n_clients, n_modules = int(config["K"]), int(config["M"])
    modules = MODULES if n_modules == 3 else MODULES_8
    names = list(modules)
    pattern = config["pattern"]
    n_bad = 0 if pattern == "none" else round(CONTAMINATED_FRACTION * n_clients)
    n_mod = {"none": 0, "one": 1, "half": -(-n_modules // 2), "all": n_modules}
    rng = np.random.default_rng(seed)
    rows = []
    for f in range(int(config["federations"])):
        contaminated = {
            k: [names[j] for j in rng.choice(n_modules, n_mod[pattern], replace=False)]
            for k in range(n_clients - n_bad, n_clients)
        }
        fed = synthetic_federation(
            n_clients,
            modules,
            contaminated=contaminated,
            strength=config["strength"] or 1.0,  # unused without contamination
            rank=LORA_RANK,
            seed=rng,
        )
        fits = [_fit(fed.updates(m), LORA_RANK) for m in names]
        energies = np.array([e for e, _, _ in fits])
        for row in _rows(energies, [d for _, d, _ in fits], fed.contaminated.T):
            row.update(federation=f, unconverged=sum(not c for *_, c in fits))
            rows.append(row)
    return rows


def _copying(config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    from simulations.copying.federation import Settings, train_clients
    from simulations.copying.study import QUICK

    overrides = QUICK if config["training"] == "quick" else {}
    settings = Settings(experiment=config["experiment"], **overrides)
    checkpoints = results_dir() / "copying" / "checkpoints"
    start = time.perf_counter()
    clients = train_clients(settings, seed, str(checkpoints))
    trained = time.perf_counter() - start
    fits = [_fit(u, settings.clair_rank) for u in clients.updates.values()]
    energies = np.array([e for e, _, _ in fits])
    contaminated = np.broadcast_to(~settings.benign, energies.shape)
    rows = _rows(energies, [d for _, d, _ in fits], contaminated)
    for row in rows:
        row.update(
            federation=0,
            unconverged=sum(not c for *_, c in fits),
            training_seconds=trained,
        )
    return rows


def run(config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One replicate: federations of one configuration, both rules on each.

    Parameters
    ----------
    config : dict
        The keys of :data:`KEYS`: ``source`` (``"synthetic"`` or ``"copying"``);
        synthetic: ``K``, ``M``, ``pattern`` (``"none"``, ``"one"``, ``"half"``,
        ``"all"``), ``strength`` (None for ``"none"``) and ``federations`` (per
        replicate); copying: ``experiment`` and ``training`` (``"full"`` or
        ``"quick"``: the training of the copying study's grids). The other keys
        are None.
    seed : int
        All randomness of the replicate.

    Returns
    -------
    list of dict
        One row per (federation, rule), fields in the module docstring.
    """
    if config["source"] == "synthetic":
        return _synthetic(config, seed)
    return _copying(config, seed)


# --------------------------------------------------------------------- the grid
def _synthetic_configs(ks, ms, patterns, strengths, federations) -> list[dict]:
    configs = []
    for cell in grid(K=ks, M=ms):
        configs.append(
            {**cell, "pattern": "none", "strength": None, "federations": federations[0]}
        )
        for contamination in grid(pattern=patterns, strength=strengths):
            configs.append({**cell, **contamination, "federations": federations[1]})
    return [
        {"source": "synthetic", "experiment": None, "training": None, **c}
        for c in configs
    ]


def parser() -> argparse.ArgumentParser:
    """The runner's options plus ``--source``."""
    out = study_parser(
        "Verdict rules for LoRA federations: family-wise error and power of the "
        "empirical-null Holm rule and of the chi-square vote rule."
    )
    out.add_argument(
        "--source",
        choices=("synthetic", "copying", "both"),
        default="both",
        help="synthetic federations, the copying experiment's updates, or both",
    )
    return out


def build(args: argparse.Namespace) -> Study:
    """The full or quick grid (``args.quick``) of ``args.source``."""
    if args.results is not None:
        os.environ["CLAIR_RESULTS"] = str(args.results)
    configs = []
    if args.source in ("synthetic", "both"):
        if args.quick:
            configs += _synthetic_configs((8,), (3,), ("all",), (3.0,), (2, 2))
        else:
            configs += _synthetic_configs(
                FULL_K,
                FULL_M,
                PATTERNS,
                STRENGTHS,
                (FEDERATIONS["none"], FEDERATIONS["contaminated"]),
            )
    if args.source in ("copying", "both"):
        experiments = ("homogeneous",) if args.quick else EXPERIMENTS
        configs += [
            {
                "source": "copying",
                "K": None,
                "M": None,
                "pattern": None,
                "strength": None,
                "federations": None,
                "experiment": e,
                "training": "quick" if args.quick else "full",
            }
            for e in experiments
        ]
    return Study(
        name=NAME,
        run=run,
        configs=configs,
        replicates=QUICK_REPLICATES if args.quick else REPLICATES,
        version=VERSION,
    )


# ------------------------------------------- a candidate fix, on the stored energies
#: Monte Carlo draws of the candidate's null law (per (K, M)).
CANDIDATE_DRAWS = 20000


def pooled_scale_z(energies: np.ndarray) -> np.ndarray:
    """Robust z-scores with the location per module and the scale pooled.

    .. math:: z_{km} = \\frac{\\log E_{km} - \\operatorname{med}_{j \\ne k}
              \\log E_{jm}}{1.4826\\, \\operatorname{med}\\{|R|\\}},

    where the median in the denominator runs over the residuals R of every other
    module m' != m (R_jm' = log E_jm' - med_j log E_jm') and of the K - 1 others
    of module m (against their own median): the benign log energies are modelled
    as mu_m + s eps_km with one scale s for all modules. Nothing in (location,
    scale) depends on log E_km, so the conditional Monte Carlo of
    :mod:`clair_stats.pipeline.empirical_null` gives its law.

    Parameters
    ----------
    energies : numpy.ndarray, shape (M, K)

    Returns
    -------
    numpy.ndarray, shape (M, K)
    """
    logs = np.log(np.asarray(energies, dtype=float))
    n_modules, n_clients = logs.shape
    leave_out = np.array([np.delete(np.arange(n_clients), k) for k in range(n_clients)])
    others = logs[:, leave_out]  # (M, K, K - 1)
    location = np.median(others, axis=2)
    own = np.abs(others - location[..., None])
    residuals = np.abs(logs - np.median(logs, axis=1, keepdims=True))
    z = np.empty_like(logs)
    for m in range(n_modules):
        rest = np.delete(residuals, m, axis=0).ravel()
        pool = np.concatenate(
            [np.broadcast_to(rest, (n_clients, rest.size)), own[m]], axis=1
        )
        z[m] = (logs[m] - location[m]) / (MAD_SCALE * np.median(pool, axis=1))
    return z


@lru_cache(maxsize=32)
def _pooled_law(n_clients: int, n_modules: int) -> NullLaw:
    """The law of :func:`pooled_scale_z` on the null model (conditional Monte
    Carlo over the location and the pooled scale of client 0 of module 0)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((CANDIDATE_DRAWS, n_modules, n_clients))
    others = x[:, 0, 1:]  # client 0 of module 0 is scored
    location = np.median(others, axis=1)
    own = np.abs(others - location[:, None])
    rest = np.abs(x[:, 1:, :] - np.median(x[:, 1:, :], axis=2, keepdims=True))
    pool = np.concatenate([rest.reshape(CANDIDATE_DRAWS, -1), own], axis=1)
    scale = MAD_SCALE * np.median(pool, axis=1)
    return NullLaw.from_draws(location, scale, n_clients=n_clients, seed=0)


def pooled_scale_p_values(energies: np.ndarray) -> np.ndarray:
    """p_km = P(Z >= z_km) under the candidate's null law, shape (M, K)."""
    z = pooled_scale_z(energies)
    return _pooled_law(z.shape[1], z.shape[0]).sf(z)


def candidate_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The candidate rule (pooled scale, Holm over K x M, any module) on every
    stored federation, as rows of the study's frame (``rule`` = CANDIDATE)."""
    first = frame[frame["rule"] == RULES[0]]
    rows = []
    for record in first.to_dict("records"):
        energies = np.asarray(record["energies"], dtype=float)
        bad = np.asarray(record["contaminated"], dtype=bool)
        p = pooled_scale_p_values(energies)
        rejected = reject(p.ravel(), ALPHA, "holm")[0].reshape(p.shape)
        flagged = rejected.any(axis=0)
        rows.append(
            {
                **{key: record[key] for key in (*KEYS, "replicate", "seconds")},
                "rule": CANDIDATE,
                "federation": record["federation"],
                **_outcome(flagged, bad, p),
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------- report
def _label(row: pd.Series) -> str:
    if row["source"] == "copying":
        return f"copying {row['experiment']}"
    return f"K={int(row['K'])} M={int(row['M'])}"


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """FWER and power per configuration and rule, with Wilson 95% intervals.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame (one row per federation and rule).

    Returns
    -------
    pandas.DataFrame
        One row per (configuration, rule): ``federations_run`` (n),
        ``fwer`` (share of federations in which a benign client is flagged) with
        ``fwer_lo`` / ``fwer_hi``, ``power`` (flagged contaminated clients over
        all contaminated clients, pooled; NaN without contamination) with
        ``power_lo`` / ``power_hi``, ``benign_flag_rate`` (flagged benign clients
        over all benign clients), ``module_false_rate`` (benign (client, module)
        pairs with p <= 0.05, over all benign pairs), ``seconds`` (median per
        replicate).
    """
    frame = frame.copy()
    for key in KEYS:
        frame[key] = frame[key].astype(object).where(frame[key].notna(), "-")
    at = THRESHOLDS.index(0.05)
    frame["pairs_005"] = [below[at] for below in frame["benign_pairs_below"]]
    groups = frame.groupby([*KEYS, "rule"], sort=False)
    out = groups.agg(
        federations_run=("false_flag", "size"),
        false_flags=("false_flag", "sum"),
        benign=("n_benign", "sum"),
        benign_flagged=("n_benign_flagged", "sum"),
        contaminated=("n_contaminated", "sum"),
        contaminated_flagged=("n_contaminated_flagged", "sum"),
        pairs=("benign_pairs", "sum"),
        pairs_005=("pairs_005", "sum"),
        seconds=("seconds", "median"),
    ).reset_index()
    out["fwer"] = out["false_flags"] / out["federations_run"]
    out["fwer_lo"], out["fwer_hi"] = wilson_interval(
        out["false_flags"], out["federations_run"]
    )
    has = out["contaminated"] > 0
    out["power"] = np.where(
        has, out["contaminated_flagged"] / out["contaminated"].clip(lower=1), np.nan
    )
    lo, hi = wilson_interval(
        out["contaminated_flagged"], out["contaminated"].clip(lower=1)
    )
    out["power_lo"], out["power_hi"] = (
        np.where(has, lo, np.nan),
        np.where(has, hi, np.nan),
    )
    out["benign_flag_rate"] = out["benign_flagged"] / out["benign"]
    out["module_false_rate"] = out["pairs_005"] / out["pairs"]
    for key in KEYS:
        out[key] = out[key].replace("-", None)
    # configurations in the order of the grid, the two rules together
    first = out.groupby(list(KEYS), sort=False, dropna=False).ngroup()
    out["_order"] = first
    out["_rule"] = out["rule"].map({r: i for i, r in enumerate(ALL_RULES)})
    out = out.sort_values(["_order", "_rule"], kind="stable")
    return out.drop(columns=["_order", "_rule"]).reset_index(drop=True)


def _markdown(table: pd.DataFrame, frame: pd.DataFrame, quick: bool) -> str:
    def cell(row: pd.Series, name: str) -> str:
        if pd.isna(row[name]):
            return "-"
        return f"{row[name]:.3f} [{row[f'{name}_lo']:.3f}, {row[f'{name}_hi']:.3f}]"

    lines = [
        "# Verdict rules for LoRA federations" + (" (quick grid)" if quick else ""),
        "",
        f"alpha = {ALPHA}. FWER: share of federations in which a client benign in "
        "every module is flagged; power: share of contaminated clients flagged "
        "(pooled over federations); Wilson 95% intervals. benign rate: share of "
        "benign clients flagged; module rate: share of benign (client, module) "
        "pairs with a per-module p-value <= 0.05.",
        "",
        "| source | K | M | pattern | strength | rule | n | FWER | power | "
        "benign rate | module rate |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        values = [
            row["source"],
            "10" if row["source"] == "copying" else f"{int(row['K'])}",
            "8" if row["source"] == "copying" else f"{int(row['M'])}",
            row["experiment"] if row["source"] == "copying" else row["pattern"],
            "-" if row["strength"] is None else f"{row['strength']:g}",
            row["rule"],
            str(int(row["federations_run"])),
            cell(row, "fwer"),
            cell(row, "power"),
            f"{row['benign_flag_rate']:.3f}",
            f"{row['module_false_rate']:.3f}",
        ]
        lines.append("| " + " | ".join(values) + " |")
    copying = frame[(frame["source"] == "copying") & (frame["rule"] == RULES[0])]
    if len(copying):
        reps = copying.drop_duplicates(["experiment", "replicate"])
        lines += [
            "",
            f"Copying experiment: {len(reps)} replicates, "
            f"{reps['seconds'].sum() / 60:.1f} minutes in all (median "
            f"{reps['seconds'].median():.1f} s per replicate, of which training "
            f"{reps['training_seconds'].median():.1f} s).",
        ]
    synthetic = frame[frame["source"] == "synthetic"]
    if len(synthetic):
        reps = synthetic.drop_duplicates([*KEYS, "replicate"])
        lines.append(
            f"Synthetic federations: {len(reps)} replicates, "
            f"{reps['seconds'].sum() / 60:.1f} minutes in all."
        )
    return "\n".join(lines) + "\n"


COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
STYLES = {"holm_any": ("-", "o"), "vote_half": ("--", "s"), CANDIDATE: (":", "^")}
RULE_COLOURS = {"holm_any": "tab:blue", "vote_half": "tab:red", CANDIDATE: "tab:green"}


def _points(ax, x, table, column, rule, shift) -> None:
    rows = table[table["rule"] == rule]
    line, marker = STYLES[rule]
    lo = (rows[column] - rows[f"{column}_lo"]).clip(lower=0)
    hi = (rows[f"{column}_hi"] - rows[column]).clip(lower=0)
    ax.errorbar(
        np.asarray(x) + shift,
        rows[column],
        yerr=np.vstack((lo, hi)),
        fmt=marker,
        capsize=2,
        color=RULE_COLOURS[rule],
        label=LABELS[rule],
    )


def _figure(
    table: pd.DataFrame,
    calibration: dict[tuple[str, str], np.ndarray],
    folder: Path,
    quick: bool,
) -> Path:
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    synthetic = table[table["source"] == "synthetic"]
    copying = table[table["source"] == "copying"]
    # (a) FWER without contamination, and on the copying experiment
    ax = axes[0, 0]
    part = pd.concat([synthetic[synthetic["pattern"] == "none"], copying])
    labels = [_label(r) for _, r in part[part["rule"] == RULES[0]].iterrows()]
    for i, rule in enumerate(ALL_RULES):
        _points(ax, range(len(labels)), part, "fwer", rule, (i - 1) * 0.2)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_title("benign-only synthetic; copying (3 of 10 contaminated)", fontsize=9)
    ax.set_ylabel("family-wise error\n(share of federations)")
    # (b) FWER with contamination, pooled over patterns and strengths
    ax = axes[0, 1]
    pooled = (
        synthetic[synthetic["pattern"] != "none"]
        .groupby(["K", "M", "rule"], sort=False)[["false_flags", "federations_run"]]
        .sum()
        .reset_index()
    )
    if len(pooled):
        pooled["fwer"] = pooled["false_flags"] / pooled["federations_run"]
        pooled["fwer_lo"], pooled["fwer_hi"] = wilson_interval(
            pooled["false_flags"], pooled["federations_run"]
        )
        cells = pooled[pooled["rule"] == RULES[0]]
        for i, rule in enumerate(ALL_RULES):
            _points(ax, range(len(cells)), pooled, "fwer", rule, (i - 1) * 0.2)
        ax.set_xticks(
            range(len(cells)),
            [
                f"K={int(k)} M={int(m)}"
                for k, m in zip(cells["K"], cells["M"], strict=True)
            ],
            rotation=30,
            ha="right",
            fontsize=8,
        )
    ax.set_title("contaminated synthetic (pooled patterns)", fontsize=9)
    for ax in axes[0, :2]:
        ax.axhline(ALPHA, color="k", lw=0.8, ls=":")
        ax.set_ylim(-0.02, 1.3)  # room for the legend above 1
        ax.set_yticks(np.linspace(0, 1, 6))
    axes[0, 0].legend(fontsize=7, loc="upper left")
    # (c) calibration of the per-module p-values of benign pairs
    ax = axes[0, 2]
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    for rule in ALL_RULES:
        line, marker = STYLES[rule]
        for source, colour in (("synthetic", "0.2"), ("copying", "tab:green")):
            rows = calibration.get((source, rule))
            if rows is None:
                continue
            ax.plot(
                THRESHOLDS,
                rows,
                ls=line,
                marker=marker,
                color=colour,
                label=f"{source}, {rule}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("threshold t")
    ax.set_ylabel("P(p_km <= t) / t, benign pairs")
    ax.set_title("per-module p-values (1 = calibrated)", fontsize=9)
    ax.legend(fontsize=7)
    # (d), (e) power on synthetic federations
    cells = synthetic[["K", "M"]].drop_duplicates().dropna()
    for ax, strength in zip(axes[1, :2], STRENGTHS, strict=True):
        for colour, (_, cell) in zip(COLOURS, cells.iterrows(), strict=False):
            for rule in ALL_RULES:
                rows = synthetic[
                    (synthetic["K"] == cell["K"])
                    & (synthetic["M"] == cell["M"])
                    & (synthetic["strength"] == strength)
                    & (synthetic["rule"] == rule)
                ]
                if not len(rows):
                    continue
                order = [PATTERNS.index(p) for p in rows["pattern"]]
                rows = rows.iloc[np.argsort(order)]
                line, marker = STYLES[rule]
                ax.plot(
                    [PATTERNS.index(p) for p in rows["pattern"]],
                    rows["power"],
                    ls=line,
                    marker=marker,
                    color=colour,
                    label=f"K={int(cell['K'])} M={int(cell['M'])}"
                    if rule == RULES[0]
                    else None,
                )
        ax.set_xticks(range(len(PATTERNS)), [f"{p} module(s)" for p in PATTERNS])
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("power (share of contaminated\nclients flagged)")
        ax.set_title(
            f"synthetic, strength {strength:g} (solid: holm_any, dashed: "
            "vote_half, dotted: candidate)",
            fontsize=9,
        )
    axes[1, 0].legend(fontsize=7, loc="lower right")
    # (f) power on the copying experiment
    ax = axes[1, 2]
    if len(copying):
        labels = [_label(r) for _, r in copying[copying["rule"] == RULES[0]].iterrows()]
        for i, rule in enumerate(ALL_RULES):
            _points(ax, range(len(labels)), copying, "power", rule, (i - 1) * 0.2)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("copying experiment (K = 10, M = 8)", fontsize=9)
    ax.set_ylabel("power")
    n_syn = int(synthetic["federations_run"].max()) if len(synthetic) else 0
    n_cop = int(copying["federations_run"].max()) if len(copying) else 0
    caption = (
        f"Family-wise error (top left, middle; dotted: alpha = {ALPHA}) and power "
        "(bottom) of the two per-module verdict rules (blue, red) and of the "
        "candidate fix (green, evaluated on the same energies), Wilson 95% "
        "intervals; top "
        "right: P(p <= t) / t of the per-module p-values of benign (client, module) "
        "pairs (empirical null for holm_any, pooled-scale null for the candidate, "
        "chi-square with the median rule for "
        f"vote_half). Up to {n_syn} synthetic federations per point, {n_cop} "
        "copying replicates per experiment." + (" Quick grid." if quick else "")
    )
    return save_figure(fig, folder / "verdict_rules.png", caption)


def calibration(frame: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """P(p_km <= t) / t over the benign (client, module) pairs, t in THRESHOLDS.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's frame.

    Returns
    -------
    dict
        Per (source, rule): the ratios, from the benign-only synthetic
        federations and from every copying replicate.
    """
    out = {}
    for (source, rule), part in frame.groupby(["source", "rule"]):
        if source == "synthetic":
            part = part[part["pattern"] == "none"]
        if len(part):
            below = np.sum(np.array(part["benign_pairs_below"].tolist()), axis=0)
            out[(source, rule)] = below / part["benign_pairs"].sum() / THRESHOLDS
    return out


def report(frame: pd.DataFrame, folder: Path, args: argparse.Namespace) -> None:
    """Write ``verdict_rules.png``, ``summary.md`` and ``summary.csv`` into ``folder``.

    Parameters
    ----------
    frame : pandas.DataFrame
        The study's results (one row per federation and rule).
    folder : pathlib.Path
        ``results/verdict_rules/`` or its ``quick/``.
    args : argparse.Namespace
        The parsed command line (``args.quick``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.concat([frame, candidate_rows(frame)], ignore_index=True)
    table = summary_table(frame)
    table.to_csv(folder / "summary.csv", index=False)
    (folder / "summary.md").write_text(_markdown(table, frame, args.quick))
    _figure(table, calibration(frame), folder, args.quick)
    plt.close("all")


def main(argv: list[str] | None = None) -> int:
    """Run the study (resumable) and write its report."""
    return study_main(build, report, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

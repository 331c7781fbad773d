r"""Rates (docs/claims.md §4, the paper's Figure 1): ||P_A^ - P_A||_F falls with K and
n.

Regression generator (docs/model.md §2.3 (b)), 10% contaminated clients of type
``orthogonal``, CLAIR with ``rank=r``, ``detect="test"``, ``sigma=local_sd``.

The first-order prediction (docs/claims.md §4.6) is :math:`\sigma\sqrt{p r / (n q K)} /
s`: slope
-1/2 in log K and in log n. Its refined form, used for the level: with the benign
stack :math:`A B^T + N`, :math:`\hat A - A \approx P_A^\perp N B (B^TB)^{-1}`,
:math:`\|P_{\hat A} - P_A\|_F^2 \approx 2 \|P_A^\perp \hat A\|_F^2`,
:math:`B^T B \approx m q s^2 I_r` (m = |S|) and OLS noise of per-entry variance
:math:`\tau^2 = \sigma^2 / (n - p - 1)`, so

.. math::

    E\|P_{\hat A} - P_A\|_F^2 \approx 2 (p - r) r \sigma^2 / ((n - p - 1) m q s^2).

Over n in [4p, 32p] its log-n slope is -n / (2 (n - p - 1)) averaged, about
-0.55, inside the band [-0.7, -0.3] asserted below. Both predictions live in
:mod:`clair_stats.theory.t4`.
"""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm

from clair_stats import FederatedModel, clair
from clair_stats.evaluation.metrics import projection_distance
from clair_stats.theory.t4 import refined_prediction, spec_prediction
from theory_checks._mode import FULL
from theory_checks.strategies_t34 import monte_carlo_runtime

SIGMA, S_SCALE, GAMMA = 1.0, 1.0, 0.1
# (p, q, r, n) of the K path; the n path uses the same (p, q, r) at K_FIXED
CONFIGS = (
    ((30, 3, 3, 120), (20, 2, 2, 80), (40, 4, 2, 200), (20, 1, 2, 100))
    if FULL
    else ((30, 3, 3, 120), (20, 2, 2, 80), (20, 1, 2, 100))
)
K_GRID = (20, 40, 80, 160, 320) if FULL else (20, 40, 80, 160)
N_MULT = (4, 8, 16, 32)  # n = multiple * p
K_FIXED = 40
REPS = 20 if FULL else 8
BAND = (-0.7, -0.3)


def _errors(p, q, r, n, K, seed):
    """REPS values of (||P_A^ - P_A||_F, refined prediction)."""
    model = FederatedModel(
        p=p,
        q=q,
        rank=r,
        n_clients=K,
        contamination=GAMMA,
        contamination_type="orthogonal",
        signal_scale=S_SCALE,
    )
    out = []
    for i in range(REPS):
        s = model.sample_regression(n, sigma=SIGMA, seed=seed + i)
        res = clair(s.updates, rank=r, detect="test", sigma=s.local_sd)
        m = int(s.benign.sum())
        out.append(
            (
                projection_distance(res.subspace, s.subspace),
                refined_prediction(p, q, r, n, m, sigma=SIGMA, signal_scale=S_SCALE),
            )
        )
    return out


def _slope(x, y):
    """OLS of log y on log x: (slope, 95% CI)."""
    fit = sm.OLS(np.log(y), sm.add_constant(np.log(x))).fit()
    lo, hi = fit.conf_int(0.05)[1]
    return float(fit.params[1]), (float(lo), float(hi))


def _path(config, axis):
    p, q, r, n0 = config
    grid = K_GRID if axis == "K" else tuple(mult * p for mult in N_MULT)
    xs, errs, preds, means = [], [], [], []
    for j, value in enumerate(grid):
        K, n = (value, n0) if axis == "K" else (K_FIXED, value)
        rows = _errors(p, q, r, n, K, seed=10_000 * j + 97 * p + q)
        xs += [value] * len(rows)
        errs += [e for e, _ in rows]
        preds += [e for _, e in rows]
        means.append(
            (value, np.mean([e for e, _ in rows]), np.mean([e for _, e in rows]))
        )
    slope, ci = _slope(np.array(xs, float), np.array(errs))
    ratio = float(np.mean(np.array(errs) / np.array(preds)))
    # slope of the refined first-order prediction over the same grid
    pred_slope, _ = _slope(np.array(xs, float), np.array(preds))
    return {
        "slope": slope,
        "ci": ci,
        "pred_slope": pred_slope,
        "means": means,
        "ratio": ratio,
    }


@pytest.fixture(scope="module")
def paths():
    with monte_carlo_runtime():
        out = {
            (config, axis): _path(config, axis)
            for config in CONFIGS
            for axis in ("K", "n")
        }
    print("\nRates: ||P_A^ - P_A||_F; slope (95% CI) of log error on log K / log n")
    for (config, axis), row in out.items():
        p, q, r, n0 = config
        lo, hi = row["ci"]
        pts = ", ".join(f"{v}:{e:.4f}" for v, e, _ in row["means"])
        spec = [
            spec_prediction(
                p,
                q,
                r,
                *((n0, v) if axis == "K" else (v, K_FIXED)),
                sigma=SIGMA,
                signal_scale=S_SCALE,
            )
            for v, _, _ in row["means"]
        ]
        print(
            f" (p,q,r)={config[:3]} {'n=' + str(n0) if axis == 'K' else 'K=40'} "
            f"log {axis}: {row['slope']:.3f} [{lo:.3f}, {hi:.3f}] (refined "
            f"{row['pred_slope']:.3f})  err/refined "
            f"{row['ratio']:.2f}  err/first-order {row['means'][0][1] / spec[0]:.2f}"
            f"  means {pts}"
        )
    return out


@pytest.mark.parametrize("axis", ["K", "n"])
@pytest.mark.parametrize("config", CONFIGS)
def test_subspace_error_rate(paths, config, axis):
    """Property: ||P_A^ - P_A||_F falls like (K n)^(-1/2) (the rates of docs/claims.md
    §4.6, Figure 1).

    (i) The mean error decreases along the grid (each step down, by more than
    nothing: the mean at the next grid value is below the current one);
    (ii) the 95% OLS confidence interval of the slope of log error on log K
    (log n) contains -0.5 (first order), or contains the slope of the refined prediction
    over the same grid (-0.5 in K; -0.54 to -0.57 in n, from the (n - p - 1) of
    OLS), or lies inside [-0.7, -0.3];
    (iii) the level agrees with the first-order prediction: mean of error /
    refined prediction in [2/3, 3/2].
    """
    row = paths[config, axis]
    means = [e for _, e, _ in row["means"]]
    assert all(b < a for a, b in zip(means, means[1:], strict=False)), row["means"]
    lo, hi = row["ci"]
    assert (
        (lo <= -0.5 <= hi)
        or (lo <= row["pred_slope"] <= hi)
        or (BAND[0] <= lo and hi <= BAND[1])
    ), row
    assert 2 / 3 <= row["ratio"] <= 3 / 2, row

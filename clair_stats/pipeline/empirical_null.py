"""The empirical-null test of the off-subspace energies: no noise level needed.

The chi-square test of step 3 (docs/pipeline.md §3.3.2) divides E_k = ||P_{A^}^perp
Theta^_k||_F^2 by a noise
variance and compares it with chi^2_{(p - r) q}. That law assumes iid noise in all
p q entries; a LoRA update has rank r_k, and benign clients differ by the scale of
their training more than by chi-square sampling. On benign-only federations of
:func:`clair_stats.lora.synthetic.synthetic_federation` (K = 20, df = (p - r) q =
320), that test with the median rule flagged 22% of the clients per module
(5-40%), and the larger df of LLM modules only narrows chi^2_df / df further.

Here the log energies of the benign clients are modelled as iid normal, with
location and scale unknown (one family of K tests: one module, say). Client k is
scored against the others,

.. math:: z_k = \\frac{\\log E_k - \\operatorname{med}_{j \\ne k} \\log E_j}
          {1.4826\\, \\operatorname{MAD}_{j \\ne k} \\log E_j},

robust to fewer than half contaminated clients (as the median rule of docs/pipeline.md
§3.3.3).
Under the model z_k is pivotal: its law depends on K only. The p-value p_k =
P(Z >= z_k) comes from that law (:func:`null_law`): with X_1..X_{K-1} iid N(0, 1)
and (m, s) their median and normalised MAD, P(Z >= z) = E[Phi-bar(m + z s)],
averaged over ``draws`` simulated (m, s) with a fixed seed (conditional Monte
Carlo), tabulated once per (K, draws, seed) on a grid of z uniform in asinh(z)
and cached.

Accuracy (measured against 10^6 draws): the default 50000 draws give p_k within
20% down to p = 1e-4 at K = 8, 1e-5 at K = 20 and 1e-6 at K = 50-100; further
out they understate p (by up to 3x at p = 2e-5, K = 8). Beyond the grid (``|z|`` >
1e4) the last tabulated value is kept, which can only overstate p. With K = 8 the
normal or t_{K-1} reference would be far too liberal: measured family-wise error
0.34 and 0.12 at a nominal 0.05 (K = 8, 3 modules, Holm over the 24 p-values),
against 0.042 for this law (0.043 at K = 20; 2000 replicates each).
Calibration on LoRA energies (``simulations/verdict_rules.py``, per-module
p-values of benign (client, module) pairs): P(p <= 0.05) = 0.046 over 343,200
synthetic pairs and 0.019 over 4,480 pairs of the trained updates of the
sequence-copying experiment (K = 10); the chi-square test with the median rule
gave 0.30 and 0.25. The law has heavy tails for small K (the MAD of K - 1 values
is noisy): p = 6e-4 needs z >= 10.3 at K = 10, 5.3 at K = 20 and 3.9 at K = 50
(3.2 for a normal law), which costs power when K is small.
Computing the law costs about 1 s per K (50000 x (K - 1) normals and 241 grid
points); every later call with that K interpolates.

It is ``clair()``'s test when no noise level is known (``test="empirical"``,
:func:`clair_stats.pipeline.detection.empirical_energy_test`) and the per-module
score of the verdict of LoRA adapters (:mod:`clair_stats.lora.verdict`).
It imports numpy, scipy and :mod:`clair_stats.core` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.stats
from scipy.special import logsumexp

from clair_stats.core.validation import check_int, is_real_dtype

__all__ = ["DRAWS", "MAD_SCALE", "NullLaw", "energy_p_values", "null_law", "robust_z"]

#: 1.4826: the MAD of a normal sample times this estimates its standard deviation.
MAD_SCALE = 1.0 / scipy.stats.norm.ppf(0.75)
#: Default Monte Carlo draws of (m, s) for the null law.
DRAWS = 50000
# the grid of z: uniform in asinh(z) over |z| <= 1e4, where log P(Z >= z) is smooth
_GRID_SIZE, _GRID_MAX = 241, 1e4


@dataclass(frozen=True)
class NullLaw:
    """The law of the leave-one-out robust z-score of one of K iid normals.

    Parameters
    ----------
    n_clients : int
        K (the score uses the K - 1 others).
    draws : int
        Monte Carlo draws of (m, s).
    seed : int
        Seed of those draws.
    grid : numpy.ndarray, shape (241,)
        z, uniform in asinh(z) on [-1e4, 1e4].
    log_sf : numpy.ndarray, shape (241,)
        log P(Z >= z) on the grid.
    """

    n_clients: int
    draws: int
    seed: int
    grid: np.ndarray = field(repr=False)
    log_sf: np.ndarray = field(repr=False)

    @classmethod
    def from_draws(
        cls, location: np.ndarray, scale: np.ndarray, *, n_clients: int, seed: int
    ) -> NullLaw:
        """The law of Z = (X - m) / s for X ~ N(0, 1) independent of (m, s).

        .. math:: P(Z \\ge z) = E[\\bar\\Phi(m + z s)]
                  \\approx \\frac{1}{D} \\sum_{d=1}^{D} \\bar\\Phi(m_d + z s_d),

        over D simulated (location, scale) pairs, tabulated on the grid. Any
        robust score whose location and scale do not involve the scored value has
        this law (conditional Monte Carlo); :func:`null_law` is one.

        Parameters
        ----------
        location, scale : numpy.ndarray, shape (D,)
            Simulated (m_d, s_d), s_d > 0.
        n_clients : int
            K, recorded with the law.
        seed : int
            The seed of the simulation, recorded with the law.

        Returns
        -------
        NullLaw
        """
        top = np.arcsinh(_GRID_MAX)
        grid = np.sinh(np.linspace(-top, top, _GRID_SIZE))
        log_sf = np.array(
            [logsumexp(scipy.stats.norm.logsf(location + z * scale)) for z in grid]
        ) - np.log(location.size)
        grid.setflags(write=False)
        log_sf.setflags(write=False)
        return cls(n_clients, location.size, seed, grid, log_sf)

    def sf(self, z: np.ndarray) -> np.ndarray:
        """P(Z >= z), interpolated linearly in (asinh z, log P); any shape.

        Parameters
        ----------
        z : array_like
            Robust z-scores, any shape; beyond the grid (``|z| > 1e4``) the end
            values are used.

        Returns
        -------
        numpy.ndarray
            The upper-tail probabilities, in (0, 1], of the shape of ``z``.
        """
        z = np.asarray(z, dtype=float)
        log_p = np.interp(np.arcsinh(z), np.arcsinh(self.grid), self.log_sf)
        return np.minimum(np.exp(log_p), 1.0)


@lru_cache(maxsize=16)
def _null_law(n_clients: int, draws: int, seed: int) -> NullLaw:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((draws, n_clients - 1))
    med = np.median(x, axis=1)
    mad = MAD_SCALE * np.median(np.abs(x - med[:, None]), axis=1)
    mad = np.maximum(mad, np.finfo(float).tiny)
    return NullLaw.from_draws(med, mad, n_clients=n_clients, seed=seed)


def null_law(n_clients: int, draws: int = DRAWS, seed: int = 0) -> NullLaw:
    """The null law of :func:`robust_z` for K clients (cached per arguments).

    Parameters
    ----------
    n_clients : int
        K >= 3.
    draws : int
        Monte Carlo draws of (m, s), >= 1000.
    seed : int
        Seed of those draws.

    Returns
    -------
    NullLaw
    """
    n_clients = check_int(n_clients, "n_clients", 3)
    draws = check_int(draws, "draws", 1000)
    seed = check_int(seed, "seed", 0)
    return _null_law(n_clients, draws, seed)


def _log_energies(energies: object) -> np.ndarray:
    """log E as float64 (..., K), K >= 3, with messages that say what to do."""
    arr = np.asarray(energies)
    if not is_real_dtype(arr.dtype):
        raise TypeError(f"energies must be real numbers, got dtype {arr.dtype}.")
    arr = arr.astype(np.float64)
    if arr.ndim < 1 or arr.shape[-1] < 3:
        raise ValueError(
            "energies must hold K >= 3 values along the last axis (two others to "
            f"estimate the location and scale from), got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        bad = np.sort(arr[~(np.isfinite(arr) & (arr > 0))])[:3]
        raise ValueError(
            f"the off-subspace energies must be finite and > 0; got {bad.tolist()}. "
            "A client whose update lies in the shared subspace exactly has energy "
            "0: noiseless updates cannot be tested this way (use clair(..., "
            "detect='support')), or choose a smaller rank r."
        )
    return np.log(arr)


def robust_z(energies: object) -> np.ndarray:
    """Leave-one-out robust z-scores of log E_k along the last axis.

    .. math:: z_k = (\\log E_k - \\operatorname{med}_{j \\ne k} \\log E_j)
              / (1.4826 \\operatorname{MAD}_{j \\ne k} \\log E_j).

    Parameters
    ----------
    energies : array_like, shape (..., K)
        E_k > 0, K >= 3; every leading index is its own family (a module).

    Returns
    -------
    numpy.ndarray, shape (..., K)
    """
    logs = _log_energies(energies)
    n = logs.shape[-1]
    # others[..., k, :] = the K - 1 log energies other than client k's
    leave_out = np.array([np.delete(np.arange(n), k) for k in range(n)])
    others = logs[..., leave_out]
    med = np.median(others, axis=-1)
    mad = MAD_SCALE * np.median(np.abs(others - med[..., None]), axis=-1)
    if np.any(mad == 0):
        where = np.argwhere(mad == 0)[0][:-1]
        at = f" (at index {tuple(where.tolist())})" if where.size else ""
        raise ValueError(
            "more than half of the clients have the same off-subspace energy (MAD "
            f"0){at}, so its spread cannot be estimated; are several updates "
            "identical copies?"
        )
    return (logs - med) / mad


def energy_p_values(
    energies: object, draws: int = DRAWS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Robust leave-one-out z-scores of log E_k and their exact null p-values.

    Under "the log energies of the benign clients are iid N(mu, s^2)",
    p_k = P(Z >= z_k) with Z the law of :func:`robust_z` for K clients
    (:func:`null_law`; accuracy in the module docstring). Scale-free: multiplying
    all energies by a constant changes nothing.

    Parameters
    ----------
    energies : array_like, shape (..., K)
        E_k > 0, K >= 3, e.g. (M, K) for M modules at once.
    draws : int
        Monte Carlo draws of the null law.
    seed : int
        Seed of those draws.

    Returns
    -------
    z : numpy.ndarray, shape (..., K)
    p_values : numpy.ndarray, shape (..., K)
        One-sided: large energies are evidence of contamination.

    Examples
    --------
    >>> z, p = energy_p_values([1.0, 1.2, 0.9, 1.1, 0.95, 1.05, 1.15, 40.0])
    >>> bool(p[-1] < 1e-3 < p[:-1].min())
    True
    """
    z = robust_z(energies)
    return z, null_law(z.shape[-1], draws, seed).sf(z)

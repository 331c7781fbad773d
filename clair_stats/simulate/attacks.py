r"""Omniscient attacks on federated matrix updates, for the robustness studies.

The contamination types of :mod:`~clair_stats.simulate.contamination` draw a
contaminated client's update from the model (docs/model.md §2.4). The attacks here
are chosen by an attacker who sees everything: the benign clients' updates as sent
(:math:`\hat\Theta_j`, noise included), the true subspace A, the backbone
:math:`\Theta_0`, the noise level :math:`\tau` and the defender's method. This is
the attack library that docs/beyond.md §8.1 asks for. Every attack is one public
function ``f(ctx, **params) -> (f, p, q)`` of an :class:`AttackContext`;
:func:`attack` calls one by name.

Notation (docs/model.md §1): :math:`Y_j = \hat\Theta_j - \Theta_0` for the m_b
benign updates as sent, :math:`\bar Y` their mean, :math:`X_k =
\hat\Theta^{own}_k - \Theta_0` for what attacker k would send if it were honest,
:math:`\rho = \mathrm{median}_j \|Y_j\|_F`, :math:`P_A = A A^T`,
:math:`P_A^\perp = I_p - P_A`, df = (p - r) q, K = m_b + f. Attacker k sends:

================  ====================================================================
name              :math:`\Theta_k`
================  ====================================================================
``random``        :math:`\Theta_0 + c\,\rho\,G_k / \|G_k\|_F`, G_k Gaussian [1]_
``sign_flip``     :math:`\Theta_0 - s X_k` (Li et al. [2]_)
``alie``          the same :math:`\mu - z\sigma`, benign mean, sd (Baruch et al. [3]_)
``ipm``           the same :math:`\Theta_0 - \varepsilon \bar Y` (Xie et al. [4]_)
``in_subspace``   :math:`\Theta_0 - s P_A X_k + P_A^\perp X_k` (:math:`\delta_k` benign)
``margin``        :math:`\Theta_0 + X_k + D`, one D with :math:`P_A D = 0` for all
``orthogonal``    :math:`\Theta_0 + U C_k^T` (norm :math:`c\rho`) + fresh noise, one
                  U with :math:`A^T U = 0`
``mimic``         a copy of one benign :math:`\hat\Theta_j` (Karimireddy et al. [5]_)
``adaptive``      :math:`\Theta_0 + P_A X_k + P_A^\perp E'_k + t v w_k^T`, v
                  :math:`\perp` A, t set by the cut of CLAIR's test [6]_
================  ====================================================================

:data:`ATTACKS` is the registry (name -> :class:`Attack`), :data:`VARIANTS` names
parametrised forms (``"alie_1.5"`` is ``alie`` with z = 1.5) and
:data:`STUDY_ATTACKS` lists what the robustness study runs. Random draws come from
``ctx.rng`` only, in the order each docstring states, so a seed reproduces an
attack; with no attacker (f = 0) nothing is drawn and the result has shape
(0, p, q).

References
----------
.. [1] P. Blanchard, E. M. El Mhamdi, R. Guerraoui, J. Stainer, "Machine learning
   with adversaries: Byzantine tolerant gradient descent", NeurIPS 2017.
.. [2] L. Li, W. Xu, T. Chen, G. B. Giannakis, Q. Ling, "RSA: Byzantine-robust
   stochastic aggregation methods for distributed learning from heterogeneous
   datasets", AAAI 2019.
.. [3] G. Baruch, M. Baruch, Y. Goldberg, "A little is enough: circumventing
   defenses for distributed learning", NeurIPS 2019.
.. [4] C. Xie, O. Koyejo, I. Gupta, "Fall of empires: breaking Byzantine-tolerant
   SGD by inner product manipulation", UAI 2019 (PMLR 115, 2020).
.. [5] S. P. Karimireddy, L. He, M. Jaggi, "Byzantine-robust learning on
   heterogeneous datasets via bucketing", ICLR 2022.
.. [6] He, Chen, Feng, "Federated LoRA fine-tuning for LLMs via collaborative
   alignment", arXiv:2605.21217, 2026.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy import optimize, stats

from clair_stats.core.linalg import off_subspace_energy
from clair_stats.core.validation import (
    check_alpha,
    check_bool,
    check_int,
    check_interval,
    check_nonnegative,
    check_orthonormal,
    check_positive,
    is_real_dtype,
)
from clair_stats.simulate._draws import FloatArray, project_out, rescale

__all__ = [
    "ATTACKS",
    "STUDY_ATTACKS",
    "VARIANTS",
    "Attack",
    "AttackContext",
    "adaptive",
    "adaptive_noncentrality",
    "alie",
    "attack",
    "baruch_z",
    "in_subspace",
    "ipm",
    "margin",
    "mimic",
    "orthogonal",
    "random",
    "sign_flip",
]


# ------------------------------------------------------------------------- context
@dataclass(frozen=True, eq=False)
class AttackContext:
    r"""What an omniscient attacker sees.

    Parameters
    ----------
    benign : ndarray, shape (m_b, p, q)
        The benign clients' updates :math:`\hat\Theta_j` as sent (noisy
        estimates); m_b >= 1.
    own : ndarray, shape (f, p, q)
        :math:`\hat\Theta^{own}_k`: what each attacker would send if it were honest
        (its own noisy benign-model estimate). f = 0 is allowed.
    subspace : ndarray, shape (p, r)
        The true A, orthonormal columns, 1 <= r < p.
    center : ndarray, shape (p, q), or None
        The backbone :math:`\Theta_0`; None means 0.
    noise_sd : float
        :math:`\tau` >= 0, the per-entry sd of the benign estimates' error.
    rng : numpy.random.Generator
        The source of every random draw of an attack.
    alpha : float
        The level of the defender's test (used by ``adaptive``).
    """

    benign: FloatArray
    own: FloatArray
    subspace: FloatArray
    center: FloatArray | None
    noise_sd: float
    rng: np.random.Generator
    alpha: float = 0.05

    def __post_init__(self) -> None:
        benign = _stack(self.benign, "benign")
        if benign.shape[0] < 1:
            raise ValueError(
                "benign holds no update; an attacker needs at least one benign "
                "client's update to attack (benign has shape (m_b, p, q), m_b >= 1)."
            )
        p, q = benign.shape[1:]
        own = _stack(self.own, "own", (p, q))
        subspace = check_orthonormal(self.subspace, "subspace", p=p, min_rank=1)
        if subspace.shape[1] >= p:
            raise ValueError(
                f"subspace must have r < p columns (span(A) needs a nonzero "
                f"complement), got shape {subspace.shape}."
            )
        center = None if self.center is None else _matrix(self.center, (p, q))
        if not isinstance(self.rng, np.random.Generator):
            raise TypeError(
                f"rng must be a numpy.random.Generator, got {type(self.rng).__name__}; "
                "pass np.random.default_rng(seed)."
            )
        checked = {
            "benign": benign,
            "own": own,
            "subspace": subspace,
            "center": center,
            "noise_sd": check_nonnegative(self.noise_sd, "noise_sd"),
            "alpha": check_alpha(self.alpha),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return (
            f"AttackContext(m_b={self.n_benign}, f={self.n_attackers}, p={self.p}, "
            f"q={self.q}, r={self.r}, center={self.center is not None}, "
            f"noise_sd={self.noise_sd:g}, alpha={self.alpha:g})"
        )

    @property
    def n_benign(self) -> int:
        """m_b, the number of benign updates."""
        return int(self.benign.shape[0])

    @property
    def n_attackers(self) -> int:
        """f, the number of attackers."""
        return int(self.own.shape[0])

    @property
    def n_clients(self) -> int:
        """K = m_b + f."""
        return self.n_benign + self.n_attackers

    @property
    def p(self) -> int:
        """Rows of each update."""
        return int(self.benign.shape[1])

    @property
    def q(self) -> int:
        """Columns of each update."""
        return int(self.benign.shape[2])

    @property
    def r(self) -> int:
        """dim span(A)."""
        return int(self.subspace.shape[1])

    @property
    def df(self) -> int:
        """(p - r) q, the degrees of freedom of CLAIR's chi-square statistic."""
        return (self.p - self.r) * self.q

    @property
    def backbone(self) -> FloatArray:
        r""":math:`\Theta_0` as a (p, q) array (zeros when ``center`` is None)."""
        return np.zeros((self.p, self.q)) if self.center is None else self.center


def _stack(value: object, name: str, pq: tuple[int, int] | None = None) -> FloatArray:
    """``value`` as a finite float64 (n, p, q) array (n = 0 allowed), or raise."""
    arr = np.asarray(value)
    if not is_real_dtype(arr.dtype):
        raise TypeError(
            f"{name} must hold real numbers, got dtype {arr.dtype}; pass a float "
            "array of shape (n, p, q)."
        )
    if arr.ndim != 3 or (pq is not None and arr.shape[1:] != pq):
        expected = "(n, p, q)" if pq is None else f"(n, {pq[0]}, {pq[1]})"
        raise ValueError(
            f"{name} must have shape {expected}, one p x q update per client stacked "
            f"along axis 0 (the p x q of benign), got shape {arr.shape}."
        )
    if min(arr.shape[1:]) < 1:
        raise ValueError(f"{name} has an empty p or q: shape {arr.shape}.")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return arr


def _matrix(value: object, pq: tuple[int, int]) -> FloatArray:
    """The backbone as a finite float64 (p, q) array, or raise."""
    arr = np.asarray(value)
    if not is_real_dtype(arr.dtype) or arr.shape != pq:
        raise ValueError(
            f"center must be a real (p, q) = {pq} array (Theta_0) or None (0), got "
            f"dtype {arr.dtype} and shape {arr.shape}."
        )
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError("center contains NaN or infinite values.")
    return arr


# ------------------------------------------------------------------------- helpers
def _none(ctx: AttackContext) -> FloatArray:
    """The (0, p, q) result of an attack without attackers."""
    return np.zeros((0, ctx.p, ctx.q))


def _same(ctx: AttackContext, block: FloatArray) -> FloatArray:
    """f copies of one (p, q) block, as a new (f, p, q) array."""
    return np.repeat(block[None], ctx.n_attackers, axis=0)


def _median_norm(ctx: AttackContext) -> float:
    r""":math:`\rho = \mathrm{median}_j \|\hat\Theta_j - \Theta_0\|_F` (benign)."""
    return float(np.median(np.linalg.norm(ctx.benign - ctx.backbone, axis=(1, 2))))


def _complement_basis(ctx: AttackContext, k: int) -> FloatArray:
    """A random p x k orthonormal basis U with A^T U = 0 (k <= p - r).

    Draws one p x k Gaussian matrix G; U = Q of the QR of :math:`P_A^\\perp G`.
    """
    q_, _ = np.linalg.qr(project_out(ctx.subspace, ctx.rng.standard_normal((ctx.p, k))))
    return project_out(ctx.subspace, q_)  # remove the round-off along A


def _finite(value: object, name: str) -> float:
    """``value`` as a finite float (any sign), or raise."""
    return check_interval(value, name, -math.inf, math.inf, closed="neither")


# ------------------------------------------------------------------------- attacks
def random(ctx: AttackContext, *, scale: float = 1.0) -> FloatArray:
    r"""Gaussian matrices with the median benign norm (Blanchard et al. 2017).

    .. math::

        \Theta_k = \Theta_0 + c\,\rho\, G_k / \|G_k\|_F, \qquad
        \rho = \mathrm{median}_{j} \|\hat\Theta_j - \Theta_0\|_F,

    with :math:`G_k` iid N(0, 1) entries (one (f, p, q) draw) and c = ``scale``.
    Source: the Gaussian Byzantine vectors of Blanchard, El Mhamdi, Guerraoui,
    Stainer, NeurIPS 2017 [1]_, with the norm matched to the benign updates as the
    ``random`` contamination type does (docs/model.md §2.4).

    Parameters
    ----------
    ctx : AttackContext
        What the attackers see (:class:`AttackContext`); random draws come from
        ``ctx.rng``.
    scale : float
        c > 0, the norm relative to rho.

    Returns
    -------
    ndarray, shape (f, p, q)

    References
    ----------
    .. [1] P. Blanchard, E. M. El Mhamdi, R. Guerraoui, J. Stainer, "Machine
       learning with adversaries: Byzantine tolerant gradient descent", NeurIPS 2017.
    """
    scale = check_positive(scale, "scale")
    if ctx.n_attackers == 0:
        return _none(ctx)
    gauss = ctx.rng.standard_normal((ctx.n_attackers, ctx.p, ctx.q))
    norms = np.linalg.norm(gauss, axis=(1, 2))
    return ctx.backbone + gauss * (scale * _median_norm(ctx) / norms)[:, None, None]


def sign_flip(
    ctx: AttackContext, *, s: float = 1.0, flip_backbone: bool = False
) -> FloatArray:
    r"""Each attacker flips (and scales) its own honest update (Li et al. 2019).

    .. math::

        \Theta_k = \Theta_0 - s\,(\hat\Theta^{own}_k - \Theta_0)
        \qquad (\text{``flip_backbone=True``: } \Theta_k = -s\,\hat\Theta^{own}_k).

    Source: the sign-flipping attack of Li, Xu, Chen, Giannakis, Ling, "RSA",
    AAAI 2019 [1]_ (also attributed to Damaskinos et al., ICML 2018), which sends
    -s times the honest message. By default the deviation from the backbone is
    flipped: off span(A) the attacker then has :math:`\delta_k = s\,\|P_A^\perp
    (\Theta^{own}_k - \Theta_0)\|_F` (s times a benign one) and, at s = 1, is
    undetectable by an off-subspace test. ``flip_backbone=True`` flips the whole
    update, backbone included, which adds :math:`-(1 + s)\Theta_0` to the
    deviation (detectable when :math:`P_A^\perp \Theta_0 \ne 0`; docs/model.md
    §2.4 discusses both readings).

    Parameters
    ----------
    ctx : AttackContext
        What the attackers see (:class:`AttackContext`); random draws come from
        ``ctx.rng``.
    s : float
        s > 0, the scale of the flip.
    flip_backbone : bool
        Flip the whole update instead of its deviation from :math:`\Theta_0`.

    Returns
    -------
    ndarray, shape (f, p, q)

    References
    ----------
    .. [1] L. Li, W. Xu, T. Chen, G. B. Giannakis, Q. Ling, "RSA: Byzantine-robust
       stochastic aggregation methods for distributed learning from heterogeneous
       datasets", AAAI 2019.
    """
    s = check_positive(s, "s")
    if check_bool(flip_backbone, "flip_backbone"):
        return -s * ctx.own
    return ctx.backbone - s * (ctx.own - ctx.backbone)


def baruch_z(n_clients: int, n_attackers: int) -> float:
    r"""Baruch et al.'s :math:`z_{\max}` for K clients of which f attack.

    .. math::

        s = \lfloor K/2 + 1 \rfloor - f, \qquad
        z_{\max} = \max\{z : \Phi(z) < (K - s)/K\} = \Phi^{-1}\bigl((K - s)/K\bigr),

    :math:`\Phi` the standard normal cdf. s is the number of benign clients the
    attackers need on their side for a majority; defined (finite) for
    :math:`1 \le f \le \lfloor K/2 \rfloor` (s >= 1). For example K = 40, f = 4:
    s = 17, :math:`z = \Phi^{-1}(0.575) \approx 0.19`; f = 18: s = 3,
    :math:`z = \Phi^{-1}(0.925) \approx 1.44`.

    Some public implementations evaluate :math:`\Phi^{-1}((K - f - s)/(K - f))`
    instead (the share among the benign clients), which gives smaller z; this
    function follows the paper.

    Parameters
    ----------
    n_clients : int
        K, benign and attackers together.
    n_attackers : int
        f, 1 <= f <= floor(K / 2), f < K.

    Returns
    -------
    float

    References
    ----------
    .. [1] G. Baruch, M. Baruch, Y. Goldberg, "A little is enough: circumventing
       defenses for distributed learning", NeurIPS 2019.
    """
    n_clients = check_int(n_clients, "n_clients", 2)
    n_attackers = check_int(n_attackers, "n_attackers", 1)
    supporters = n_clients // 2 + 1 - n_attackers  # floor(K/2 + 1) - f
    if supporters < 1 or n_attackers >= n_clients:
        raise ValueError(
            f"z='baruch' needs s = floor(K/2 + 1) - f >= 1, that is f <= floor(K/2); "
            f"got K={n_clients}, f={n_attackers} (s={supporters}), where "
            "Phi^{-1}((K - s)/K) is infinite or undefined. Pass a number z instead."
        )
    return float(stats.norm.ppf((n_clients - supporters) / n_clients))


def alie(ctx: AttackContext, *, z: float | str = "baruch", ddof: int = 1) -> FloatArray:
    r"""A little is enough (Baruch, Baruch, Goldberg, NeurIPS 2019).

    Every attacker sends the same matrix

    .. math::

        \Theta_k = \mu - z\,\sigma, \qquad
        \mu = \frac{1}{m_b}\sum_j \hat\Theta_j, \qquad
        \sigma = \Bigl(\frac{1}{m_b - d}\sum_j (\hat\Theta_j - \mu)^2\Bigr)^{1/2}
        \ \text{(entrywise)},

    d = ``ddof`` (1 by default: the sample sd, the unbiased variance; 0: the
    population sd). z = "baruch" is the paper's :math:`z_{\max}` for K = m_b + f
    clients, :func:`baruch_z`: :math:`s = \lfloor K/2 + 1\rfloor - f`,
    :math:`z = \Phi^{-1}((K - s)/K)`. The paper moves every coordinate by
    :math:`z\sigma_j` away from the mean inside :math:`(\mu_j - z\sigma_j, \mu_j +
    z\sigma_j)`, with :math:`\mu, \sigma` estimated from the parameters the attacker
    holds; the omniscient form here takes them from the benign updates as sent, and
    subtracts, as usual in later work (the law is symmetric). :math:`\Theta_0`
    enters only through the benign updates. The f identical copies stack into a
    block of rank at most q, which CLAIR's decomposition can absorb into L^
    (docs/beyond.md §8.1).

    Parameters
    ----------
    ctx : AttackContext
        What the attackers see (:class:`AttackContext`); random draws come from
        ``ctx.rng``.
    z : float or "baruch"
        The number of standard deviations (any finite number), or "baruch".
    ddof : {1, 0}
        Delta degrees of freedom of the sd; needs m_b > ddof.

    Returns
    -------
    ndarray, shape (f, p, q)
        f identical copies.

    References
    ----------
    .. [1] G. Baruch, M. Baruch, Y. Goldberg, "A little is enough: circumventing
       defenses for distributed learning", NeurIPS 2019.
    """
    if isinstance(z, str):
        if z != "baruch":
            raise ValueError(
                f"z must be a finite number or 'baruch' (Baruch et al.'s z_max), "
                f"got {z!r}."
            )
    else:
        z = _finite(z, "z")
    ddof = check_int(ddof, "ddof", 0)
    if ddof > 1:
        raise ValueError(
            f"ddof must be 0 (population sd) or 1 (sample sd), got {ddof}."
        )
    if ctx.n_benign <= ddof:
        raise ValueError(
            f"alie with ddof={ddof} needs at least {ddof + 1} benign updates to "
            f"compute a standard deviation, got {ctx.n_benign}; pass ddof=0 or more "
            "benign updates."
        )
    if ctx.n_attackers == 0:
        return _none(ctx)
    z_value = baruch_z(ctx.n_clients, ctx.n_attackers) if z == "baruch" else z
    mean = ctx.benign.mean(axis=0)
    sd = ctx.benign.std(axis=0, ddof=ddof)
    return _same(ctx, mean - z_value * sd)


def ipm(ctx: AttackContext, *, eps: float = 0.5) -> FloatArray:
    r"""Inner-product manipulation (Xie, Koyejo, Gupta, UAI 2019).

    Every attacker sends the same matrix

    .. math::

        \Theta_k = \Theta_0 - \varepsilon\,\Bigl(\frac{1}{m_b}\sum_j \hat\Theta_j
        - \Theta_0\Bigr),

    -epsilon times the benign mean, measured from the backbone, so that the
    aggregate's inner product with the true mean turns negative. The paper uses a
    small epsilon against median-type rules (0.1, 0.5) and a large one against the
    mean; the study runs 0.5 and 2.

    Parameters
    ----------
    ctx : AttackContext
        What the attackers see (:class:`AttackContext`); random draws come from
        ``ctx.rng``.
    eps : float
        epsilon > 0.

    Returns
    -------
    ndarray, shape (f, p, q)
        f identical copies.

    References
    ----------
    .. [1] C. Xie, O. Koyejo, I. Gupta, "Fall of empires: breaking
       Byzantine-tolerant SGD by inner product manipulation", UAI 2019 (PMLR 115,
       2020).
    """
    eps = check_positive(eps, "eps")
    if ctx.n_attackers == 0:
        return _none(ctx)
    theta0 = ctx.backbone
    return _same(ctx, theta0 - eps * (ctx.benign.mean(axis=0) - theta0))


def in_subspace(ctx: AttackContext, *, s: float = 3.0) -> FloatArray:
    r"""Flip and amplify the in-subspace part of the own update (new here).

    .. math::

        \Theta_k = \Theta_0 - s\,P_A X_k + P_A^\perp X_k, \qquad
        X_k = \hat\Theta^{own}_k - \Theta_0 .

    The off-subspace part, heterogeneity and noise included, is the attacker's
    honest one, so its statistic has the benign law (undetectable); and what a
    client contributes to the others' refinement is its off-subspace part
    (docs/model.md §2.2), so by construction it does not harm them. It tests that
    CLAIR leaves in-subspace manipulation to the attacker's own estimate.

    Parameters
    ----------
    ctx : AttackContext
        What the attackers see (:class:`AttackContext`); random draws come from
        ``ctx.rng``.
    s : float
        s > 0, the factor of the flipped in-subspace part.

    Returns
    -------
    ndarray, shape (f, p, q)
    """
    s = check_positive(s, "s")
    dev = ctx.own - ctx.backbone
    inside = ctx.subspace @ (ctx.subspace.T @ dev)
    return ctx.backbone - s * inside + (dev - inside)


def margin(ctx: AttackContext, *, m: float = 1.0) -> FloatArray:
    r"""A common off-subspace offset at m times the benign noise norm (new here).

    .. math::

        \Theta_k = \hat\Theta^{own}_k + D, \qquad D = m\,\tau\sqrt{(p - r) q}\;
        \frac{P_A^\perp G}{\|P_A^\perp G\|_F},

    one D for all attackers, G a p x q Gaussian draw (one draw), so that
    :math:`P_A D = 0` and :math:`\|D\|_F = m\tau\sqrt{(p-r)q}`, the typical norm
    :math:`\tau\sqrt{\mathrm{df}}` of a benign client's off-subspace noise (m is
    this multiple, not the number of benign clients). The attacker keeps its
    honest update, in-subspace part, heterogeneity and noise. At the true subspace
    its statistic :math:`T_k` (docs/pipeline.md §3.3.2) is noncentral chi-square
    with df and noncentrality :math:`m^2\,\mathrm{df}` (plus the heterogeneity):
    mean :math:`(1 + m^2)\,\mathrm{df}`. Being common, the f offsets form a
    low-rank block of the stacked M = [..., D, ..., D] (its column space is that
    of D, of rank min(p - r, q)) that can pull the estimated subspace
    (docs/beyond.md §8.1).

    Parameters
    ----------
    ctx : AttackContext
        What the attackers see (:class:`AttackContext`); random draws come from
        ``ctx.rng``.
    m : float
        m >= 0 (0: the honest update).

    Returns
    -------
    ndarray, shape (f, p, q)
    """
    m = check_nonnegative(m, "m")
    if ctx.n_attackers == 0:
        return _none(ctx)
    off = project_out(ctx.subspace, ctx.rng.standard_normal((ctx.p, ctx.q)))
    offset = rescale(off, m * ctx.noise_sd * math.sqrt(ctx.df))
    return ctx.own + offset


def orthogonal(ctx: AttackContext, *, scale: float = 1.0) -> FloatArray:
    r"""A coordinated group in a second subspace orthogonal to A (new here).

    .. math::

        \Theta_k = \Theta_0 + c\,\rho\,\frac{U C_k^T}{\|U C_k^T\|_F} + E'_k,

    U (p x r') one random orthonormal basis with :math:`A^T U = 0` shared by the
    group (r' = min(r, p - r)), :math:`C_k` (q x r') iid N(0, 1), rho the median
    benign norm, c = ``scale``, and :math:`E'_k` fresh iid :math:`N(0, \tau^2)`
    entries standing in for the attacker's own estimation noise. The group is a
    second low-rank block, the coordinated form of Xu et al.'s orthogonal outliers
    and of the ``subspace`` contamination type (docs/model.md §2.4). Draws: U (one
    p x r' matrix), then all :math:`C_k`, then all :math:`E'_k`.

    Parameters
    ----------
    ctx : AttackContext
        What the attackers see (:class:`AttackContext`); random draws come from
        ``ctx.rng``.
    scale : float
        c > 0, the norm of the structured part relative to rho.

    Returns
    -------
    ndarray, shape (f, p, q)
    """
    scale = check_positive(scale, "scale")
    f = ctx.n_attackers
    if f == 0:
        return _none(ctx)
    basis = _complement_basis(ctx, min(ctx.r, ctx.p - ctx.r))
    coef = ctx.rng.standard_normal((f, ctx.q, basis.shape[1]))
    block = np.einsum("pr,kqr->kpq", basis, coef)
    block *= (scale * _median_norm(ctx) / np.linalg.norm(block, axis=(1, 2)))[
        :, None, None
    ]
    noise = ctx.noise_sd * ctx.rng.standard_normal((f, ctx.p, ctx.q))
    return ctx.backbone + block + noise


def mimic(ctx: AttackContext, *, target: int | None = None) -> FloatArray:
    r"""Every attacker copies one benign update (Karimireddy, He, Jaggi, ICLR 2022).

    .. math::

        \Theta_k = \hat\Theta_{j^*}, \qquad
        j^* = \arg\max_j \|P_A^\perp(\hat\Theta_j - \Theta_0)\|_F
        \ \ (\text{or } j^* = \texttt{target}).

    The copies are each a benign update, so no single one is an outlier, but
    together they over-weight one client. Karimireddy et al. choose the client
    that is most extreme along the top principal direction of the benign updates;
    against CLAIR the relevant extremity is off span(A), so the default target is
    the benign client with the largest off-subspace energy (the first on ties).

    Parameters
    ----------
    ctx : AttackContext
        What the attackers see (:class:`AttackContext`); random draws come from
        ``ctx.rng``.
    target : int or None
        Index 0 <= target < m_b into ``ctx.benign``; None: the rule above.

    Returns
    -------
    ndarray, shape (f, p, q)
        f identical copies.

    References
    ----------
    .. [1] S. P. Karimireddy, L. He, M. Jaggi, "Byzantine-robust learning on
       heterogeneous datasets via bucketing", ICLR 2022.
    """
    if target is None:
        energy = off_subspace_energy(ctx.benign, ctx.subspace, ctx.center)
        target = int(np.argmax(energy))
    else:
        target = check_int(target, "target", 0)
        if target >= ctx.n_benign:
            raise ValueError(
                f"target must index a benign update, 0 <= target < m_b = "
                f"{ctx.n_benign}, got {target}."
            )
    return _same(ctx, ctx.benign[target])


def adaptive_noncentrality(df: int, cut: float, exceed: float) -> float:
    """lambda >= 0 with P(chi^2_df(lambda) > cut) = exceed (0 if chi^2_df already does).

    The largest noncentrality an attacker can carry while its statistic stays
    below ``cut`` with probability 1 - ``exceed``; found by Brent's method on
    the noncentral chi-square survival function, increasing in lambda.

    Parameters
    ----------
    df : int
        The degrees of freedom of the chi-square law, (p - r) q.
    cut : float
        The cut c_K on the statistic (a chi-square quantile), > 0.
    exceed : float
        The probability, in (0, 1), that the attacker's statistic may exceed
        the cut.

    Returns
    -------
    float
        The noncentrality lambda (0.0 when the central law already exceeds the
        cut with probability ``exceed`` or more).
    """
    if stats.chi2.sf(cut, df) >= exceed:
        return 0.0

    def excess(lam: float) -> float:
        return float(stats.ncx2.sf(cut, df, lam)) - exceed

    upper = cut
    while excess(upper) < 0:
        upper *= 2.0
    return float(optimize.brentq(excess, 0.0, upper, xtol=1e-12, rtol=1e-12))


def adaptive(
    ctx: AttackContext, *, exceed: float = 0.05, coherent: bool = True
) -> FloatArray:
    r"""An adaptive attack against CLAIR's test: pull A^ from under the cut (new here).

    The attackers know CLAIR's test (docs/pipeline.md §3.3.2, §3.3.6): at the true
    (A, :math:`\Theta_0`), :math:`T_k = \|P_A^\perp(\hat\Theta_k - \Theta_0)\|_F^2
    / \tau^2 \sim \chi^2_{\mathrm{df}}`, df = (p - r) q, and Holm at level alpha over
    K = m_b + f clients first compares the smallest p-value with alpha / K, that is
    T_k with the cut :math:`c_K = \chi^2_{\mathrm{df}}`-quantile at 1 - alpha / K.
    Every attacker sends

    .. math::

        \Theta_k = \Theta_0 + P_A X_k + P_A^\perp E'_k + t\, v\, w_k^T, \qquad
        P\bigl(\chi^2_{\mathrm{df}}(t^2 / \tau^2) > c_K\bigr) = \text{exceed},

    with :math:`X_k = \hat\Theta^{own}_k - \Theta_0` (its honest in-subspace part),
    :math:`E'_k` fresh iid :math:`N(0, \tau^2)` entries (benign-like noise), v one
    random unit p-vector with :math:`A^T v = 0` shared by all attackers, and unit
    q-vectors :math:`w_k`: one w for all (``coherent=True``) or one per attacker.

    **Under the cut.** At the true (A, :math:`\Theta_0`), :math:`T_k = \|P_A^\perp
    E'_k + t v w_k^T\|_F^2/\tau^2` is noncentral chi-square with df degrees of
    freedom and noncentrality :math:`\lambda = t^2/\tau^2`: the offset t is the
    largest for which an attacker is above the cut with probability only
    ``exceed`` (:func:`adaptive_noncentrality`; 0.05 by default, so that about
    one attacker in twenty is flagged at the true subspace). The gap between df
    and the cut is only about :math:`z_{\alpha/K}\sqrt{2\,\mathrm{df}}`, so
    lambda is a fraction of it (about 0.3-0.5).

    **The pull.** The rank-r fit of CLAIR (top-r left singular vectors of the
    stacked deviations) sees the group's energy :math:`f t^2` along v on top of the
    noise energy every client has there. It takes v in place of the weakest
    direction of span(A) once :math:`f t^2` exceeds that direction's energy
    excess over the noise (about :math:`K q s^2` for coefficients of sd s: the
    attackers keep their honest in-subspace parts). Then the attackers' offsets are
    inside :math:`\hat A`, and every benign client's part along the lost direction
    is counted off :math:`\hat A`, inflating its statistic.

    **coherent.** Either way every offset :math:`t v w_k^T` has column space
    span(v), so the pull on the column space is the same (energy :math:`f t^2`
    along v). With one w (True) the offsets are identical: their stack is rank
    one and their mean is the full :math:`t v w^T`, which also moves a mean-type
    centre. With one :math:`w_k` each (False) the offsets span up to min(f, q)
    row directions and largely cancel in the mean (their mean has norm about
    :math:`t/\sqrt{f}`), which keeps a centre in place and spreads the row-space
    (``side="right"``) signal.

    Draws: v (one p-vector), then w (one q-vector; f of them if not
    ``coherent``), then all :math:`E'_k`.

    Parameters
    ----------
    ctx : AttackContext
        Uses ``alpha``, ``noise_sd`` and K = m_b + f.
    exceed : float
        In (0, 1): the probability that an attacker's statistic exceeds the cut
        at the true subspace.
    coherent : bool
        One common w (True) or one per attacker (False).

    Returns
    -------
    ndarray, shape (f, p, q)
    """
    exceed = check_interval(
        exceed,
        "exceed",
        0.0,
        1.0,
        closed="neither",
        why=" It is the probability that an attacker is above the cut, e.g. 0.05.",
    )
    coherent = check_bool(coherent, "coherent")
    f = ctx.n_attackers
    if f == 0:
        return _none(ctx)
    cut = float(stats.chi2.isf(ctx.alpha / ctx.n_clients, ctx.df))
    t = ctx.noise_sd * math.sqrt(adaptive_noncentrality(ctx.df, cut, exceed))
    v = _complement_basis(ctx, 1)[:, 0]
    w = ctx.rng.standard_normal((1 if coherent else f, ctx.q))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    noise = ctx.noise_sd * ctx.rng.standard_normal((f, ctx.p, ctx.q))
    dev = ctx.own - ctx.backbone
    inside = ctx.subspace @ (ctx.subspace.T @ dev)
    offset = t * v[None, :, None] * np.broadcast_to(w, (f, ctx.q))[:, None, :]
    return ctx.backbone + inside + project_out(ctx.subspace, noise) + offset


# ------------------------------------------------------------------------ registry
@dataclass(frozen=True, eq=False)
class Attack:
    """One registered attack.

    Parameters
    ----------
    function : callable
        ``function(ctx, **params) -> ndarray (f, p, q)``.
    defaults : mapping
        Its keyword parameters and their defaults (read-only).
    description : str
        The first line of its docstring.
    source : str
        Where it comes from (paper, year, venue, or "new here").
    """

    function: Callable[..., FloatArray]
    defaults: Mapping[str, object]
    description: str
    source: str


def _entry(function: Callable[..., FloatArray], source: str) -> Attack:
    """The registry entry of ``function``: defaults read from its signature."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    description = (function.__doc__ or "").strip().splitlines()[0]
    return Attack(function, MappingProxyType(defaults), description, source)


#: The attacks by name.
ATTACKS: dict[str, Attack] = {
    function.__name__: _entry(function, source)
    for function, source in (
        (random, "Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017"),
        (sign_flip, "Li, Xu, Chen, Giannakis, Ling (RSA), AAAI 2019"),
        (alie, "Baruch, Baruch, Goldberg, NeurIPS 2019"),
        (ipm, "Xie, Koyejo, Gupta, UAI 2019 (PMLR 115, 2020)"),
        (in_subspace, "new here (docs/model.md §2.2: delta_k benign)"),
        (margin, "new here (docs/beyond.md §8.1: common offset)"),
        (orthogonal, "new here (coordinated form of Xu, Caramanis, Sanghavi 2012)"),
        (mimic, "Karimireddy, He, Jaggi, ICLR 2022"),
        (adaptive, "new here (against CLAIR's chi-square test and Holm)"),
    )
}

#: Named parametrised variants: name -> (attack, fixed parameters).
VARIANTS: dict[str, tuple[str, Mapping[str, object]]] = {
    name: (base, MappingProxyType(params))
    for name, base, params in (
        ("alie_baruch", "alie", {"z": "baruch"}),
        ("alie_1.5", "alie", {"z": 1.5}),
        ("ipm_0.5", "ipm", {"eps": 0.5}),
        ("ipm_2", "ipm", {"eps": 2.0}),
        ("margin_1", "margin", {"m": 1.0}),
        ("margin_2", "margin", {"m": 2.0}),
        ("margin_4", "margin", {"m": 4.0}),
    )
}

#: The attacks the robustness study runs (registry names or variants).
STUDY_ATTACKS: tuple[str, ...] = (
    "random",
    "sign_flip",
    "alie_baruch",
    "alie_1.5",
    "ipm_0.5",
    "ipm_2",
    "in_subspace",
    "margin_1",
    "margin_2",
    "margin_4",
    "orthogonal",
    "mimic",
    "adaptive",
)


def attack(name: str, ctx: AttackContext, **params: object) -> FloatArray:
    """The updates of the attackers of ``ctx`` under attack ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`ATTACKS` or of :data:`VARIANTS`.
    ctx : AttackContext
        What the attackers see (:class:`AttackContext`); random draws come from
        ``ctx.rng``.
    **params
        Parameters of the attack (not those a variant fixes).

    Returns
    -------
    ndarray, shape (f, p, q)
        float64, finite, a new array.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> A = np.linalg.qr(rng.standard_normal((6, 2)))[0]
    >>> ctx = AttackContext(benign=rng.standard_normal((5, 6, 3)),
    ...                     own=rng.standard_normal((2, 6, 3)), subspace=A,
    ...                     center=None, noise_sd=1.0, rng=rng)
    >>> attack("ipm_2", ctx).shape
    (2, 6, 3)
    """
    if not isinstance(ctx, AttackContext):
        raise TypeError(f"ctx must be an AttackContext, got {type(ctx).__name__}.")
    if isinstance(name, str) and name in ATTACKS:
        base, fixed = name, {}
    elif isinstance(name, str) and name in VARIANTS:
        base, fixed = VARIANTS[name]
    else:
        raise ValueError(
            f"unknown attack {name!r}; valid names are {', '.join(ATTACKS)} "
            f"(attacks) and {', '.join(VARIANTS)} (variants)."
        )
    entry = ATTACKS[base]
    unknown = sorted(set(params) - set(entry.defaults))
    if unknown:
        raise ValueError(
            f"attack {base!r} has no parameter {', '.join(unknown)}; its parameters "
            f"(with defaults) are {dict(entry.defaults)}."
        )
    fixed_here = sorted(set(params) & set(fixed))
    if fixed_here:
        raise ValueError(
            f"the variant {name!r} fixes {dict(fixed)}; to choose "
            f"{', '.join(fixed_here)} call attack({base!r}, ctx, ...) instead."
        )
    out = entry.function(ctx, **fixed, **params)
    if out.shape != (ctx.n_attackers, ctx.p, ctx.q) or not np.isfinite(out).all():
        raise ValueError(
            f"attack {name!r} produced an array of shape {out.shape} with "
            f"{int(np.sum(~np.isfinite(out)))} non-finite values; the inputs are "
            "too large for float64 (rescale the updates)."
        )
    return out

"""The exact law of a weighted sum of chi-squares, and of its ratio to a chi-square.

A client's off-subspace energy E = ||P_perp (Theta^ - Theta)||_F^2, with the q
columns of the error iid N(0, C), has the law of Q = sum_j lambda_j chi^2_q
(independent chi-squares; lambda_j the eigenvalues of P_perp C P_perp,
:func:`projected_eigenvalues`). When C = sigma^2_hat G with sigma^2_hat ~
sigma^2 chi^2_nu / nu independent of the fit, the p-value of e is P(Q / (W / nu)
> e) = P(Q - (e / nu) W > 0), W ~ chi^2_nu: a weighted chi-square with one
negative weight. So one routine, :func:`weighted_chi2_sf`, P(sum_j w_j
chi^2_{h_j} > x) for weights of any sign and dofs h_j > 0 (integers or not),
serves both; :func:`energy_sf` is the p-value.

Method
------
With K(s) = -1/2 sum_j h_j log(1 - 2 s w_j), the cumulant generating function,
finite on (s_lo, s_hi), s_lo = 1 / (2 min_j w_j) (-inf if no weight is
negative) and s_hi = 1 / (2 max_j w_j) (+inf if none is positive),

.. math:: P(Q > x) = \\frac{1}{2 \\pi i} \\int_{c - i\\infty}^{c + i\\infty}
          e^{K(s) - s x} \\frac{ds}{s}, \\qquad 0 < c < s_{hi}.

Imhof's formula (1961), P(Q > x) = 1/2 + (1/pi) int_0^inf sin(theta(u)) /
(u rho(u)) du, theta(u) = 1/2 sum_j h_j arctan(w_j u) - x u / 2, rho(u) =
prod_j (1 + w_j^2 u^2)^(h_j / 4), is this integral on the imaginary axis, c ->
0 (s = i u / 2), the pole at 0 giving the 1/2. On the real u line its
integrand decays only like u^(-1 - D/2) (D = sum_j h_j) while it oscillates at
frequency x / 2: with ``max |w_j| = 1`` the bound ``|tail beyond U| <= 2 U^(-D/2) /
(pi D prod_j |w_j|^(h_j/2))`` asks for U ~ 4e23 at D = 1 for an absolute error of
1e-12; and the result is accurate in absolute terms only, so p-values below
~1e-10 lose their relative accuracy. By Cauchy's theorem the path may be moved
anywhere between the singularities (the pole at 0, the branch cuts [s_hi, inf)
and (-inf, s_lo]); here, as in Rice (1980), it goes through the saddlepoint.
It crosses the real axis at s^, K'(s^) = x, vertically (the direction of
steepest descent), and bends toward the side where exp(-s x) decays (for x = 0,
the ratio law, toward the side the steepest descent curves to, the sign of
K'''(s^)), on the scale L of the distance to the nearest branch point on that
side, asymptotically at 45 degrees:

    s(tau) = c + beta (sqrt(L^2 + y^2) - L) + i y,   y = sigma sinh(tau),

beta = +-1 or 0, c = s^ (moved to one Gaussian width 1 / sqrt(K''(s^)) from the
pole when s^ is nearer, at most halfway to s_hi), sigma = min(that width, c /
2, (s_hi - c) / 2), and P(Q > x) = (1/pi) int_0^inf Im[e^(K(s) - s x) s'(tau) /
s(tau)] dtau. Below the mean the upper tail of -Q at -x is computed instead
(P = 1 - P(-Q > -x)), so that s^ >= 0. On this path:

- the integrand decays double-exponentially in tau when x != 0, and like
  e^(-tau D / 2) when x = 0, with little oscillation: 30-50 nodes (about 320
  for the ratio law with D = 2, e.g. the F(1, 1) law);
- at tau = 0 it has the size of the answer (e^(K(s^) - s^ x) / (s^ sqrt(2 pi
  K''(s^))) in the tail), so the p-value keeps its relative accuracy into the
  far tail, by the same integral: no fallback is needed (a saddlepoint
  approximation such as Lugannani and Rice's, relative error O(1/D), would be
  the less accurate of the two);
- u -> 0 does not arise: the path stays at distance >= c from the pole.

Quadrature: the trapezoidal rule in tau, step 0.12. The integrand is even in
tau and analytic in a strip around the real axis, so the error falls like
exp(-2 pi a / step), a the strip's half-width (at most pi/4 here; Trefethen and
Weideman 2014); measured, the largest error over the sets below is 4e-12 at
step 0.15 and 1.3e-14 at 0.12. Error estimate: the same rule on the even nodes
(step 0.24); where the two differ by more than 1e-6 relative the step is
halved, up to 4 times, and a RuntimeWarning reports a value that still misses
(none in the tests). Truncation, Imhof's rho bound carried to the path:
``|1 - 2 s w_j| >= max(2 |w_j| Im s, a_j)`` (a_j = 1 - 2 c w_j, divided by sqrt(2)
where the path bends toward w_j's cut), so the integrand is at most ``B(tau) =
e^(K(c) - (Re s - c) x) prod_j max(2 |w_j| y, a_j)^(-h_j/2) sqrt(2) coth(tau)``,
whose logarithm decreases at a rate r >= D_T / 2 + x dRe(s)/dtau (D_T the dofs
with ``2 |w_j| y >= a_j``); the sum stops at the first T (checked every other node
from the 8th) where the bound on the rest, B(T) / r(T), is below 1e-16 of it.

Weights and x are divided by ``max_j |w_j|`` first (scale-free: 1e-300 and 1e300
give the same p-values), and 1 - 2 s w_j is computed from s_hi - s, exact near
the cut. Decided without the integral: P = 0 when no weight is positive and x
>= 0, or where the bound P(chi^2_{H+} > x / max_j w_j) (H+ the dofs of the
positive weights) underflows; with no positive weight and ``0 < -x < 1e-100 max
|w_j|``, the small-ball limit ``(-x/2)^(D/2) / (Gamma(D/2 + 1) prod_j
|w_j|^(h_j/2))``.

Accuracy, measured against

- scipy's chi2 law (equal weights, D = 1 to 2000): absolute error <= 5e-14 over
  the bulk (p from 1e-6 to 1 - 1e-6), relative error <= 2.2e-13 for p >= 1e-30
  and <= 1.8e-12 down to p = 1e-300 (the rounding of log p ~ -690);
- the F law, by mpmath's incomplete beta (the ratio case, d = 1 to 2000 and nu
  = 1 to 2000): absolute error <= 7.5e-14, relative error <= 1.5e-13 for p >=
  1e-30 and <= 2.6e-13 down to p = 1e-100;
- mpmath (25 digits, a different path, 660 cases: unequal, mixed-sign, spread
  over 1e-5 to 1, non-integer dofs, p down to 2.5e-305): absolute error <=
  9e-15, relative error <= 6e-13;
- the same integral at step 0.0375 (17460 values, including 15000 clients
  with 27 eigenvalues of multiplicity 5 and a ratio with nu = 1, 5, 40, 200):
  absolute error <= 1.3e-14, relative error (p < 1/2) <= 6.3e-14.

Cost: about 35 nodes x d weights x (a log and an atan2), vectorised over rows
in blocks of 2048. Measured (one core of a shared 2-core VM, numpy 2.4): 40-47
us per p-value for the ratio law with 27 eigenvalues of multiplicity 5 and one
negative weight (0.40-0.47 s per 10^4 clients), 35 us without the negative
weight, 32 us for 30 weights of dof 1, 150 us for 100 weights; plus about 4 ms
per call. (scipy.integrate.quad on Imhof's real-line integral: 2.7 ms per value
for the first case, and no good at small D.)

References
----------
Imhof (1961). Computing the distribution of quadratic forms in normal
variables. Biometrika 48(3/4), 419-426.
Davies (1980). Algorithm AS 155: the distribution of a linear combination of
chi-square random variables. Applied Statistics 29(3), 323-333.
Rice (1980). Distribution of quadratic forms in normal random variables -
evaluation by numerical integration. SIAM J. Sci. Stat. Comput. 1(4), 438-448.
Lugannani, Rice (1980). Saddle point approximation for the distribution of
the sum of independent random variables. Adv. Appl. Prob. 12(2), 475-490.
Trefethen, Weideman (2014). The exponentially convergent trapezoidal rule.
SIAM Review 56(3), 385-458.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.special
from numpy.typing import ArrayLike

from clair_stats.core.validation import (
    check_orthonormal,
    check_positive,
    check_real_array,
    is_real_dtype,
)

__all__ = ["energy_sf", "projected_eigenvalues", "weighted_chi2_sf"]

#: Step of the trapezoidal rule in the contour parameter tau (halved where the
#: estimate |S_h - S_2h| says so).
_STEP = 0.12
#: Rows whose |S_h - S_2h| exceeds this fraction of S_h get their step halved.
_REFINE_TOL = 1e-6
#: At most this many halvings of the step.
_MAX_HALVINGS = 4
#: The sum stops once the bound on the dropped tail is below this fraction of it.
_TAIL_TOL = 1e-16
#: Largest tau of the contour (sinh(60) ~ 6e25 Gaussian widths).
_TAU_MAX = 60.0
#: The contour bends on the scale L = _BEND x (distance from c to the nearest
#: branch point on the side it bends to, at least one Gaussian width).
_BEND = 2.0
#: Rows per vectorised block (bounds the memory to a few MB).
_CHUNK = 2048


def _saddlepoint(
    x: np.ndarray, w: np.ndarray, h: np.ndarray, s_hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The root s^ in [0, s_hi) of K'(s) = sum_j h_j w_j / (1 - 2 s w_j) = x.

    For rows with x >= K'(0) = sum_j h_j w_j (so that s^ >= 0) and max_j w_j > 0
    or x < 0 (so that the root exists). Returns ``(s^, delta)``, delta = s_hi -
    s^ (inf where s_hi = inf), computed as such: near the cut s^ is not
    representable to the precision that 1 - 2 s^ w_max needs.

    Safeguarded Newton in 1 / delta where s_hi is finite (1 - 2 s w_j = (1 - w_j
    / w_max) + 2 delta w_j, exact for the largest weight), in 1 / s otherwise. The
    bracket: K'(s) <= D+ / (1 - 2 s w_max) and K'(s) >= h_1 w_max / (1 - 2 s
    w_max) - D- (D+- = sum_j h_j max(+-w_j, 0), h_1 the dof of w_max) where s_hi
    is finite, K'(s) >= -D / (2 s) where it is not; a Newton step that leaves it
    is replaced by geometric bisection. The location matters to a thousandth of
    the Gaussian width 1 / sqrt(K''(s^)), the stopping rule.
    """
    n = x.size
    hw = h * w
    d_pos = np.clip(hw, 0.0, None).sum(axis=1)
    d_neg = -np.clip(hw, None, 0.0).sum(axis=1)
    finite = np.isfinite(s_hi)
    rows = np.arange(n)
    top = np.argmax(w, axis=1)
    w_max = w[rows, top]
    with np.errstate(divide="ignore", invalid="ignore"):
        base = np.where(finite[:, None], 1.0 - w / w_max[:, None], 1.0)
        base[rows, top] = np.where(finite, 0.0, base[rows, top])
        # finite s_hi: the bracket in delta; otherwise in s
        d_small = h[rows, top] / (2.0 * (x + d_neg))
        d_large = np.where(x > d_pos, d_pos / (2.0 * x * w_max), s_hi)
        s_large = np.sum(h, axis=1, where=w != 0) / (2.0 * np.abs(x))
    lo = np.where(finite, d_small, 0.0)
    hi = np.where(finite, np.minimum(d_large, s_hi), s_large)
    hi = np.maximum(hi, lo)
    t = np.where(finite, np.sqrt(lo) * np.sqrt(hi), 0.5 * hi)  # delta, or s
    active = np.ones(n, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(200):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            ta, wa, ha, fin = t[idx], w[idx], h[idx], finite[idx]
            # 1 - 2 s w_j
            step_w = 2.0 * ta[:, None] * wa
            den = np.where(fin[:, None], base[idx] + step_w, 1.0 - step_w)
            ratio = wa / den
            f = np.sum(ha * ratio, axis=1) - x[idx]  # increasing in s
            # t^2 K''(s), free of under/overflow however large s or delta
            scaled = ta[:, None] * ratio
            k2t2 = 2.0 * np.sum(ha * scaled * scaled, axis=1)
            # f increases with s, so decreases with delta: is t below the root?
            below = np.where(fin, f >= 0, f <= 0)
            lo[idx] = np.where(below, ta, lo[idx])
            hi[idx] = np.where(below, hi[idx], ta)
            # Newton in v = 1 / t, in which K' is nearly linear (h_1 / (2 delta)
            # near the cut, -D / (2 s) far out where no weight is positive)
            new = 1.0 / (1.0 / ta + np.where(fin, -f, f) / k2t2)
            la, hb = lo[idx], hi[idx]
            mid = np.where(la > 0, np.sqrt(la) * np.sqrt(hb), 0.5 * hb)
            new = np.where((new > la) & (new < hb), new, mid)
            tol = 1e-3 * ta / np.sqrt(k2t2)  # a thousandth of 1 / sqrt(K'')
            done = (np.abs(new - ta) <= tol) | (hb - la <= tol) | ~np.isfinite(new)
            t[idx] = np.where(np.isfinite(new), new, ta)
            active[idx[done]] = False
    delta = np.where(finite, t, np.inf)
    s = np.where(finite, s_hi - t, t)
    return s, delta


def _upper(x: np.ndarray, w: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, ...]:
    """P(Q > x) for rows with max |w_j| = 1 and x >= E Q = sum_j h_j w_j.

    Returns ``(log_scale, S, err)`` with P(Q > x) = exp(log_scale) S and err the
    estimate |S_h - S_2h| of the last halving, relative to S (inf where the
    truncation or the step did not converge).
    """
    n = x.size
    w_max = w.max(axis=1)
    w_min = w.min(axis=1)
    with np.errstate(divide="ignore"):
        s_hi = np.where(w_max > 0, 0.5 / np.where(w_max > 0, w_max, 1.0), np.inf)
        s_lo = np.where(w_min < 0, 0.5 / np.where(w_min < 0, w_min, -1.0), -np.inf)
    log_scale = np.full(n, -np.inf)
    value = np.zeros(n)
    err = np.zeros(n)
    # Decided without the integral (value 0 stays 0):
    # - no positive weight: Q <= 0 almost surely, P(Q > x) = 0 for x >= 0;
    # - far tail: sum_j w_j chi^2_{h_j} <= w_max chi^2_{H+} (H+ the dofs of the
    #   positive weights), so P(Q > x) <= P(chi^2_{H+} > x / w_max), and P = 0
    #   where that bound underflows;
    # - small ball, no positive weight and 0 < -x = eps < 1e-100: P(Q > x) =
    #   (eps/2)^(D/2) / (Gamma(D/2 + 1) prod_j |w_j|^(h_j/2)) (1 + O(r)), with
    #   r = eps sum_j h_j / (4 |w_j|) / (D/2 + 1), used when r < 1e-17.
    nonzero = w != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = scipy.special.chdtrc(
            np.sum(h, axis=1, where=w > 0), np.where(w_max > 0, x / w_max, 0.0)
        )
        far = (w_max > 0) & (x > 0) & (bound == 0.0)
        eps = -x
        dof = np.sum(h, axis=1, where=nonzero)
        inverse = np.sum(h / np.abs(w), axis=1, where=nonzero)
        ratio = eps * inverse / (4.0 * (dof / 2.0 + 1.0))
        ball = (w_max <= 0) & (x < 0) & (eps < 1e-100) & (ratio < 1e-17)
        log_ball = (
            dof / 2.0 * np.log(eps / 2.0)
            - scipy.special.gammaln(dof / 2.0 + 1.0)
            - 0.5 * np.sum(h * np.log(np.abs(w)), axis=1, where=nonzero)
        )
    log_scale[ball] = log_ball[ball]
    value[ball] = 1.0
    live = np.flatnonzero(~((w_max <= 0) & (x >= 0)) & ~far & ~ball)
    if live.size == 0:
        return log_scale, value, err
    x, w, h, s_hi, s_lo = x[live], w[live], h[live], s_hi[live], s_lo[live]
    finite = np.isfinite(s_hi)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s_hat, d_hat = _saddlepoint(x, w, h, s_hi)
        base = np.where(finite[:, None], 1.0 - 2.0 * s_hi[:, None] * w, 1.0)
        base[w == w.max(axis=1, keepdims=True)] = 0.0  # exact for the top weight

        def factors(s: np.ndarray, delta: np.ndarray) -> np.ndarray:
            """1 - 2 s w_j, as base_j + 2 delta w_j near the cut."""
            return np.where(
                finite[:, None],
                base + 2.0 * delta[:, None] * w,
                1.0 - 2.0 * s[:, None] * w,
            )

        def width(s: np.ndarray, delta: np.ndarray) -> np.ndarray:
            """1 / sqrt(K''(s)), the Gaussian width of the integrand at s.

            Computed as t / sqrt(t^2 K''(s)), t = min(max(s, 1), delta), free
            of under- and overflow when s and delta are huge (a tiny positive
            weight).
            """
            t = np.minimum(np.maximum(s, 1.0), delta)
            scaled = t[:, None] * w / factors(s, delta)
            return t / np.sqrt(2.0 * np.sum(h * scaled * scaled, axis=1))

        # the crossing point c: the saddlepoint, kept one Gaussian width (at
        # most half the way to the cut) from the pole at s = 0
        c_min = np.minimum(width(s_hat, d_hat), 0.5 * s_hi)
        move = s_hat < c_min
        c = np.where(move, c_min, s_hat)
        d_c = np.where(move, s_hi - c_min, d_hat)
        a_c = factors(c, d_c)  # 1 - 2 c w_j > 0
        g = width(c, d_c)
    sigma = np.minimum(np.minimum(g, 0.5 * c), 0.5 * d_c)
    # The side the path bends to: where exp(-s x) decays (beta = sign(x)), as
    # it must far out; for x = 0 (the ratio law) no side is forced, and the path
    # follows the steepest descent from the saddle, Re(s - c) ~ K'''(c) / (6
    # K''(c)) (Im s)^2: beta = sign(K'''(c)). The scale L of the bend is the
    # distance to the branch point on that side, at least one Gaussian width.
    skew = np.sum(h * (w / a_c) ** 3, axis=1)  # K'''(c) / 8
    beta = np.where(x != 0, np.sign(x), np.sign(skew))
    reach = np.where(beta > 0, d_c, np.where(beta < 0, c - s_lo, 1.0))
    bend = _BEND * np.maximum(reach, g)
    log_a = np.log(a_c)
    k_c = -0.5 * np.einsum("ij,ij->i", h, log_a) - c * x
    # The bound of the integrand's factors (Imhof's rho, generalised to the
    # contour): |1 - 2 s w_j| >= max(2 |w_j| Im s, a_j), with a_j = 1 - 2 w_j c
    # where w_j beta <= 0 (|Re(1 - 2 s w_j)| only grows) and a_j = (1 - 2 w_j c)
    # / sqrt(2) where w_j beta > 0 (as |Re s - c| <= Im s on the contour).
    log_floor = log_a - np.where(w * beta[:, None] > 0, 0.5 * np.log(2.0), 0.0)
    contour = (c, a_c, sigma, beta, bend, log_floor)
    acc, acc_even, tau_end = _trapezoid(x, w, h, contour, _STEP, None)
    step = _STEP
    s_fine = step / np.pi * acc.imag
    s_coarse = 2 * step / np.pi * acc_even.imag
    est = np.abs(s_fine - s_coarse)
    todo = np.flatnonzero(est > _REFINE_TOL * np.abs(s_fine))
    for _ in range(_MAX_HALVINGS):
        if todo.size == 0:
            break
        sub = tuple(part[todo] for part in contour)
        end = np.minimum(tau_end[todo], _TAU_MAX)
        mid = _trapezoid(x[todo], w[todo], h[todo], sub, step, end)[0]
        halved = 0.5 * (s_fine[todo] + step / np.pi * mid.imag)
        est[todo] = np.abs(halved - s_fine[todo])
        s_fine[todo] = halved
        step /= 2
        todo = todo[est[todo] > _REFINE_TOL * np.abs(halved)]
    with np.errstate(divide="ignore", invalid="ignore"):
        est = est / np.abs(s_fine)
    # an unconverged row (truncation bound not met by tau = _TAU_MAX, the step
    # estimate still above tolerance, or a non-finite value) gets err = inf
    est[~np.isfinite(tau_end) | ~np.isfinite(s_fine)] = np.inf
    est[todo] = np.inf
    log_scale[live] = k_c
    value[live] = np.maximum(s_fine, 0.0)
    err[live] = est
    return log_scale, value, err


def _trapezoid(
    x: np.ndarray,
    w: np.ndarray,
    h: np.ndarray,
    contour: tuple[np.ndarray, ...],
    step: float,
    tau_end: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum of G(tau) = exp(K(s) - s x - K(c) + c x) s'(tau) / s(tau) on the nodes.

    s(tau) = c + beta (sqrt(L^2 + y^2) - L) + i y, y = sigma sinh(tau). With
    ``tau_end`` None: the nodes k step, k = 0, 1, ... (k = 0 with weight 1/2),
    each row stopping where the tail bound allows; returns the sum, the sum over
    even k, and each row's last node (inf if the bound was not met by
    _TAU_MAX). Otherwise the midpoints (k + 1/2) step below ``tau_end`` (a
    refinement); returns their sum first.

    The factors 1 - 2 s w_j = a_j - 2 (s - c) w_j, with a_j = 1 - 2 c w_j
    computed accurately by the caller, are evaluated in real arithmetic (half
    the time of numpy's complex log): with u and v their real and imaginary
    parts, log(1 - 2 s w_j) = log(u^2 + v^2) / 2 + i atan2(v, u). On the upper
    half of the contour v has the sign of -w_j, fixed, so the principal branch
    is the analytic continuation from the real segment (s_lo, s_hi).
    """
    c, a_c, sigma, beta, bend, log_floor = contour
    n = x.size
    acc = np.zeros(n, dtype=complex)
    acc_even = np.zeros(n, dtype=complex)
    last = np.full(n, np.inf)
    refine = tau_end is not None
    with np.errstate(divide="ignore"):
        log_2w = np.log(2.0 * np.abs(w))
    # the rows still summing, and their data (compacted as rows finish)
    idx = np.arange(n)
    ends = tau_end if refine else np.full(n, np.inf)
    half_log_a = 0.5 * np.einsum("ij,ij->i", h, np.log(a_c))  # -K(c)
    rows = [x, 2.0 * w, h, a_c, c, sigma, beta, bend, half_log_a, ends]
    mats = [log_2w, log_floor]
    sum_all = np.zeros(n, dtype=complex)
    sum_even = np.zeros(n, dtype=complex)
    k = 0
    while idx.size:
        tau = (k + 0.5) * step if refine else k * step
        xi, w2, hi_, ai, ci, si, bi, li, half, end = rows
        if refine and np.any(tau >= end):
            keep = tau < end
            acc[idx[~keep]] = sum_all[~keep]
            idx = idx[keep]
            rows = [a[keep] for a in rows]
            sum_all, sum_even = sum_all[keep], sum_even[keep]
            if idx.size == 0:
                break
            xi, w2, hi_, ai, ci, si, bi, li, half, end = rows
        y = si * np.sinh(tau)
        hyp = np.hypot(li, y)
        shift = bi * (hyp - li)  # Re s - c
        ds = si * np.cosh(tau) * (bi * y / hyp + 1j)
        u = ai - shift[:, None] * w2
        v = -y[:, None] * w2
        with np.errstate(over="ignore"):
            log_r2 = np.log(u * u + v * v)
        huge = ci + np.abs(shift) + y > 1e150  # |s| so large that u^2 overflows
        if np.any(huge):
            log_r2[huge] = 2.0 * np.log(np.hypot(u[huge], v[huge]))
        re_k = -0.25 * np.einsum("ij,ij->i", hi_, log_r2)
        im_k = -0.5 * np.einsum("ij,ij->i", hi_, np.arctan2(v, u))
        with np.errstate(under="ignore"):
            term = (
                np.exp(re_k + half - shift * xi + 1j * (im_k - y * xi))
                * ds
                / (ci + shift + 1j * y)
            )
        if k == 0 and not refine:
            term = 0.5 * term
        sum_all += term
        if refine:
            k += 1
            continue
        if k % 2 == 0:
            sum_even += term
        if tau >= _TAU_MAX:  # not converged: reported by last = inf
            break
        if k >= 8 and k % 2 == 0:
            # Tail bound. For tau >= T, |G(tau)| <= B(tau) = exp(K(c) - (Re s -
            # c) x) prod_j max(2 |w_j| y, a_j)^(-h_j / 2) sqrt(2) coth(tau), and
            # log B decreases at a rate >= r = D_T / 2 + x beta y' y / hyp (D_T:
            # the dofs of the factors at 2 |w_j| y), so the sum beyond T is at
            # most B(T) / r.
            l2w, lfl = mats
            log_y = np.log(y)[:, None]
            grows = l2w + log_y >= lfl
            log_b = (
                half
                - xi * shift
                - 0.5 * np.einsum("ij,ij->i", hi_, np.where(grows, l2w + log_y, lfl))
                + np.log(np.sqrt(2.0) / np.tanh(tau))
            )
            rate = 0.5 * np.einsum("ij,ij->i", hi_, grows) + (
                xi * bi * si * np.cosh(tau) * y / hyp
            )
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                tail = np.where(rate > 0, np.exp(log_b) / rate, np.inf)
            done = tail <= _TAIL_TOL * np.abs(step * sum_all.imag)
            if np.any(done):
                acc[idx[done]] = sum_all[done]
                acc_even[idx[done]] = sum_even[done]
                last[idx[done]] = tau
                keep = ~done
                idx = idx[keep]
                rows = [a[keep] for a in rows]
                mats = [a[keep] for a in mats]
                sum_all, sum_even = sum_all[keep], sum_even[keep]
        k += 1
    acc[idx] = sum_all
    acc_even[idx] = sum_even
    return acc, acc_even, last


def _sf_rows(x: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """P(sum_j w_j chi^2_{h_j} > x) row by row; x (n,), w and h (n, d) (views)."""
    n = x.size
    out = np.empty(n)
    for start in range(0, n, _CHUNK):
        rows = slice(start, min(start + _CHUNK, n))
        out[rows] = _sf_block(
            np.array(x[rows], dtype=float),
            np.array(w[rows], dtype=float),
            np.array(h[rows], dtype=float),
        )
    return out


def _sf_block(x: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """:func:`_sf_rows` on one block of rows (copies, modified in place)."""
    scale = np.max(np.abs(w), axis=1, initial=0.0)
    p = (x < 0).astype(float)  # Q = 0 when every weight is 0
    rows = np.flatnonzero(scale > 0)
    if rows.size == 0:
        return p
    # scale-free: max_j |w_j| = 1
    w = w[rows] / scale[rows, None]
    x = x[rows] / scale[rows]
    h = np.where(w != 0, h[rows], 0.0)
    mean = np.sum(h * w, axis=1)
    # below the mean, P(Q > x) = 1 - P(-Q > -x): the tail computed is always
    # the one beyond the mean, where the saddlepoint s^ >= 0
    lower = x < mean
    sign = np.where(lower, -1.0, 1.0)
    log_scale, value, err = _upper(sign * x, sign[:, None] * w, h)
    if not np.all(np.isfinite(err)):
        bad = int(np.sum(~np.isfinite(err)))
        warnings.warn(
            f"weighted_chi2_sf: the inversion integral did not reach its accuracy "
            f"target for {bad} of {err.size} values (weights spanning more than "
            "~25 orders of magnitude?); those p-values may be inaccurate.",
            RuntimeWarning,
            stacklevel=4,
        )
    with np.errstate(under="ignore"):
        tail = np.exp(log_scale) * value
    p[rows] = np.clip(np.where(lower, 1.0 - tail, tail), 0.0, 1.0)
    return p


def weighted_chi2_sf(
    x: ArrayLike, weights: ArrayLike, dofs: ArrayLike | None = None
) -> np.ndarray | float:
    """P(Q > x) for Q = sum_j w_j chi^2_{h_j}, independent central chi-squares.

    Imhof's inversion integral of the characteristic function, on a path
    through the saddlepoint (module docstring). Measured: absolute error below
    1e-13, and relative error below 1e-12 in either tail (2e-12 at p = 1e-300),
    so the far tail needs no separate approximation.

    Parameters
    ----------
    x : array_like
        The thresholds; broadcast against the rows of ``weights``
        (``weights.shape[:-1]``).
    weights : array_like, shape (d,) or (..., d)
        w_j, of any sign; zeros are allowed (they drop out). One weight vector,
        or one per row (shape (K, d), or any leading shape).
    dofs : array_like, optional
        h_j > 0, the degrees of freedom, broadcast against ``weights`` (one per
        weight, shape (d,) for all rows, or one number); need not be integers.
        Default 1 for every weight.

    Returns
    -------
    float or numpy.ndarray
        P(Q > x) in [0, 1], of the broadcast shape of ``x`` and the rows of
        ``weights`` (a float when that shape is ()). A value whose quadrature
        misses its accuracy target (not met in any test; weights spanning tens
        of orders of magnitude could) comes with a RuntimeWarning.

    Raises
    ------
    ValueError
        On NaN or infinite values, dofs <= 0, a scalar ``weights`` or shapes
        that do not broadcast.

    Examples
    --------
    >>> round(weighted_chi2_sf(3.0, [1.0], [2]), 10)  # chi^2_2: exp(-3 / 2)
    0.2231301601
    >>> round(weighted_chi2_sf(0.0, [1.0, -1.0]), 12)  # symmetric
    0.5
    """
    w = check_real_array(weights, "weights", minimum=-np.inf)
    if w.ndim == 0:
        raise ValueError(
            "weights must have shape (d,) or (K, d), one weight per chi-square; "
            f"got a scalar {float(w)!r}. For one weight pass [w]."
        )
    if dofs is None:
        h = np.ones_like(w)
    else:
        h = check_real_array(dofs, "dofs", minimum=0.0, strict=True)
        try:
            w, h = np.broadcast_arrays(w, h)
        except ValueError:
            raise ValueError(
                f"dofs of shape {h.shape} do not broadcast against weights of "
                f"shape {w.shape}; pass one dof per weight (shape {w.shape}), one "
                "per chi-square (shape (d,)) or one number."
            ) from None
        if w.shape[-1:] != np.shape(weights)[-1:]:
            raise ValueError(
                f"dofs of shape {np.shape(dofs)} do not match the d = "
                f"{np.shape(weights)[-1]} weights; pass one dof per weight."
            )
    t = check_real_array(x, "x", minimum=-np.inf)
    try:
        shape = np.broadcast_shapes(t.shape, w.shape[:-1])
    except ValueError:
        raise ValueError(
            f"x of shape {t.shape} does not broadcast against the rows of weights "
            f"(shape {w.shape[:-1]}, weights being {w.shape}); pass one x per row "
            "or one x for all."
        ) from None
    d = w.shape[-1]
    flat_x = np.broadcast_to(t, shape).reshape(-1)
    flat_w = np.broadcast_to(w, (*shape, d)).reshape(-1, d)
    flat_h = np.broadcast_to(h, (*shape, d)).reshape(-1, d)
    p = _sf_rows(flat_x, flat_w, flat_h).reshape(shape)
    return float(p) if p.ndim == 0 else p


def energy_sf(
    energy: ArrayLike,
    cov_eigenvalues: ArrayLike,
    multiplicity: float,
    noise_df: ArrayLike | None = None,
) -> np.ndarray | float:
    """The p-value of an off-subspace energy under the Gaussian error model.

    With lambda_j the eigenvalues of P_perp C P_perp and q = ``multiplicity``
    (the number of iid N(0, C) columns),

    - ``noise_df`` None: P(sum_j lambda_j chi^2_q > e);
    - ``noise_df`` = nu: P(sum_j lambda_j chi^2_q / (chi^2_nu / nu) > e), for
      C = sigma^2_hat G with sigma^2_hat ~ sigma^2 chi^2_nu / nu independent of
      the fit, computed as P(sum_j lambda_j chi^2_q - (e / nu) chi^2_nu > 0).

    Parameters
    ----------
    energy : array_like, shape () or (K,)
        e >= 0, the observed energies ||P_perp (Theta^ - Theta)||_F^2.
    cov_eigenvalues : array_like, shape (d,) or (K, d)
        lambda_j >= 0 (:func:`projected_eigenvalues`); zeros are allowed.
    multiplicity : float
        q > 0, the degrees of freedom of each lambda_j.
    noise_df : array_like, optional
        nu > 0, the residual degrees of freedom of sigma^2_hat: a number or one
        per row, shape (K,); need not be an integer.

    Returns
    -------
    float or numpy.ndarray
        The p-values, of the broadcast shape of ``energy``,
        ``cov_eigenvalues.shape[:-1]`` and ``noise_df`` (a float for shape ()).

    Raises
    ------
    ValueError
        On negative energies or eigenvalues, non-positive ``multiplicity`` or
        ``noise_df``, NaN or infinite values, or shapes that do not broadcast.
    """
    lam = check_real_array(cov_eigenvalues, "cov_eigenvalues", minimum=-np.inf)
    if lam.ndim not in (1, 2):
        raise ValueError(
            "cov_eigenvalues must have shape (d,) or (K, d), the eigenvalues of "
            f"P_perp C_k P_perp of each client, got shape {lam.shape}."
        )
    if np.any(lam < 0):
        raise ValueError(
            f"cov_eigenvalues must be >= 0 (smallest {lam.min():.3g}): they are "
            "eigenvalues of a covariance. If the negatives are round-off, use "
            "projected_eigenvalues(cov, subspace) or np.clip(values, 0, None)."
        )
    e = check_real_array(energy, "energy", minimum=0.0)
    q = check_positive(multiplicity, "multiplicity")
    try:
        rows = np.broadcast_shapes(e.shape, lam.shape[:-1])
    except ValueError:
        raise ValueError(
            f"energy of shape {e.shape} does not match cov_eigenvalues of shape "
            f"{lam.shape}: pass one energy per row of cov_eigenvalues."
        ) from None
    if noise_df is None:
        return weighted_chi2_sf(e, lam, q)
    nu = check_real_array(noise_df, "noise_df", minimum=0.0, strict=True)
    try:
        rows = np.broadcast_shapes(rows, nu.shape)
    except ValueError:
        raise ValueError(
            f"noise_df of shape {nu.shape} does not match the {rows} energies: "
            "pass one number, or one per client."
        ) from None
    d = lam.shape[-1]
    weights = np.empty((*rows, d + 1))
    weights[..., :d] = lam
    weights[..., d] = -np.broadcast_to(e / nu, rows)
    dofs = np.empty_like(weights)
    dofs[..., :d] = q
    dofs[..., d] = np.broadcast_to(nu, rows)
    return weighted_chi2_sf(0.0, weights, dofs)


#: Largest ``max |C - C^T| / max |C|`` accepted as round-off.
SYMMETRY_TOL = 1e-10
#: Eigenvalues of N^T C N above ``-PSD_TOL max |C|`` are round-off, set to 0.
PSD_TOL = 1e-10


def projected_eigenvalues(cov: ArrayLike, subspace: ArrayLike) -> np.ndarray:
    """The eigenvalues of P_perp C P_perp on the complement of span(A).

    With N (p x (p - r)) an orthonormal basis of the orthogonal complement of
    span(A), the nonzero spectrum of P_perp C P_perp (P_perp = I - A A^T) is that
    of N^T C N; the r remaining eigenvalues are zeros and are left out.

    Parameters
    ----------
    cov : array_like, shape (p, p) or (K, p, p)
        C, a symmetric positive semidefinite covariance (one per client).
    subspace : array_like, shape (p, r)
        A, with orthonormal columns (0 <= r <= p).

    Returns
    -------
    numpy.ndarray, shape (p - r,) or (K, p - r)
        The eigenvalues lambda_j >= 0, ascending.

    Raises
    ------
    ValueError
        On a wrong shape, NaN or infinite entries, an asymmetric ``cov``
        (``max |C - C^T| > 1e-10 max |C|``), a ``cov`` not PSD on the complement
        (an eigenvalue of N^T C N below ``-1e-10 max |C|``), or a ``subspace``
        without orthonormal columns. Eigenvalues of N^T C N in
        ``[-1e-10 max |C|, 0)`` are round-off and returned as 0.
    """
    c = np.asarray(cov)
    if not is_real_dtype(c.dtype):
        raise TypeError(f"cov must be real numbers, got dtype {c.dtype}.")
    if c.ndim not in (2, 3) or c.shape[-1] != c.shape[-2]:
        raise ValueError(
            "cov must be a square covariance of shape (p, p), or one per client "
            f"of shape (K, p, p); got shape {c.shape}."
        )
    c = c.astype(np.float64)
    if not np.all(np.isfinite(c)):
        raise ValueError("cov contains NaN or infinite values.")
    p = c.shape[-1]
    a = check_orthonormal(subspace, "subspace", p=p)
    peak = np.max(np.abs(c), axis=(-2, -1), initial=0.0)
    asym = np.max(np.abs(c - np.swapaxes(c, -1, -2)), axis=(-2, -1), initial=0.0)
    bad = np.flatnonzero(np.atleast_1d(asym > SYMMETRY_TOL * peak))
    if bad.size:
        which = f" (client(s) {bad[:5].tolist()})" if c.ndim == 3 else ""
        raise ValueError(
            f"cov must be symmetric{which}: max |C - C^T| = "
            f"{np.atleast_1d(asym)[bad[0]]:.3g} exceeds {SYMMETRY_TOL:g} max |C|. "
            "If the asymmetry is round-off, pass (C + C^T) / 2."
        )
    r = a.shape[1]
    basis = np.linalg.svd(a, full_matrices=True)[0][:, r:] if r else np.eye(p)
    inner = basis.T @ c @ basis
    lam = np.linalg.eigvalsh(0.5 * (inner + np.swapaxes(inner, -1, -2)))
    low = np.min(lam, axis=-1, initial=0.0)
    bad = np.flatnonzero(np.atleast_1d(low < -PSD_TOL * peak))
    if bad.size:
        which = f" (client(s) {bad[:5].tolist()})" if c.ndim == 3 else ""
        raise ValueError(
            f"cov is not positive semidefinite on the complement of span(subspace)"
            f"{which}: N^T C N has eigenvalue {np.atleast_1d(low)[bad[0]]:.3g} < 0. "
            "A covariance must be PSD; check how C was formed (e.g. "
            "sigma^2 inv(X^T X) needs X of full column rank)."
        )
    return np.maximum(lam, 0.0)

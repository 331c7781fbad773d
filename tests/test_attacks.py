"""Tests of the omniscient attack library, clair_stats.simulate.attacks.

Every formula of an attack's docstring is recomputed here from the context's
arrays; the random attacks are checked through what their construction guarantees
exactly (orthogonality to A, common offsets, norms) and, for the adaptive attack,
through the law of CLAIR's statistic with Monte Carlo tolerances derived below.
"""

from __future__ import annotations

import inspect
import math
import re

import numpy as np
import pytest
from scipy import stats

from clair_stats.simulate.attacks import (
    ATTACKS,
    STUDY_ATTACKS,
    VARIANTS,
    AttackContext,
    adaptive_noncentrality,
    attack,
    baruch_z,
)
from clair_stats.simulate.model import FederatedModel

P, Q, R, TAU = 20, 3, 2, 0.3
ALL_NAMES = tuple(dict.fromkeys(STUDY_ATTACKS + tuple(ATTACKS)))


def make_ctx(
    *,
    m_b: int = 30,
    f: int = 6,
    center: bool = False,
    seed: int = 0,
    noise_sd: float = TAU,
    p: int = P,
    q: int = Q,
    r: int = R,
    heterogeneity: float = 0.1,
) -> AttackContext:
    """m_b benign and f honest-would-be estimates from the benign model."""
    model = FederatedModel(
        p=p,
        q=q,
        rank=r,
        n_clients=m_b + f,
        contamination=0,
        center=center,
        heterogeneity=heterogeneity,
    )
    sample = model.sample(noise=noise_sd, seed=seed)
    return AttackContext(
        benign=sample.updates[:m_b],
        own=sample.updates[m_b:],
        subspace=sample.subspace,
        center=sample.backbone if center else None,
        noise_sd=noise_sd,
        rng=np.random.default_rng(seed + 1000),
    )


def theta0(ctx: AttackContext) -> np.ndarray:
    return np.zeros((ctx.p, ctx.q)) if ctx.center is None else ctx.center


def inside(ctx: AttackContext, X: np.ndarray) -> np.ndarray:
    """P_A X (stacked or not)."""
    return ctx.subspace @ (ctx.subspace.T @ X)


def outside(ctx: AttackContext, X: np.ndarray) -> np.ndarray:
    """P_A^perp X."""
    return X - inside(ctx, X)


def fro(X: np.ndarray) -> np.ndarray:
    return np.linalg.norm(X, axis=(-2, -1))


def cut_of(ctx: AttackContext) -> float:
    """The first Holm cut of T_k: the chi2_df quantile at 1 - alpha / K."""
    return float(stats.chi2.isf(ctx.alpha / ctx.n_clients, (ctx.p - ctx.r) * ctx.q))


# ---------------------------------------------------------------- every attack
@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("f", [0, 1, 5])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_shape_finite_new_array(name: str, f: int, center: bool) -> None:
    ctx = make_ctx(f=f, center=center, seed=f)
    benign, own = ctx.benign.copy(), ctx.own.copy()
    out = attack(name, ctx)
    assert out.shape == (f, P, Q)
    assert out.dtype == np.float64
    assert np.isfinite(out).all()
    assert not np.shares_memory(out, ctx.benign)
    assert not np.shares_memory(out, ctx.own)
    np.testing.assert_array_equal(ctx.benign, benign)  # inputs untouched
    np.testing.assert_array_equal(ctx.own, own)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_seed_reproduces_and_no_draw_without_attackers(name: str) -> None:
    np.testing.assert_array_equal(
        attack(name, make_ctx(seed=4)), attack(name, make_ctx(seed=4))
    )
    ctx = make_ctx(f=0)
    state = ctx.rng.bit_generator.state
    attack(name, ctx)
    assert ctx.rng.bit_generator.state == state


# ---------------------------------------------------------------- the registry
def test_registry_entries() -> None:
    for name, entry in ATTACKS.items():
        assert entry.function.__name__ == name
        signature = inspect.signature(entry.function).parameters
        assert dict(entry.defaults) == {
            key: par.default for key, par in signature.items() if key != "ctx"
        }
        doc = entry.function.__doc__ or ""
        assert entry.description == doc.strip().splitlines()[0]
        assert ".. math::" in doc
        year = re.search(r"(19|20)\d\d", entry.source)
        if "new here" not in entry.source:  # from the literature: cited in full
            assert year is not None
            assert year.group(0) in doc
            assert "References" in doc
        with pytest.raises(TypeError):
            entry.defaults["x"] = 1  # type: ignore[index]


def test_variants_and_study_names() -> None:
    assert not set(VARIANTS) & set(ATTACKS)
    assert len(set(STUDY_ATTACKS)) == len(STUDY_ATTACKS) == 13
    assert set(STUDY_ATTACKS) <= set(ATTACKS) | set(VARIANTS)
    expected = {
        "alie_baruch": ("alie", {"z": "baruch"}),
        "alie_1.5": ("alie", {"z": 1.5}),
        "ipm_0.5": ("ipm", {"eps": 0.5}),
        "ipm_2": ("ipm", {"eps": 2.0}),
        "margin_1": ("margin", {"m": 1.0}),
        "margin_2": ("margin", {"m": 2.0}),
        "margin_4": ("margin", {"m": 4.0}),
    }
    assert {k: (b, dict(p)) for k, (b, p) in VARIANTS.items()} == expected


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_is_its_attack_with_its_params(name: str) -> None:
    base, params = VARIANTS[name]
    np.testing.assert_array_equal(
        attack(name, make_ctx(seed=3, center=True)),
        attack(base, make_ctx(seed=3, center=True), **params),
    )


@pytest.mark.parametrize("name", ["krum", "alie_2", "", None])
def test_unknown_name_lists_valid_names(name: object) -> None:
    with pytest.raises(ValueError, match="unknown attack") as info:
        attack(name, make_ctx())  # type: ignore[arg-type]
    for valid in (*ATTACKS, *VARIANTS):
        assert valid in str(info.value)


def test_unknown_or_fixed_parameter() -> None:
    ctx = make_ctx()
    with pytest.raises(ValueError, match=r"no parameter epsilon.*'eps': 0\.5"):
        attack("ipm", ctx, epsilon=2.0)
    with pytest.raises(ValueError, match=r"fixes \{'eps': 2\.0\}.*attack\('ipm'"):
        attack("ipm_2", ctx, eps=3.0)
    with pytest.raises(TypeError, match="AttackContext"):
        attack("ipm", ctx.benign)  # type: ignore[arg-type]


INVALID = [
    ("random", {"scale": 0.0}, "scale must be finite and > 0"),
    ("sign_flip", {"s": -1.0}, "s must be finite and > 0"),
    ("alie", {"z": "max"}, "'baruch'"),
    ("alie", {"z": math.nan}, "z must be in"),
    ("alie", {"z": math.inf}, "z must be in"),
    ("alie", {"ddof": 2}, "ddof must be 0"),
    ("ipm", {"eps": 0.0}, "eps must be finite and > 0"),
    ("ipm", {"eps": math.inf}, "eps must be finite"),
    ("in_subspace", {"s": 0.0}, "s must be finite and > 0"),
    ("margin", {"m": -1.0}, "m must be finite and >= 0"),
    ("orthogonal", {"scale": -2.0}, "scale must be finite and > 0"),
    ("mimic", {"target": 30}, r"0 <= target < m_b = 30"),
    ("mimic", {"target": -1}, "target must be >= 0"),
    ("adaptive", {"exceed": 1.5}, r"exceed must be in \(0, 1\).*probability"),
    ("adaptive", {"exceed": 0.0}, r"exceed must be in \(0, 1\)"),
]


@pytest.mark.parametrize("f", [0, 4])
@pytest.mark.parametrize(("name", "params", "message"), INVALID)
def test_invalid_parameter_values(
    name: str, params: dict[str, object], message: str, f: int
) -> None:
    # checked before anything is computed, also without attackers
    with pytest.raises(ValueError, match=message):
        attack(name, make_ctx(m_b=30, f=f), **params)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("adaptive", {"coherent": "yes"}),
        ("sign_flip", {"flip_backbone": 1}),
        ("mimic", {"target": 1.5}),
        ("ipm", {"eps": "2"}),
        ("alie", {"z": True}),
    ],
)
def test_invalid_parameter_types(name: str, params: dict[str, object]) -> None:
    with pytest.raises(TypeError, match=next(iter(params))):
        attack(name, make_ctx(), **params)


def test_context_validation() -> None:
    ctx = make_ctx(center=True)
    good = {
        "benign": ctx.benign,
        "own": ctx.own,
        "subspace": ctx.subspace,
        "center": ctx.center,
        "noise_sd": TAU,
        "rng": np.random.default_rng(0),
    }
    bad = [
        ({"benign": ctx.benign[0]}, ValueError, r"shape \(n, p, q\)"),
        ({"benign": ctx.benign[:0]}, ValueError, "at least one benign"),
        ({"own": ctx.own[:, :-1]}, ValueError, rf"shape \(n, {P}, {Q}\)"),
        ({"own": np.full((2, P, Q), np.nan)}, ValueError, "NaN"),
        ({"subspace": 2 * ctx.subspace}, ValueError, "orthonormal"),
        ({"subspace": np.eye(P)}, ValueError, "r < p"),
        ({"center": ctx.center[:, :1]}, ValueError, "center must be"),
        ({"noise_sd": -0.1}, ValueError, "noise_sd"),
        ({"rng": 0}, TypeError, "default_rng"),
        ({"alpha": 1.5}, ValueError, "alpha"),
    ]
    for change, error, message in bad:
        with pytest.raises(error, match=message):
            AttackContext(**{**good, **change})  # type: ignore[arg-type]
    ok = AttackContext(**good)  # type: ignore[arg-type]
    assert (ok.n_benign, ok.n_attackers, ok.n_clients) == (30, 6, 36)
    assert (ok.p, ok.q, ok.r, ok.df) == (P, Q, R, (P - R) * Q)
    assert repr(ok) == (
        f"AttackContext(m_b=30, f=6, p={P}, q={Q}, r={R}, center=True, "
        f"noise_sd={TAU:g}, alpha=0.05)"
    )
    np.testing.assert_array_equal(make_ctx().backbone, np.zeros((P, Q)))


# ---------------------------------------------------------------- the attacks
@pytest.mark.parametrize("center", [False, True])
def test_random_has_the_median_benign_norm(center: bool) -> None:
    ctx = make_ctx(center=center, seed=5)
    median = np.median(fro(ctx.benign - theta0(ctx)))
    for scale in (1.0, 2.5):
        out = attack("random", ctx, scale=scale)
        np.testing.assert_allclose(fro(out - theta0(ctx)), scale * median, rtol=1e-12)
        assert np.min(fro(out[1:] - out[:1])) > 0.1 * median  # not copies


@pytest.mark.parametrize("center", [False, True])
def test_sign_flip(center: bool) -> None:
    ctx = make_ctx(center=center, seed=6)
    t0 = theta0(ctx)
    for s in (1.0, 3.0):
        out = attack("sign_flip", ctx, s=s)
        np.testing.assert_allclose(out, t0 - s * (ctx.own - t0), rtol=0, atol=1e-12)
        # the off-subspace margin is s times the honest one
        np.testing.assert_allclose(
            fro(outside(ctx, out - t0)), s * fro(outside(ctx, ctx.own - t0))
        )
        whole = attack("sign_flip", ctx, s=s, flip_backbone=True)
        np.testing.assert_allclose(whole, -s * ctx.own, rtol=0, atol=1e-12)


def sample_sd(x: np.ndarray, ddof: int) -> np.ndarray:
    """Entrywise sd over axis 0, written out: sqrt(sum (x - mean)^2 / (n - ddof))."""
    centred = x - x.sum(axis=0) / x.shape[0]
    return np.sqrt((centred**2).sum(axis=0) / (x.shape[0] - ddof))


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("z", [1.5, -0.5, "baruch"])
def test_alie_copies_mean_minus_z_sd(z: float | str, ddof: int, center: bool) -> None:
    m_b, f = 30, 6
    ctx = make_ctx(m_b=m_b, f=f, center=center, seed=7)
    out = attack("alie", ctx, z=z, ddof=ddof)
    if z == "baruch":
        n = m_b + f
        s = math.floor(n / 2 + 1) - f
        z = float(stats.norm.ppf((n - s) / n))
    expected = ctx.benign.sum(axis=0) / m_b - z * sample_sd(ctx.benign, ddof)
    for copy in out:
        np.testing.assert_array_equal(copy, out[0])
    np.testing.assert_allclose(out[0], expected, rtol=1e-12, atol=1e-12)


def test_alie_defaults_are_baruch_and_sample_sd() -> None:
    ctx = make_ctx(seed=8)
    np.testing.assert_array_equal(
        attack("alie", ctx), attack("alie", ctx, z="baruch", ddof=1)
    )
    np.testing.assert_array_equal(
        attack("alie_baruch", ctx), attack("alie", ctx, z="baruch", ddof=1)
    )


def test_baruch_z_is_the_papers_formula() -> None:
    for n in range(2, 61):
        previous = -math.inf
        for f in range(1, n // 2 + 1):
            s = math.floor(n / 2 + 1) - f  # supporters needed
            z = baruch_z(n, f)
            assert z == pytest.approx(stats.norm.ppf((n - s) / n), abs=1e-12)
            assert z > previous  # more attackers need fewer supporters: larger z
            previous = z
        with pytest.raises(ValueError, match=r"f <= floor\(K/2\)"):
            baruch_z(n, n // 2 + 1)


def test_alie_baruch_needs_supporters_and_sd_needs_two_updates() -> None:
    np.testing.assert_array_equal(  # K = 20, f = 10: s = 1, finite
        attack("alie_baruch", make_ctx(m_b=10, f=10)).shape, (10, P, Q)
    )
    with pytest.raises(ValueError, match="s = floor"):  # K = 20, f = 11: s = 0
        attack("alie_baruch", make_ctx(m_b=9, f=11))
    with pytest.raises(ValueError, match="ddof=0"):
        attack("alie", make_ctx(m_b=1, f=2))
    assert attack("alie", make_ctx(m_b=1, f=2), z=1.0, ddof=0).shape == (2, P, Q)


@pytest.mark.parametrize("center", [False, True])
def test_ipm_is_minus_eps_times_the_benign_mean(center: bool) -> None:
    ctx = make_ctx(center=center, seed=9)
    t0 = theta0(ctx)
    mean = ctx.benign.sum(axis=0) / ctx.n_benign
    for eps in (0.5, 2.0):
        out = attack("ipm", ctx, eps=eps)
        for copy in out:
            np.testing.assert_allclose(copy, t0 - eps * (mean - t0), atol=1e-12)
    if not center:
        np.testing.assert_allclose(attack("ipm_2", ctx)[0], -2 * mean, atol=1e-12)


@pytest.mark.parametrize("center", [False, True])
def test_in_subspace_keeps_the_off_part_and_scales_the_in_part(center: bool) -> None:
    ctx = make_ctx(center=center, seed=10)
    t0 = theta0(ctx)
    for s in (3.0, 0.5):
        dev = attack("in_subspace", ctx, s=s) - t0
        own = ctx.own - t0
        np.testing.assert_allclose(outside(ctx, dev), outside(ctx, own), atol=1e-12)
        np.testing.assert_allclose(
            ctx.subspace.T @ dev, -s * (ctx.subspace.T @ own), atol=1e-12
        )


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("m", [1, 2, 4])
def test_margin_is_a_common_offset_off_span_a(m: int, center: bool) -> None:
    ctx = make_ctx(center=center, seed=11)
    offset = attack(f"margin_{m}", ctx) - ctx.own
    for d in offset:
        np.testing.assert_allclose(d, offset[0], rtol=0, atol=1e-12)
    norm = m * TAU * math.sqrt((P - R) * Q)
    assert fro(offset[0]) == pytest.approx(norm, rel=1e-12)
    assert np.abs(inside(ctx, offset[0])).max() <= 1e-12 * norm
    np.testing.assert_array_equal(attack("margin", ctx, m=0.0), ctx.own)


@pytest.mark.parametrize("center", [False, True])
def test_orthogonal_group_noiseless(center: bool) -> None:
    # noise_sd = 0: the updates are Theta_0 + U C_k^T exactly
    ctx = make_ctx(center=center, seed=12, noise_sd=0.0, f=8)
    dev = attack("orthogonal", ctx, scale=1.5) - theta0(ctx)
    median = np.median(fro(ctx.benign - theta0(ctx)))
    np.testing.assert_allclose(fro(dev), 1.5 * median, rtol=1e-12)
    assert np.abs(ctx.subspace.T @ dev).max() <= 1e-12 * median
    # one shared r-dimensional column space: the stack p x fq has rank r
    sv = np.linalg.svd(np.concatenate(list(dev), axis=1), compute_uv=False)
    assert sv[R - 1] > 1e-3 * sv[0]
    assert sv[R] <= 1e-12 * sv[0]


def test_orthogonal_group_carries_fresh_noise() -> None:
    # sum_k ||A^T (Theta_k - Theta_0)||_F^2 / tau^2 = the noise along A: chi2 with
    # f r q degrees of freedom (mean f r q, sd sqrt(2 f r q)); 5 sd
    f = 50
    ctx = make_ctx(center=True, seed=13, f=f)
    along = ctx.subspace.T @ (attack("orthogonal", ctx) - theta0(ctx))
    total = float(np.sum(along**2)) / TAU**2
    assert abs(total - f * R * Q) <= 5 * math.sqrt(2 * f * R * Q)


@pytest.mark.parametrize("center", [False, True])
def test_mimic_copies_the_most_extreme_benign_client(center: bool) -> None:
    ctx = make_ctx(center=center, seed=14, heterogeneity=0.0)
    energy = fro(outside(ctx, ctx.benign - theta0(ctx)))
    j = int(np.argmax(energy))
    for copy in attack("mimic", ctx):
        np.testing.assert_array_equal(copy, ctx.benign[j])
    for copy in attack("mimic", ctx, target=3):
        np.testing.assert_array_equal(copy, ctx.benign[3])


# ---------------------------------------------------------------- adaptive
@pytest.mark.parametrize("center", [False, True])
def test_adaptive_keeps_the_honest_in_subspace_part(center: bool) -> None:
    ctx = make_ctx(center=center, seed=15)
    for coherent in (True, False):
        dev = attack("adaptive", ctx, coherent=coherent) - theta0(ctx)
        np.testing.assert_allclose(
            ctx.subspace.T @ dev,
            ctx.subspace.T @ (ctx.own - theta0(ctx)),
            rtol=0,
            atol=1e-12,
        )


def adaptive_statistics(
    exceed: float, replicates: int = 25
) -> tuple[np.ndarray, float]:
    """T_k at the true (A, Theta_0) for 160 attackers (K = 200) per replicate."""
    stats_, cut = [], math.nan
    for rep in range(replicates):
        ctx = make_ctx(m_b=40, f=160, p=12, q=3, r=2, center=True, seed=100 + rep)
        dev = attack("adaptive", ctx, exceed=exceed) - theta0(ctx)
        stats_.append(fro(outside(ctx, dev)) ** 2 / TAU**2)
        cut = cut_of(ctx)
    return np.concatenate(stats_), cut


@pytest.mark.parametrize("exceed", [0.05, 0.4])
def test_adaptive_statistic_has_the_stated_law(exceed: float) -> None:
    # P_A^perp (Theta_k - Theta_0) = P_A^perp E'_k + t v w^T with v perpendicular
    # to A, so T_k = ||P_A^perp E'_k||^2 / tau^2       chi2_df: mean df, var 2 df
    #              + 2 t v^T E'_k w / tau^2             N(0, 4 lam), lam = t^2/tau^2
    #              + lam,
    # the cross term uncorrelated with the first (odd moments of E' vanish): T_k is
    # noncentral chi2_df(lam), mean df + lam, variance 2 df + 4 lam, and lam is
    # chosen so that P(T_k > cut) = exceed. The T_k are independent (fresh E'_k;
    # the law does not depend on v, w), so their mean over N has sd
    # sqrt((2 df + 4 lam) / N): 5 sd. The share above the cut is binomial(N,
    # exceed): 5 sd.
    t_stats, cut = adaptive_statistics(exceed)
    df = (12 - 2) * 3
    lam = adaptive_noncentrality(df, cut, exceed)
    assert stats.ncx2.sf(cut, df, lam) == pytest.approx(exceed, rel=1e-9)
    assert 0 < lam < cut - df  # the mean stays below the cut
    n = t_stats.size
    assert abs(t_stats.mean() - (df + lam)) <= 5 * math.sqrt((2 * df + 4 * lam) / n)
    share = float(np.mean(t_stats > cut))
    assert abs(share - exceed) <= 5 * math.sqrt(exceed * (1 - exceed) / n)


def test_adaptive_noncentrality_is_zero_when_the_null_already_exceeds() -> None:
    df = 30
    cut = float(stats.chi2.isf(0.2, df))  # the central law exceeds with 0.2
    assert adaptive_noncentrality(df, cut, 0.1) == 0.0
    lam = adaptive_noncentrality(df, cut, 0.5)
    assert lam > 0
    assert stats.ncx2.sf(cut, df, lam) == pytest.approx(0.5, rel=1e-9)


def test_adaptive_common_part_is_rank_one() -> None:
    # With one w, the mean over the f attackers of P_A^perp (Theta_k - Theta_0) is
    # t v w^T + P_A^perp Ebar, Ebar with iid N(0, tau^2 / f) entries. For a p x q
    # standard Gaussian matrix P(sigma_max > sqrt(p) + sqrt(q) + x) <= exp(-x^2 / 2)
    # (Davidson-Szarek), a projection does not increase it, and by Weyl every
    # singular value moves by at most that much: with x = 5 (failure 4e-6),
    # |sigma_1 - t| and sigma_2 are at most tau / sqrt(f) (sqrt(p) + sqrt(q) + 5).
    f = 400
    ctx = make_ctx(m_b=40, f=f, center=True, seed=16)
    cut = cut_of(ctx)
    t = TAU * math.sqrt(adaptive_noncentrality((P - R) * Q, cut, 0.05))
    mean = outside(ctx, attack("adaptive", ctx) - theta0(ctx)).mean(axis=0)
    u, sv, _ = np.linalg.svd(mean)
    bound = TAU / math.sqrt(f) * (math.sqrt(P) + math.sqrt(Q) + 5)
    assert bound < t / 4  # the check has power
    assert abs(sv[0] - t) <= bound
    assert sv[1] <= bound
    assert np.abs(ctx.subspace.T @ u[:, 0]).max() <= 1e-12  # v is perpendicular to A


@pytest.mark.parametrize("coherent", [True, False])
def test_adaptive_offsets_common_or_one_per_attacker(coherent: bool) -> None:
    # Over disjoint pairs (a, b), d = ||R_a - R_b||^2 / (2 tau^2) with R the
    # off-subspace parts. R_a - R_b = P_A^perp (E'_a - E'_b) + t v (w_a - w_b)^T:
    # d = chi2_df + t v^T (E'_a - E'_b)(w_a - w_b) / tau^2 + lam ||w_a - w_b||^2 / 2.
    # Common w: d ~ chi2_df, mean df, var 2 df. One w each (uniform unit q-vectors,
    # E <w_a, w_b> = 0, var 1/q): mean df + lam, var 2 df + 4 lam + lam^2 / q.
    f = 400
    ctx = make_ctx(m_b=40, f=f, center=True, seed=17)
    df = (P - R) * Q
    lam = adaptive_noncentrality(df, cut_of(ctx), 0.05)
    off = outside(ctx, attack("adaptive", ctx, coherent=coherent) - theta0(ctx))
    d = fro(off[0::2] - off[1::2]) ** 2 / (2 * TAU**2)
    if coherent:
        mean, var = df, 2 * df
    else:
        mean, var = df + lam, 2 * df + 4 * lam + lam**2 / Q
    assert abs(d.mean() - mean) <= 5 * math.sqrt(var / d.size)
    assert 5 * math.sqrt((2 * df + 4 * lam + lam**2 / Q) / d.size) < lam / 2  # power

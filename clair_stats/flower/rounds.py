"""One federated round of CLAIR on named arrays (numpy only; docs/flower.md §9.1-§9.3).

:func:`round_verdict` runs :func:`clair_stats.clair` on every module of the K
clients' arrays (LoRA modules on their factors, never multiplied out) and combines
the per-module tests into one verdict per client with the rule of
:mod:`clair_stats.lora.verdict`: Holm over the K x M (client, module) p-values at
level alpha, a client flagged iff one of its pairs is rejected, its p-value the
smallest Holm-adjusted p-value over its modules. :func:`refine_round` then refines
every module with the collaborative set S^ the caller settles on (this round's
verdict and the clients' history, :mod:`clair_stats.flower.evidence`) and forms
the global aggregate.

With one module the verdict is :func:`clair_stats.clair`'s own (its test is Holm
over the K clients at the same level) and the refined factors are its refined
factors. With several modules a client flagged in one module leaves S^ in all of
them; a module whose own S^ differs from the combined one is refined by
:func:`clair_stats.refine_clients` at that module's A^ and noise level, with
equal pooling weights over S^.

Rules for what cannot be tested (docs/flower.md §9.3):

- a client whose update of a module is zero (B_k = 0: a LoRA module it never
  trained) is left out of that module: no p-value there, and it keeps its zero
  update; a module with fewer than 3 nonzero updates is not tested;
- a module on which :func:`clair_stats.clair` raises (too few clients for its rank,
  a degenerate stack) is not tested; the reason is in the notes;
- a module on noiseless data is tested by the support of S^: no p-value, a
  flagged client gets p = 0, a kept one p = 1;
- fewer than 3 clients: no test at all (:func:`round_verdict` returns no verdict and
  the caller averages).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from clair_stats.core.lowrank import LowRankUpdates
from clair_stats.core.validation import check_alpha, check_choice
from clair_stats.flower.layout import ArrayLayout
from clair_stats.lora.adapters import MIN_CLIENTS, zero_updates
from clair_stats.pipeline.estimator import ClairResult, clair
from clair_stats.pipeline.multitest import reject_present

__all__ = [
    "MIN_CLIENTS",
    "RESERVED_OPTIONS",
    "ModuleTest",
    "RoundVerdict",
    "global_arrays",
    "refine_round",
    "round_verdict",
]


#: Arguments of :func:`clair_stats.clair` that the round sets itself.
RESERVED_OPTIONS = ("alpha", "correction", "side", "refined_rank", "weights")

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class ModuleTest:
    """CLAIR on one module of one round.

    Parameters
    ----------
    name : str
        The module's name in the layout (a LoRA module or a matrix key).
    clients : numpy.ndarray of int
        The positions (among the round's K clients) that entered the module:
        those with a nonzero update.
    result : ClairResult or None
        :func:`clair_stats.clair` on those clients; None if not tested.
    note : str
        Why the module was not tested, or the warnings CLAIR raised ("" if none).
    seconds : float
        Wall-clock time of the module's run.
    """

    name: str
    clients: np.ndarray = field(repr=False)
    result: ClairResult | None = field(repr=False)
    note: str = ""
    seconds: float = 0.0

    @property
    def tested(self) -> bool:
        """Whether CLAIR ran on the module."""
        return self.result is not None


@dataclass(frozen=True)
class RoundVerdict:
    """One verdict per client from M modules (the rule of the module docstring).

    Parameters
    ----------
    flagged : numpy.ndarray of bool, shape (K,)
        The clients flagged this round: rejected in at least one module.
    p_values : numpy.ndarray, shape (K,)
        Smallest Holm-adjusted p-value over the client's modules (0 for a client
        flagged by a support-tested module, NaN with no p-value).
    module_p_values : numpy.ndarray, shape (M, K)
        Uncorrected p_km (NaN: no p-value).
    adjusted_p_values : numpy.ndarray, shape (M, K)
        The p_km after Holm's correction over all the round's (client, module)
        pairs (NaN: no p-value).
    rejected : numpy.ndarray of bool, shape (M, K)
        Holm's rejections and the support flags.
    modules : tuple of ModuleTest
        The per-module runs, in the order of the layout's modules.
    alpha : float
        The family-wise level over the K x M (client, module) pairs.
    """

    flagged: np.ndarray = field(repr=False)
    p_values: np.ndarray = field(repr=False)
    module_p_values: np.ndarray = field(repr=False)
    adjusted_p_values: np.ndarray = field(repr=False)
    rejected: np.ndarray = field(repr=False)
    modules: tuple[ModuleTest, ...] = field(repr=False)
    alpha: float = 0.05

    @property
    def notes(self) -> list[str]:
        """The modules' notes, "<module>: <note>"."""
        return [f"{m.name}: {m.note}" for m in self.modules if m.note]

    @property
    def iterations(self) -> int:
        """The most solver iterations of any module (0 if none was tested)."""
        return max(
            (
                int(m.result.decomposition.info.iterations)
                for m in self.modules
                if m.tested
            ),
            default=0,
        )

    @property
    def converged(self) -> bool:
        """Whether every tested module's step 1 met its certificate."""
        return all(
            bool(m.result.decomposition.info.converged)
            for m in self.modules
            if m.tested
        )


def _module_updates(
    clients: Sequence[Arrays], layout: ArrayLayout, module: str
) -> LowRankUpdates | np.ndarray:
    """The K clients' updates of one module: factors (B_k, A_k) or a (K, p, q) stack."""
    if module in layout.lora:
        key_b, key_a = layout.lora[module]
        return LowRankUpdates(
            [np.asarray(c[key_b], dtype=np.float64) for c in clients],
            [np.asarray(c[key_a], dtype=np.float64) for c in clients],
        )
    return np.stack([np.asarray(c[module], dtype=np.float64) for c in clients])


def _nonzero(updates: LowRankUpdates | np.ndarray) -> np.ndarray:
    """Which clients' updates are nonzero (B_k = 0 or A_k = 0 counts as zero)."""
    if isinstance(updates, LowRankUpdates):
        return ~zero_updates(updates)  # the rule of clair adapters
    return np.abs(updates).reshape(len(updates), -1).max(axis=1) > 0


def _subset(updates: LowRankUpdates | np.ndarray, kept: np.ndarray):
    if isinstance(updates, LowRankUpdates):
        return LowRankUpdates(
            [updates.B[k] for k in kept], [updates.A[k] for k in kept]
        )
    return updates[kept]


def round_verdict(
    clients: Sequence[Arrays],
    layout: ArrayLayout,
    *,
    alpha: float = 0.05,
    side: str = "left",
    clair_options: Mapping[str, object] | None = None,
) -> RoundVerdict | None:
    """Steps 1-3 of CLAIR per module and one verdict per client.

    Parameters
    ----------
    clients : sequence of mapping of str to numpy.ndarray
        The K clients' arrays, all with ``layout`` (checked by the caller).
    layout : ArrayLayout
        The layout of every client's arrays: which keys form which module.
    alpha : float
        Family-wise level over the K x M (client, module) pairs.
    side : {"left", "right"}
        Share the output space of every module (``"left"``) or the input space.
    clair_options : mapping, optional
        Keyword arguments for :func:`clair_stats.clair` (not those of
        :data:`RESERVED_OPTIONS`). Without ``rank``, a LoRA module's r is the
        clients' LoRA rank, as in ``clair adapters`` (clair's own rule reads the
        rank off L^ at the median rule's noise level, which assumes noise spread
        over all p x q entries; a LoRA update's noise lives in its r columns of
        B_k, and the rule then keeps directions that are noise); a matrix
        module's r follows :func:`clair_stats.clair`'s rule.

    Returns
    -------
    RoundVerdict or None
        None when fewer than :data:`MIN_CLIENTS` clients replied.
    """
    alpha = check_alpha(alpha)
    side = check_choice(side, "side", ("left", "right"))
    options = dict(clair_options or {})
    taken = sorted(set(options) & set(RESERVED_OPTIONS))
    if taken:
        raise TypeError(
            f"clair_options may not set {taken}: the round sets alpha and side from "
            "the strategy's arguments, Holm over clients and modules as the "
            "correction, each client's LoRA rank as the refined rank, and equal "
            "weights."
        )
    n_clients = len(clients)
    if n_clients < MIN_CLIENTS:
        return None
    tests = []
    for name in layout.modules:
        updates = _module_updates(clients, layout, name)
        kept = np.flatnonzero(_nonzero(updates))
        start = time.perf_counter()
        if kept.size < MIN_CLIENTS:
            tests.append(
                ModuleTest(
                    name,
                    kept,
                    None,
                    f"not tested: {kept.size} nonzero update(s), {MIN_CLIENTS} needed",
                )
            )
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                extra = {}
                if name in layout.lora and "rank" not in options:
                    extra["rank"] = layout.rank(name)
                result = clair(
                    _subset(updates, kept), alpha=alpha, side=side, **extra, **options
                )
                note = ""
            except (ValueError, np.linalg.LinAlgError) as exc:
                result, note = None, f"not tested: {exc}"
        said = "; ".join(
            dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught)
        )
        note = "; ".join(x for x in (note, said) if x)
        tests.append(ModuleTest(name, kept, result, note, time.perf_counter() - start))
    return _combine(tests, n_clients, alpha)


def _combine(tests: list[ModuleTest], n_clients: int, alpha: float) -> RoundVerdict:
    """Holm over the K x M p-values, plus the support flags of noiseless modules."""
    n_modules = len(tests)
    p = np.full((n_modules, n_clients), np.nan)
    support = np.zeros((n_modules, n_clients), dtype=bool)
    supported = np.zeros((n_modules, n_clients), dtype=bool)
    for m, test in enumerate(tests):
        if not test.tested:
            continue
        if test.result.test is not None:
            p[m, test.clients] = test.result.test.p_values
        else:
            supported[m, test.clients] = True
            support[m, test.clients] = test.result.flagged
    # Holm over the pairs there are (with none missing, all K x M)
    rejected, adjusted, from_tests = reject_present(p, alpha, "holm")
    rejected |= support
    from_support = np.where(supported, np.where(support, 0.0, 1.0), np.nan)
    combined = np.fmin(from_tests, np.fmin.reduce(from_support, axis=0))
    return RoundVerdict(
        flagged=rejected.any(axis=0),
        p_values=combined,
        module_p_values=p,
        adjusted_p_values=adjusted,
        rejected=rejected,
        modules=tuple(tests),
        alpha=alpha,
    )


def refine_round(
    clients: Sequence[Arrays],
    layout: ArrayLayout,
    verdict: RoundVerdict,
    collaborative: np.ndarray,
    *,
    side: str = "left",
) -> list[dict[str, np.ndarray]]:
    """Step 4 per module with the round's S^: each client's personalised arrays.

    A collaborative client gets, in every tested module, its refined update
    (LoRA modules as rank-r_k factors B~_k = U Sigma, A~_k = V^T of Theta~_k's
    truncated SVD, :class:`clair_stats.RefinedFactors`), and the collaborative
    mean of the other arrays; a client outside S^ keeps all its arrays. Zero
    updates and modules not tested are kept as sent.

    Parameters
    ----------
    clients : sequence of mapping of str to numpy.ndarray
        The K clients' arrays, all with ``layout``.
    layout : ArrayLayout
        The layout of every client's arrays.
    verdict : RoundVerdict
        From :func:`round_verdict` on the same clients.
    collaborative : numpy.ndarray of bool, shape (K,)
        S^ (not flagged and not excluded by the history).
    side : {"left", "right"}
        The ``side`` of :func:`round_verdict`: refine in the output space of
        every module (``"left"``) or the input space.

    Returns
    -------
    list of dict of str to numpy.ndarray
        Client k's arrays, in ``layout``'s order and dtypes.
    """
    from clair_stats.pipeline.paths import as_updates
    from clair_stats.pipeline.refine import refine_clients

    collaborative = np.asarray(collaborative, dtype=bool)
    out = [dict(c) for c in clients]
    for test in verdict.modules:
        if not test.tested:
            continue
        kept = test.clients
        members = collaborative[kept]
        if not members.any():
            continue
        result = test.result
        if np.array_equal(members, result.collaborative):
            refined = result.refined
        else:
            updates = _module_updates([clients[k] for k in kept], layout, test.name)
            work = as_updates(updates).oriented(side)
            refined = work.restore(
                refine_clients(
                    work.data,
                    result.detection_subspace
                    if result.detection_subspace is not None
                    else result.subspace,
                    members,
                    sigma=result.noise.sd if result.noise is not None else None,
                ).refined,
                side,
            )
        for j, k in enumerate(kept):
            if not members[j]:
                continue
            if test.name in layout.lora:
                key_b, key_a = layout.lora[test.name]
                out[k][key_b] = _cast(refined.B[j], layout.dtypes[key_b])
                out[k][key_a] = _cast(refined.A[j], layout.dtypes[key_a])
            else:
                out[k][test.name] = _cast(refined[j], layout.dtypes[test.name])
    mean = global_arrays(clients, layout, collaborative, keys=layout.others)
    for k in np.flatnonzero(collaborative):
        out[k].update(mean)
    return out


def global_arrays(
    clients: Sequence[Arrays],
    layout: ArrayLayout,
    members: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    keys: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """The weighted mean of the members' arrays (LoRA modules as rank-r factors).

    A LoRA module's mean sum_k w_k B_k A_k (w normalised over the members) is
    formed on the factors and truncated to the module's rank r by an exact SVD:
    with [w_1 B_1, ..., w_n B_n] = Q_1 R_1 and [A_1; ...; A_n]^T = Q_2 R_2 (thin
    QR), R_1 R_2^T = U Sigma V^T gives B = Q_1 U_r Sigma_r, A = V_r^T Q_2^T, the
    best rank-r approximation of the mean. Every other array is averaged.

    Parameters
    ----------
    clients : sequence of mapping of str to numpy.ndarray
        The K clients' arrays, all with ``layout``.
    layout : ArrayLayout
        The layout of every client's arrays (its dtypes are those returned).
    members : numpy.ndarray of bool, shape (K,)
        The clients averaged (at least one).
    weights : numpy.ndarray, shape (K,), optional
        Nonnegative weights (e.g. the number of examples); default equal.
    keys : sequence of str, optional
        Only these arrays (default all).

    Returns
    -------
    dict of str to numpy.ndarray
        In ``layout``'s dtypes.
    """
    members = np.flatnonzero(np.asarray(members, dtype=bool))
    if members.size == 0:
        raise ValueError("no client to average: the collaborative set is empty.")
    w = np.ones(len(clients)) if weights is None else np.asarray(weights, dtype=float)
    w = w[members]
    if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise ValueError(
            "weights must be nonnegative with a positive sum over the members; "
            f"got {w}."
        )
    w = w / w.sum()
    wanted = list(layout.shapes) if keys is None else list(keys)
    out: dict[str, np.ndarray] = {}
    for module, (key_b, key_a) in layout.lora.items():
        if key_b not in wanted and key_a not in wanted:
            continue
        b = np.hstack(
            [
                wk * np.asarray(clients[k][key_b], dtype=np.float64)
                for wk, k in zip(w, members, strict=True)
            ]
        )
        a = np.vstack(
            [np.asarray(clients[k][key_a], dtype=np.float64) for k in members]
        )
        q1, r1 = np.linalg.qr(b)
        q2, r2 = np.linalg.qr(a.T)
        u, s, vt = np.linalg.svd(r1 @ r2.T)
        r = layout.rank(module)
        factor_b = np.zeros(layout.shapes[key_b])
        factor_a = np.zeros(layout.shapes[key_a])
        t = min(r, s.size)  # fewer than r directions: zero columns pad B, rows A
        factor_b[:, :t] = (q1 @ u[:, :t]) * s[:t]
        factor_a[:t] = vt[:t] @ q2.T
        out[key_b] = _cast(factor_b, layout.dtypes[key_b])
        out[key_a] = _cast(factor_a, layout.dtypes[key_a])
    for key in wanted:
        if key in out or any(key in pair for pair in layout.lora.values()):
            continue
        stack = np.stack(
            [np.asarray(clients[k][key], dtype=np.float64) for k in members]
        )
        out[key] = _cast(np.tensordot(w, stack, axes=1), layout.dtypes[key])
    return {k: out[k] for k in layout.shapes if k in out}


def _cast(value: np.ndarray, dtype: str) -> np.ndarray:
    """``value`` in ``dtype``, rounded to the nearest integer for integer dtypes."""
    if np.issubdtype(np.dtype(dtype), np.integer):
        value = np.rint(value)
    return np.ascontiguousarray(value.astype(dtype))

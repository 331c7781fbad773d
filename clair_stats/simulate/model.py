r"""Generators of the federated low-rank + block-sparse model (SPEC section 2).

Benign clients k in S share an r-dimensional column space span(A):

.. math::

    \Theta_k = \Theta_0 + A B_k^T + H_k, \qquad P_A H_k = 0,\;
    \|H_k\|_F = \eta,

contaminated clients k in S^c follow one of :data:`CONTAMINATION_TYPES`, and the
preliminary local estimates are :math:`\hat\Theta_k = \Theta_k + E_k` with
:math:`E_k` entries iid :math:`N(0, \tau^2)` (SPEC 2 (a), direct noise).

References
----------
.. [1] H. Xu, C. Caramanis, S. Sanghavi, "Robust PCA via outlier pursuit",
   IEEE Transactions on Information Theory 58(5), 2012.
.. [2] He, Chen, Feng, "Federated LoRA fine-tuning for LLMs via collaborative
   alignment", arXiv:2605.21217, 2026.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from clair_stats.core.validation import check_int

__all__ = ["CONTAMINATION_TYPES", "FederatedModel", "FederatedSample"]

CONTAMINATION_TYPES: tuple[str, ...] = (
    "random",
    "orthogonal",
    "subspace",
    "scaled",
    "sign_flip",
    "in_subspace",
    "margin",
)

# Types whose Theta_k - Theta_0 is rescaled to the benign root-mean-square norm.
_MATCHED = frozenset({"random", "orthogonal", "subspace", "in_subspace"})

FloatArray = NDArray[np.float64]


# --------------------------------------------------------------------------- helpers
def _orthonormal(rng: np.random.Generator, p: int, r: int) -> FloatArray:
    """Random p x r matrix with orthonormal columns: Q of the QR of a Gaussian."""
    q, _ = np.linalg.qr(rng.standard_normal((p, r)))
    return q


def _project_out(A: FloatArray, X: FloatArray) -> FloatArray:
    """P_A^perp X = X - A (A^T X); X may be (p, q) or stacked (K, p, q)."""
    return X - A @ (A.T @ X)


def _rescale(X: FloatArray, target: float) -> FloatArray:
    """X * target / ||X||_F (zeros if X = 0)."""
    norm = float(np.linalg.norm(X))
    return X * (target / norm) if norm > 0 else np.zeros_like(X)


def _readonly(x: FloatArray | NDArray[np.bool_]) -> np.ndarray:
    x.setflags(write=False)
    return x


def _check_scale(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number, got {value!r} of type "
            f"{type(value).__name__}."
        )
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{name} must be a finite number >= 0, got {value}; pass a "
            f"nonnegative finite {name}."
        )
    return float(value)


# ---------------------------------------------------------------------------- model
@dataclass(frozen=True)
class FederatedModel:
    r"""Federated LoRA model with a shared subspace and contaminated clients.

    .. math::

        k \in S:\ \Theta_k = \Theta_0 + A B_k^T + H_k, \qquad
        k \in S^c:\ \Theta_k \text{ of type } ``contamination_type``,

    with :math:`A \in R^{p x r}`, :math:`A^T A = I_r`, :math:`B_k \in R^{q x r}`
    iid :math:`N(0, s^2)` entries, and :math:`P_A H_k = 0`,
    :math:`\|H_k\|_F = \eta` exactly.

    Parameters
    ----------
    p, q : int
        Shape of each Theta_k (p: the shared, column-space side).
    rank : int
        r, the dimension of span(A); 1 <= r < p (the complement of span(A) must be
        nonzero for the heterogeneity, ``orthogonal`` and ``margin`` draws).
    n_clients : int
        K >= 2.
    contamination : float or int
        A float is the fraction gamma in [0, 1); an int is the number of contaminated
        clients, in [0, K - 1]. At least one client must stay benign.
    contamination_type : str or tuple of str
        One of :data:`CONTAMINATION_TYPES`, or several: the contaminated clients
        (in client order) then take the types in turn. Writing
        :math:`\rho = (\text{mean}_{j \in S} \|\Theta_j - \Theta_0\|_F^2)^{1/2}`
        (the benign norm of this instance), :math:`\Theta_k - \Theta_0` is

        - ``random``: a Gaussian p x q matrix rescaled to norm rho;
        - ``orthogonal``: :math:`P_A^\perp G` rescaled to norm rho (so
          :math:`\delta_k = \rho`; the setting of Xu et al.);
        - ``subspace``: :math:`A' B'^T` rescaled to norm rho, with A' one random
          r-dim orthonormal basis shared by all contaminated clients of the instance;
        - ``scaled``: :math:`-c (A B'^T + H')`, a fresh benign-like draw, c =
          ``scale_factor``; ``sign_flip``: the same with c = 1;
        - ``in_subspace``: :math:`A B'^T` rescaled to norm rho (:math:`\delta_k = 0`);
        - ``margin``: :math:`A B'^T + P_A^\perp G` with the second term rescaled to
          norm ``margin`` (:math:`\delta_k` = ``margin`` exactly).
    heterogeneity : float
        eta >= 0: every benign H_k has :math:`\|H_k\|_F = \eta`.
    center : bool
        False: :math:`\Theta_0 = 0`. True: :math:`\Theta_0` is a Gaussian p x q
        matrix rescaled to norm ``backbone_scale``.
    signal_scale : float
        s, the standard deviation of the entries of B_k.
    backbone_scale : float
        :math:`\|\Theta_0\|_F` when ``center=True``.
    scale_factor : float
        c of the ``scaled`` type.
    margin : float
        delta of the ``margin`` type.

    References
    ----------
    .. [1] H. Xu, C. Caramanis, S. Sanghavi, "Robust PCA via outlier pursuit",
       IEEE Transactions on Information Theory 58(5), 2012.
    .. [2] He, Chen, Feng, "Federated LoRA fine-tuning for LLMs via collaborative
       alignment", arXiv:2605.21217, 2026.

    Examples
    --------
    >>> model = FederatedModel(p=20, q=3, rank=2, n_clients=10, contamination=0.2)
    >>> sample = model.sample(noise=0.01, seed=0)
    >>> sample.updates.shape, int(sample.benign.sum())
    ((10, 20, 3), 8)
    """

    p: int
    q: int
    rank: int
    n_clients: int
    contamination: float | int = 0.2
    contamination_type: str | tuple[str, ...] = "random"
    heterogeneity: float = 0.0
    center: bool = False
    signal_scale: float = 1.0
    backbone_scale: float = 10.0
    scale_factor: float = 3.0
    margin: float = 1.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise numpy scalars to Python ones
        for name in ("p", "q", "rank"):
            set_(self, name, check_int(getattr(self, name), name, 1))
        set_(self, "n_clients", check_int(self.n_clients, "n_clients", 2))
        if self.rank >= self.p:
            raise ValueError(
                f"rank must be < p, got rank={self.rank}, p={self.p}: the orthogonal "
                "complement of span(A) must be nonzero. Lower rank or raise p."
            )
        K = self.n_clients
        gamma = self.contamination
        if isinstance(gamma, bool):
            raise TypeError(
                "contamination must be a fraction (float) or a count (int), not a "
                f"bool (got {gamma!r})."
            )
        if isinstance(gamma, numbers.Integral):
            if not 0 <= gamma <= K - 1:
                raise ValueError(
                    f"contamination count must be in [0, n_clients - 1] = [0, {K - 1}]"
                    f", got {gamma}: at least one client must be benign."
                )
            set_(self, "contamination", int(gamma))
        elif isinstance(gamma, numbers.Real):
            if not (math.isfinite(gamma) and 0 <= gamma < 1):
                raise ValueError(
                    f"contamination fraction must be in [0, 1), got {gamma}; pass a "
                    "float fraction gamma or an int count of contaminated clients."
                )
            set_(self, "contamination", float(gamma))
            if self.n_contaminated > K - 1:
                raise ValueError(
                    f"contamination={gamma} with n_clients={K} rounds to "
                    f"{self.n_contaminated} contaminated clients, leaving none "
                    "benign; lower the fraction or raise n_clients."
                )
        else:
            raise TypeError(
                "contamination must be a float fraction in [0, 1) or an int count, "
                f"got {gamma!r} of type {type(gamma).__name__}."
            )
        kinds = self.contamination_type
        if isinstance(kinds, list | tuple):
            if not kinds:
                raise ValueError("contamination_type needs at least one type.")
            set_(self, "contamination_type", tuple(kinds))
        for kind in self.types:
            if kind not in CONTAMINATION_TYPES:
                raise ValueError(
                    f"unknown contamination_type {kind!r}; valid "
                    f"types are {', '.join(CONTAMINATION_TYPES)}."
                )
        if not isinstance(self.center, (bool, np.bool_)):
            raise TypeError(f"center must be a bool, got {self.center!r}.")
        set_(self, "center", bool(self.center))
        for name in (
            "heterogeneity",
            "signal_scale",
            "backbone_scale",
            "scale_factor",
            "margin",
        ):
            set_(self, name, _check_scale(name, getattr(self, name)))

    @property
    def types(self) -> tuple[str, ...]:
        """The contamination types, taken in turn by the contaminated clients."""
        kinds = self.contamination_type
        return kinds if isinstance(kinds, tuple) else (kinds,)

    @property
    def n_contaminated(self) -> int:
        """|S^c|: the count, or gamma K rounded to the nearest int (halves up)."""
        if isinstance(self.contamination, int):
            return self.contamination
        return math.floor(self.contamination * self.n_clients + 0.5)

    def sample(
        self,
        noise: float = 0.0,
        seed: int | np.random.Generator | None = None,
    ) -> FederatedSample:
        r"""Draw one instance and its preliminary estimates.

        Draw order (fixed, so the truth does not depend on ``noise``): Theta_0, A,
        the contaminated set, benign (B_k, H_k) in client order, the contaminated
        blocks in client order, then E.

        Parameters
        ----------
        noise : float
            tau >= 0: :math:`\hat\Theta_k = \Theta_k + E_k`, E_k iid
            :math:`N(0, \tau^2)` entries.
        seed : int, numpy.random.Generator or None
            Passed to :func:`numpy.random.default_rng`; the same int gives
            bit-identical arrays.

        Returns
        -------
        FederatedSample
        """
        tau = _check_scale("noise", noise)
        rng = np.random.default_rng(seed)
        p, q, r, K = self.p, self.q, self.rank, self.n_clients
        s, eta = self.signal_scale, self.heterogeneity

        theta0 = _rescale(rng.standard_normal((p, q)), self.backbone_scale)
        if not self.center:
            theta0 = np.zeros((p, q))
        A = _orthonormal(rng, p, r)
        bad = rng.choice(K, size=self.n_contaminated, replace=False)
        benign = np.ones(K, dtype=bool)
        benign[bad] = False

        def heterogeneity() -> FloatArray:  # H = eta P_A^perp G / ||P_A^perp G||_F
            return _rescale(_project_out(A, rng.standard_normal((p, q))), eta)

        def in_subspace(scale: float) -> FloatArray:  # A B^T, B iid N(0, scale^2)
            return A @ (scale * rng.standard_normal((q, r))).T

        dev = np.zeros((K, p, q))  # Theta_k - Theta_0
        for k in np.flatnonzero(benign):
            dev[k] = in_subspace(s) + heterogeneity()
        rho = math.sqrt(float(np.mean(np.sum(dev[benign] ** 2, axis=(1, 2)))))

        kinds = self.types
        A_alt = _orthonormal(rng, p, r) if "subspace" in kinds else None
        for i, k in enumerate(np.flatnonzero(~benign)):
            kind = kinds[i % len(kinds)]
            if kind == "random":
                block = rng.standard_normal((p, q))
            elif kind == "orthogonal":
                block = _project_out(A, rng.standard_normal((p, q)))
            elif kind == "subspace":  # A' B'^T (scale irrelevant: rescaled below)
                block = A_alt @ rng.standard_normal((q, r)).T
            elif kind == "in_subspace":
                block = in_subspace(1.0)
            elif kind in ("scaled", "sign_flip"):  # -c (A B'^T + H')
                c = self.scale_factor if kind == "scaled" else 1.0
                block = -c * (in_subspace(s) + heterogeneity())
            else:  # margin: A B'^T + delta P_A^perp G / ||P_A^perp G||_F
                off = _project_out(A, rng.standard_normal((p, q)))
                block = in_subspace(s) + _rescale(off, self.margin)
            dev[k] = _rescale(block, rho) if kind in _MATCHED else block

        truth = theta0 + dev
        updates = truth + tau * rng.standard_normal((K, p, q))
        delta = np.linalg.norm(_project_out(A, dev), axis=(1, 2))
        return FederatedSample(
            updates=_readonly(updates),
            truth=_readonly(truth),
            subspace=_readonly(A),
            benign=_readonly(benign),
            backbone=_readonly(theta0),
            margin=_readonly(delta),
            noise=tau,
            model=self,
        )

    def sample_regression(
        self,
        n: int | list[int] | tuple[int, ...] | NDArray[np.integer],
        sigma: float = 1.0,
        design_cov: NDArray[np.float64] | list[list[float]] | None = None,
        ridge: float | None = None,
        seed: int | np.random.Generator | None = None,
        keep_data: bool = False,
    ) -> FederatedSample:
        r"""Draw one instance with local estimates from regressions (SPEC 2 (b)).

        .. math::

            Y_k = X_k \Theta_k + \varepsilon_k, \qquad
            \hat\Theta_k = (X_k^T X_k + \alpha I_p)^{-1} X_k^T Y_k,

        :math:`X_k` rows iid :math:`N(0, \Sigma)`, :math:`\varepsilon_k` rows iid
        :math:`N(0, \sigma^2 I_q)`, :math:`\alpha = 0` (OLS) unless ``ridge``. The
        truth equals ``self.sample(seed=seed).truth`` for the same int seed. See
        :func:`clair_stats.simulate.regression.sample_regression` for the parameters.

        Returns
        -------
        clair_stats.simulate.regression.RegressionSample
            A :class:`FederatedSample` subclass with the fits' ``n``, ``sigma``,
            ``sigma2_hat``, ``gram_inverse_trace``, ``estimator`` and ``ridge``.
        """
        from clair_stats.simulate.regression import sample_regression

        return sample_regression(
            self,
            n,
            sigma=sigma,
            design_cov=design_cov,
            ridge=ridge,
            seed=seed,
            keep_data=keep_data,
        )


# --------------------------------------------------------------------------- sample
@dataclass(frozen=True, eq=False)
class FederatedSample:
    r"""One draw of :class:`FederatedModel`: truth, estimates and the hidden structure.

    Attributes
    ----------
    updates : ndarray, shape (K, p, q)
        Preliminary estimates :math:`\hat\Theta_k = \Theta_k + E_k`.
    truth : ndarray, shape (K, p, q)
        :math:`\Theta_k`.
    subspace : ndarray, shape (p, r)
        A, with :math:`A^T A = I_r`.
    benign : ndarray of bool, shape (K,)
        True on the collaborative set S.
    backbone : ndarray, shape (p, q)
        :math:`\Theta_0` (zeros when ``center=False``).
    margin : ndarray, shape (K,)
        :math:`\delta_k = \|P_A^\perp (\Theta_k - \Theta_0)\|_F` for every client
        (benign clients give :math:`\|H_k\|_F`).
    noise : float
        tau.
    model : FederatedModel
        The generator.

    All arrays are read-only.
    """

    updates: FloatArray
    truth: FloatArray
    subspace: FloatArray
    benign: NDArray[np.bool_]
    backbone: FloatArray
    margin: FloatArray
    noise: float
    model: FederatedModel

    @property
    def n_clients(self) -> int:
        """K."""
        return self.model.n_clients

    @property
    def p(self) -> int:
        return self.model.p

    @property
    def q(self) -> int:
        return self.model.q

    @property
    def rank(self) -> int:
        """r."""
        return self.model.rank

    @property
    def gamma(self) -> float:
        """Contamination fraction |S^c| / K of this instance."""
        return float(np.count_nonzero(~self.benign)) / self.n_clients

    @property
    def contaminated(self) -> NDArray[np.bool_]:
        """True on S^c."""
        return ~self.benign

    @cached_property
    def low_rank_truth(self) -> FloatArray:
        r"""L0 blocks: :math:`P_A (\Theta_k - \Theta_0) = A B_k^T` on S, 0 on S^c."""
        A = self.subspace
        L0 = A @ (A.T @ (self.truth - self.backbone))
        L0[~self.benign] = 0.0
        return _readonly(L0)

    @cached_property
    def sparse_truth(self) -> FloatArray:
        r"""S0 blocks: 0 on S, :math:`\Theta_k - \Theta_0` on S^c."""
        S0 = self.truth - self.backbone
        S0[self.benign] = 0.0
        return _readonly(S0)

    def __repr__(self) -> str:
        return (
            f"FederatedSample(K={self.n_clients}, p={self.p}, q={self.q}, "
            f"r={self.rank}, benign={int(self.benign.sum())}, "
            f"contaminated={int(self.contaminated.sum())}, "
            f"type={self.model.contamination_type!r}, noise={self.noise:g})"
        )

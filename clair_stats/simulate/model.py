r"""Generators of the federated low-rank + block-sparse model (docs/model.md §2).

Benign clients k in S share an r-dimensional column space span(A):

.. math::

    \Theta_k = \Theta_0 + A B_k^T + H_k, \qquad P_A H_k = 0,\;
    \|H_k\|_F = \eta,

contaminated clients k in S^c follow one of the registered contamination types
(:mod:`~clair_stats.simulate.contamination`), and the preliminary local estimates
are :math:`\hat\Theta_k = \Theta_k + E_k` with :math:`E_k` entries iid
:math:`N(0, \tau^2)` (docs/model.md §2.3 (a), direct noise). Local estimates from
regressions (docs/model.md §2.3 (b)) are in :mod:`~clair_stats.simulate.regression`.

This is the model of CLAIR [2]_. With q = 1, no backbone, no heterogeneity and no
noise, the benign columns lie in span(A) and the contaminated ones are outliers:
the model of outlier pursuit [1]_, of which this is the block form.

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

import numpy as np
from numpy.typing import NDArray

from clair_stats.core.validation import (
    check_bool,
    check_fraction,
    check_int,
    check_nonnegative,
)
from clair_stats.simulate._draws import (
    FloatArray,
    orthonormal,
    project_out,
    readonly,
    rescale,
)
from clair_stats.simulate.contamination import (
    CONTAMINATION_TYPES,
    ContaminationContext,
    draw_contaminated,
    get_contamination,
)
from clair_stats.simulate.regression import RegressionSample, sample_regression
from clair_stats.simulate.sample import FederatedSample

__all__ = ["CONTAMINATION_TYPES", "FederatedModel", "FederatedSample"]


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
        A registered type (:data:`CONTAMINATION_TYPES` or one added with
        :func:`~clair_stats.simulate.contamination.contamination`), or several:
        the contaminated clients (in client order) then take the types in turn. Writing
        :math:`\rho = (\text{mean}_{j \in S} \|\Theta_j - \Theta_0\|_F^2)^{1/2}`
        (the benign norm of this instance), :math:`\Theta_k - \Theta_0` is

        - ``random``: a Gaussian p x q matrix rescaled to norm rho;
        - ``orthogonal``: :math:`P_A^\perp G` rescaled to norm rho (so
          :math:`\delta_k = \rho`; the setting of Xu et al.);
        - ``subspace``: :math:`A' B'^T` rescaled to norm rho, with A' one random
          r-dim orthonormal basis shared by the instance's ``subspace`` clients;
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
        set_(self, "contamination", self._checked_contamination())
        set_(self, "contamination_type", self._checked_types())
        set_(self, "center", check_bool(self.center, "center"))
        for name in (
            "heterogeneity",
            "signal_scale",
            "backbone_scale",
            "scale_factor",
            "margin",
        ):
            set_(self, name, check_nonnegative(getattr(self, name), name))

    def _checked_contamination(self) -> float | int:
        """The count as an int in [0, K - 1] or the fraction as a float in [0, 1)."""
        K, gamma = self.n_clients, self.contamination
        if isinstance(gamma, bool | np.bool_):
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
            return int(gamma)
        if not isinstance(gamma, numbers.Real):
            raise TypeError(
                "contamination must be a float fraction in [0, 1) or an int count, "
                f"got {gamma!r} of type {type(gamma).__name__}."
            )
        gamma = check_fraction(
            gamma,
            "contamination fraction",
            zero_ok=True,
            why=" Pass a float fraction gamma or an int count of contaminated clients.",
        )
        if _round_half_up(gamma * K) > K - 1:
            raise ValueError(
                f"contamination={gamma} with n_clients={K} rounds to "
                f"{_round_half_up(gamma * K)} contaminated clients, leaving none "
                "benign; lower the fraction or raise n_clients."
            )
        return gamma

    def _checked_types(self) -> str | tuple[str, ...]:
        """``contamination_type`` as a str or a nonempty tuple of registered names."""
        kinds = self.contamination_type
        if isinstance(kinds, list | tuple):
            if not kinds:
                raise ValueError("contamination_type needs at least one type.")
            kinds = tuple(kinds)
        for kind in kinds if isinstance(kinds, tuple) else (kinds,):
            get_contamination(kind)  # raises, listing the registered types
        return kinds

    @property
    def types(self) -> tuple[str, ...]:
        """The contamination types, taken in turn by the contaminated clients."""
        kinds = self.contamination_type
        return kinds if isinstance(kinds, tuple) else (kinds,)

    @property
    def n_contaminated(self) -> int:
        """``|S^c|``: the count, or gamma K rounded to the nearest int (halves up)."""
        if isinstance(self.contamination, int):
            return self.contamination
        return _round_half_up(self.contamination * self.n_clients)

    def sample(
        self,
        noise: float = 0.0,
        seed: int | np.random.Generator | None = None,
    ) -> FederatedSample:
        r"""Draw one instance and its preliminary estimates.

        Draw order (fixed, so the truth does not depend on ``noise``): Theta_0, A,
        the contaminated set, benign (B_k, H_k) in client order, the shared draws
        of the contamination types (the A' of ``subspace``), the contaminated
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
        tau = check_nonnegative(noise, "noise")
        rng = np.random.default_rng(seed)
        K, p, q = self.n_clients, self.p, self.q

        theta0 = self._draw_backbone(rng)
        A = orthonormal(rng, p, self.rank)
        benign = self._draw_benign_set(rng)
        ctx = self._context(rng, A)

        dev = np.zeros((K, p, q))  # Theta_k - Theta_0
        dev[benign] = [ctx.benign_like() for _ in range(K - self.n_contaminated)]
        rho = math.sqrt(float(np.mean(np.sum(dev[benign] ** 2, axis=(1, 2)))))
        dev[~benign] = draw_contaminated(ctx, self.types, self.n_contaminated, rho)

        truth = theta0 + dev
        updates = truth + tau * rng.standard_normal((K, p, q))
        return FederatedSample(
            updates=readonly(updates),
            truth=readonly(truth),
            subspace=readonly(A),
            benign=readonly(benign),
            backbone=readonly(theta0),
            margin=readonly(np.linalg.norm(project_out(A, dev), axis=(1, 2))),
            noise=tau,
            model=self,
        )

    def _draw_backbone(self, rng: np.random.Generator) -> FloatArray:
        """Theta_0: drawn always (fixed draw order), kept only if ``center``."""
        theta0 = rescale(rng.standard_normal((self.p, self.q)), self.backbone_scale)
        return theta0 if self.center else np.zeros((self.p, self.q))

    def _draw_benign_set(self, rng: np.random.Generator) -> NDArray[np.bool_]:
        """S as a mask: ``|S^c|`` clients drawn uniformly without replacement."""
        bad = rng.choice(self.n_clients, size=self.n_contaminated, replace=False)
        benign = np.ones(self.n_clients, dtype=bool)
        benign[bad] = False
        return benign

    def _context(self, rng: np.random.Generator, A: FloatArray) -> ContaminationContext:
        """The draws and parameters the benign and contaminated blocks need."""
        return ContaminationContext(
            rng=rng,
            A=A,
            p=self.p,
            q=self.q,
            r=self.rank,
            signal_scale=self.signal_scale,
            eta=self.heterogeneity,
            scale_factor=self.scale_factor,
            margin=self.margin,
        )

    def sample_regression(
        self,
        n: int | list[int] | tuple[int, ...] | NDArray[np.integer],
        sigma: float = 1.0,
        design_cov: NDArray[np.float64] | list[list[float]] | None = None,
        ridge: float | None = None,
        seed: int | np.random.Generator | None = None,
        keep_data: bool = False,
    ) -> RegressionSample:
        r"""Draw one instance, local estimates from regressions (docs/model.md §2.3).

        .. math::

            Y_k = X_k \Theta_k + \varepsilon_k, \qquad
            \hat\Theta_k = (X_k^T X_k + \alpha I_p)^{-1} X_k^T Y_k,

        :math:`X_k` rows iid :math:`N(0, \Sigma)`, :math:`\varepsilon_k` rows iid
        :math:`N(0, \sigma^2 I_q)`, :math:`\alpha = 0` (OLS) unless ``ridge``. The
        truth equals ``self.sample(seed=seed).truth`` for the same int seed. The
        draw is :func:`clair_stats.simulate.regression.sample_regression` with
        this model.

        Parameters
        ----------
        n : int or sequence of int
            :math:`n_k`, the number of observations: one int for every client
            or K ints. OLS needs :math:`n_k > p`; ridge needs :math:`n_k \ge 1`.
        sigma : float, default 1.0
            sigma >= 0, the standard deviation of the regression noise.
        design_cov : array_like, shape (p, p), optional
            :math:`\Sigma`, the covariance of the design rows, symmetric positive
            definite; default None, :math:`I_p`.
        ridge : float, optional
            alpha > 0 for ridge; default None, OLS.
        seed : int or numpy.random.Generator, optional
            Passed to :func:`numpy.random.default_rng`; default None, fresh
            entropy.
        keep_data : bool, default False
            Store the :math:`X_k` and :math:`Y_k` in ``designs`` and
            ``responses`` (else they are discarded).

        Returns
        -------
        clair_stats.simulate.regression.RegressionSample
            A :class:`FederatedSample` subclass with the fits' ``n``, ``sigma``,
            ``sigma2_hat``, ``gram_inverse_trace``, ``estimator`` and ``ridge``.
        """
        return sample_regression(
            self,
            n,
            sigma=sigma,
            design_cov=design_cov,
            ridge=ridge,
            seed=seed,
            keep_data=keep_data,
        )


def _round_half_up(x: float) -> int:
    """The nearest int to x >= 0, halves up (not Python's round-half-even)."""
    return math.floor(x + 0.5)

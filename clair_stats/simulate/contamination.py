r"""The contamination types of :class:`~clair_stats.simulate.model.FederatedModel`.

A contaminated client :math:`k \in S^c` (a nonzero block of the block-sparse part
of the model of [2]_) gets :math:`\Theta_k - \Theta_0` from the generator of its
type. Every type is one function of a
:class:`ContaminationContext` (the draws and parameters of the instance),
registered under a name; :class:`~clair_stats.simulate.model.FederatedModel`
accepts every registered name as ``contamination_type``. Writing
:math:`\rho = (\text{mean}_{j \in S} \|\Theta_j - \Theta_0\|_F^2)^{1/2}` (the
benign norm of the instance), the built-in types are

- ``random``: a Gaussian p x q matrix rescaled to norm rho;
- ``orthogonal``: :math:`P_A^\perp G` rescaled to norm rho (Xu et al.'s setting
  [1]_);
- ``subspace``: :math:`A' B'^T` rescaled to norm rho, A' one random r-dim
  orthonormal basis shared by all ``subspace`` clients of the instance;
- ``scaled``: :math:`-c (A B'^T + H')`, a fresh benign-like draw, c =
  ``scale_factor``; ``sign_flip``: the same with c = 1;
- ``in_subspace``: :math:`A B'^T` rescaled to norm rho (:math:`\delta_k = 0`);
- ``margin``: :math:`A B'^T + P_A^\perp G` with the second term rescaled to norm
  ``margin`` (:math:`\delta_k` = ``margin`` exactly).

:data:`CONTAMINATION_TYPES` lists them in this order; :func:`registered_types`
lists every type registered now.

Adding a type
-------------
Write one function that takes the context and returns the p x q block, and
register it with the :func:`contamination` decorator::

    from clair_stats.simulate.contamination import contamination

    @contamination("rank_one", matched=True)
    def rank_one(ctx):
        "A rank-one block u v^T, u and v Gaussian, rescaled to norm rho."
        return ctx.rng.standard_normal((ctx.p, 1)) @ ctx.rng.standard_normal((1, ctx.q))

    FederatedModel(p=20, q=3, rank=2, n_clients=10, contamination_type="rank_one")

``matched=True`` rescales the block to the benign norm rho (the generator's
scale is then irrelevant); ``matched=False`` keeps it as returned. Draw from
``ctx.rng`` only, so that a seed reproduces the instance. The context offers the
usual pieces: ``ctx.gaussian()`` (G), ``ctx.in_subspace(scale)``
(:math:`A B^T`), ``ctx.off_subspace(norm)`` (:math:`P_A^\perp G`, optionally
rescaled), ``ctx.heterogeneity()`` (H) and ``ctx.benign_like()``
(:math:`A B^T + H`), besides ``A``, ``p``, ``q``, ``r``, ``signal_scale``,
``eta``, ``scale_factor`` and ``margin``. A type whose clients share one draw
per instance (as ``subspace`` shares A') passes ``shared=``, a function of the
context that makes that draw; the generator reads it as ``ctx.shared``.
:func:`unregister_contamination` removes an added type (tests use it to leave
the registry as they found it); the built-in types cannot be removed.

Draw order (fixed): after the benign blocks, the shared draw of each type that
has one, once per instance, in the order of the types' first appearance in
``contamination_type`` (whether or not any client ends up with that type); then
the contaminated clients in client order, each calling its type's generator once.

References
----------
.. [1] H. Xu, C. Caramanis, S. Sanghavi, "Robust PCA via outlier pursuit",
   IEEE Transactions on Information Theory 58(5), 2012.
.. [2] He, Chen, Feng, "Federated LoRA fine-tuning for LLMs via collaborative
   alignment", arXiv:2605.21217, 2026.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from clair_stats.core.validation import check_bool
from clair_stats.simulate._draws import FloatArray, orthonormal, project_out, rescale

__all__ = [
    "CONTAMINATION_TYPES",
    "ContaminationContext",
    "ContaminationType",
    "contamination",
    "draw_contaminated",
    "get_contamination",
    "register_contamination",
    "registered_types",
    "unregister_contamination",
]


# ------------------------------------------------------------------------- context
@dataclass(frozen=True)
class ContaminationContext:
    r"""What a contamination generator needs: the instance's draws and parameters.

    Parameters
    ----------
    rng : numpy.random.Generator
        The instance's generator; every random draw comes from it.
    A : ndarray, shape (p, r)
        The shared basis, :math:`A^T A = I_r`.
    p, q, r : int
        Shape of Theta_k and dimension of span(A).
    signal_scale : float
        s, the standard deviation of the entries of the benign :math:`B_k`.
    eta : float
        The heterogeneity :math:`\|H_k\|_F` of the benign clients.
    scale_factor : float
        c of the ``scaled`` type.
    margin : float
        delta of the ``margin`` type.
    shared : object
        The value of this type's ``shared`` draw for the instance (for
        ``subspace``: the basis A'); None for a type without one.
    """

    rng: np.random.Generator
    A: FloatArray
    p: int
    q: int
    r: int
    signal_scale: float
    eta: float
    scale_factor: float
    margin: float
    shared: object = None

    def gaussian(self) -> FloatArray:
        """G: a p x q matrix of iid N(0, 1) entries."""
        return self.rng.standard_normal((self.p, self.q))

    def in_subspace(self, scale: float | None = None) -> FloatArray:
        r""":math:`A B^T`, B (q x r) iid :math:`N(0, c^2)`, c = ``scale`` (None: s).

        Parameters
        ----------
        scale : float, optional
            c, the standard deviation of the entries of B; default None, the
            benign ``signal_scale`` s.

        Returns
        -------
        ndarray, shape (p, q)
            A block in span(A), drawn from ``rng``.
        """
        scale = self.signal_scale if scale is None else scale
        return self.A @ (scale * self.rng.standard_normal((self.q, self.r))).T

    def off_subspace(self, norm: float | None = None) -> FloatArray:
        r""":math:`P_A^\perp G`, rescaled to Frobenius norm ``norm`` if given.

        Parameters
        ----------
        norm : float, optional
            The Frobenius norm of the block; default None, the norm of the
            projected Gaussian matrix as drawn.

        Returns
        -------
        ndarray, shape (p, q)
            A block with :math:`P_A X = 0`, drawn from ``rng``.
        """
        off = project_out(self.A, self.gaussian())
        return off if norm is None else rescale(off, norm)

    def heterogeneity(self) -> FloatArray:
        r"""H: :math:`\eta P_A^\perp G / \|P_A^\perp G\|_F`, so :math:`P_A H = 0`."""
        return self.off_subspace(self.eta)

    def benign_like(self) -> FloatArray:
        r"""A fresh benign block :math:`A B^T + H` (B drawn first, then H)."""
        return self.in_subspace() + self.heterogeneity()


Generator = Callable[[ContaminationContext], FloatArray]
SharedDraw = Callable[[ContaminationContext], object]


# ------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class ContaminationType:
    """One registered contamination type.

    Parameters
    ----------
    name : str
        The name passed as ``contamination_type``.
    generate : callable
        ``generate(ctx) -> ndarray (p, q)``: the block of one client.
    matched : bool
        Rescale the block to the benign norm rho.
    shared : callable or None
        ``shared(ctx) -> object``: a draw made once per instance and passed to
        ``generate`` as ``ctx.shared``.
    """

    name: str
    generate: Generator
    matched: bool
    shared: SharedDraw | None = None

    @property
    def description(self) -> str:
        """The first line of the generator's docstring."""
        doc = (self.generate.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


_REGISTRY: dict[str, ContaminationType] = {}


def register_contamination(
    name: str,
    generate: Generator,
    *,
    matched: bool,
    shared: SharedDraw | None = None,
) -> ContaminationType:
    """Register ``generate`` as the contamination type ``name``.

    Parameters
    ----------
    name : str
        A name not registered yet.
    generate : callable
        ``generate(ctx)`` returns the p x q block
        :math:`\\Theta_k - \\Theta_0` of one client; ``ctx`` is a
        :class:`ContaminationContext`.
    matched : bool
        True: the block is rescaled to the benign norm rho. False: it is kept.
    shared : callable or None
        ``shared(ctx)`` makes a draw shared by all clients of this type in one
        instance (once, before the contaminated clients), read as ``ctx.shared``.

    Returns
    -------
    ContaminationType
    """
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"a contamination type needs a nonempty str name, got {name!r}."
        )
    if name in _REGISTRY:
        raise ValueError(
            f"contamination type {name!r} is already registered; choose another "
            "name or unregister_contamination it first."
        )
    if not callable(generate) or (shared is not None and not callable(shared)):
        raise TypeError(
            f"contamination type {name!r}: generate (and shared, if given) must be "
            "functions of a ContaminationContext."
        )
    kind = ContaminationType(name, generate, check_bool(matched, "matched"), shared)
    _REGISTRY[name] = kind
    return kind


def contamination(
    name: str, *, matched: bool, shared: SharedDraw | None = None
) -> Callable[[Generator], Generator]:
    """Decorator form of :func:`register_contamination`; returns the function as is.

    Parameters
    ----------
    name : str
        A name not registered yet.
    matched : bool
        True: the block is rescaled to the benign norm rho. False: it is kept
        (keyword only).
    shared : callable, optional
        ``shared(ctx)`` makes a draw shared by all clients of this type in one
        instance, read as ``ctx.shared``; default None, no shared draw.

    Returns
    -------
    callable
        The decorator: it registers the decorated ``generate(ctx)`` and returns
        it unchanged.

    Examples
    --------
    >>> @contamination("doc_example", matched=True)
    ... def doc_example(ctx):
    ...     "A Gaussian block rescaled to the benign norm."
    ...     return ctx.gaussian()
    >>> "doc_example" in registered_types()
    True
    >>> _ = unregister_contamination("doc_example")
    """

    def register(generate: Generator) -> Generator:
        register_contamination(name, generate, matched=matched, shared=shared)
        return generate

    return register


def unregister_contamination(name: str) -> ContaminationType:
    """Remove an added type from the registry and return it.

    The built-in types (:data:`CONTAMINATION_TYPES`) cannot be removed.

    Parameters
    ----------
    name : str
        The name of a type added by :func:`register_contamination` (a
        ``ValueError`` for a built-in or an unknown name).

    Returns
    -------
    ContaminationType
        The removed type.
    """
    if name in CONTAMINATION_TYPES:
        raise ValueError(
            f"{name!r} is a built-in contamination type and cannot be unregistered."
        )
    get_contamination(name)  # raises, listing the registered types
    return _REGISTRY.pop(name)


def registered_types() -> tuple[str, ...]:
    """The names of every registered type, in registration order."""
    return tuple(_REGISTRY)


def get_contamination(name: object) -> ContaminationType:
    """The registered type ``name``, or a ValueError listing the registered ones.

    Parameters
    ----------
    name : str
        The name of a registered type (built-in or added).

    Returns
    -------
    ContaminationType
        The type: its generator, whether it is matched, its shared draw.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"unknown contamination_type {name!r}; valid types are "
            f"{', '.join(_REGISTRY)}. Add a type with the "
            "clair_stats.simulate.contamination.contamination decorator."
        )
    return _REGISTRY[name]


# -------------------------------------------------------------------------- drawing
def draw_contaminated(
    ctx: ContaminationContext, kinds: tuple[str, ...], n: int, rho: float
) -> FloatArray:
    r"""The blocks :math:`\Theta_k - \Theta_0` of the n contaminated clients.

    Client i (in client order) takes type ``kinds[i % len(kinds)]``. Draw order:
    the shared draw of each type that has one, in the order of first appearance
    in ``kinds``, then one generator call per client.

    Parameters
    ----------
    ctx : ContaminationContext
        The instance (``shared`` is set per type here).
    kinds : tuple of str
        Registered type names, taken in turn.
    n : int
        ``|S^c|``, the number of contaminated clients.
    rho : float
        The benign norm, the target of the matched types.

    Returns
    -------
    ndarray, shape (n, p, q)
    """
    types = {kind: get_contamination(kind) for kind in dict.fromkeys(kinds)}
    contexts = {
        kind: replace(ctx, shared=t.shared(ctx)) if t.shared is not None else ctx
        for kind, t in types.items()
    }
    blocks = np.empty((n, ctx.p, ctx.q))
    for i in range(n):
        kind = types[kinds[i % len(kinds)]]
        block = np.asarray(kind.generate(contexts[kind.name]))
        if block.shape != (ctx.p, ctx.q):
            raise ValueError(
                f"contamination type {kind.name!r} returned a block of shape "
                f"{block.shape}; it must return one p x q = ({ctx.p}, {ctx.q}) block."
            )
        blocks[i] = rescale(block, rho) if kind.matched else block
    return blocks


# ------------------------------------------------------------------ built-in types
@contamination("random", matched=True)
def _random(ctx: ContaminationContext) -> FloatArray:
    """A Gaussian p x q matrix G (rescaled to rho)."""
    return ctx.gaussian()


@contamination("orthogonal", matched=True)
def _orthogonal(ctx: ContaminationContext) -> FloatArray:
    r""":math:`P_A^\perp G` (rescaled to rho): :math:`\delta_k = \rho`."""
    return ctx.off_subspace()


def _alternative_basis(ctx: ContaminationContext) -> FloatArray:
    """A': a random r-dim orthonormal basis, one per instance."""
    return orthonormal(ctx.rng, ctx.p, ctx.r)


@contamination("subspace", matched=True, shared=_alternative_basis)
def _subspace(ctx: ContaminationContext) -> FloatArray:
    r""":math:`A' B'^T` (rescaled to rho), A' shared by the instance's clients."""
    return ctx.shared @ ctx.rng.standard_normal((ctx.q, ctx.r)).T


@contamination("scaled", matched=False)
def _scaled(ctx: ContaminationContext) -> FloatArray:
    r""":math:`-c (A B'^T + H')`, a fresh benign-like draw, c = ``scale_factor``."""
    return -ctx.scale_factor * ctx.benign_like()


@contamination("sign_flip", matched=False)
def _sign_flip(ctx: ContaminationContext) -> FloatArray:
    r""":math:`-(A B'^T + H')`, a fresh benign-like draw with its sign flipped."""
    return -ctx.benign_like()


@contamination("in_subspace", matched=True)
def _in_subspace(ctx: ContaminationContext) -> FloatArray:
    r""":math:`A B'^T` (rescaled to rho): :math:`\delta_k = 0`."""
    return ctx.in_subspace(1.0)


@contamination("margin", matched=False)
def _margin(ctx: ContaminationContext) -> FloatArray:
    r""":math:`A B'^T + \delta P_A^\perp G / \|P_A^\perp G\|_F`: margin exactly delta.

    G is drawn before B' (the draw order of the generator since its first version).
    """
    off = ctx.off_subspace(ctx.margin)
    return ctx.in_subspace() + off


#: The built-in contamination types, in registration order.
CONTAMINATION_TYPES: tuple[str, ...] = registered_types()

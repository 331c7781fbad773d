"""Tests of the registry of contamination types, clair_stats.simulate.contamination."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import clair_stats.simulate
from clair_stats.simulate.contamination import (
    CONTAMINATION_TYPES,
    ContaminationContext,
    contamination,
    get_contamination,
    register_contamination,
    registered_types,
    unregister_contamination,
)
from clair_stats.simulate.model import FederatedModel

P, Q, R, K = 12, 3, 2, 10


def make(kind: str | tuple[str, ...], **kwargs: object) -> FederatedModel:
    base: dict[str, object] = {
        "p": P,
        "q": Q,
        "rank": R,
        "n_clients": K,
        "contamination": 4,
        "contamination_type": kind,
        "heterogeneity": 0.3,
    }
    base.update(kwargs)
    return FederatedModel(**base)  # type: ignore[arg-type]


def fro(X: np.ndarray) -> np.ndarray:
    return np.linalg.norm(X, axis=(1, 2))


def test_builtin_types_in_order() -> None:
    assert CONTAMINATION_TYPES == (
        "random",
        "orthogonal",
        "subspace",
        "scaled",
        "sign_flip",
        "in_subspace",
        "margin",
    )
    assert registered_types() == CONTAMINATION_TYPES
    assert get_contamination("subspace").shared is not None
    matched = {k for k in CONTAMINATION_TYPES if get_contamination(k).matched}
    assert matched == {"random", "orthogonal", "subspace", "in_subspace"}
    assert all(get_contamination(k).description for k in CONTAMINATION_TYPES)


def test_register_sample_and_unregister() -> None:
    """A type added in one function is sampled like a built-in one, then removed.

    The added type shares one unit vector u per instance (``shared``) and gives
    every client u v^T with v Gaussian, rescaled to the benign norm (matched): the
    contaminated blocks then have rank 1, one common column space, and the
    norm of the benign clients.
    """
    before = registered_types()
    draws: list[np.ndarray] = []

    def shared_direction(ctx: ContaminationContext) -> np.ndarray:
        u = ctx.rng.standard_normal((ctx.p, 1))
        draws.append(u)
        return u / np.linalg.norm(u)

    try:

        @contamination("rank_one", matched=True, shared=shared_direction)
        def rank_one(ctx: ContaminationContext) -> np.ndarray:
            """u v^T, u shared by the instance, v Gaussian."""
            return ctx.shared @ ctx.rng.standard_normal((1, ctx.q))

        assert registered_types() == (*before, "rank_one")
        s = make("rank_one", center=True).sample(noise=0.1, seed=3)
        D = (s.truth - s.backbone)[s.contaminated]
        assert len(draws) == 1  # one shared draw per instance, not per client
        for block in D:
            assert np.linalg.matrix_rank(block) == 1
        stacked = np.concatenate(list(D), axis=1)
        assert np.linalg.matrix_rank(stacked) == 1  # one u for all of them
        benign = s.truth[s.benign] - s.backbone
        rho = np.sqrt(np.mean(fro(benign) ** 2))
        np.testing.assert_allclose(fro(D), rho, rtol=1e-12)
        again = make("rank_one", center=True).sample(noise=0.1, seed=3)
        np.testing.assert_array_equal(s.updates, again.updates)
        # mixed with a built-in type: the clients take the types in turn
        mixed = make(("rank_one", "in_subspace")).sample(seed=4)
        Dm = (mixed.truth - mixed.backbone)[mixed.contaminated]
        assert [np.linalg.matrix_rank(b) for b in Dm] == [1, R, 1, R]
        np.testing.assert_allclose(
            mixed.margin[mixed.contaminated][1::2], 0.0, atol=1e-12
        )
    finally:
        unregister_contamination("rank_one")
    assert registered_types() == before
    with pytest.raises(ValueError, match="unknown contamination_type 'rank_one'"):
        make("rank_one")


def test_unmatched_type_is_kept_as_returned() -> None:
    def constant(ctx: ContaminationContext) -> np.ndarray:
        return np.full((ctx.p, ctx.q), 2.0)

    register_contamination("constant", constant, matched=False)
    try:
        s = make("constant").sample(seed=0)
        np.testing.assert_array_equal(s.truth[s.contaminated], 2.0)
    finally:
        unregister_contamination("constant")


def test_same_generator_same_draws() -> None:
    """The draws depend on the generator, not on its name or registration order."""
    register_contamination(
        "random_again", get_contamination("random").generate, matched=True
    )
    try:
        a = make("random", center=True).sample(noise=0.2, seed=9)
        b = make("random_again", center=True).sample(noise=0.2, seed=9)
        np.testing.assert_array_equal(a.updates, b.updates)
    finally:
        unregister_contamination("random_again")


@pytest.mark.parametrize("kind", ["bogus", ("random", "bogus"), 3])
def test_unknown_type_lists_the_registered_ones(kind: object) -> None:
    with pytest.raises(ValueError, match="unknown contamination_type") as err:
        make(kind)  # type: ignore[arg-type]
    message = str(err.value)
    assert all(name in message for name in registered_types())
    assert "contamination decorator" in message
    register_contamination("extra", lambda ctx: ctx.gaussian(), matched=True)
    try:
        with pytest.raises(ValueError, match=r"valid types are random, .*, extra\."):
            make(kind)  # type: ignore[arg-type]
    finally:
        unregister_contamination("extra")


def test_registry_guards() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_contamination("random", lambda ctx: ctx.gaussian(), matched=True)
    with pytest.raises(ValueError, match="built-in contamination type"):
        unregister_contamination("margin")
    with pytest.raises(ValueError, match="unknown contamination_type 'nope'"):
        unregister_contamination("nope")
    with pytest.raises(TypeError, match="nonempty str name"):
        register_contamination("", lambda ctx: ctx.gaussian(), matched=True)
    with pytest.raises(TypeError, match="matched must be True or False"):
        register_contamination("x", lambda ctx: ctx.gaussian(), matched=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be functions"):
        register_contamination("x", "gaussian", matched=True)  # type: ignore[arg-type]
    assert registered_types() == CONTAMINATION_TYPES


def test_wrong_block_shape_is_an_error() -> None:
    register_contamination("column", lambda ctx: ctx.gaussian()[:, :1], matched=False)
    try:
        with pytest.raises(ValueError, match=r"'column' returned a block of shape"):
            make("column").sample(seed=0)
    finally:
        unregister_contamination("column")


def _runtime_imports(path: Path) -> set[str]:
    """Modules of clair_stats.simulate imported by ``path`` outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(child) for child in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and id(node) not in skip and node.module:
            if node.module.startswith("clair_stats.simulate."):
                found.add(node.module.rsplit(".", 1)[1])
    return found


def test_simulate_has_no_import_cycle() -> None:
    """The runtime imports among the modules of simulate/ form a DAG."""
    folder = Path(clair_stats.simulate.__file__).parent
    graph = {f.stem: _runtime_imports(f) for f in folder.glob("*.py")}
    assert graph["regression"] <= {"_draws", "sample"}
    state: dict[str, str] = {}

    def visit(node: str, path: tuple[str, ...]) -> None:
        if state.get(node) == "open":
            raise AssertionError(f"import cycle: {' -> '.join((*path, node))}")
        if state.get(node) != "done":
            state[node] = "open"
            for child in graph.get(node, ()):
                visit(child, (*path, node))
            state[node] = "done"

    for module in graph:
        visit(module, ())

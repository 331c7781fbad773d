"""Edge cases and bad input for decompose and clair_stats.core.validation.

The standard (STYLE.md, ``_validation``): bad input gets an error that says what is
wrong and how to fix it, nothing is silently coerced, and the documented special
cases (M = 0, integer or float32 input, one dominant client) give the documented
results.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from clair_stats import ConvergenceWarning, FederatedModel, decompose
from clair_stats.core.linalg import stack, unstack
from clair_stats.core.validation import (
    check_interval,
    check_nonnegative,
    check_positive,
    check_updates,
    check_weights,
)

K, P, Q = 5, 6, 2


def random_updates(seed: int = 0, shape: tuple[int, ...] = (K, P, Q)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def projector(U: np.ndarray) -> np.ndarray:
    return U @ U.T


@pytest.fixture
def updates() -> np.ndarray:
    return random_updates()


# ----------------------------------------------------------------- the updates array
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_update_names_the_client(updates: np.ndarray, bad: float) -> None:
    """A NaN or +/-inf entry is rejected and the message names the client."""
    updates[3, 1, 0] = bad
    with pytest.raises(ValueError, match=r"NaN or infinite.*client\(s\) \[3\]"):
        decompose(updates)


def test_nonfinite_updates_name_every_bad_client(updates: np.ndarray) -> None:
    """With several bad clients, every one of them is listed, in order."""
    updates[4, 0, 0], updates[1, 2, 1] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"client\(s\) \[1, 4\]"):
        decompose(updates)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((), r"ndim=0"),
        ((4,), r"ndim=1 .*np\.stack"),
        ((4, 6), r"ndim=2 .*reshape\(p, K, q\)\.transpose\(1, 0, 2\)"),
        ((2, 3, 4, 5), r"ndim=4 .*np\.squeeze"),
    ],
    ids=["0-D", "1-D", "2-D", "4-D"],
)
def test_wrong_ndim(shape: tuple[int, ...], match: str) -> None:
    """Arrays that are not (K, p, q) are rejected with a hint on how to reshape."""
    with pytest.raises(ValueError, match=r"shape \(K, p, q\)") as err:
        decompose(np.ones(shape))
    err.match(match)


def test_reshape_hint_for_2d_input_is_right(updates: np.ndarray) -> None:
    """The hint of the 2-D error turns the stacked M back into the (K, p, q) array."""
    M = stack(updates)
    np.testing.assert_array_equal(M.reshape(P, K, Q).transpose(1, 0, 2), updates)
    np.testing.assert_array_equal(M[:, 3 * Q : 4 * Q], updates[3])  # block k = 3


@pytest.mark.parametrize("n_clients", [0, 1])
def test_fewer_than_two_clients(n_clients: int) -> None:
    """K = 0 and K = 1 are rejected: CLAIR needs at least two clients."""
    with pytest.raises(ValueError, match=rf"{n_clients} client.*at least two clients"):
        decompose(random_updates(shape=(n_clients, P, Q)))


def test_two_clients_are_enough() -> None:
    """K = 2 (the boundary) is accepted and solved to tolerance."""
    result = decompose(random_updates(shape=(2, P, Q)))
    assert result.info.converged is True
    assert result.low_rank.shape == (2, P, Q)


@pytest.mark.parametrize("shape", [(3, 0, 2), (3, 4, 0)])
def test_empty_dimension(shape: tuple[int, int, int]) -> None:
    """p = 0 or q = 0 is rejected, naming the shape."""
    with pytest.raises(ValueError, match=rf"empty dimension.*{shape[1]}, {shape[2]}"):
        decompose(np.ones(shape))


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.full((3, 2, 2), "1.0"), r"dtype <U3.*dtype=float"),
        (np.ones((3, 2, 2)).astype(object), r"dtype object"),
        (np.ones((3, 2, 2), dtype=bool), r"dtype bool"),
        (np.ones((3, 2, 2)) + 1j, r"complex128.*\.real"),
        (np.ones((3, 2, 2), dtype=complex), r"complex128.*\.real"),  # imag = 0
    ],
    ids=["strings", "object", "bool", "complex", "complex-real-valued"],
)
def test_non_real_dtype_is_rejected(values: np.ndarray, match: str) -> None:
    """Strings, objects, bools and complex numbers (even with zero imaginary part)."""
    with pytest.raises(TypeError, match=r"must hold real numbers") as err:
        decompose(values)
    err.match(match)


@pytest.mark.parametrize(
    "ragged",
    [[[[1.0, 2.0]], [[1.0]]], [np.ones((2, 2)), np.ones((2, 3))]],
    ids=["nested-lists", "list-of-arrays"],
)
def test_ragged_input(ragged: list) -> None:
    """Clients with matrices of different shapes: an error, not an object array."""
    with pytest.raises(TypeError, match=r"could not convert.*same shape"):
        decompose(ragged)


def test_masked_array(updates: np.ndarray) -> None:
    """Masked entries are an error naming the client; an empty mask is no mask."""
    ref = decompose(updates)
    same = decompose(np.ma.masked_array(updates, mask=False))
    np.testing.assert_array_equal(same.low_rank, ref.low_rank)
    updates[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"masked entries in client\(s\) \[1\]"):
        decompose(np.ma.masked_invalid(updates))


# -------------------------------------------------------------- scalar parameters
BAD_SCALARS = [  # (name, value, error, match)
    ("lam", 0.0, ValueError, r"lam must be finite and > 0, got 0\.0"),
    ("lam", -1.0, ValueError, r"lam must be finite and > 0, got -1\.0"),
    ("lam", np.nan, ValueError, r"lam must be finite and > 0, got nan"),
    ("lam", np.inf, ValueError, r"lam must be finite and > 0, got inf"),
    ("lam", True, TypeError, r"lam must be a positive real number.*bool"),
    ("lam", "0.5", TypeError, r"lam must be .*str.*float\('0\.5'\)"),
    ("lam", 1 + 0j, TypeError, r"lam must be .*complex"),
    ("lam", np.array([0.5]), TypeError, r"lam must be .*shape \(1,\)"),
    ("tol", 0.0, ValueError, r"tol must be finite and > 0"),
    ("tol", -1e-3, ValueError, r"tol must be finite and > 0"),
    ("tol", np.nan, ValueError, r"tol must be finite and > 0"),
    ("tol", True, TypeError, r"tol must be a positive real number"),
    ("max_iter", 0, ValueError, r"max_iter must be >= 1, got 0"),
    ("max_iter", -5, ValueError, r"max_iter must be >= 1, got -5"),
    ("max_iter", 10.0, TypeError, r"max_iter must be an integer, got 10\.0"),
    ("max_iter", True, TypeError, r"max_iter must be an integer, got True"),
    ("max_iter", "5", TypeError, r"max_iter must be an int"),
]


@pytest.mark.parametrize(
    ("name", "value", "error", "match"),
    BAD_SCALARS,
    ids=[f"{name}={value!r}" for name, value, *_ in BAD_SCALARS],
)
def test_bad_scalar_parameter(
    updates: np.ndarray, name: str, value: object, error: type, match: str
) -> None:
    """lam and tol must be finite reals > 0 (not bool); max_iter an int >= 1."""
    with pytest.raises(error, match=match):
        decompose(updates, **{name: value})


def test_numpy_scalars_are_accepted(updates: np.ndarray) -> None:
    """np.float32 lam and np.int64 max_iter are numbers, and give the same result."""
    ref = decompose(updates, lam=0.5, max_iter=500)
    alt = decompose(updates, lam=np.float32(0.5), max_iter=np.int64(500))
    np.testing.assert_array_equal(alt.low_rank, ref.low_rank)


# ------------------------------------------------------------------------ weights
@pytest.mark.parametrize(
    "weights",
    [np.ones(K - 1), np.ones(K + 1), np.ones((K, 1)), np.ones((1, K)), 2.0],
    ids=["short", "long", "column", "row", "scalar"],
)
def test_weights_of_wrong_shape(updates: np.ndarray, weights: object) -> None:
    """Weights must be one number per client, shape (K,): no broadcasting."""
    with pytest.raises(ValueError, match=rf"shape \(K,\) = \({K},\)"):
        decompose(updates, weights=weights)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
def test_nonpositive_or_nonfinite_weight_names_the_client(
    updates: np.ndarray, bad: float
) -> None:
    """A weight <= 0, NaN or inf is rejected, naming the client and its value."""
    weights = np.ones(K)
    weights[2] = bad
    with pytest.raises(ValueError, match=rf"client\(s\) \[2\] have \[{bad}\]"):
        decompose(updates, weights=weights)


@pytest.mark.parametrize(
    "weights",
    [["a"] * K, [True] * K, np.ones(K, dtype=complex), [[1.0], [1.0, 2.0]]],
    ids=["strings", "bools", "complex", "ragged"],
)
def test_weights_of_wrong_type(updates: np.ndarray, weights: object) -> None:
    """Weights must be real numbers."""
    with pytest.raises(TypeError, match=r"weights must be"):
        decompose(updates, weights=weights)


def test_check_weights_default_and_int() -> None:
    """None means w_k = 1; integer weights become float64 of the same values."""
    np.testing.assert_array_equal(check_weights(None, 3), np.ones(3))
    w = check_weights([1, 2, 3], 3)
    assert w.dtype == np.float64
    np.testing.assert_array_equal(w, [1.0, 2.0, 3.0])


# ------------------------------------------------------- mode, solver and friends
P1C = {"mode": "constrained", "solver": "cvxpy"}
BAD_OPTIONS = {  # id: (kwargs, error, match)
    "mode-unknown": ({"mode": "robust"}, ValueError, r"mode must be one of .*'robust'"),
    "mode-None": ({"mode": None}, ValueError, r"mode must be one of"),
    "solver-unknown": ({"solver": "admm"}, ValueError, r"solver must be .*'admm'"),
    "P1-no-mu": ({"mode": "penalized"}, ValueError, r"\(P1\) needs mu > 0"),
    "P1-mu-0": ({"mode": "penalized", "mu": 0}, ValueError, r"mu must be .* > 0"),
    "mu-with-P0": ({"mu": 1.0}, ValueError, r"mu is a parameter of mode='penalized'"),
    "P1c-no-eps": (P1C, ValueError, r"\(P1c\) needs eps >= 0"),
    "P1c-eps-neg": ({**P1C, "eps": -1.0}, ValueError, r"eps must be .*>= 0, got -1"),
    "P1c-eps-nan": ({**P1C, "eps": np.nan}, ValueError, r"eps must be finite"),
    "P1c-eps-str": ({**P1C, "eps": "0.1"}, TypeError, r"eps must be"),
    "P1c-eps-complex": ({**P1C, "eps": 1j}, TypeError, r"eps must be"),
    "P1c-proximal": ({"mode": "constrained", "eps": 0.1}, ValueError, r"'cvxpy'"),
    "eps-with-P0": ({"eps": 0.1}, ValueError, r"eps is a parameter of .*'exact'"),
    "eps-with-P1": (
        {"mode": "penalized", "mu": 1.0, "eps": 0.1},
        ValueError,
        r"eps is a parameter of mode='constrained', not 'penalized'",
    ),
    "center-1": ({"center": 1}, TypeError, r"center must be True or False, got 1"),
    "center-str": ({"center": "yes"}, TypeError, r"center must be True or False"),
    "center-None": ({"center": None}, TypeError, r"center must be True or False"),
    "cvxpy-solver": ({"cvxpy_solver": "MOSEK"}, ValueError, r"cvxpy_solver must be"),
}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"), BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys()
)
def test_bad_option(updates: np.ndarray, kwargs: dict, error: type, match: str) -> None:
    """Unknown or inconsistent options fail before any solve, saying what to pass."""
    with pytest.raises(error, match=match):
        decompose(updates, **kwargs)


def test_init_of_another_shape(updates: np.ndarray) -> None:
    """A warm start from data of another (K, p, q) is rejected, naming both."""
    init = decompose(updates[:, : P - 1])
    with pytest.raises(ValueError, match=r"\(5, 5, 2\).*\(5, 6, 2\).*same \(K, p, q\)"):
        decompose(updates, init=init)


def test_init_with_cvxpy(updates: np.ndarray) -> None:
    """Warm starts are for the proximal solver only."""
    with pytest.raises(ValueError, match=r"init .*solver='proximal' only"):
        decompose(updates, init=decompose(updates), solver="cvxpy")


def test_init_that_is_not_a_decomposition(updates: np.ndarray) -> None:
    """init must be a Decomposition; an array gets a TypeError naming init."""
    with pytest.raises(TypeError, match=r"init"):
        decompose(updates, init=np.zeros_like(updates))


# ----------------------------------------------------------------------- helpers
def test_check_positive_and_nonnegative() -> None:
    """check_positive refuses 0, check_nonnegative accepts it; both refuse NaN."""
    assert check_positive(np.float32(2.0), "x") == 2.0
    assert check_positive(None, "x", allow_none=True) is None
    assert check_nonnegative(0, "eps") == 0.0
    with pytest.raises(ValueError, match=r"x must be finite and > 0, got 0\.0"):
        check_positive(0, "x")
    with pytest.raises(ValueError, match=r"eps must be finite and >= 0, got nan"):
        check_nonnegative(np.nan, "eps")
    with pytest.raises(TypeError, match=r"eps must be a real number >= 0"):
        check_nonnegative("0.1", "eps")


def test_check_updates_dtypes() -> None:
    """Integers and float32 become float64 of the same values; float64 is not copied."""
    x = random_updates()
    assert check_updates(x) is x
    ints = np.arange(24).reshape(2, 3, 4)
    out = check_updates(ints)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, ints)
    assert check_updates(x.astype(np.float32)).dtype == np.float64


@pytest.mark.skipif(
    np.finfo(np.longdouble).max <= np.finfo(np.float64).max,
    reason="no extended precision on this platform",
)
def test_check_updates_extended_precision_overflow() -> None:
    """A finite long double beyond the float64 range is not turned into inf silently."""
    x = np.ones((2, 2, 2), dtype=np.longdouble)
    x[1, 0, 0] = np.longdouble("1e400")
    with pytest.raises(ValueError, match=r"beyond the float64 range.*\[1\]"):
        check_updates(x)


def test_stack_unstack_round_trip() -> None:
    """Block k of M = stack(updates) is columns kq .. (k+1)q - 1; unstack inverts it."""
    x = random_updates(shape=(4, 3, 2))
    M = stack(x)
    assert M.shape == (3, 8)
    for k in range(4):
        np.testing.assert_array_equal(M[:, 2 * k : 2 * k + 2], x[k])
    np.testing.assert_array_equal(unstack(M, 4), x)
    with pytest.raises(ValueError, match=r"7 columns into 2 blocks"):
        unstack(np.ones((3, 7)), 2)


# ------------------------------------------------------------ documented results
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"mode": "penalized", "mu": 1.0}, {"center": True}],
    ids=["exact", "penalized", "exact-centred"],
)
def test_zero_updates(kwargs: dict) -> None:
    """M = 0 gives L = S = 0 exactly, converged, empty support and no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = decompose(np.zeros((4, 5, 2)), **kwargs)
    assert result.info.converged is True
    assert not np.any(result.low_rank)
    assert not np.any(result.sparse)
    assert not result.support().any()
    assert result.rank() == 0


def test_integer_input_equals_float_input() -> None:
    """Integer updates are accepted and give exactly the float64 result."""
    ints = np.random.default_rng(1).integers(-5, 6, size=(6, 8, 3))
    a, b = decompose(ints), decompose(ints.astype(np.float64))
    np.testing.assert_array_equal(a.low_rank, b.low_rank)
    np.testing.assert_array_equal(a.sparse, b.sparse)
    assert a.info.objective == b.info.objective


@pytest.mark.parametrize("shape", [(K, P, Q), (K, 1, 3)], ids=["p=6", "p=1"])
@pytest.mark.parametrize(
    "kwargs", [{}, {"mode": "penalized", "mu": 0.1}], ids=["exact", "penalized"]
)
def test_input_is_not_modified(shape: tuple[int, int, int], kwargs: dict) -> None:
    """decompose leaves its input unchanged and returns arrays that do not alias it.

    With p = 1, stack() returns a view of the input, so the solver sees the caller's
    memory.
    """
    x = random_updates(2, shape)
    copy = x.copy()
    result = decompose(x, **kwargs)
    np.testing.assert_array_equal(x, copy)
    assert not np.shares_memory(result.low_rank, x)
    assert not np.shares_memory(result.sparse, x)


def test_one_dominant_client_is_the_support() -> None:
    """One client scaled by 1e6 is the only block of S^, and L^ keeps span(A)."""
    sample = FederatedModel(p=30, q=2, rank=2, n_clients=20, contamination=0.0).sample(
        seed=0
    )
    assert sample.benign.all()
    x = np.array(sample.updates)
    x[7] *= 1e6
    result = decompose(x)
    assert result.info.converged is True
    np.testing.assert_array_equal(np.flatnonzero(result.support()), [7])
    A_hat = np.linalg.svd(stack(result.low_rank))[0][:, :2]
    err = np.linalg.norm(projector(A_hat) - projector(sample.subspace))
    assert err < 1e-6


def test_float32_input_gives_float64_output(updates: np.ndarray) -> None:
    """float32 updates are solved in float64, equal to solving their float64 cast."""
    x32 = updates.astype(np.float32)
    result = decompose(x32)
    assert result.low_rank.dtype == result.sparse.dtype == np.float64
    ref = decompose(x32.astype(np.float64))
    np.testing.assert_array_equal(result.low_rank, ref.low_rank)


@pytest.mark.parametrize("scale", [1e-8, 1e8, 1e-170, 1e-310, 1e160])
def test_scale_equivariance(scale: float) -> None:
    """P0 is positively homogeneous: decompose(s M) = s decompose(M), same support.

    Every s M here is finite, so any s must work (or fail with a clear error).
    """
    sample = FederatedModel(p=20, q=2, rank=2, n_clients=10).sample(seed=3)
    ref = decompose(sample.updates)
    result = decompose(sample.updates * scale)
    np.testing.assert_array_equal(result.support(), ref.support())
    err = np.linalg.norm(result.low_rank / scale - ref.low_rank)
    assert err <= 1e-6 * np.linalg.norm(ref.low_rank)
    assert result.data_norm == pytest.approx(scale * ref.data_norm, rel=1e-12, abs=0)
    assert result.info.converged is True


@pytest.mark.parametrize(
    "kwargs", [{}, {"mode": "penalized", "mu": 0.01}], ids=["exact", "penalized"]
)
def test_non_convergence_warns(kwargs: dict) -> None:
    """Stopping at max_iter=1 warns ConvergenceWarning and sets converged=False."""
    sample = FederatedModel(p=30, q=2, rank=2, n_clients=20).sample(noise=0.01, seed=1)
    with pytest.warns(ConvergenceWarning, match=r"did not converge.*max_iter"):
        result = decompose(sample.updates, max_iter=1, **kwargs)
    assert result.info.converged is False
    assert result.info.iterations == 1


@pytest.mark.parametrize(
    ("closed", "inside", "outside"),
    [
        ("left", [0.0, 0.25, 0.4999], [0.5, -1e-12]),
        ("right", [1e-12, 0.5], [0.0, 0.5000001]),
        ("both", [0.0, 0.5], [-0.1, 0.6]),
        ("neither", [0.1], [0.0, 0.5]),
    ],
)
def test_check_interval_ends(closed: str, inside: list, outside: list) -> None:
    """Each end belongs to the interval exactly when ``closed`` says so."""
    for value in inside:
        assert check_interval(value, "t", 0.0, 0.5, closed=closed) == value
    for value in outside:
        with pytest.raises(ValueError, match=r"t must be in [\[(]0, 0\.5[\])], got"):
            check_interval(value, "t", 0.0, 0.5, closed=closed)


def test_check_interval_messages() -> None:
    with pytest.raises(
        ValueError, match=r"trim must be in \[0, 0\.5\), got 0\.5\. Why\."
    ):
        check_interval(0.5, "trim", 0.0, 0.5, why=" Why.")
    with pytest.raises(ValueError, match=r"must be in \[0, 0\.5\), got nan"):
        check_interval(np.nan, "trim", 0.0, 0.5)
    with pytest.raises(TypeError, match=r"trim must be a real number in \[0, 0\.5\)"):
        check_interval(True, "trim", 0.0, 0.5)
    with pytest.raises(ValueError, match=r"closed must be one of"):
        check_interval(0.1, "trim", 0.0, 0.5, closed="open")
    assert isinstance(check_interval(np.float32(0.25), "t", 0, 1), float)

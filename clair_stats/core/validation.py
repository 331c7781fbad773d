"""Checks of user input and the stacking of client updates.

Every error says what is wrong and how to fix it. Nothing is silently coerced:
a wrong shape, a NaN or a non-positive tuning parameter is an error, not a guess.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "ORTHONORMAL_TOL",
    "check_alpha",
    "check_bool",
    "check_choice",
    "check_dims",
    "check_fraction",
    "check_int",
    "check_interval",
    "check_mask",
    "check_noise_cov",
    "check_noise_df",
    "check_noise_levels",
    "check_nonnegative",
    "check_orthonormal",
    "check_positive",
    "check_rank",
    "check_real_array",
    "check_shrinkage",
    "check_updates",
    "check_weights",
    "is_real_dtype",
]


def is_real_dtype(dtype: np.dtype) -> bool:
    """True for the dtypes the library takes as real numbers: floats and integers.

    Booleans, complex numbers, strings and objects are not (``np.bool_`` is not an
    integer type for numpy); each caller says in its own error what to pass.

    Parameters
    ----------
    dtype : numpy.dtype
        The dtype to classify (anything ``numpy.issubdtype`` accepts).

    Returns
    -------
    bool
        Whether it is a floating or an integer dtype.
    """
    return bool(np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer))


def check_updates(updates: object, name: str = "updates") -> np.ndarray:
    """Return ``updates`` as a float64 array of shape (K, p, q), or raise.

    Parameters
    ----------
    updates : array_like, shape (K, p, q)
        The client updates Theta^_1, ..., Theta^_K stacked along axis 0.
    name : str
        The argument name used in error messages.

    Returns
    -------
    numpy.ndarray
        A float64 array (a copy only when the dtype had to change).
    """
    if isinstance(updates, np.ma.MaskedArray):
        masked = np.ma.getmaskarray(updates)
        if masked.any():
            where = f" in client(s) {_clients_with(masked)}" if masked.ndim == 3 else ""
            raise ValueError(
                f"{name} is a masked array with masked entries{where}; "
                "CLAIR has no model of missing entries. Drop those clients or fill "
                f"the entries ({name}.filled(value)) and pass a plain ndarray."
            )
        updates = updates.data  # no entry is masked: the data are the values
    if isinstance(updates, np.ndarray):
        arr = updates
    else:
        try:
            arr = np.asarray(updates)
        except (TypeError, ValueError) as exc:  # ragged lists and the like
            reason = str(exc).rstrip(".")
            raise TypeError(
                f"{name} must be an array of shape (K, p, q); could not convert "
                f"{type(updates).__name__}: {reason}. Every client must send a p x q "
                "matrix of the same shape; stack them with np.stack(list_of_matrices)."
            ) from exc
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(
            f"{name} must hold real numbers, got dtype {arr.dtype}; CLAIR works on "
            f"real matrices. If the imaginary parts are zero, pass {name}.real."
        )
    if not is_real_dtype(arr.dtype):
        raise TypeError(
            f"{name} must hold real numbers, got dtype {arr.dtype}; convert with "
            f"np.asarray({name}, dtype=float) if the values are real."
        )
    if arr.ndim != 3:
        hint = (
            " For a single matrix per client of shape (p, q), stack the K matrices "
            "with np.stack(list_of_matrices)."
        )
        if arr.ndim == 2:
            hint = (
                f" A 2-D array of shape {arr.shape} is ambiguous: if it is the "
                "stacked matrix M = [Theta_1, ..., Theta_K] (p x Kq), reshape it with "
                "M.reshape(p, K, q).transpose(1, 0, 2); if each client sends a vector "
                "(q = 1), use updates[:, :, None]."
            )
        elif arr.ndim > 3:
            hint = (
                " If some axes have length 1, remove them with np.squeeze(updates, "
                "axis=...); if each "
                "client sends several matrices (several LoRA modules), decompose "
                "each module separately."
            )
        raise ValueError(
            f"{name} must have shape (K, p, q) (clients, rows, columns), got "
            f"ndim={arr.ndim} with shape {arr.shape}.{hint}"
        )
    n_clients, p, q = arr.shape
    if n_clients < 2:
        raise ValueError(
            f"{name} holds {n_clients} client(s); CLAIR needs at least two clients "
            "to separate a shared subspace from client-specific contamination."
        )
    if p < 1 or q < 1:
        raise ValueError(
            f"{name} has an empty dimension: shape {arr.shape} = (K, p, q) needs "
            "p >= 1 and q >= 1, a nonempty p x q matrix from every client."
        )
    finite = np.isfinite(arr)
    if not finite.all():
        raise ValueError(
            f"{name} contains NaN or infinite values in client(s) "
            f"{_clients_with(~finite)}; remove or repair those clients' updates "
            "before calling."
        )
    dtype = arr.dtype
    with np.errstate(over="ignore"):  # reported just below, naming the clients
        arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():  # only an extended-precision input can get here
        raise ValueError(
            f"{name} has values beyond the float64 range (dtype {dtype}) in "
            f"client(s) {_clients_with(~np.isfinite(arr))}; rescale the updates."
        )
    return arr


def _clients_with(flags: np.ndarray) -> list[int]:
    """Indices k of the clients whose block of a (K, p, q) boolean array has a True."""
    return np.flatnonzero(flags.reshape(flags.shape[0], -1).any(axis=1)).tolist()


def check_positive(value: object, name: str, *, allow_none: bool = False) -> float:
    """Return ``value`` as a float if it is a finite number > 0, or raise.

    Parameters
    ----------
    value : object
        The value to check: a real scalar, not a bool (a ``TypeError``
        otherwise; a ``ValueError`` when it is not finite or not > 0).
    name : str
        The argument name used in error messages.
    allow_none : bool, default False
        Accept None and return it unchanged (keyword only).

    Returns
    -------
    float or None
        ``value`` as a float (None only with ``allow_none``).
    """
    if value is None and allow_none:
        return None  # type: ignore[return-value]
    value = _real_scalar(value, name, "a positive real number")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}.")
    return value


def check_int(value: object, name: str, minimum: int = 0) -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum`` (not a bool).

    Parameters
    ----------
    value : object
        The value to check: an integer (Python or numpy), not a bool (a
        ``TypeError`` otherwise).
    name : str
        The argument name used in error messages.
    minimum : int, default 0
        The least accepted value (a ``ValueError`` below it).

    Returns
    -------
    int
        ``value`` as a Python int.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an integer, got {value!r} of type "
            f"{type(value).__name__}; pass e.g. {name}={max(minimum, 2)}."
        )
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def check_nonnegative(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite number >= 0, or raise.

    Parameters
    ----------
    value : object
        The value to check: a real scalar, not a bool (a ``TypeError``
        otherwise; a ``ValueError`` when it is not finite or negative).
    name : str
        The argument name used in error messages.

    Returns
    -------
    float
        ``value`` as a float.
    """
    value = _real_scalar(value, name, "a real number >= 0")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}.")
    return value


def _real_scalar(value: object, name: str, what: str) -> float:
    """``value`` as a float if it is a real scalar (not a bool), else TypeError."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        hint = ""
        if isinstance(value, str):
            hint = f"; convert it with {name}=float({value!r})"
        elif isinstance(value, np.ndarray):
            hint = f" of shape {value.shape}; pass a single number, e.g. float({name})"
        raise TypeError(
            f"{name} must be {what}, got {value!r} of type "
            f"{type(value).__name__}{hint}."
        )
    return float(value)


def check_weights(weights: object, n_clients: int) -> np.ndarray:
    """Return the block weights w_k as a float64 array of shape (K,).

    ``None`` gives w_k = 1 for every client.

    Parameters
    ----------
    weights : array_like, shape (K,), or None
        One finite weight w_k > 0 per client, or None for equal weights.
    n_clients : int
        K, the number of clients (the required length).

    Returns
    -------
    numpy.ndarray, shape (K,)
        The weights as float64, a new array.
    """
    if weights is None:
        return np.ones(n_clients)
    try:
        w = np.asarray(weights)
    except (TypeError, ValueError) as exc:  # ragged lists and the like
        raise TypeError(
            f"weights must be an array of shape (K,) = ({n_clients},), one real "
            f"number per client; could not convert {type(weights).__name__}: {exc}"
        ) from exc
    if not is_real_dtype(w.dtype):
        raise TypeError(
            f"weights must be real numbers, got dtype {w.dtype}; pass one positive "
            "float per client."
        )
    if w.shape != (n_clients,):
        raise ValueError(
            f"weights must have shape (K,) = ({n_clients},), one weight per client, "
            f"got shape {w.shape}."
        )
    w = w.astype(np.float64)
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        bad = np.nonzero(~np.isfinite(w) | (w <= 0))[0]
        raise ValueError(
            f"weights must be finite and > 0; client(s) {bad.tolist()} have "
            f"{w[bad].tolist()}. Drop a client instead of giving it weight 0."
        )
    return w


#: Largest ``max |A^T A - I_r|`` accepted for an orthonormal basis.
ORTHONORMAL_TOL = 1e-8


def check_orthonormal(
    basis: object, name: str, p: int | None = None, min_rank: int = 0
) -> np.ndarray:
    """Return ``basis`` as a float64 (p, r) array with orthonormal columns, or raise.

    The check is ``max |A^T A - I_r|`` <= :data:`ORTHONORMAL_TOL`; ``p`` (if given) is
    the required number of rows, ``min_rank`` the least number of columns.

    Parameters
    ----------
    basis : array_like, shape (p, r)
        The candidate basis A, its directions in the columns; real and finite.
    name : str
        The argument name used in error messages.
    p : int, optional
        The required number of rows (the dimension of the updates' column
        space); default None, any number.
    min_rank : int, default 0
        The least number of columns r.

    Returns
    -------
    numpy.ndarray, shape (p, r)
        The basis as float64 (a copy only when the dtype had to change).
    """
    arr = np.asarray(basis)
    if not is_real_dtype(arr.dtype):
        raise TypeError(
            f"{name} must be a real array of shape (p, r), got dtype {arr.dtype}."
        )
    if arr.ndim != 2:
        hint = " For one direction (r = 1) pass v[:, None]." if arr.ndim == 1 else ""
        raise ValueError(
            f"{name} must have shape (p, r) (a basis of the subspace in its "
            f"columns), got shape {arr.shape}.{hint}"
        )
    if p is not None and arr.shape[0] != p:
        raise ValueError(
            f"{name} must have p = {p} rows to match, got shape {arr.shape}; the "
            "subspace lives in R^p, the column space of the p x q updates (use the "
            "transposes for the row space)."
        )
    if arr.shape[1] < min_rank:
        raise ValueError(
            f"{name} must have at least {min_rank} column(s), got shape {arr.shape}."
        )
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    r = arr.shape[1]
    defect = float(np.max(np.abs(arr.T @ arr - np.eye(r)), initial=0.0))
    if defect > ORTHONORMAL_TOL:
        raise ValueError(
            f"{name} must have orthonormal columns (max |A^T A - I| = {defect:.2e} "
            f"> {ORTHONORMAL_TOL:g}); pass an orthonormal basis of the same span, "
            f"e.g. np.linalg.qr({name})[0] (full column rank needed)."
        )
    return arr


def check_mask(mask: object, name: str, n_clients: int | None = None) -> np.ndarray:
    """Return ``mask`` as a 1-D bool array (of length ``n_clients`` if given).

    Parameters
    ----------
    mask : array_like of bool, shape (K,)
        One flag per client; its dtype must be bool (indices are refused).
    name : str
        The argument name used in error messages.
    n_clients : int, optional
        K, the required length; default None, any length.

    Returns
    -------
    numpy.ndarray of bool, shape (K,)
        The mask as an array (not copied when it already is one).
    """
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise TypeError(
            f"{name} must be a boolean mask of shape (K,), got dtype {arr.dtype}; "
            "to convert client indices idx use np.isin(np.arange(K), idx)."
        )
    if arr.ndim != 1 or (n_clients is not None and arr.shape[0] != n_clients):
        expected = "(K,)" if n_clients is None else f"(K,) = ({n_clients},)"
        raise ValueError(f"{name} must have shape {expected}, got {arr.shape}.")
    return arr


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` as a bool if it is True or False (numpy's too), or raise.

    Parameters
    ----------
    value : object
        The value to check: a Python or numpy bool (a ``TypeError`` for
        anything else, 0 and 1 included).
    name : str
        The argument name used in error messages.

    Returns
    -------
    bool
        ``value`` as a Python bool.
    """
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, or raise naming them.

    Parameters
    ----------
    value : object
        The value to check: a str equal to one of ``choices`` (a
        ``ValueError`` otherwise).
    name : str
        The argument name used in error messages.
    choices : tuple of str
        The accepted values, listed in the error.

    Returns
    -------
    str
        ``value`` unchanged.
    """
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}; got {value!r}.")
    return value


def check_fraction(
    value: object, name: str, *, zero_ok: bool = False, why: str = ""
) -> float:
    """Return ``value`` as a float in (0, 1) (``zero_ok``: [0, 1)), or raise.

    ``why`` is appended to the error message (the reason for the range).

    Parameters
    ----------
    value : object
        The value to check: a real scalar, not a bool.
    name : str
        The argument name used in error messages.
    zero_ok : bool, default False
        Accept 0, the range becoming [0, 1) (keyword only).
    why : str, default ""
        Text appended to the error message (keyword only).

    Returns
    -------
    float
        ``value`` as a float.
    """
    value = _real_scalar(value, name, "a real number in (0, 1)")
    low_ok = value >= 0 if zero_ok else value > 0
    if not (np.isfinite(value) and low_ok and value < 1):
        interval = "[0, 1)" if zero_ok else "(0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value}.{why}")
    return value


def check_alpha(alpha: object, name: str = "alpha") -> float:
    """Return the level of a test as a float in (0, 1), or raise.

    Parameters
    ----------
    alpha : object
        The level to check: a real scalar in (0, 1), not a bool.
    name : str, default "alpha"
        The argument name used in error messages.

    Returns
    -------
    float
        ``alpha`` as a float.
    """
    return check_fraction(
        alpha, name, why=" It is the level of the test, e.g. alpha=0.05."
    )


def check_dims(p: object, q: object, r: object) -> tuple[int, int, int]:
    """(p, q, r) as ints with q >= 1 and 1 <= r < p (span(A) has a complement).

    Parameters
    ----------
    p : object
        The number of rows of each update, an integer >= 1.
    q : object
        The number of columns of each update, an integer >= 1.
    r : object
        The rank of the shared subspace, an integer with 1 <= r < p.

    Returns
    -------
    tuple of int
        ``(p, q, r)`` as Python ints.
    """
    p, q, r = check_int(p, "p", 1), check_int(q, "q", 1), check_int(r, "r", 1)
    if r >= p:
        raise ValueError(
            f"r must be < p (span(A) needs a nonzero complement), got r={r}, p={p}."
        )
    return p, q, r


def check_rank(rank: object, largest: int, name: str = "rank") -> int:
    """Return ``rank`` as an int in [1, largest], or raise saying why ``largest``.

    Parameters
    ----------
    rank : object
        The rank to check: an integer (not a bool) between 1 and ``largest``.
    largest : int
        The largest accepted rank (e.g. min(p, Kq) for the stacked matrix).
    name : str, default "rank"
        The argument name used in error messages.

    Returns
    -------
    int
        ``rank`` as a Python int.
    """
    rank = check_int(rank, name, 1)
    if rank > largest:
        raise ValueError(f"{name} must be between 1 and {largest}, got {rank}.")
    return rank


def check_real_array(
    value: object,
    name: str,
    *,
    minimum: float = 0.0,
    strict: bool = False,
    whole: bool = False,
) -> np.ndarray:
    """``value`` as a float64 array (any shape): finite, >= (``strict``: >) minimum.

    ``whole``: the values must also be whole numbers (counts of clients or
    observations).

    Parameters
    ----------
    value : object
        A real number or an array_like of them (bools refused).
    name : str
        The argument name used in error messages.
    minimum : float, default 0.0
        The lower bound of every entry (keyword only).
    strict : bool, default False
        Require entries > ``minimum`` instead of >= (keyword only).
    whole : bool, default False
        Require whole numbers (keyword only).

    Returns
    -------
    numpy.ndarray
        ``value`` as a new float64 array of its own shape (0-d for a number).
    """
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a number or an array of numbers, not a bool.")
    arr = np.asarray(value)
    if not is_real_dtype(arr.dtype):
        raise TypeError(
            f"{name} must be real numbers, got {value!r} (dtype {arr.dtype})."
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    bad = arr <= minimum if strict else arr < minimum
    if np.any(bad):
        relation = ">" if strict else ">="
        raise ValueError(
            f"{name} must be {relation} {minimum:g}, got {value!r}; pass "
            f"{name} {relation} {minimum:g}."
        )
    if whole and np.any(arr != np.floor(arr)):
        raise ValueError(
            f"{name} is a number of clients or observations and must be a whole "
            f"number, got {value!r}."
        )
    return arr


def check_noise_levels(
    sigma: object, n_clients: int, name: str = "sigma"
) -> np.ndarray:
    """Per-client noise standard deviations sigma_k as a float64 array of shape (K,).

    ``sigma`` is one number for every client or K numbers; each must be finite
    and > 0.

    Parameters
    ----------
    sigma : float or array_like, shape (K,)
        The noise standard deviation(s): one for all clients or one per client.
    n_clients : int
        K, the number of clients.
    name : str, default "sigma"
        The argument name used in error messages.

    Returns
    -------
    numpy.ndarray, shape (K,)
        sigma_k for every client, a new float64 array.
    """
    if isinstance(sigma, bool | np.bool_):
        raise TypeError(f"{name} must be a positive number or K numbers, not a bool.")
    arr = np.asarray(sigma)
    if not is_real_dtype(arr.dtype):
        kind = "complex" if np.iscomplexobj(arr) else f"dtype {arr.dtype}"
        raise TypeError(
            f"{name} must be real numbers, got {kind}; pass one positive float or "
            f"one per client."
        )
    if arr.shape not in ((), (n_clients,)):
        raise ValueError(
            f"{name} must be a number or have shape (K,) = ({n_clients},), one "
            f"noise level per client; got shape {arr.shape}."
        )
    arr = np.broadcast_to(arr.astype(np.float64), (n_clients,))
    bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0))
    if bad.size:
        raise ValueError(
            f"{name} must be finite and > 0 for every client; client(s) "
            f"{bad.tolist()} have {arr[bad].tolist()}."
        )
    return arr.copy()


def check_noise_cov(noise_cov: object, n_clients: int, p: int) -> np.ndarray:
    """C_k as a float64 array of shape (K, p, p): finite, symmetric, PSD, nonzero.

    ``noise_cov`` is one (p, p) covariance for every client or K of them, the
    covariance of each column of Theta^_k - Theta_k.

    Parameters
    ----------
    noise_cov : array_like, shape (p, p) or (K, p, p)
        The noise covariance C_k, shared or one per client; symmetric up to a
        relative 1e-10, positive semidefinite up to round-off, not zero.
    n_clients : int
        K, the number of clients.
    p : int
        The number of rows of each update, the side of C_k.

    Returns
    -------
    numpy.ndarray, shape (K, p, p)
        C_k for every client, symmetrized ((C + C^T) / 2), a new float64 array.
    """
    arr = np.asarray(noise_cov)
    if not is_real_dtype(arr.dtype):
        raise TypeError(f"noise_cov must be real numbers, got dtype {arr.dtype}.")
    if arr.shape not in ((p, p), (n_clients, p, p)):
        raise ValueError(
            f"noise_cov must have shape (p, p) = ({p}, {p}) or (K, p, p) = "
            f"({n_clients}, {p}, {p}): the covariance of each column of Theta^_k "
            f"(for side='right', of each row); got shape {arr.shape}."
        )
    cov = np.broadcast_to(arr.astype(np.float64), (n_clients, p, p))
    if not np.all(np.isfinite(cov)):
        raise ValueError("noise_cov must be finite (no NaN or inf).")
    peak = np.max(np.abs(cov), axis=(1, 2))
    asym = np.max(np.abs(cov - cov.transpose(0, 2, 1)), axis=(1, 2))
    bad = np.flatnonzero(asym > 1e-10 * peak)
    if bad.size:
        raise ValueError(
            f"noise_cov must be symmetric; client(s) {bad[:5].tolist()} are not "
            f"(max |C - C^T| = {asym[bad[0]]:.3g}); pass (C + C^T) / 2."
        )
    cov = (cov + cov.transpose(0, 2, 1)) / 2
    # PSD up to round-off, relative to each C_k's own scale (scale-free)
    lowest = np.linalg.eigvalsh(
        cov / np.maximum(peak, np.finfo(float).tiny)[:, None, None]
    )[:, 0]
    bad = np.flatnonzero((lowest < -1e-10) | (peak == 0))
    if bad.size:
        raise ValueError(
            f"noise_cov must be positive semidefinite and nonzero; client(s) "
            f"{bad[:5].tolist()} are not (smallest eigenvalue relative to the "
            f"largest entry {lowest[bad[0]]:.3g})."
        )
    return cov


def check_noise_df(noise_df: object, n_clients: int) -> np.ndarray:
    """nu_k as a float64 array of shape (K,), each finite and >= 1.

    Parameters
    ----------
    noise_df : float or array_like, shape (K,)
        The residual degrees of freedom nu_k of each client's noise variance
        estimate: one number for every client or one per client.
    n_clients : int
        K, the number of clients.

    Returns
    -------
    numpy.ndarray, shape (K,)
        nu_k for every client, a new float64 array.
    """
    arr = check_real_array(noise_df, "noise_df", minimum=1.0)
    if arr.shape not in ((), (n_clients,)):
        raise ValueError(
            f"noise_df must be a number or have shape (K,) = ({n_clients},), the "
            f"residual degrees of freedom of each client's variance estimate; got "
            f"shape {arr.shape}."
        )
    return np.broadcast_to(arr, (n_clients,)).copy()


def check_interval(
    value: object,
    name: str,
    low: float,
    high: float,
    *,
    closed: str = "left",
    why: str = "",
) -> float:
    """Return ``value`` as a float in the interval from ``low`` to ``high``, or raise.

    Parameters
    ----------
    value : object
        A real number (not a bool).
    name : str
        The argument name used in error messages.
    low, high : float
        The ends of the interval.
    closed : {"left", "right", "both", "neither"}
        Which ends belong to it: "left" is [low, high), "both" is [low, high].
    why : str
        Appended to the error message (the reason for the range, or a hint).

    Returns
    -------
    float
    """
    check_choice(closed, "closed", ("left", "right", "both", "neither"))
    left, right = closed in ("left", "both"), closed in ("right", "both")
    interval = f"{'[' if left else '('}{low:g}, {high:g}{']' if right else ')'}"
    value = _real_scalar(value, name, f"a real number in {interval}")
    above = value >= low if left else value > low
    below = value <= high if right else value < high
    if not (np.isfinite(value) and above and below):
        raise ValueError(f"{name} must be in {interval}, got {value}.{why}")
    return value


def check_shrinkage(shrinkage: float | np.ndarray | None, n_clients: int) -> np.ndarray:
    """b_k as an array of shape (K,), checked to lie in [0, 1] (None: zeros).

    Parameters
    ----------
    shrinkage : float or numpy.ndarray of shape (K,) or None
        The shrinkage factors b_k of step 4: one for every client or one per
        client; None for b_k = 0 (no shrinkage).
    n_clients : int
        K, the number of clients.

    Returns
    -------
    numpy.ndarray, shape (K,)
        b_k for every client, a new float64 array.
    """
    if shrinkage is None:
        return np.zeros(n_clients)
    if isinstance(shrinkage, bool):
        raise TypeError("shrinkage must be a number in [0, 1] or an array of them.")
    b = np.broadcast_to(np.asarray(shrinkage, dtype=float), (n_clients,))
    if not (np.all(np.isfinite(b)) and np.all((b >= 0) & (b <= 1))):
        raise ValueError(
            "shrinkage must lie in [0, 1] (0 keeps a client's in-subspace part, "
            f"1 replaces it by the mean's); got values in [{b.min():.3g}, "
            f"{b.max():.3g}]."
        )
    return np.array(b)

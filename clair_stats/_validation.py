"""Checks of user input and the stacking of client updates.

Every error says what is wrong and how to fix it. Nothing is silently coerced:
a wrong shape, a NaN or a non-positive tuning parameter is an error, not a guess.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "check_updates",
    "check_positive",
    "check_weights",
    "stack",
    "unstack",
]


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
    if isinstance(updates, np.ndarray):
        arr = updates
    else:
        try:
            arr = np.asarray(updates)
        except (TypeError, ValueError) as exc:  # ragged lists and the like
            raise TypeError(
                f"{name} must be an array of shape (K, p, q); could not convert "
                f"{type(updates).__name__}: {exc}"
            ) from exc
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
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
        raise ValueError(f"{name} has an empty dimension: shape {arr.shape}.")
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.unique(np.nonzero(~finite)[0])
        raise ValueError(
            f"{name} contains NaN or infinite values in client(s) {bad.tolist()}; "
            "remove or repair those clients' updates before calling."
        )
    return arr


def check_positive(value: object, name: str, *, allow_none: bool = False) -> float:
    """Return ``value`` as a float if it is a finite number > 0, or raise."""
    if value is None and allow_none:
        return None  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a positive real number, got {type(value).__name__}."
        )
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}.")
    return value


def check_weights(weights: object, n_clients: int) -> np.ndarray:
    """Return the block weights w_k as a float64 array of shape (K,).

    ``None`` gives w_k = 1 for every client.
    """
    if weights is None:
        return np.ones(n_clients)
    w = np.asarray(weights)
    if w.dtype == object or not (
        np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)
    ):
        raise TypeError(f"weights must be real numbers, got dtype {w.dtype}.")
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


def stack(updates: np.ndarray) -> np.ndarray:
    """Stack client updates (K, p, q) into M = [Theta_1, ..., Theta_K] (p, Kq).

    Block k of M is columns kq .. (k+1)q - 1.
    """
    n_clients, p, q = updates.shape
    return np.ascontiguousarray(updates.transpose(1, 0, 2)).reshape(p, n_clients * q)


def unstack(matrix: np.ndarray, n_clients: int) -> np.ndarray:
    """Inverse of :func:`stack`: (p, Kq) -> (K, p, q)."""
    p, n_cols = matrix.shape
    q = n_cols // n_clients
    return np.ascontiguousarray(matrix.reshape(p, n_clients, q).transpose(1, 0, 2))

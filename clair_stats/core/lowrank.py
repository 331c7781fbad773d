"""Client updates given as LoRA factors: Theta^_k = s_k B_k A_k.

Notation in docs/model.md §1, the factored solver in docs/programs.md §5.

A LoRA adapter of one p x q module sends two thin factors, B_k (p x r_k) and A_k (r_k x
q), and PEFT applies them with a scaling s_k = lora_alpha / r_k (or lora_alpha /
sqrt(r_k) with rsLoRA). :class:`LowRankUpdates` holds the K clients' factors without
ever forming the p x q products, so that CLAIR can run where the stacked matrix M =
[Theta^_1, ..., Theta^_K] (p x Kq) would not fit in memory (4096 x 409600 in float64 is
13 GB for K = 100 clients of a 4096 x 4096 module). :func:`clair_stats.decompose` and
:func:`clair_stats.clair` accept it in place of a (K, p, q) array and solve on a (sum_k
r_k)-sized core (docs/programs.md §5, "LoRA scale").
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from clair_stats.core.validation import is_real_dtype

__all__ = ["LowRankUpdates"]


class LowRankUpdates:
    """K client updates in factored form, Theta^_k = s_k B_k A_k.

    Parameters
    ----------
    B : numpy.ndarray of shape (K, p, r), or a sequence of K arrays (p, r_k)
        The left factors B_k (PEFT's ``lora_B.weight``).
    A : numpy.ndarray of shape (K, r, q), or a sequence of K arrays (r_k, q)
        The right factors A_k (PEFT's ``lora_A.weight``). Ranks may differ per
        client: pass lists then.
    scaling : float or array_like of shape (K,), optional
        s_k, finite and nonzero (PEFT: lora_alpha / r_k). Default 1.

    Notes
    -----
    The factors are validated (K >= 2, real, finite, consistent shapes, r_k >= 1),
    copied to read-only float64 arrays, and never multiplied out except by
    :meth:`dense` and :meth:`client`. ``dtype`` records the dtype of the input.
    Instances are immutable.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> upd = LowRankUpdates(rng.normal(size=(3, 8, 2)), rng.normal(size=(3, 2, 5)))
    >>> upd.shape, upd.ranks
    ((3, 8, 5), (2, 2, 2))
    """

    __slots__ = ("_A", "_B", "_dtype", "_norms", "_scaling")

    def __init__(
        self,
        B: Sequence[np.ndarray] | np.ndarray,
        A: Sequence[np.ndarray] | np.ndarray,
        scaling: float | Sequence[float] | np.ndarray | None = None,
    ) -> None:
        b_list, b_dtypes = _factor_list(B, "B", "(K, p, r)", "(p, r_k)")
        a_list, a_dtypes = _factor_list(A, "A", "(K, r, q)", "(r_k, q)")
        if len(b_list) != len(a_list):
            raise ValueError(
                f"B holds {len(b_list)} clients and A holds {len(a_list)}; pass one "
                "B_k and one A_k per client."
            )
        n_clients = len(b_list)
        if n_clients < 2:
            raise ValueError(
                f"got {n_clients} client(s); CLAIR needs at least two clients to "
                "separate a shared subspace from client-specific contamination."
            )
        p, q = b_list[0].shape[0], a_list[0].shape[1]
        for k, (b, a) in enumerate(zip(b_list, a_list, strict=True)):
            if b.shape[0] != p:
                raise ValueError(
                    f"client {k}: B_k has {b.shape[0]} rows, client 0 has {p}; "
                    "every B_k must be p x r_k for the same module (same p)."
                )
            if a.shape[1] != q:
                raise ValueError(
                    f"client {k}: A_k has {a.shape[1]} columns, client 0 has {q}; "
                    "every A_k must be r_k x q for the same module (same q)."
                )
            if b.shape[1] != a.shape[0]:
                raise ValueError(
                    f"client {k}: B_k is {b.shape[0]} x {b.shape[1]} but A_k is "
                    f"{a.shape[0]} x {a.shape[1]}; the rank r_k must agree "
                    "(columns of B_k = rows of A_k). Did you swap A and B?"
                )
            if b.shape[1] < 1:
                raise ValueError(
                    f"client {k} has rank r_k = 0; every client needs r_k >= 1 "
                    "(drop clients without an adapter)."
                )
            if p < 1 or q < 1:
                raise ValueError(
                    f"client {k}: empty module dimension (p = {p}, q = {q}); "
                    "p >= 1 and q >= 1 are needed."
                )
        self._B = tuple(_frozen(b) for b in b_list)
        self._A = tuple(_frozen(a) for a in a_list)
        self._dtype = np.result_type(*b_dtypes, *a_dtypes)
        self._norms = None  # computed once, by norms()
        self._scaling = _frozen(_check_scaling(scaling, n_clients))  # set last

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, "_scaling"):
            raise AttributeError("LowRankUpdates is immutable; build a new one.")
        object.__setattr__(self, name, value)

    # -- shape -----------------------------------------------------------------
    @property
    def n_clients(self) -> int:
        """K."""
        return len(self._B)

    @property
    def p(self) -> int:
        """Rows of each Theta^_k."""
        return int(self._B[0].shape[0])

    @property
    def q(self) -> int:
        """Columns of each Theta^_k."""
        return int(self._A[0].shape[1])

    @property
    def ranks(self) -> tuple[int, ...]:
        """(r_1, ..., r_K), the inner dimensions of the factors."""
        return tuple(int(b.shape[1]) for b in self._B)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(K, p, q), the shape of the dense stack of updates."""
        return (self.n_clients, self.p, self.q)

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the factors as given (they are held in float64)."""
        return self._dtype

    # -- factors ---------------------------------------------------------------
    @property
    def B(self) -> tuple[np.ndarray, ...]:
        """The left factors B_k (p, r_k), read-only float64."""
        return self._B

    @property
    def A(self) -> tuple[np.ndarray, ...]:
        """The right factors A_k (r_k, q), read-only float64."""
        return self._A

    @property
    def scaling(self) -> np.ndarray:
        """s_k, shape (K,), read-only float64."""
        return self._scaling

    def client(self, k: int) -> np.ndarray:
        """Theta^_k = s_k B_k A_k as a dense (p, q) float64 array.

        Parameters
        ----------
        k : int
            The client index, 0-based; negative values count from the end as
            in a list (-K <= k < K, an ``IndexError`` otherwise).

        Returns
        -------
        numpy.ndarray, shape (p, q)
            The dense update of client k.
        """
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise TypeError(f"k must be an int client index, got {k!r}.")
        if not -self.n_clients <= k < self.n_clients:
            raise IndexError(
                f"client index {k} is out of range for K = {self.n_clients} clients."
            )
        return self._scaling[k] * (self._B[k] @ self._A[k])

    def norms(self) -> np.ndarray:
        """||Theta^_k||_F for every client, shape (K,), from the factors.

        ||s_k B_k A_k||_F^2 = s_k^2 tr((B_k^T B_k)(A_k A_k^T)), at O((p + q) r_k^2)
        the first time (then kept: the instance is immutable).
        """
        if self._norms is None:
            out = np.empty(self.n_clients)
            for k in range(self.n_clients):
                # the r_k x r_k triangular factors keep the squares of tiny entries
                rb = np.linalg.qr(self._B[k], mode="r")
                ra = np.linalg.qr(self._A[k].T, mode="r")
                out[k] = abs(self._scaling[k]) * np.linalg.norm(rb @ ra.T)
            out.setflags(write=False)
            object.__setattr__(self, "_norms", out)
        return self._norms.copy()

    def dense(self) -> np.ndarray:
        """All Theta^_k as a dense (K, p, q) float64 array (small problems only)."""
        out = np.empty(self.shape)
        for k in range(self.n_clients):
            out[k] = self.client(k)
        return out

    def transpose(self) -> LowRankUpdates:
        """Theta^_k^T = s_k A_k^T B_k^T, the updates of ``side="right"``."""
        return LowRankUpdates(
            [a.T for a in self._A], [b.T for b in self._B], self._scaling
        )

    def __repr__(self) -> str:
        ranks = set(self.ranks)
        rank = (
            f"r={ranks.pop()}"
            if len(ranks) == 1
            else f"r={min(self.ranks)}..{max(self.ranks)}"
        )
        return (
            f"LowRankUpdates(K={self.n_clients}, p={self.p}, q={self.q}, {rank}, "
            f"dtype={self._dtype})"
        )


def _frozen(x: np.ndarray) -> np.ndarray:
    """A read-only float64 copy of x."""
    out = np.array(x, dtype=np.float64, copy=True)
    out.setflags(write=False)
    return out


def _factor_list(
    factors: object, name: str, stacked: str, each: str
) -> tuple[list[np.ndarray], list[np.dtype]]:
    """The K factors as a list of validated real, finite 2-D arrays."""
    if isinstance(factors, np.ndarray) or hasattr(factors, "__array__"):
        arr = _real_array(factors, name)
        if arr.ndim != 3:
            raise ValueError(
                f"{name} must be a 3-D array {stacked} (one factor per client) or a "
                f"sequence of K 2-D arrays {each}; got shape {arr.shape}."
            )
        items = [arr[k] for k in range(arr.shape[0])]
    elif isinstance(factors, Sequence) and not isinstance(factors, str | bytes):
        items = [_real_array(f, f"{name}[{k}]") for k, f in enumerate(factors)]
    else:
        raise TypeError(
            f"{name} must be a 3-D array {stacked} or a sequence of 2-D arrays "
            f"{each}, got {type(factors).__name__}."
        )
    dtypes = []
    for k, f in enumerate(items):
        if f.ndim != 2:
            raise ValueError(
                f"client {k}: {name}_k must be a 2-D array {each}, got shape {f.shape}."
            )
        if not np.isfinite(f).all():
            raise ValueError(
                f"client {k}: {name}_k contains NaN or infinite values; repair or "
                "drop this client's adapter."
            )
        dtypes.append(f.dtype)
    return items, dtypes


def _real_array(x: object, name: str) -> np.ndarray:
    """x as an ndarray of real numbers, or a TypeError that says why not."""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"{name} could not be converted to a numpy array ({exc}); pass numpy "
            "arrays (for torch tensors: t.detach().float().cpu().numpy())."
        ) from exc
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real, got dtype {arr.dtype}.")
    if not is_real_dtype(arr.dtype):
        raise TypeError(
            f"{name} must hold real numbers, got dtype {arr.dtype}; convert it "
            "with np.asarray(x, dtype=float) if the values are real."
        )
    return arr


def _check_scaling(scaling: object, n_clients: int) -> np.ndarray:
    """s_k as a float64 array of shape (K,): finite and nonzero."""
    if scaling is None:
        return np.ones(n_clients)
    if isinstance(scaling, bool | np.bool_):
        raise TypeError(f"scaling must be a number or K numbers, got {scaling!r}.")
    arr = _real_array(scaling, "scaling")
    if arr.dtype == np.bool_:
        raise TypeError("scaling must hold numbers, got booleans.")
    if arr.shape not in ((), (n_clients,)):
        raise ValueError(
            f"scaling must be one number or one per client, shape ({n_clients},); "
            f"got shape {arr.shape}."
        )
    arr = np.broadcast_to(arr.astype(np.float64), (n_clients,))
    bad = np.flatnonzero(~np.isfinite(arr) | (arr == 0))
    if bad.size:
        raise ValueError(
            f"scaling must be finite and nonzero; client(s) {bad.tolist()} have "
            f"{arr[bad].tolist()} (PEFT's scaling is lora_alpha / r)."
        )
    return arr

"""The two penalties of the CLAIR programs and their proximal maps.

Both act on the stacked matrix X in R^{p x Kq}, whose block k is columns
kq .. (k+1)q - 1 (docs/model.md §1).

- :class:`NuclearNorm`: ||X||_* = sum of singular values; its prox is singular
  value thresholding, its dual norm the operator norm.
- :class:`BlockFrobenius`: sum_k w_k ||X_k||_F; its prox is block
  soft-thresholding, its dual norm max_k ||Y_k||_F / w_k.

Each penalty g is a norm, so Y in dg(X) iff g^dual(Y) <= 1 and <Y, X> = g(X):
the tests check the proxes by this property, independent of the code.

References
----------
Xu, Caramanis, Sanghavi (2012). Robust PCA via outlier pursuit. IEEE TIT 58(5).
He, Chen, Feng (2026). Federated LoRA fine-tuning for LLMs via collaborative
alignment. arXiv:2605.21217.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

__all__ = [
    "SVT",
    "BlockFrobenius",
    "NuclearNorm",
    "block_norms",
    "block_soft_threshold",
    "svt",
]

# The Gram route squares singular values: an eigenvalue of X X^T is known to about
# eps * ||X||_F^2, so it resolves a threshold t only when t^2 is well above that.
_GRAM_RESOLUTION = 1e4 * np.finfo(np.float64).eps
# Up to this size a full divide-and-conquer eigendecomposition of the Gram matrix
# beats the subset one (measured: 2.7 ms vs 7.5 ms at 200 x 200).
_FULL_EIGH_MAX = 400
# "auto" tries the partial (subspace iteration) route from this smaller dimension
# on. Measured (one thread, best of 3, n x n, k values above t over a noise bulk,
# cold start): n = 1600: 0.043 s vs 0.28 s for the Gram route at k = 10, 0.23 vs
# 0.33 at k = 60; n = 800: 0.011 vs 0.043 at k = 10 but 0.075 vs 0.059 at k = 60.
# With the warm starts of the solvers it also won at n = 800 in the LoRA benchmark
# (generic K = 50 core solve 0.67 s, against 0.90 s when warm starts of rank above
# n / 32 went to the Gram route), so there is no rank cap. The partial route also
# wins below 800 at small k (n = 400, k = 10: 3 vs 15 ms); the cutoff keeps the
# existing Gram route, and the existing timings, for small matrices.
_PARTIAL_MIN = 800
# The partial route gives up (and the Gram route is used) when more than this
# fraction of the singular values exceed the threshold, or after this many sweeps.
_PARTIAL_MAX_FRACTION = 0.25
_PARTIAL_MAX_SWEEPS = 60
# Oversampling of the block beyond the expected rank. 24, not 12: on the flat
# spectra of P0's iterates in LoRA cores (1600 x 1600, one or two values above
# the threshold) 12 extra vectors needed 50-100 sweeps per call, and some calls
# gave up (a full SVD then); 24 made those calls 4.4 (K = 50) to 6.5 (K = 100)
# times faster, and P1's generic cores at K = 50, 100 within 5 %.
_PARTIAL_OVERSAMPLE = 24
# A Ritz triplet counts as converged when ||X V_j - U_j sigma_j|| <= this * sigma_1.
_PARTIAL_TOL = 1e-11


def block_norms(x: np.ndarray, n_clients: int) -> np.ndarray:
    """Frobenius norms ||X_k||_F of the K column blocks of X (p, Kq).

    Parameters
    ----------
    x : numpy.ndarray, shape (p, Kq)
        The stacked matrix; block k is columns ``k*q:(k+1)*q``.
    n_clients : int
        K, the number of blocks (must divide the number of columns).

    Returns
    -------
    numpy.ndarray, shape (K,)
        ||X_k||_F for k = 0 .. K-1.
    """
    blocks = x.reshape(x.shape[0], n_clients, -1)
    return np.sqrt(np.einsum("ikj,ikj->k", blocks, blocks))


def block_soft_threshold(x: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """X_k (1 - t_k / ||X_k||_F)_+ for the K column blocks of X (p, Kq).

    The prox of sum_k t_k ||.||_F, blocks with norm <= t_k set to zero.

    Parameters
    ----------
    x : numpy.ndarray, shape (p, Kq)
        The stacked matrix; block k is columns ``k*q:(k+1)*q``.
    thresholds : numpy.ndarray, shape (K,)
        The thresholds t_k >= 0, one per block; their number sets K.

    Returns
    -------
    numpy.ndarray, shape (p, Kq)
        The thresholded matrix, a new array.
    """
    n_clients = thresholds.size
    norms = block_norms(x, n_clients)
    scale = np.where(
        norms > thresholds, 1.0 - thresholds / np.where(norms > 0, norms, 1.0), 0.0
    )
    blocks = x.reshape(x.shape[0], n_clients, -1)
    return (blocks * scale[None, :, None]).reshape(x.shape)


@dataclass(frozen=True)
class SVT:
    """The result of singular value thresholding X -> U (Sigma - t)_+ V^T.

    Parameters
    ----------
    value : numpy.ndarray, shape (p, N)
        The thresholded matrix.
    singular_values : numpy.ndarray, shape (k,)
        Its nonzero singular values (sigma_i - t for sigma_i > t), decreasing.
    method : str
        ``"gram"`` (truncated eigendecomposition of the Gram matrix), ``"svd"`` or
        ``"partial"`` (subspace iteration for the leading triplets).
    subspace : numpy.ndarray or None, default None
        The singular vectors of the kept values on the smaller side of X (left
        ones when p <= N, right ones otherwise), shape (min(p, N), k); a warm
        start for the next call (``start``). None for the ``"svd"`` route.
    """

    value: np.ndarray
    singular_values: np.ndarray
    method: str
    subspace: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def rank(self) -> int:
        """Number of singular values above the threshold."""
        return int(self.singular_values.size)

    @property
    def nuclear_norm(self) -> float:
        """||value||_* = sum of the thresholded singular values."""
        return float(self.singular_values.sum())


def svt(
    x: np.ndarray,
    threshold: float,
    method: str = "auto",
    start: np.ndarray | None = None,
) -> SVT:
    """Singular value thresholding, the prox of ``threshold * ||.||_*``.

    .. math:: \\mathrm{SVT}_t(X) = U (\\Sigma - t I)_+ V^T,
              \\quad X = U \\Sigma V^T.

    Parameters
    ----------
    x : numpy.ndarray, shape (p, N)
        The matrix to threshold (any shape; the stacked updates in the solvers).
    threshold : float
        t >= 0.
    method : {"auto", "gram", "svd", "partial"}
        ``"gram"`` eigendecomposes the smaller Gram matrix (X X^T or X^T X),
        keeps the k eigenpairs with eigenvalue above t^2 (above a size of 400
        only those are computed, LAPACK syevr), and applies the rank-k map
        U diag(1 - t / sigma) U^T X: a truncated decomposition whose cost is one
        Gram product plus O(k) work per column, a fraction of a thin SVD.
        ``"svd"`` uses a thin SVD (gesdd). ``"partial"`` finds only the leading
        singular triplets by block subspace iteration with Rayleigh-Ritz on the
        smaller Gram operator (never formed: two products with X per sweep),
        growing the block until a converged Ritz value falls at or below t, so
        that every singular value above t is found; it falls back to the Gram
        route when more than a quarter of the singular values exceed t or it
        does not converge. ``"auto"`` takes the SVD when t is too small for the
        squared singular values to resolve it (t^2 < 1e4 eps ||X||_F^2), the
        partial route when min(p, N) >= 800, and the Gram route otherwise.
    start : numpy.ndarray, shape (min(p, N), k), optional
        A warm start for the partial route: the ``subspace`` of an earlier call
        on a nearby matrix (ignored by the other routes).

    Returns
    -------
    SVT
    """
    if method not in ("auto", "gram", "svd", "partial"):
        raise ValueError(
            f"method must be 'auto', 'gram', 'svd' or 'partial', got {method!r}."
        )
    wide = x.shape[0] <= x.shape[1]
    xt = x if wide else x.T  # work on the wide orientation: Gram is the small side
    if method == "auto":
        fro2 = float(np.einsum("ij,ij->", x, x))
        if threshold**2 <= _GRAM_RESOLUTION * fro2:
            method = "svd"
        elif xt.shape[0] >= _PARTIAL_MIN:
            method = "partial"
        else:
            method = "gram"
    u = None
    if method == "partial":
        found = _partial_svt(xt, threshold, start)
        if found is None:  # too many values above t, or no convergence
            method = "gram"
        else:
            u, shrunk, vt = found
            value = (u * shrunk) @ vt
    if method == "gram":
        gram = xt @ xt.T
        if gram.shape[0] > _FULL_EIGH_MAX:  # only the eigenpairs above t^2 (syevr)
            evals, evecs = scipy.linalg.eigh(
                gram,
                subset_by_value=(threshold**2, np.inf),
                driver="evr",
                check_finite=False,
            )
        else:  # small Gram matrix: divide and conquer on all of it is faster
            evals, evecs = scipy.linalg.eigh(gram, driver="evd", check_finite=False)
        # keep what the Gram matrix resolves (matters only for t = 0)
        floor = _GRAM_RESOLUTION * max(float(evals[-1]) if evals.size else 0.0, 0.0)
        keep = evals > max(threshold**2, floor)
        evals, evecs = evals[keep], evecs[:, keep]
        sigma = np.sqrt(np.maximum(evals[::-1], 0.0))
        u = evecs[:, ::-1]
        keep = sigma > threshold
        sigma, u = sigma[keep], u[:, keep]
        # U diag((sigma - t) / sigma) U^T X = U (Sigma - t) V^T  since V = X^T U / sigma
        value = u @ (((sigma - threshold) / sigma)[:, None] * (u.T @ xt))
        shrunk = sigma - threshold
    elif method == "svd":
        u, sigma, vt = scipy.linalg.svd(xt, full_matrices=False, lapack_driver="gesdd")
        keep = sigma > threshold
        shrunk = sigma[keep] - threshold
        u, vt = u[:, keep], vt[keep]
        value = (u * shrunk) @ vt
        u = None
    return SVT(
        value=value if wide else value.T,
        singular_values=shrunk,
        method=method,
        subspace=u,
    )


def _partial_svt(
    xt: np.ndarray, threshold: float, start: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The triplets of a wide X (m <= N) with singular value above t, or None.

    Block subspace iteration on X X^T with a Rayleigh-Ritz step per sweep: for
    an orthonormal block Q (m x b), W = X^T Q = P S G^T (thin SVD, b x b work)
    gives the Ritz triplets (Q G, S, P) with X^T (Q G) = P S exactly, and
    Z = X P gives the other residual Z - Q G S, whose column norms measure
    convergence; the next block is orth(Z) (= orth(X X^T Q G)). The block holds
    the start vectors and random ones, at least ``_PARTIAL_OVERSAMPLE`` more
    than the values above t; it grows (doubling the oversampling) while every
    Ritz value exceeds t. Stops when the Ritz triplets above t have residual <=
    ``_PARTIAL_TOL`` sigma_1 and the first Ritz value at or below t, plus its
    residual norm, is still at most t (Ritz values are lower bounds and some
    singular value lies within the residual of each).

    Returns
    -------
    (U, sigma - t, V^T) for the k values above t, or None (use another route).
    """
    m = xt.shape[0]
    limit = int(_PARTIAL_MAX_FRACTION * m)
    rng = np.random.default_rng(m)
    n_start = 0 if start is None else start.shape[1]
    width = min(max(n_start, 1) + _PARTIAL_OVERSAMPLE, m)
    if width > limit:
        return None
    block = rng.standard_normal((m, width))
    if n_start:
        block[:, :n_start] = start[:, :width]
    q_block = np.linalg.qr(block)[0]
    for _ in range(_PARTIAL_MAX_SWEEPS):
        w = xt.T @ q_block  # N x b
        p_vec, s_val, g_t = scipy.linalg.svd(
            w, full_matrices=False, lapack_driver="gesdd", check_finite=False
        )
        u_vec = q_block @ g_t.T
        z = xt @ p_vec  # X V, m x b
        if s_val[0] == 0.0:  # X^T Q = 0: with a random block, X = 0 in practice
            return u_vec[:, :0], s_val[:0], p_vec[:, :0].T
        res = np.sqrt(np.einsum("ij,ij->j", z - u_vec * s_val, z - u_vec * s_val))
        k = int(np.sum(s_val > threshold))
        if k >= width:  # every Ritz value above t: grow the block
            extra = max(width, _PARTIAL_OVERSAMPLE)
            if width + extra > limit:
                return None
            block = np.hstack([z, rng.standard_normal((m, extra))])
            width += extra
            q_block = np.linalg.qr(block)[0]
            continue
        # the top k converged, and the next Ritz value plus its residual (a
        # singular value lies within it) is at most t
        if np.all(res[:k] <= _PARTIAL_TOL * s_val[0]) and (
            s_val[k] + res[k] <= threshold
        ):
            shrunk = s_val[:k] - threshold
            return u_vec[:, :k], shrunk, p_vec[:, :k].T
        q_block = np.linalg.qr(z)[0]
    return None


@dataclass(frozen=True)
class NuclearNorm:
    """g(X) = ||X||_*, the sum of singular values."""

    def value(self, x: np.ndarray) -> float:
        """||X||_*, the sum of the singular values of ``x``.

        Parameters
        ----------
        x : numpy.ndarray, shape (p, N)
            The matrix.

        Returns
        -------
        float
            Its nuclear norm.
        """
        return float(scipy.linalg.svdvals(x).sum())

    def prox(self, x: np.ndarray, step: float, method: str = "auto") -> SVT:
        """argmin_Z 1/2 ||Z - X||_F^2 + step ||Z||_*  (singular value thresholding).

        Parameters
        ----------
        x : numpy.ndarray, shape (p, N)
            The point X at which the prox is taken.
        step : float
            The step (the threshold of :func:`svt`), >= 0.
        method : {"auto", "gram", "svd", "partial"}, default "auto"
            The route of :func:`svt`.

        Returns
        -------
        SVT
            The thresholded matrix and its singular values.
        """
        return svt(x, step, method=method)

    def dual_norm(self, y: np.ndarray) -> float:
        """||Y||_op, the largest singular value (0 for an empty matrix).

        Parameters
        ----------
        y : numpy.ndarray, shape (p, N)
            The matrix.

        Returns
        -------
        float
            Its operator norm.
        """
        return float(scipy.linalg.svdvals(y)[0]) if y.size else 0.0


@dataclass(frozen=True)
class BlockFrobenius:
    """g(X) = sum_k w_k ||X_k||_F over the K column blocks of X (p, Kq).

    Parameters
    ----------
    weights : numpy.ndarray, shape (K,)
        Positive block weights w_k.
    """

    weights: np.ndarray

    @property
    def n_clients(self) -> int:
        """K, the number of blocks."""
        return int(self.weights.size)

    def value(self, x: np.ndarray) -> float:
        """sum_k w_k ||X_k||_F.

        Parameters
        ----------
        x : numpy.ndarray, shape (p, Kq)
            The stacked matrix, K = ``n_clients`` blocks.

        Returns
        -------
        float
            The weighted sum of the block norms.
        """
        return float(self.weights @ block_norms(x, self.n_clients))

    def prox(self, x: np.ndarray, step: float) -> np.ndarray:
        """Block soft-thresholding X_k (1 - step w_k / ||X_k||_F)_+.

        The prox of ``step * g``: argmin_Z 1/2 ||Z - X||_F^2 + step g(Z).

        Parameters
        ----------
        x : numpy.ndarray, shape (p, Kq)
            The point X at which the prox is taken.
        step : float
            The step, >= 0; block k is thresholded at ``step * w_k``.

        Returns
        -------
        numpy.ndarray, shape (p, Kq)
            The thresholded matrix.
        """
        return block_soft_threshold(x, step * self.weights)

    def dual_norm(self, y: np.ndarray) -> float:
        """max_k ||Y_k||_F / w_k.

        Parameters
        ----------
        y : numpy.ndarray, shape (p, Kq)
            The stacked matrix, K = ``n_clients`` blocks.

        Returns
        -------
        float
            The dual norm of the weighted block norm at ``y``.
        """
        return float(np.max(block_norms(y, self.n_clients) / self.weights))

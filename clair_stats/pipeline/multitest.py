"""Multiple testing: Holm, Benjamini-Hochberg and Bonferroni, vectorised.

The one implementation of the corrections that step 3 of CLAIR applies to the K
per-client p-values (docs/pipeline.md §3.3), that ``clair adapters`` applies to
the K x M (client, module) p-values, and that the theory checks and the studies
apply to thousands of replicates at once. Every function works along the last
axis, so an (R, K) array corrects R families of K tests in one call.

With sorted p-values p_(1) <= ... <= p_(m) of one family of m tests:

- ``"holm"`` (step-down, family-wise error <= alpha under any dependence):
  reject H_(1), ..., H_(j) for the largest j with p_(i) <= alpha / (m - i + 1) for
  every i <= j; adjusted p_(i) = min(1, max_{j <= i} (m - j + 1) p_(j));
- ``"fdr_bh"`` (step-up, false discovery rate <= alpha for independent or
  positively dependent tests): reject H_(1), ..., H_(j) for the largest j with
  p_(j) <= alpha j / m; adjusted p_(i) = min(1, min_{j >= i} p_(j) / (j / m));
- ``"bonferroni"``: reject iff p <= alpha / m; adjusted min(1, m p).

Decisions and adjusted p-values are those of statsmodels'
``statsmodels.stats.multitest.multipletests`` (the same expressions, so the
same floating-point thresholds; tested to 1e-12 over generated p-values), without
its ``gc.collect()`` on every call, which costs about 50 ms in a process with a
large heap.

References
----------
Holm (1979). A simple sequentially rejective multiple test procedure. Scand. J.
Statist. 6(2), 65-70.
Benjamini, Hochberg (1995). Controlling the false discovery rate. JRSS B 57(1).
"""

from __future__ import annotations

import numpy as np

from clair_stats.core.validation import check_alpha, check_choice, is_real_dtype

__all__ = ["METHODS", "adjusted_p_values", "reject", "reject_present"]

#: The corrections, by their statsmodels names.
METHODS: tuple[str, ...] = ("holm", "fdr_bh", "bonferroni")


def _p_values(p_values: object) -> np.ndarray:
    """p-values as a float64 array with at least one test, all in [0, 1]."""
    p = np.asarray(p_values)
    if not is_real_dtype(p.dtype):
        raise TypeError(f"p_values must be real numbers, got dtype {p.dtype}.")
    p = p.astype(np.float64)
    if p.ndim == 0 or p.shape[-1] == 0:
        raise ValueError(
            f"p_values must hold at least one test along the last axis, got shape "
            f"{p.shape}."
        )
    if not np.all((p >= 0) & (p <= 1)):  # also catches NaN
        raise ValueError("p_values must lie in [0, 1] (no NaN).")
    return p


def _sorted(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The p-values sorted along the last axis, and the order that sorts them."""
    order = np.argsort(p, axis=-1, kind="stable")
    return np.take_along_axis(p, order, axis=-1), order


def _unsort(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    np.put_along_axis(out, order, values, axis=-1)
    return out


def adjusted_p_values(p_values: object, method: str = "holm") -> np.ndarray:
    """Adjusted p-values: test i is rejected at level alpha iff adjusted_i <= alpha.

    Parameters
    ----------
    p_values : array_like, shape (..., m)
        Uncorrected p-values in [0, 1]; the last axis is one family of tests.
    method : {"holm", "fdr_bh", "bonferroni"}, default "holm"
        The correction: Holm's step-down and Bonferroni's control the
        family-wise error, Benjamini-Hochberg (``"fdr_bh"``) the false discovery
        rate.

    Returns
    -------
    numpy.ndarray, shape (..., m)
        In [0, 1], in the order of ``p_values``.
    """
    return reject(p_values, 0.5, method)[1]


def reject(
    p_values: object, alpha: float = 0.05, method: str = "holm"
) -> tuple[np.ndarray, np.ndarray]:
    """Which hypotheses the correction rejects at level alpha, and adjusted p-values.

    Parameters
    ----------
    p_values : array_like, shape (..., m)
        Uncorrected p-values in [0, 1]; the last axis is one family of tests.
    alpha : float
        Family-wise error (``"holm"``, ``"bonferroni"``) or false discovery rate
        (``"fdr_bh"``), in (0, 1); default 0.05.
    method : {"holm", "fdr_bh", "bonferroni"}, default "holm"
        The correction: Holm's step-down and Bonferroni's control the
        family-wise error, Benjamini-Hochberg (``"fdr_bh"``) the false discovery
        rate.

    Returns
    -------
    rejected : numpy.ndarray of bool, shape (..., m)
    adjusted : numpy.ndarray, shape (..., m)

    Examples
    --------
    >>> rejected, adjusted = reject([0.001, 0.02, 0.04, 0.3], alpha=0.05)
    >>> rejected.tolist(), adjusted.round(3).tolist()
    ([True, False, False, False], [0.004, 0.06, 0.08, 0.3])
    """
    p = _p_values(p_values)
    alpha = check_alpha(alpha)
    method = check_choice(method, "method", METHODS)
    m = p.shape[-1]
    if method == "bonferroni":
        return p <= alpha / float(m), np.minimum(p * float(m), 1.0)
    ps, order = _sorted(p)
    if method == "holm":
        # reject the leading run of p_(i) <= alpha / (m - i + 1)
        steps = np.arange(m, 0, -1)
        passed = np.logical_and.accumulate(ps <= alpha / steps, axis=-1)
        adjusted = np.minimum(np.maximum.accumulate(ps * steps, axis=-1), 1.0)
    else:  # fdr_bh: reject up to the last p_(j) <= alpha j / m
        ecdf = np.arange(1, m + 1) / float(m)
        below = ps <= ecdf * alpha
        passed = np.flip(np.logical_or.accumulate(np.flip(below, -1), axis=-1), -1)
        raw = ps / ecdf
        adjusted = np.flip(np.minimum.accumulate(np.flip(raw, -1), axis=-1), -1)
        adjusted = np.minimum(adjusted, 1.0)
    return _unsort(passed, order), _unsort(adjusted, order)


def reject_present(
    p_values: np.ndarray, alpha: float = 0.05, method: str = "holm"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`reject` over the p-values that exist, as one family, and per column.

    For an (M, K) table of p-values with NaN where a (client, module) pair has
    none: the correction runs over all non-NaN entries at once (row-major), a
    missing pair is not rejected and has a NaN adjusted p-value, and each column
    (client) gets the smallest adjusted p-value of its pairs.

    Parameters
    ----------
    p_values : numpy.ndarray, shape (M, K)
        p-values in [0, 1], NaN for a missing pair.
    alpha : float, default 0.05
        The level of the correction, in (0, 1), as in :func:`reject`.
    method : {"holm", "fdr_bh", "bonferroni"}, default "holm"
        The correction, as in :func:`reject`.

    Returns
    -------
    rejected : numpy.ndarray of bool, shape (M, K)
    adjusted : numpy.ndarray, shape (M, K)
    combined : numpy.ndarray, shape (K,)
        min over the column's adjusted p-values (NaN for a column with none).

    Examples
    --------
    >>> p = np.array([[0.001, np.nan], [0.3, 0.02]])
    >>> rejected, adjusted, combined = reject_present(p, alpha=0.05)
    >>> rejected.tolist(), combined.round(3).tolist()
    ([[True, False], [False, True]], [0.003, 0.04])
    """
    p = np.asarray(p_values, dtype=float)
    present = ~np.isnan(p)
    rejected = np.zeros(p.shape, dtype=bool)
    adjusted = np.full(p.shape, np.nan)
    if present.any():
        rejected[present], adjusted[present] = reject(p[present], alpha, method)
    combined = np.where(present, adjusted, np.inf).min(axis=0)
    return rejected, adjusted, np.where(np.isfinite(combined), combined, np.nan)

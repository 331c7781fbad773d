r"""Metrics of docs/pipeline.md §7: subspace error, detection, per-client error.

- Subspace: :math:`\|P_{\hat A} - P_A\|_F` and :math:`\|P_{\hat A} - P_A\|_{op}`
  (the sin-theta distance) and the principal angles between span(A^) and span(A).
- Detection of the contaminated set S^c: precision, recall, exact recovery.
- Refinement: the per-client Frobenius error
  :math:`\|\tilde\Theta_k - \Theta_k\|_F` and its relative change against local.

Exact recovery of span(A) and of S^c is what outlier pursuit guarantees [1]_ and
what claim T1 of CLAIR's decomposition step [2]_ carries over to blocks
(docs/claims.md §4.2).

References
----------
.. [1] H. Xu, C. Caramanis, S. Sanghavi, "Robust PCA via outlier pursuit",
   IEEE Transactions on Information Theory 58(5), 2012.
.. [2] He, Chen, Feng, "Federated LoRA fine-tuning for LLMs via collaborative
   alignment", arXiv:2605.21217, 2026.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from clair_stats.core.validation import (
    check_choice,
    check_mask,
    check_orthonormal,
    check_updates,
    is_real_dtype,
)

__all__ = [
    "DetectionScores",
    "client_errors",
    "detection_scores",
    "principal_angles",
    "projection_distance",
    "relative_change",
]

FloatArray = NDArray[np.float64]

#: Tolerance of the orthonormality check ``max |A^T A - I|`` of a subspace basis.
_NORMS = ("fro", "op")


def projection_distance(A_hat: object, A: object, norm: str = "fro") -> float:
    r"""Distance between two subspaces: the norm of the difference of projectors.

    .. math::

        \|P_{\hat A} - P_A\|, \qquad P_A = A A^T,

    computed without forming a p x p matrix, from the residuals
    :math:`P_A^\perp \hat A` and :math:`P_{\hat A}^\perp A`:

    .. math::

        \|P_{\hat A} - P_A\|_F^2 = \|P_A^\perp \hat A\|_F^2
            + \|P_{\hat A}^\perp A\|_F^2, \qquad
        \|P_{\hat A} - P_A\|_{op} = \max(\|P_A^\perp \hat A\|_{op},
            \|P_{\hat A}^\perp A\|_{op})

    (the second identity is Kato's for orthogonal projectors). With equal ranks
    and principal angles :math:`\theta_i` these are
    :math:`\sqrt{2 \sum_i \sin^2\theta_i}` and :math:`\sin\theta_{\max}` (the
    sin-theta distance); with different ranks the operator norm is 1.
    Computing from the residuals keeps the accuracy of small distances (the
    formula :math:`r + \hat r - 2\|\hat A^T A\|_F^2` would lose half the digits).

    Parameters
    ----------
    A_hat, A : array_like, shape (p, r_hat) and (p, r)
        Bases with orthonormal columns (checked to 1e-8); the ranks may differ,
        and r = 0 (the zero subspace) is allowed.
    norm : {"fro", "op"}
        Frobenius or operator (spectral) norm.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        On shapes that do not match, non-orthonormal columns or an unknown norm.
    """
    check_choice(norm, "norm", _NORMS)
    A_hat = check_orthonormal(A_hat, "A_hat")
    A = check_orthonormal(A, "A", p=A_hat.shape[0])
    res_hat = A_hat - A @ (A.T @ A_hat)  # P_A^perp A^
    res = A - A_hat @ (A_hat.T @ A)  # P_A^^perp A
    if norm == "fro":
        return float(np.sqrt(np.sum(res_hat**2) + np.sum(res**2)))
    return max(_op_norm(res_hat), _op_norm(res))


def _op_norm(X: FloatArray) -> float:
    """Largest singular value (0 for an empty matrix)."""
    if X.size == 0:
        return 0.0
    return float(np.linalg.norm(X, ord=2))


def principal_angles(A_hat: object, A: object) -> FloatArray:
    r"""Principal angles between span(A^) and span(A), in radians, ascending.

    .. math::

        \cos\theta_i = \sigma_i(\hat A^T A), \qquad i = 1, \dots, \min(\hat r, r),

    computed by :func:`scipy.linalg.subspace_angles` (accurate for small angles).

    Parameters
    ----------
    A_hat, A : array_like, shape (p, r_hat) and (p, r)
        Bases with orthonormal columns (checked to 1e-8), r_hat, r >= 1.

    Returns
    -------
    numpy.ndarray, shape (min(r_hat, r),)
        Angles in [0, pi/2], smallest first.
    """
    A_hat = check_orthonormal(A_hat, "A_hat", min_rank=1)
    A = check_orthonormal(A, "A", p=A_hat.shape[0], min_rank=1)
    return np.sort(scipy.linalg.subspace_angles(A_hat, A))


# ------------------------------------------------------------------------ detection
@dataclass(frozen=True)
class DetectionScores:
    """How well the flagged set matches the contaminated set S^c.

    Parameters
    ----------
    precision : float
        #(flagged and contaminated) / #flagged; 1 when nothing is flagged (no
        false alarm was raised).
    recall : float
        #(flagged and contaminated) / #contaminated; 1 when no client is
        contaminated (nothing was missed).
    exact : bool
        The flagged set equals S^c (exact recovery of the collaborative set).
    n_flagged : int
        #flagged = ``|S^^c|``.
    n_contaminated : int
        ``|S^c|``.
    false_positives : int
        Benign clients that were flagged.
    false_negatives : int
        Contaminated clients that were not flagged.
    """

    precision: float
    recall: float
    exact: bool
    n_flagged: int
    n_contaminated: int
    false_positives: int
    false_negatives: int

    def __repr__(self) -> str:
        return (
            f"DetectionScores(precision={self.precision:.3g}, "
            f"recall={self.recall:.3g}, exact={self.exact}, "
            f"flagged={self.n_flagged}, contaminated={self.n_contaminated}, "
            f"FP={self.false_positives}, FN={self.false_negatives})"
        )


def detection_scores(flagged: object, contaminated: object) -> DetectionScores:
    r"""Precision, recall and exact recovery of the flagged clients.

    With F the flagged set (:math:`\hat S^c`) and C the contaminated set
    (:math:`S^c`):

    .. math::

        \text{precision} = \frac{|F \cap C|}{|F|}, \qquad
        \text{recall} = \frac{|F \cap C|}{|C|}, \qquad
        \text{exact} = [F = C],

    with the conventions precision = 1 when F is empty and recall = 1 when C is
    empty (the empty ratios 0/0 count as no error), so that exact recovery gives
    precision = recall = 1 in every case.

    Parameters
    ----------
    flagged : array_like of bool, shape (K,)
        True on the clients flagged as contaminated (the complement of S^).
    contaminated : array_like of bool, shape (K,)
        True on the truly contaminated clients (the complement of S, e.g.
        ``~sample.benign``).

    Returns
    -------
    DetectionScores
    """
    flagged = check_mask(flagged, "flagged")
    contaminated = check_mask(contaminated, "contaminated", flagged.shape[0])
    n_flagged = int(flagged.sum())
    n_contaminated = int(contaminated.sum())
    hits = int(np.sum(flagged & contaminated))
    return DetectionScores(
        precision=hits / n_flagged if n_flagged else 1.0,
        recall=hits / n_contaminated if n_contaminated else 1.0,
        exact=bool(np.array_equal(flagged, contaminated)),
        n_flagged=n_flagged,
        n_contaminated=n_contaminated,
        false_positives=n_flagged - hits,
        false_negatives=n_contaminated - hits,
    )


# ------------------------------------------------------------------------ estimates
def client_errors(estimates: object, truth: object) -> FloatArray:
    r"""Per-client Frobenius error :math:`\|\tilde\Theta_k - \Theta_k\|_F`.

    Parameters
    ----------
    estimates, truth : array_like, shape (K, p, q)
        The estimates (refined, local or a baseline's) and the true Theta_k.

    Returns
    -------
    numpy.ndarray, shape (K,)
    """
    estimates = check_updates(estimates, "estimates")
    truth = check_updates(truth, "truth")
    if estimates.shape != truth.shape:
        raise ValueError(
            f"estimates and truth must have the same shape (K, p, q), got "
            f"{estimates.shape} and {truth.shape}."
        )
    return np.linalg.norm(estimates - truth, axis=(1, 2))


def _check_errors(errors: object, name: str) -> FloatArray:
    """Return ``errors`` as a finite, nonnegative float64 array of shape (K,)."""
    arr = np.asarray(errors)
    if not is_real_dtype(arr.dtype):
        raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}.")
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must have shape (K,), one error per client, got {arr.shape}."
        )
    arr = arr.astype(np.float64, copy=False)
    bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0))
    if bad.size:
        raise ValueError(
            f"{name} must be finite and >= 0; client(s) {bad.tolist()} have "
            f"{arr[bad].tolist()}."
        )
    return arr


def relative_change(errors: object, local_errors: object) -> FloatArray:
    r"""Relative change of each client's error against its local error.

    .. math::

        \frac{e_k - e_k^{local}}{e_k^{local}},

    negative when the method improves on local fine-tuning (-0.5: error halved).

    Parameters
    ----------
    errors, local_errors : array_like, shape (K,)
        Nonnegative errors, e.g. from :func:`client_errors`; every local error
        must be > 0.

    Returns
    -------
    numpy.ndarray, shape (K,)
    """
    errors = _check_errors(errors, "errors")
    local_errors = _check_errors(local_errors, "local_errors")
    if errors.shape != local_errors.shape:
        raise ValueError(
            f"errors and local_errors must have the same shape (K,), got "
            f"{errors.shape} and {local_errors.shape}."
        )
    zero = np.flatnonzero(local_errors == 0)
    if zero.size:
        raise ValueError(
            f"local_errors is 0 for client(s) {zero.tolist()}: the relative change "
            "is undefined there; compare absolute errors (errors - local_errors) "
            "or drop those clients."
        )
    return (errors - local_errors) / local_errors

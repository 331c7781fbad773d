"""Random draws and array helpers shared by the generators of this subpackage.

Each helper is one line of docs/model.md §2: a random orthonormal basis, the
projection onto the complement of span(A), a rescaling to a given Frobenius norm,
and the read-only flag every array of a sample carries.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def orthonormal(rng: np.random.Generator, p: int, r: int) -> FloatArray:
    """Random p x r matrix with orthonormal columns: Q of the QR of a Gaussian."""
    q, _ = np.linalg.qr(rng.standard_normal((p, r)))
    return q


def project_out(A: FloatArray, X: FloatArray) -> FloatArray:
    """P_A^perp X = X - A (A^T X); X may be (p, q) or stacked (K, p, q)."""
    return X - A @ (A.T @ X)


def rescale(X: FloatArray, target: float) -> FloatArray:
    """X * target / ||X||_F (zeros if X = 0)."""
    norm = float(np.linalg.norm(X))
    return X * (target / norm) if norm > 0 else np.zeros_like(X)


def readonly(x: np.ndarray) -> np.ndarray:
    """``x`` itself, flagged read-only (the arrays of a sample are not to be edited)."""
    x.setflags(write=False)
    return x

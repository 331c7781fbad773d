"""Sequence-copying tasks (Song, Xu and Zhong 2025), scaled down for a CPU.

A sequence of T tokens from a vocabulary of V is drawn i.i.d. from a Zipf law
p_i ~ 1 / (i + 2.7) (or uniformly); a segment of length L (uniform on
[seg_min, seg_max]) is written twice, at positions s1 < s2 that do not overlap
(s1 + L <= s2, s2 + L <= T), the pair (s1, s2) uniform over all such pairs. A model
that copies through an induction head predicts the second copy from the first.

Variants of the second copy (this module's tasks):

* **base copy**: the second copy equals the first;
* **swap-copy**: the second copy applies a fixed token map phi (a product of
  disjoint swaps, e.g. 0 <-> 1 and 2 <-> 3; the other tokens are copied), to every
  sequence, or to each sequence with probability ``swap_fraction`` (a mix of
  swapped and exact copies);
* **label noise**: the second copy is replaced by fresh i.i.d. tokens, so there is
  nothing to copy.

Scored positions (the mask). The model at position t predicts x[t + 1]. The
scored positions are t = s2 + b, ..., s2 + L - 2 (b = ``skip``), that is the
targets x[s2 + b + 1], ..., x[s2 + L - 1]: every token of the second copy after
its first b + 1. The first token of the second copy cannot be predicted (nothing
announces the copy), and t = s2 + L - 1 predicts the token after the segment,
which is random: the mask of the original code included that one position (an off
by one), which is corrected here. A sequence has L - 1 - b scored positions.

Everything here is numpy; the arrays are converted to torch tensors by the
training code.

References
----------
Song, Xu, Zhong (2025). Out-of-distribution generalization via composition: a lens
through induction heads in transformers. PNAS 122.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from clair_stats.core.validation import check_int

__all__ = [
    "ZIPF_SHIFT",
    "CopyBatch",
    "CopyTask",
    "swap_map",
    "token_distribution",
]

#: The Zipf law of Song, Xu and Zhong: p_i proportional to 1 / (i + ZIPF_SHIFT).
ZIPF_SHIFT = 2.7
_DISTRIBUTIONS = ("zipf", "uniform")


def token_distribution(vocab: int, kind: str = "zipf") -> NDArray[np.float64]:
    """Probabilities of the V tokens.

    Parameters
    ----------
    vocab : int
        V >= 2.
    kind : {"zipf", "uniform"}
        ``"zipf"``: p_i = (i + 2.7)^{-1} / sum_j (j + 2.7)^{-1}, i = 0..V-1.

    Returns
    -------
    numpy.ndarray, shape (V,)
        Probabilities summing to 1.
    """
    vocab = check_int(vocab, "vocab", 2)
    if kind == "zipf":
        weights = 1.0 / (np.arange(vocab) + ZIPF_SHIFT)
    elif kind == "uniform":
        weights = np.ones(vocab)
    else:
        raise ValueError(f"distribution must be one of {_DISTRIBUTIONS}, got {kind!r}.")
    return weights / weights.sum()


def swap_map(vocab: int, swaps: tuple[tuple[int, int], ...]) -> NDArray[np.int64]:
    """The token map phi of a product of disjoint swaps, as a lookup table.

    Parameters
    ----------
    vocab : int
        V.
    swaps : tuple of (int, int)
        Disjoint pairs (a, b), a != b, 0 <= a, b < V: phi(a) = b, phi(b) = a.

    Returns
    -------
    numpy.ndarray of int64, shape (V,)
        phi(v) for v = 0..V-1 (the identity outside the pairs); phi is an
        involution.
    """
    table = np.arange(vocab, dtype=np.int64)
    seen: set[int] = set()
    for pair in swaps:
        if len(pair) != 2:
            raise ValueError(f"each swap must be a pair (a, b), got {pair!r}.")
        a, b = (check_int(v, "swap token", 0) for v in pair)
        if a == b or a >= vocab or b >= vocab:
            raise ValueError(
                f"swap {pair!r} must hold two different tokens in [0, {vocab}); "
                "fix the pair or the vocabulary size."
            )
        if a in seen or b in seen:
            raise ValueError(
                f"swaps must be disjoint; token {a if a in seen else b} appears in "
                f"two pairs of {swaps!r}."
            )
        seen.update((a, b))
        table[a], table[b] = b, a
    return table


@dataclass(frozen=True)
class CopyBatch:
    """Sequences of a copying task and where they are scored.

    Attributes
    ----------
    tokens : numpy.ndarray of int64, shape (n, T)
        The sequences x.
    mask : numpy.ndarray of bool, shape (n, T - 1)
        ``mask[i, t]``: position t of sequence i is scored, its target being
        ``tokens[i, t + 1]``; True exactly for t = s2 + b, ..., s2 + L - 2.
    starts : numpy.ndarray of int64, shape (n, 2)
        (s1, s2), the first positions of the two copies.
    lengths : numpy.ndarray of int64, shape (n,)
        L, the segment lengths.
    mapped : numpy.ndarray of bool, shape (n,)
        Whether the second copy went through the token map (swap-copy) or was
        replaced by noise (label noise); False for exact copies.
    """

    tokens: NDArray[np.int64]
    mask: NDArray[np.bool_]
    starts: NDArray[np.int64]
    lengths: NDArray[np.int64]
    mapped: NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def subset(self, index: NDArray[np.int64]) -> CopyBatch:
        """The sequences ``index`` (an integer array), as a new batch."""
        return CopyBatch(
            tokens=self.tokens[index],
            mask=self.mask[index],
            starts=self.starts[index],
            lengths=self.lengths[index],
            mapped=self.mapped[index],
        )


@dataclass(frozen=True)
class CopyTask:
    """A copying task: the law of the sequences and of their second copy.

    Parameters
    ----------
    vocab : int
        V, the vocabulary size.
    length : int
        T, the sequence length; needs T >= 2 seg_max.
    seg_min, seg_max : int
        Segment lengths L are uniform on [seg_min, seg_max]; seg_min >= skip + 2
        so that every sequence has a scored position.
    skip : int
        b, the leading positions of the second copy left unscored (>= 0).
    distribution : {"zipf", "uniform"}
        Law of every token (background and segment).
    swaps : tuple of (int, int)
        The disjoint swaps of the token map phi (empty: exact copy).
    swap_fraction : float
        Probability in [0, 1] that a sequence's second copy goes through phi;
        the others are exact copies (1: the pure swap-copy task).
    label_noise : bool
        Replace the second copy by fresh i.i.d. tokens (then ``swaps`` must be
        empty).
    """

    vocab: int = 32
    length: int = 48
    seg_min: int = 6
    seg_max: int = 10
    skip: int = 1
    distribution: str = "zipf"
    swaps: tuple[tuple[int, int], ...] = ()
    swap_fraction: float = 1.0
    label_noise: bool = False

    def __post_init__(self) -> None:
        check_int(self.vocab, "vocab", 2)
        check_int(self.skip, "skip", 0)
        check_int(self.seg_min, "seg_min", self.skip + 2)
        check_int(self.seg_max, "seg_max", self.seg_min)
        check_int(self.length, "length", 2 * self.seg_max)
        if self.distribution not in _DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {_DISTRIBUTIONS}, got "
                f"{self.distribution!r}."
            )
        fraction = self.swap_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
            raise TypeError(f"swap_fraction must be a number, got {fraction!r}.")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"swap_fraction must be in [0, 1], got {fraction}.")
        if not isinstance(self.label_noise, bool):
            raise TypeError(f"label_noise must be a bool, got {self.label_noise!r}.")
        if self.label_noise and self.swaps:
            raise ValueError(
                "label_noise replaces the second copy by noise, so swaps must be "
                f"empty; got swaps={self.swaps!r}."
            )
        swap_map(self.vocab, self.swaps)  # validates the pairs

    @property
    def token_map(self) -> NDArray[np.int64]:
        """phi as a lookup table of shape (V,) (the identity without swaps)."""
        return swap_map(self.vocab, self.swaps)

    @property
    def probabilities(self) -> NDArray[np.float64]:
        """The token law, shape (V,)."""
        return token_distribution(self.vocab, self.distribution)

    def sample(self, n: int, rng: np.random.Generator) -> CopyBatch:
        """Draw n sequences.

        Parameters
        ----------
        n : int
            Number of sequences, >= 1.
        rng : numpy.random.Generator
            The only source of randomness.

        Returns
        -------
        CopyBatch
        """
        n = check_int(n, "n", 1)
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                f"got {type(rng).__name__}."
            )
        T = self.length
        probs = self.probabilities
        tokens = rng.choice(self.vocab, size=(n, T), p=probs).astype(np.int64)
        lengths = rng.integers(self.seg_min, self.seg_max + 1, size=n)
        # Uniform over non-overlapping placements: with F = T - 2L background
        # tokens, the gaps (g0, g1, g2) >= 0 summing to F are the C(F + 2, 2)
        # compositions, in bijection with pairs u < v of {0, ..., F + 1}:
        # g0 = u, g1 = v - u - 1, so s1 = u and s2 = v + L - 1.
        starts = np.empty((n, 2), dtype=np.int64)
        for i, L in enumerate(lengths):
            u, v = np.sort(rng.choice(T - 2 * L + 2, size=2, replace=False))
            starts[i] = (u, v + L - 1)
        if self.label_noise:
            mapped = np.ones(n, dtype=bool)
        elif self.swaps:
            mapped = rng.random(n) < self.swap_fraction
        else:
            mapped = np.zeros(n, dtype=bool)
        phi = self.token_map
        mask = np.zeros((n, T - 1), dtype=bool)
        for i, (L, (s1, s2)) in enumerate(zip(lengths, starts, strict=True)):
            segment = tokens[i, s1 : s1 + L]
            if self.label_noise:
                second = rng.choice(self.vocab, size=L, p=probs)
            elif mapped[i]:
                second = phi[segment]
            else:
                second = segment
            tokens[i, s2 : s2 + L] = second
            mask[i, s2 + self.skip : s2 + L - 1] = True
        return CopyBatch(
            tokens=tokens,
            mask=mask,
            starts=starts,
            lengths=lengths.astype(np.int64),
            mapped=mapped,
        )

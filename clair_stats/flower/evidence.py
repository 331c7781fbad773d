"""A client's evidence across rounds: Holm over its rounds' p-values.

In round t the test gives each client k that replied a p-value p_kt (the smallest
Holm-adjusted p-value over its modules, docs/flower.md §9.1): a client is flagged in
round t iff p_kt <= alpha, and the round's family-wise error over the K x M
(client, module) pairs is at most alpha. Across rounds, client k's p-values form
a family of its own, one hypothesis per round it took part in ("client k was not
contaminated in round t"). Holm's procedure over that family at level alpha rejects
some hypothesis iff its first step does, i.e. iff

.. math:: P_{kT} = \\min\\bigl(1,\\ n_{kT} \\min_{t \\le T} p_{kt}\\bigr) \\le \\alpha,

with n_kT the number of rounds up to T with a p-value for k (within the last
``window`` of them, if set). A client with P_kT <= alpha is *excluded* in round T
even if this round's test does not flag it: it enters neither S^ nor the global
aggregate, and keeps its own update.

Why this rule:

- **an intermittent attacker is caught**: once it has been flagged with p_kt <=
  alpha / n it stays excluded in the rounds where it behaves, for as long as
  n_kT p_kt <= alpha (about alpha / p_kt rounds: a strong attack, p = 1e-6,
  excludes it for ever in practice), so that it cannot alternate attack and good
  behaviour to re-enter the aggregate between attacks;
- **a benign client flagged once by chance is not excluded for ever**: a chance
  p-value near alpha is diluted by every round it takes part in; with p_kt = 0.01
  and alpha = 0.05 it is excluded for at most 4 more rounds;
- **the guarantee holds under any dependence** between rounds (a client's update
  in round t+1 starts from what it sent in round t): Holm is valid for any joint
  law of the p-values, so a client that is benign in every round is excluded by
  its history in round T with probability at most alpha, and, with this round's
  flag, at most 2 alpha (each term at most alpha).

``window`` (a number of rounds) makes old evidence expire: only the client's last
``window`` p-values count, so that a client flagged long ago can return. Without
it (the default) the whole history counts.

Noiseless modules are tested by the support of S^, which gives no p-value: a client
flagged that way has p_kt = 0 (excluded for ever: on noiseless data the support
recovers the contaminated set exactly), and one kept has p_kt = 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clair_stats.core.validation import check_alpha, check_int

__all__ = ["ClientHistory"]


@dataclass
class ClientHistory:
    """Each client's p-values over the rounds, and who is excluded.

    Parameters
    ----------
    alpha : float
        Level of Holm's procedure over each client's rounds.
    window : int, optional
        Count only each client's last ``window`` p-values (default: all).
    _p : dict of int to list of (int, float), optional
        Internal state: client id -> the (round, p_kt) pairs recorded so far.
        Leave it to its default, an empty history, and add rounds with
        :meth:`record`.

    Examples
    --------
    >>> history = ClientHistory(alpha=0.05)
    >>> history.record(1, {7: 0.01, 8: 0.6})
    >>> history.excluded([7, 8]).tolist()
    [True, False]
    >>> for t in range(2, 7):
    ...     history.record(t, {7: 0.9, 8: 0.5})
    >>> history.p_value(7)  # 6 rounds x 0.01
    0.06
    """

    alpha: float = 0.05
    window: int | None = None
    _p: dict[int, list[tuple[int, float]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.alpha = check_alpha(self.alpha)
        if self.window is not None:
            self.window = check_int(self.window, "window", 1)

    def record(self, server_round: int, p_values: dict[int, float]) -> None:
        """Add one round's p-values (client id -> p_kt; NaN: no p-value, skipped).

        Parameters
        ----------
        server_round : int
            The Flower round the p-values belong to.
        p_values : dict of int to float
            Client (node) id -> p_kt in [0, 1] (a ``ValueError`` outside it);
            NaN for a client that had no p-value this round.
        """
        for node, p in p_values.items():
            p = float(p)
            if np.isnan(p):
                continue
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"p-value {p} of client {node} is not in [0, 1].")
            self._p.setdefault(int(node), []).append((int(server_round), p))

    def rounds(self, node: int) -> list[tuple[int, float]]:
        """(round, p_kt) of the client's rounds that count (the last ``window``).

        Parameters
        ----------
        node : int
            The client (node) id.

        Returns
        -------
        list of tuple of (int, float)
            In the order recorded; empty for a client with no p-value yet.
        """
        entries = self._p.get(int(node), [])
        return entries if self.window is None else entries[-self.window :]

    def p_value(self, node: int) -> float:
        """P_kT = min(1, n_kT min_t p_kt), NaN for a client with no p-value yet.

        Parameters
        ----------
        node : int
            The client (node) id.

        Returns
        -------
        float
            The Holm-adjusted p-value of the client's first step over its rounds.
        """
        entries = self.rounds(node)
        if not entries:
            return float("nan")
        return min(1.0, len(entries) * min(p for _, p in entries))

    def excluded(self, nodes) -> np.ndarray:
        """Which of ``nodes`` the history excludes (P_kT <= alpha).

        Parameters
        ----------
        nodes : iterable of int
            Client (node) ids.

        Returns
        -------
        numpy.ndarray of bool
            One flag per id, in order; False for a client with no p-value yet.
        """
        p = np.array([self.p_value(n) for n in nodes], dtype=float)
        return np.where(np.isnan(p), False, p <= self.alpha)

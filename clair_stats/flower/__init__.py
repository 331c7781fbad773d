"""CLAIR inside Flower, the federated learning engine (docs/flower.md).

- :class:`ClairStrategy` (needs the ``flower`` extra): a Flower Message-API
  strategy, FedAvg's drop-in replacement, that flags contaminated clients per
  round and across rounds and sends each client its refined arrays;
- :class:`~clair_stats.flower.layout.ArrayLayout`,
  :class:`~clair_stats.flower.evidence.ClientHistory` and the round functions of
  :mod:`clair_stats.flower.rounds` need numpy only, so that the rules can be
  used and tested without Flower.

``import clair_stats.flower`` does not import Flower; ``ClairStrategy`` does, on
first use.
"""

from clair_stats.flower.evidence import ClientHistory
from clair_stats.flower.layout import ArrayLayout
from clair_stats.flower.rounds import (
    MIN_CLIENTS,
    RoundVerdict,
    global_arrays,
    refine_round,
    round_verdict,
)

__all__ = [
    "MIN_CLIENTS",
    "ArrayLayout",
    "ClairStrategy",
    "ClientHistory",
    "RoundReport",
    "RoundVerdict",
    "global_arrays",
    "refine_round",
    "round_verdict",
]


def __getattr__(name: str):
    if name in ("ClairStrategy", "RoundReport"):
        from clair_stats.flower import strategy

        return getattr(strategy, name)
    raise AttributeError(f"module 'clair_stats.flower' has no attribute {name!r}")

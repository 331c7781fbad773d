"""Pinned T1 instances: counterexamples and boundary cases of exact recovery.

Each entry is the keyword arguments of
:func:`theory_checks.strategies.make_t1_instance` (no data files, no pickle: the
instance is rebuilt bit for bit from the seed). ``test_t1_exact_recovery.py``
runs every case with the assertion of T1 as stated; a case that fails inside the
condition is a finding and stays here, failing, until the theory or the code is
fixed.

``COUNTEREXAMPLES``: instances that met the condition and were not recovered
(none found so far: see theory_checks/README.md, T1).
``BOUNDARY``: instances at the edge of the condition (n_c = n_max, jitter up to
0.5, extreme scales), kept so that every run covers them.
"""

from __future__ import annotations

COUNTEREXAMPLES: list[dict] = []

BOUNDARY: list[dict] = [
    # r = 2, q = 1: the smallest |S| admitting one contaminated client at mu = 1
    {"p": 10, "q": 1, "r": 2, "n_clients": 28, "n_contaminated": 1, "seed": 0},
    # r = 1, q = 3: two contaminated clients at |S| = 27 (n_c/|S| = 0.0741 <= 9/121)
    {"p": 12, "q": 3, "r": 1, "n_clients": 29, "n_contaminated": 2, "seed": 1},
    # tiny contaminated norms and a large signal scale (homogeneity)
    {
        "p": 20,
        "q": 2,
        "r": 1,
        "n_clients": 60,
        "n_contaminated": 3,
        "signal_scale": 100.0,
        "outlier_ratio": 0.2,
        "seed": 2,
    },
    # jitter 0.3: mu > 1, r = 2, |S| = 100 with 2 contaminated clients
    {
        "p": 30,
        "q": 2,
        "r": 2,
        "n_clients": 102,
        "n_contaminated": 2,
        "jitter": 0.3,
        "seed": 3,
    },
]

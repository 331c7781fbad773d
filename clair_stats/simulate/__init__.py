"""Generators of the federated model (docs/model.md §2).

:class:`~clair_stats.simulate.sample.FederatedSample` (one draw: truth, estimates
and hidden structure), the registry of contamination types
(:mod:`~clair_stats.simulate.contamination`: adding a type is one function),
:class:`~clair_stats.simulate.model.FederatedModel` (direct noise) and
:mod:`~clair_stats.simulate.regression` (local OLS / ridge fits). Modules here
import :mod:`clair_stats.core` only.
Omniscient attacks on the benign updates as sent: :mod:`~clair_stats.simulate.attacks`.
"""

"""clair_stats: CLAIR for federated LoRA fine-tuning.

Collaborative Low-rank Alignment and Identifiable Recovery (He, Chen, Feng 2026):
stack the clients' matrix-valued updates, split them into a low-rank part (the
shared subspace) plus a block-sparse part (the contaminated clients), and refine
the benign clients. The notation follows ``SPEC.md``.
"""

from clair_stats.certificates import Certificate, duality_gap
from clair_stats.decompose import DEFAULT_C_LAM, decompose, default_lam
from clair_stats.detection import ChiSquareTest, chi_square_test
from clair_stats.estimator import ClairResult, clair
from clair_stats.lowrank import LowRankUpdates
from clair_stats.model import CONTAMINATION_TYPES, FederatedModel, FederatedSample
from clair_stats.penalties import BlockFrobenius, NuclearNorm, svt
from clair_stats.problems import Problem
from clair_stats.refine import refine
from clair_stats.results import (
    ConvergenceWarning,
    Decomposition,
    FactoredDecomposition,
    RefinedFactors,
    SolverInfo,
)
from clair_stats.subspace import estimate_subspace

__all__ = [
    "CONTAMINATION_TYPES",
    "DEFAULT_C_LAM",
    "BlockFrobenius",
    "Certificate",
    "ChiSquareTest",
    "ClairResult",
    "ConvergenceWarning",
    "Decomposition",
    "FactoredDecomposition",
    "FederatedModel",
    "FederatedSample",
    "LowRankUpdates",
    "NuclearNorm",
    "Problem",
    "RefinedFactors",
    "SolverInfo",
    "chi_square_test",
    "clair",
    "decompose",
    "default_lam",
    "duality_gap",
    "estimate_subspace",
    "refine",
    "svt",
]

__version__ = "0.1.0"

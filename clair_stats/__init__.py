"""clair_stats: CLAIR for federated LoRA fine-tuning.

Collaborative Low-rank Alignment and Identifiable Recovery (He, Chen, Feng 2026):
stack the clients' matrix-valued updates, split them into a low-rank part (the
shared subspace) plus a block-sparse part (the contaminated clients), and refine
the benign clients. The notation and the mathematics are in ``docs/`` (start at
``docs/theory.md``).
"""

from clair_stats.core.certificates import Certificate, duality_gap
from clair_stats.core.exceptions import (
    AssumptionWarning,
    ClairWarning,
    ConvergenceWarning,
    PerformanceWarning,
)
from clair_stats.core.lowrank import LowRankUpdates
from clair_stats.core.penalties import BlockFrobenius, NuclearNorm, svt
from clair_stats.core.problems import Problem
from clair_stats.core.results import (
    Decomposition,
    FactoredDecomposition,
    RefinedFactors,
    SolverInfo,
)
from clair_stats.pipeline.decompose import DEFAULT_C_LAM, decompose, default_lam
from clair_stats.pipeline.detection import ClientTest, chi_square_test
from clair_stats.pipeline.estimator import ClairResult, clair
from clair_stats.pipeline.lam import LamSelection, select_lam
from clair_stats.pipeline.refine import (
    Refinement,
    Shrinkage,
    refine,
    refine_clients,
    shrinkage_factors,
)
from clair_stats.pipeline.subspace import estimate_subspace
from clair_stats.pipeline.trimmed import TrimmedFit, trimmed_subspace
from clair_stats.simulate.contamination import CONTAMINATION_TYPES
from clair_stats.simulate.model import FederatedModel
from clair_stats.simulate.sample import FederatedSample

__all__ = [
    "CONTAMINATION_TYPES",
    "DEFAULT_C_LAM",
    "BlockFrobenius",
    "Certificate",
    "AssumptionWarning",
    "ClairResult",
    "ClairWarning",
    "ClientTest",
    "TrimmedFit",
    "ConvergenceWarning",
    "Decomposition",
    "FactoredDecomposition",
    "FederatedModel",
    "FederatedSample",
    "LamSelection",
    "LowRankUpdates",
    "NuclearNorm",
    "PerformanceWarning",
    "Problem",
    "RefinedFactors",
    "Refinement",
    "Shrinkage",
    "SolverInfo",
    "chi_square_test",
    "clair",
    "decompose",
    "default_lam",
    "duality_gap",
    "estimate_subspace",
    "select_lam",
    "refine",
    "refine_clients",
    "shrinkage_factors",
    "svt",
    "trimmed_subspace",
]

__version__ = "0.1.0"


def __getattr__(name: str):
    """``ClairStrategy`` on first use: it imports Flower (the ``flower`` extra),
    which ``import clair_stats`` does not. It is not in ``__all__``, so that
    ``from clair_stats import *`` works without the extra."""
    if name == "ClairStrategy":
        from clair_stats.flower.strategy import ClairStrategy

        return ClairStrategy
    raise AttributeError(f"module 'clair_stats' has no attribute {name!r}")

r"""One replicate of the federated LoRA experiment: clients, methods, accuracies.

**Clients.** K clients fine-tune LoRA adapters of the same pretrained model
(:mod:`simulations.copying.training`), from a common adapter initialisation
broadcast by the server (B = 0, the same A for every client, as in federated LoRA
fine-tuning), each on n_k sequences of its own task. The last ``n_contaminated``
clients are contaminated; their kinds cycle through :data:`CONTAMINATIONS`:

* ``"other_swap"``: a different token map, 8 <-> 9, 10 <-> 11, 12 <-> 13;
* ``"label_noise"``: the second copy is replaced by fresh random tokens.

The benign clients' tasks depend on the experiment:

* ``"homogeneous"``: every benign client has the swap-copy task (0 <-> 1, 2 <-> 3
  on every sequence);
* ``"heterogeneous"``: the same swaps, but benign client j applies them to a
  fraction pi_j of its sequences and copies the rest exactly, with pi_j evenly
  spaced on [``min_swap_fraction``, 1]. Each client's best adapter is then the
  shared swap update scaled to its own pi_j: a client-specific variation *inside*
  the shared subspace, which the CLAIR refinement keeps (it keeps
  :math:`P_{\hat A}\hat\Theta_k`) and FedAvg averages away.

Every client is evaluated on fresh sequences of its own task.

**Methods** (what client k ends up with, module by module; Delta W~_k is merged
into W_0 for evaluation):

* ``pretrained``: Delta W = 0 (the pretrained model, for reference);
* ``local``: its own Delta W^_k (local LoRA fine-tuning);
* ``fedavg``: the mean of all K updates;
* ``fedavg_benign``: the mean over the true benign set S for k in S; the
  contaminated clients keep their local update;
* ``svd_refine``: plain SVD subspace of all K updates + the CLAIR refinement,
  every client collaborative (:func:`clair_stats.evaluation.baselines.svd_refine`);
* ``clair``: CLAIR per module, one verdict per client (below), then step 4 as
  :func:`clair_stats.clair` does it (docs/pipeline.md §3.4): per module A^ refitted
  on S^ and each client's in-subspace deviation from the mean shrunk by the
  empirical-Bayes factor b_k (:func:`clair_stats.pipeline.refine.refine_clients`);
* ``clair_paper``: the same verdict, then the paper's refinement
  P_A^ Theta^_k + P_A^^perp Thetabar with the module's A^ (study versions 1-2's
  ``clair``);
* ``oracle_clair``: the paper's refinement with the true S and, per module, A = the
  top-r left singular vectors of the benign clients' stacked updates (a trained
  network has no "true" A; this is the subspace CLAIR would find with S known);
* ``oracle_pooled``: step 4 of ``clair`` with the true S (its A^ is then the
  oracle's A): what the refinement gives when detection is exact.

FedAvg averages the dense products Delta W_k = s B_k A_k, not the factors.

**CLAIR on LoRA updates** (:func:`clair_per_module`). Steps 1-3 run per module as
in ``clair adapters`` (:func:`clair_stats.lora.adapters.fit_module` on the (K, p,
q) stack of Delta W^_k), and the modules are combined into one verdict per client
by the library's rule (:mod:`clair_stats.lora.verdict`):

* P0 (``mode="exact"``): the noise level of a LoRA update is unknown, and P0 is
  positively homogeneous, so lam = c_lam / sqrt(K) needs no scale; P1 would need
  mu, i.e. a noise level. The block support of S^ cannot serve as the verdict:
  the updates are noisy, and P0 gave a nonzero S^_k for all 10 clients in all 8
  modules;
* ``rank=2``: the benign task is two swaps, and the stacked benign updates show
  it: in the value and output modules the top two singular values carry 70-80% of
  the energy and the third under 5% (measured on one homogeneous replicate; the
  query and key modules have no clear gap). Over 2-3 replicates per experiment the
  oracle refinement gained, against local, +0.1 to +3.5% at r = 2 and +2.4 to
  +4.2% at r = 1 (homogeneous), +4.1 to +5.3% at r = 2 and +2.6 to +4.7% at r = 1
  (heterogeneous), and less at r = 3, 4 and 6. A larger r keeps more of each
  client's own update (less averaging), a smaller one averages more;
* no centre: the updates are already relative to the known pretrained weights
  (Theta_0 = 0 in docs/model.md §2); the common task update is part of the shared
  low-rank part;
* ``side="left"``: the shared subspace is the column space of Delta W (the output
  space of the module, span of B_k);
* **verdict**: each client's off-subspace energy gets an empirical-null p-value
  per module, Holm runs over the K x M = 80 (client, module) p-values at
  ``clair_alpha``, and a client is flagged (outside S^) iff any of its modules is
  rejected (:func:`clair_stats.lora.verdict.client_verdict`).

Until study version 2 the verdict was another rule: the chi-square test of step 3
(docs/pipeline.md §3.3.2) per
module with sigma by the median rule and Holm over the K clients, and a client
flagged when at least half of the modules flag it. Its family-wise error is far
above its level, because the chi-square law with (p - r) q degrees of freedom is
much narrower than the spread of benign LoRA energies;
``simulations/verdict_rules.py`` measured both rules on these updates (the figures
are in :mod:`clair_stats.lora.verdict`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import numpy as np
import torch

from clair_stats import refine
from clair_stats.core.linalg import top_subspace
from clair_stats.evaluation.baselines import fedavg, svd_refine
from clair_stats.evaluation.metrics import detection_scores
from clair_stats.lora.adapters import fit_module
from clair_stats.lora.verdict import client_verdict
from clair_stats.pipeline.paths import as_updates
from clair_stats.pipeline.refine import refine_clients
from simulations.copying.clients import (
    CacheError,
    CacheWarning,
    read_updates,
    training_key,
    updates_path,
    write_updates,
)
from simulations.copying.tasks import CopyBatch, CopyTask
from simulations.copying.training import (
    FineTuneConfig,
    PretrainConfig,
    fine_tune,
    masked_accuracy,
    pretrained_model,
)
from simulations.copying.transformer import ModelConfig, Transformer

__all__ = [
    "BENIGN_SWAPS",
    "CONTAMINATIONS",
    "EXPERIMENTS",
    "METHODS",
    "OTHER_SWAPS",
    "Settings",
    "TrainedClients",
    "clair_per_module",
    "client_key",
    "client_tasks",
    "federate",
    "relative_change",
    "run_replicate",
    "train_clients",
]

#: The shared token map of the benign clients.
BENIGN_SWAPS = ((0, 1), (2, 3))
#: The token map of the ``"other_swap"`` contaminated clients.
OTHER_SWAPS = ((8, 9), (10, 11), (12, 13))
#: Kinds of contamination, assigned in turn to the contaminated clients.
CONTAMINATIONS = ("other_swap", "label_noise")
EXPERIMENTS = ("homogeneous", "heterogeneous")
#: Methods in the order of the figures.
METHODS = (
    "pretrained",
    "local",
    "fedavg",
    "fedavg_benign",
    "svd_refine",
    "clair_paper",
    "clair",
    "oracle_clair",
    "oracle_pooled",
)


@dataclass(frozen=True)
class Settings:
    """Everything one replicate depends on besides its seed (flat JSON scalars).

    Parameters
    ----------
    experiment : {"homogeneous", "heterogeneous"}
        The benign clients' tasks (module docstring).
    n_clients : int
        K.
    n_contaminated : int
        |S^c|, the last clients; 0 <= n_contaminated < K / 2 (the median rule of
        the test needs a benign majority).
    n_train, n_test : int
        Sequences per client for fine-tuning and for evaluation.
    min_swap_fraction : float
        Heterogeneous experiment: the smallest pi_j.
    vocab, length, d_model, n_layers : int
        Task and model sizes (V, T, d, layers).
    seg_min, seg_max, skip : int
        Segment lengths and b of the tasks.
    pretrain_steps, pretrain_batch : int
        Pretraining on the base copy task.
    pretrain_lr : float
    pretrain_seed : int
        Seed of the pretraining (the same pretrained model for every replicate).
    lora_rank : int
        r of the adapters.
    lora_alpha : float
        Scaling alpha / r.
    ft_steps, ft_batch : int
        Local fine-tuning steps and minibatch size.
    ft_lr : float
    copy_weight : float
        Loss weight of the scored positions in pretraining and fine-tuning.
    clair_rank : int
        r of the shared subspace of CLAIR, SVD + refinement and the oracle.
    clair_alpha : float
        Family-wise level of the verdict (Holm over the K x M (client, module)
        p-values).
    """

    experiment: str = "homogeneous"
    n_clients: int = 10
    n_contaminated: int = 3
    n_train: int = 128
    n_test: int = 512
    min_swap_fraction: float = 0.2
    vocab: int = 32
    length: int = 48
    d_model: int = 32
    n_layers: int = 2
    seg_min: int = 6
    seg_max: int = 10
    skip: int = 1
    pretrain_steps: int = 1500
    pretrain_batch: int = 128
    pretrain_lr: float = 3e-3
    pretrain_seed: int = 0
    lora_rank: int = 4
    lora_alpha: float = 4.0
    ft_steps: int = 300
    ft_batch: int = 32
    ft_lr: float = 1e-2
    copy_weight: float = 10.0
    clair_rank: int = 2
    clair_alpha: float = 0.05

    def __post_init__(self) -> None:
        if self.experiment not in EXPERIMENTS:
            raise ValueError(
                f"experiment must be one of {EXPERIMENTS}, got {self.experiment!r}."
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (
                isinstance(value, bool) or not isinstance(value, int)
            ):
                raise TypeError(f"{f.name} must be an int, got {value!r}.")
            if f.type == "float" and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise TypeError(f"{f.name} must be a number, got {value!r}.")
        if not 0 <= self.n_contaminated < self.n_clients / 2:
            raise ValueError(
                f"n_contaminated must be in [0, K/2) = [0, {self.n_clients / 2:g}) "
                "(the median rule of CLAIR's test needs a benign majority), got "
                f"{self.n_contaminated}."
            )
        if self.n_clients < 3:
            raise ValueError(f"n_clients must be >= 3, got {self.n_clients}.")
        if not 0.0 <= self.min_swap_fraction <= 1.0:
            raise ValueError(
                f"min_swap_fraction must be in [0, 1], got {self.min_swap_fraction}."
            )
        if not 0.0 < self.clair_alpha < 1.0:
            raise ValueError(f"clair_alpha must be in (0, 1), got {self.clair_alpha}.")
        if not 1 <= self.clair_rank < self.d_model:
            raise ValueError(
                f"clair_rank must be in [1, d_model) = [1, {self.d_model}), got "
                f"{self.clair_rank}."
            )
        if self.vocab < 14:
            raise ValueError(
                f"vocab must be >= 14 for the swaps of tokens 0-3 and 8-13, got "
                f"{self.vocab}."
            )

    @classmethod
    def from_config(cls, config: dict) -> Settings:
        """Settings from a study configuration; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(config) - known
        if unknown:
            raise ValueError(
                f"unknown settings {sorted(unknown)}; the settings are {sorted(known)}."
            )
        return cls(**config)

    @property
    def benign(self) -> np.ndarray:
        """True on the benign clients (the first K - n_contaminated)."""
        return np.arange(self.n_clients) < self.n_clients - self.n_contaminated

    def base_task(self) -> CopyTask:
        """The base copy task (pretraining)."""
        return CopyTask(
            vocab=self.vocab,
            length=self.length,
            seg_min=self.seg_min,
            seg_max=self.seg_max,
            skip=self.skip,
        )

    def pretrain_config(self) -> PretrainConfig:
        """The pretraining of this setting (its hash names the checkpoint)."""
        return PretrainConfig(
            model=ModelConfig(
                vocab=self.vocab,
                length=self.length,
                d_model=self.d_model,
                n_layers=self.n_layers,
            ),
            task=self.base_task(),
            steps=self.pretrain_steps,
            batch=self.pretrain_batch,
            lr=self.pretrain_lr,
            copy_weight=self.copy_weight,
            seed=self.pretrain_seed,
        )

    def fine_tune_config(self) -> FineTuneConfig:
        """Local LoRA fine-tuning of every client."""
        return FineTuneConfig(
            rank=self.lora_rank,
            alpha=self.lora_alpha,
            steps=self.ft_steps,
            batch=self.ft_batch,
            lr=self.ft_lr,
            copy_weight=self.copy_weight,
        )


def client_tasks(settings: Settings) -> tuple[list[CopyTask], list[str]]:
    """Every client's task and a label of its kind.

    Parameters
    ----------
    settings : Settings

    Returns
    -------
    tasks : list of CopyTask
        Client k's task, k = 0..K-1.
    kinds : list of str
        ``"benign"`` or the contamination kind.
    """
    base = settings.base_task()
    n_benign = int(settings.benign.sum())
    if settings.experiment == "homogeneous":
        fractions = np.ones(n_benign)
    else:
        fractions = np.linspace(settings.min_swap_fraction, 1.0, n_benign)
    tasks, kinds = [], []
    for fraction in fractions:
        tasks.append(_replace(base, swaps=BENIGN_SWAPS, swap_fraction=float(fraction)))
        kinds.append("benign")
    for j in range(settings.n_contaminated):
        kind = CONTAMINATIONS[j % len(CONTAMINATIONS)]
        if kind == "other_swap":
            tasks.append(_replace(base, swaps=OTHER_SWAPS))
        else:
            tasks.append(_replace(base, label_noise=True))
        kinds.append(kind)
    return tasks, kinds


def _replace(task: CopyTask, **changes: object) -> CopyTask:
    from dataclasses import replace

    return replace(task, **changes)


def _stack(
    per_client: list[dict[str, np.ndarray]], names: list[str], side: str
) -> dict[str, np.ndarray]:
    """(K, p, q) per module, transposed to (K, q, p) when ``side="right"``."""
    out = {}
    for name in names:
        stacked = np.stack([client[name] for client in per_client])
        out[name] = stacked.transpose(0, 2, 1) if side == "right" else stacked
    return out


@dataclass(frozen=True)
class ClairVerdict:
    """CLAIR's per-module results and the combined verdict.

    Attributes
    ----------
    refined : dict of str to numpy.ndarray
        Delta W~_k per module, shape (K, p, q).
    shrinkage : dict of str to numpy.ndarray
        b_k per module, shape (K,) (0 outside S^).
    flagged : numpy.ndarray of bool, shape (K,)
        The combined verdict (outside S^).
    module_flags : numpy.ndarray of int, shape (K,)
        In how many modules each client was rejected (Holm over K x M).
    p_values : numpy.ndarray, shape (K,)
        Each client's combined p-value (the smallest Holm-adjusted p-value over
        its modules).
    n_modules : int
    unconverged : int
        Modules whose decomposition stopped at ``max_iter`` (their A^ is still
        used; the count is reported).
    """

    refined: dict[str, np.ndarray]
    shrinkage: dict[str, np.ndarray]
    flagged: np.ndarray
    module_flags: np.ndarray
    p_values: np.ndarray
    n_modules: int
    unconverged: int


def clair_per_module(
    updates: dict[str, np.ndarray],
    rank: int,
    alpha: float = 0.05,
    side: str = "left",
    shrink: str | float = "auto",
    final_subspace: str = "kept",
) -> ClairVerdict:
    """CLAIR on each module's updates, one verdict per client, refinement.

    For each module, steps 1-3 of :func:`clair_stats.lora.adapters.fit_module`
    (P0, A^ of rank r, the off-subspace energies); the (M, K) energies give one
    verdict per client by :func:`clair_stats.lora.verdict.client_verdict`
    (empirical-null p-values, Holm over the K x M pairs at ``alpha``, flagged iff
    any module is rejected); every module is then refined with the common S^ as
    :func:`clair_stats.clair` refines
    (:func:`clair_stats.pipeline.refine.refine_clients`): A^ refitted on S^,
    and each client's in-subspace deviation from the mean shrunk by the
    empirical-Bayes factor b_k (sigma by the median rule):

    .. math:: \\tilde\\Theta_k = \\bar\\Theta_{\\hat S}
              + (1 - b_k) P_{\\hat A} (\\hat\\Theta_k - \\bar\\Theta_{\\hat S}),
              \\quad k \\in \\hat S.

    Parameters
    ----------
    updates : dict of str to numpy.ndarray
        Delta W^_k stacked per module, shape (K, p, q), K >= 3.
    rank : int
        r, the dimension of each module's shared subspace.
    alpha : float
        Family-wise level of the verdict over the K x M (client, module) pairs.
    side : {"left", "right"}
        Column space (default) or row space of Delta W.
    shrink, final_subspace
        As in :func:`clair_stats.clair` (``shrink="none"``,
        ``final_subspace="detection"``: the paper's refinement).

    Returns
    -------
    ClairVerdict
    """
    if not updates:
        raise ValueError("updates is empty: give at least one module.")
    names = list(updates)
    fits = {name: fit_module(updates[name], rank, side=side) for name in names}
    verdict = client_verdict(
        [fits[name].energies for name in names], alpha, modules=names
    )
    refined, shrinkage = {}, {}
    for name in names:
        work = as_updates(updates[name]).oriented(side)
        out = refine_clients(
            work.data,
            fits[name].subspace,
            verdict.collaborative,
            shrink=shrink,
            final_subspace=final_subspace,
        )
        refined[name] = work.restore(out.refined, side)
        shrinkage[name] = (
            np.zeros(verdict.flagged.size)
            if out.shrinkage is None
            else out.shrinkage.factors
        )
    return ClairVerdict(
        refined=refined,
        shrinkage=shrinkage,
        flagged=verdict.flagged,
        module_flags=verdict.module_flags,
        p_values=verdict.p_values,
        n_modules=len(names),
        unconverged=sum(not fit.solver.converged for fit in fits.values()),
    )


def federate(
    updates: dict[str, np.ndarray], benign: np.ndarray, settings: Settings
) -> tuple[dict[str, dict[str, np.ndarray]], ClairVerdict]:
    """Every method's Delta W~_k, per module.

    Parameters
    ----------
    updates : dict of str to numpy.ndarray
        Delta W^_k stacked per module, shape (K, p, q).
    benign : numpy.ndarray of bool, shape (K,)
        The true S (used by ``fedavg_benign`` and ``oracle_clair`` only).
    settings : Settings

    Returns
    -------
    methods : dict
        ``methods[method][module]``, shape (K, p, q), for every name of
        :data:`METHODS`.
    verdict : ClairVerdict
    """
    rank = settings.clair_rank
    verdict = clair_per_module(updates, rank=rank, alpha=settings.clair_alpha)
    paper = clair_per_module(
        updates,
        rank=rank,
        alpha=settings.clair_alpha,
        shrink="none",
        final_subspace="detection",
    )
    out: dict[str, dict[str, np.ndarray]] = {m: {} for m in METHODS}
    for name, stack in updates.items():
        out["pretrained"][name] = np.zeros_like(stack)
        out["local"][name] = stack
        out["fedavg"][name] = fedavg(stack)
        partial = stack.copy()
        partial[benign] = stack[benign].mean(axis=0)
        out["fedavg_benign"][name] = partial
        out["svd_refine"][name] = svd_refine(stack, rank)
        out["clair_paper"][name] = paper.refined[name]
        out["clair"][name] = verdict.refined[name]
        oracle = top_subspace(stack, rank, clients=benign)
        out["oracle_clair"][name] = refine(stack, oracle, benign)
        out["oracle_pooled"][name] = refine_clients(stack, oracle, benign).refined
    return out, verdict


_MODEL_CACHE: dict[
    tuple[str, str | None], tuple[Transformer, dict[str, torch.Tensor]]
] = {}


def _base_model(
    settings: Settings, checkpoints: str | None
) -> tuple[Transformer, dict[str, torch.Tensor]]:
    """The pretrained model and its W_0, kept in memory per process (and folder)."""
    config = settings.pretrain_config()
    key = (config.key(), checkpoints)
    if key not in _MODEL_CACHE:
        model = pretrained_model(config, checkpoints)
        _MODEL_CACHE.clear()  # keep one model in memory
        _MODEL_CACHE[key] = (model, model.base_weights())
    model, base = _MODEL_CACHE[key]
    model.remove_adapters()
    model.set_weights(base)
    return model, base


@dataclass(frozen=True)
class TrainedClients:
    """The K clients of one replicate after local LoRA fine-tuning.

    Attributes
    ----------
    updates : dict of str to numpy.ndarray
        Delta W^_k = s B_k A_k stacked per module, shape (K, p, q), in the
        model's module order (q, k, v, o of each layer).
    tasks : list of CopyTask
        Client k's task.
    kinds : list of str
        ``"benign"`` or the contamination kind of client k.
    """

    updates: dict[str, np.ndarray]
    tasks: list[CopyTask]
    kinds: list[str]


def client_key(settings: Settings, seed: int) -> str:
    """The key of a replicate's cached client updates.

    A hash of what :func:`train_clients` reads
    (:func:`simulations.copying.clients.training_key`): the pretraining and
    fine-tuning configurations, the clients' tasks, ``n_train`` and the seed;
    not CLAIR's settings nor ``n_test``.

    Parameters
    ----------
    settings : Settings
    seed : int
        The replicate's seed.

    Returns
    -------
    str
    """
    tasks, _ = client_tasks(settings)
    return training_key(
        settings.pretrain_config(),
        settings.fine_tune_config(),
        tasks,
        settings.n_train,
        seed,
    )


def train_clients(
    settings: Settings,
    seed: int,
    checkpoints: str | None = None,
    clients: str | None = None,
) -> TrainedClients:
    """Fine-tune the K clients of one replicate from the common initialisation.

    Parameters
    ----------
    settings : Settings
    seed : int
        The replicate's seed: its first spawned stream draws the clients' data
        and minibatches, its third the common adapter initialisation (the second
        is left to the test sequences of :func:`run_replicate`).
    checkpoints : str, optional
        Folder of the pretraining cache (None: pretrain in memory).
    clients : str, optional
        Folder of the cache of client updates
        (:mod:`simulations.copying.clients`, file named by :func:`client_key`):
        read when present, else trained and written; a file that cannot be used
        is trained again and overwritten, with a
        :class:`~simulations.copying.clients.CacheWarning`. None: no cache.

    Returns
    -------
    TrainedClients
    """
    torch.set_num_threads(1)
    model, base = _base_model(settings, checkpoints)
    tasks, kinds = client_tasks(settings)
    path = None
    if clients is not None:
        key = client_key(settings, seed)
        path = updates_path(clients, key)
        shapes = {name: (len(tasks), *w.shape) for name, w in base.items()}
        try:
            cached = read_updates(path, key, shapes)
        except CacheError as exc:
            warnings.warn(
                f"{exc}; training the clients again and overwriting it.",
                CacheWarning,
                stacklevel=2,
            )
            cached = None
        if cached is not None:
            return TrainedClients(updates=cached, tasks=tasks, kinds=kinds)
    streams = np.random.SeedSequence(seed).spawn(3)
    data_rng = np.random.default_rng(streams[0])
    init_seed = int(streams[2].generate_state(1)[0])
    model.add_adapters(
        settings.lora_rank,
        settings.lora_alpha,
        torch.Generator().manual_seed(init_seed),
    )
    init = model.adapter_state()
    config = settings.fine_tune_config()
    local = []
    for task in tasks:
        batch = task.sample(settings.n_train, data_rng)
        local.append(fine_tune(model, init, batch, config, data_rng))
    model.remove_adapters()
    updates = _stack(local, list(local[0]), "left")
    if path is not None:
        write_updates(path, updates, key)
    return TrainedClients(updates=updates, tasks=tasks, kinds=kinds)


def run_replicate(
    settings: Settings,
    seed: int,
    checkpoints: str | None = None,
    clients: str | None = None,
) -> list[dict]:
    """One replicate: fine-tune K clients, federate, evaluate every method.

    Parameters
    ----------
    settings : Settings
    seed : int
        The source of every random choice of the replicate (client data, adapter
        initialisation, minibatches, test sequences); the pretrained model is
        fixed by ``settings.pretrain_seed``.
    checkpoints : str, optional
        Folder of the pretraining cache (None: pretrain in memory).
    clients : str, optional
        Folder of the cache of client updates (:func:`train_clients`; None: no
        cache). The rows are the same with or without it.

    Returns
    -------
    list of dict
        One row per method: ``method``, ``accuracy`` (list of K masked
        accuracies), ``relative_change`` (list of K, (acc - acc_local) /
        acc_local, NaN where acc_local = 0), ``benign_accuracy`` and
        ``benign_relative_change`` (means over the true S, the latter over the
        finite values), ``contaminated_accuracy``, ``kinds`` (list of K labels),
        ``swap_fractions`` (list of K: pi_k of the benign clients, None for the
        contaminated ones) and,
        for ``clair`` only (None otherwise), ``precision``, ``recall``,
        ``exact``, ``n_flagged``, ``flagged`` and ``module_flags`` (lists of K),
        ``n_modules`` and ``unconverged_modules``.
    """
    trained = train_clients(settings, seed, checkpoints, clients)
    tasks, kinds, benign = trained.tasks, trained.kinds, settings.benign
    model, base = _base_model(settings, checkpoints)
    test_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[1])
    tests = [task.sample(settings.n_test, test_rng) for task in tasks]
    methods, verdict = federate(trained.updates, benign, settings)
    accuracy = {m: _evaluate(model, base, methods[m], tests) for m in METHODS}
    model.set_weights(base)
    scores = detection_scores(verdict.flagged, ~benign)
    rows = []
    for m in METHODS:
        acc = accuracy[m]
        change = relative_change(acc, accuracy["local"])
        row = {
            "method": m,
            "accuracy": acc.tolist(),
            "relative_change": change.tolist(),
            "benign_accuracy": float(acc[benign].mean()),
            "benign_relative_change": _nanmean(change[benign]),
            "contaminated_accuracy": (
                float(acc[~benign].mean()) if (~benign).any() else None
            ),
            "kinds": kinds,
            "swap_fractions": [
                task.swap_fraction if kind == "benign" else None
                for task, kind in zip(tasks, kinds, strict=True)
            ],
            "precision": None,
            "recall": None,
            "exact": None,
            "n_flagged": None,
            "flagged": None,
            "module_flags": None,
            "n_modules": None,
            "unconverged_modules": None,
            "shrinkage": None,
        }
        if m == "clair":
            row.update(
                precision=scores.precision,
                recall=scores.recall,
                exact=scores.exact,
                n_flagged=scores.n_flagged,
                flagged=verdict.flagged.tolist(),
                module_flags=verdict.module_flags.tolist(),
                n_modules=verdict.n_modules,
                unconverged_modules=verdict.unconverged,
                shrinkage=np.mean(list(verdict.shrinkage.values()), axis=0).tolist(),
            )
        rows.append(row)
    return rows


def relative_change(accuracy: np.ndarray, local: np.ndarray) -> np.ndarray:
    """(acc - acc_local) / acc_local per client; NaN where acc_local = 0.

    Parameters
    ----------
    accuracy, local : numpy.ndarray, shape (K,)
        A method's accuracies and local fine-tuning's.

    Returns
    -------
    numpy.ndarray, shape (K,)
    """
    out = np.full(accuracy.shape, np.nan)
    ok = local > 0
    out[ok] = (accuracy[ok] - local[ok]) / local[ok]
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite values (NaN if there is none)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _evaluate(
    model: Transformer,
    base: dict[str, torch.Tensor],
    deltas: dict[str, np.ndarray],
    tests: list[CopyBatch],
) -> np.ndarray:
    """Masked accuracy of client k with W_0 + Delta W~_k merged, k = 0..K-1."""
    out = np.empty(len(tests))
    for k, batch in enumerate(tests):
        merged = {
            name: torch.from_numpy(stack[k]).to(torch.float32)
            for name, stack in deltas.items()
        }
        model.set_weights(base, merged)
        out[k] = masked_accuracy(model, batch)
    return out

"""Pretraining (cached), local LoRA fine-tuning and masked evaluation.

* :func:`pretrain` trains the :class:`~simulations.copying.transformer.Transformer`
  on the base copy task from a seed; :func:`pretrained_model` caches the weights
  on disk under a hash of the :class:`PretrainConfig`
  (``<results>/copying/checkpoints/<hash>.pt``, written with ``torch.save`` of a
  state dict of tensors and read with ``torch.load(..., weights_only=True)``).
  Pretraining is deterministic given its seed (one thread, CPU), so the cache is
  only a speed-up.
* :func:`fine_tune` attaches LoRA adapters (B = 0) and trains them on one client's
  sequences; it returns the dense updates Delta W = s B A per module.
* :func:`masked_accuracy` is the argmax next-token accuracy on the scored
  positions of :class:`~simulations.copying.tasks.CopyBatch` (the corrected mask).

The loss is a weighted cross-entropy over all next-token positions: weight
``copy_weight`` at the scored positions, 1 elsewhere (the background tokens are
i.i.d., so they only teach the unigram law; weighting the copy makes the induction
head form within a few thousand steps, measured: unweighted with lr 1e-3 it was
still on the loss plateau at 3000 steps).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from simulations.copying.tasks import CopyBatch, CopyTask
from simulations.copying.transformer import ModelConfig, Transformer

__all__ = [
    "FineTuneConfig",
    "PretrainConfig",
    "checkpoint_path",
    "fine_tune",
    "masked_accuracy",
    "pretrain",
    "pretrained_model",
]

#: Version of the pretraining code, part of the checkpoint hash: bump it when a
#: change alters the trained weights.
PRETRAIN_CODE_VERSION = 1


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining of the base model on the base copy task.

    Parameters
    ----------
    model : ModelConfig
        The architecture.
    task : CopyTask
        The base task (exact copies).
    steps : int
        AdamW steps.
    batch : int
        Fresh sequences per step.
    lr : float
        AdamW learning rate (betas (0.9, 0.98), weight decay 0.01).
    copy_weight : float
        Loss weight of the scored positions (1 elsewhere).
    seed : int
        Seed of the initial weights and of the sequences.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    task: CopyTask = field(default_factory=CopyTask)
    steps: int = 2500
    batch: int = 128
    lr: float = 3e-3
    copy_weight: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task.swaps or self.task.label_noise:
            raise ValueError(
                "pretraining uses the base copy task: give a CopyTask without swaps "
                "or label noise."
            )
        if self.task.vocab != self.model.vocab or self.task.length > self.model.length:
            raise ValueError(
                f"task (V = {self.task.vocab}, T = {self.task.length}) does not fit "
                f"the model (V = {self.model.vocab}, length {self.model.length})."
            )
        _check_positive_int("steps", self.steps)
        _check_positive_int("batch", self.batch)
        _check_positive_int("seed", self.seed, minimum=0)

    def key(self) -> str:
        """Hash of the configuration and code version (the checkpoint's name)."""
        text = json.dumps(
            {"code": PRETRAIN_CODE_VERSION, **asdict(self)}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FineTuneConfig:
    """Local LoRA fine-tuning of one client.

    Parameters
    ----------
    rank : int
        LoRA rank r.
    alpha : float
        lora_alpha (scaling alpha / r).
    steps : int
        AdamW steps.
    batch : int
        Sequences per step, drawn without replacement from the client's n_k
        sequences (a new random order every pass); at least n_k means full batch.
    lr : float
        AdamW learning rate (betas (0.9, 0.98), weight decay 0.01).
    copy_weight : float
        Loss weight of the scored positions (1 elsewhere).
    """

    rank: int = 4
    alpha: float = 4.0
    steps: int = 300
    batch: int = 32
    lr: float = 1e-2
    copy_weight: float = 10.0

    def __post_init__(self) -> None:
        _check_positive_int("rank", self.rank)
        _check_positive_int("steps", self.steps)
        _check_positive_int("batch", self.batch)


def _check_positive_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


def _tensors(batch: CopyBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs x[:, :-1], targets x[:, 1:] and the mask, as tensors."""
    tokens = torch.from_numpy(batch.tokens)
    return tokens[:, :-1], tokens[:, 1:], torch.from_numpy(batch.mask)


def weighted_loss(
    model: Transformer, batch: CopyBatch, copy_weight: float
) -> torch.Tensor:
    """Mean cross-entropy, weight ``copy_weight`` on the scored positions, 1 else."""
    inputs, targets, mask = _tensors(batch)
    logits = model(inputs)
    losses = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).reshape(targets.shape)
    weights = 1.0 + (copy_weight - 1.0) * mask.to(losses.dtype)
    return (losses * weights).sum() / weights.sum()


@torch.no_grad()
def masked_accuracy(model: Transformer, batch: CopyBatch) -> float:
    """Argmax next-token accuracy over the scored positions of ``batch``.

    Parameters
    ----------
    model : Transformer
    batch : CopyBatch

    Returns
    -------
    float
        The fraction of scored positions t whose argmax prediction is x[t + 1].
    """
    inputs, targets, mask = _tensors(batch)
    if not bool(mask.any()):
        raise ValueError("the batch has no scored position; check the task's mask.")
    predicted = model(inputs).argmax(dim=-1)
    return float((predicted == targets)[mask].float().mean())


def pretrain(config: PretrainConfig, verbose: bool = False) -> Transformer:
    """Train the base model on the base copy task (deterministic given the seed).

    Parameters
    ----------
    config : PretrainConfig
    verbose : bool
        Print the loss and accuracy every 250 steps.

    Returns
    -------
    Transformer
        The trained model, in eval mode.
    """
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 1])
    model = Transformer(config.model, generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.98))
    start = time.perf_counter()
    for step in range(config.steps):
        batch = config.task.sample(config.batch, rng)
        loss = weighted_loss(model, batch, config.copy_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if verbose and (step + 1) % 250 == 0:
            acc = masked_accuracy(model, config.task.sample(256, rng))
            print(
                f"step {step + 1}: loss {loss.item():.3f}, masked accuracy "
                f"{acc:.3f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return model.eval()


def checkpoint_path(config: PretrainConfig, folder: str | os.PathLike[str]) -> Path:
    """``<folder>/<hash of config>.pt``."""
    return Path(folder) / f"{config.key()}.pt"


def pretrained_model(
    config: PretrainConfig, folder: str | os.PathLike[str] | None
) -> Transformer:
    """The pretrained model, from the cache or trained (and then cached).

    Parameters
    ----------
    config : PretrainConfig
    folder : path-like or None
        The checkpoint folder; None trains without caching.

    Returns
    -------
    Transformer
        In eval mode.
    """
    if folder is None:
        return pretrain(config)
    path = checkpoint_path(config, folder)
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = Transformer(config.model)
        model.load_state_dict(state)
        return model.eval()
    model = pretrain(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    # write then rename: parallel workers may pretrain at once; each rename is
    # atomic and they write the same weights
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model


def fine_tune(
    base: Transformer,
    init: dict[str, torch.Tensor],
    batch: CopyBatch,
    config: FineTuneConfig,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Local LoRA fine-tuning of one client from a common adapter initialisation.

    Parameters
    ----------
    base : Transformer
        The pretrained model with adapters attached
        (:meth:`~simulations.copying.transformer.Transformer.add_adapters`); its
        adapters are reset to ``init`` first and left at the trained values.
    init : dict
        The initial LoRA factors (:meth:`Transformer.adapter_state`; B = 0).
    batch : CopyBatch
        The client's n_k training sequences.
    config : FineTuneConfig
    rng : numpy.random.Generator
        Source of the minibatch order.

    Returns
    -------
    dict of str to numpy.ndarray
        Delta W_k = s B_k A_k per module, float64 arrays of shape (d_out, d_in).
    """
    ranks = {a.shape[0] for name, a in init.items() if name.endswith("lora_A")}
    if ranks != {config.rank}:
        raise ValueError(
            f"the adapters have rank {sorted(ranks)} but config.rank = "
            f"{config.rank}; attach them with add_adapters(rank={config.rank}, ...)."
        )
    base.load_adapter_state(init)
    params = [p for p in base.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("the model has no trainable adapter; add_adapters first.")
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.98))
    base.train()
    n = len(batch)
    size = min(config.batch, n)
    order = np.empty(0, dtype=np.int64)
    for _ in range(config.steps):
        if order.size < size:  # a new pass (a remainder short of a batch is dropped)
            order = rng.permutation(n)
        chosen, order = order[:size], order[size:]
        loss = weighted_loss(base, batch.subset(chosen), config.copy_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    base.eval()
    return {name: d.double().numpy() for name, d in base.deltas().items()}

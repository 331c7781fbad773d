"""What the ServerApp and the ClientApp share: settings, model, data, arrays.

The model, the tasks, the pretraining (with its checkpoint cache), the local LoRA
fine-tuning and the masked accuracy are those of ``simulations/copying`` in the
clair_stats repository, imported from there, not copied. Flower installs the app
(this folder) under ``$FLWR_HOME/apps/`` and may run it from there, so
:func:`ensure_repo` puts the repository root on ``sys.path``: the run config's
``repo-root``, or else the folder that holds the installed ``clair_stats``
package (the repository itself after ``pip install -e .``).

Client k (its ``partition-id``) has the task ``client_tasks(settings)[k]`` of
:mod:`simulations.copying.federation`: the first K - ``num-contaminated`` clients
are benign (swap-copy 0 <-> 1, 2 <-> 3), the last ones are contaminated, in turn
"other_swap" (8 <-> 9, 10 <-> 11, 12 <-> 13) and "label_noise". Each client draws
``n-train`` training and ``n-test`` test sequences of its task from the seed and
its partition id, the same in every round.

The LoRA factors travel in PEFT naming: ``layers.{l}.{q,k,v,o}.lora_A.weight``
(r x d_in) and ``.lora_B.weight`` (d_out x r).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import ArrayRecord

if TYPE_CHECKING:
    from simulations.copying.federation import Settings
    from simulations.copying.tasks import CopyBatch
    from simulations.copying.transformer import Transformer

__all__ = [
    "cache_dir",
    "client_data",
    "client_kinds",
    "ensure_repo",
    "evaluate_adapters",
    "from_arrays",
    "initial_arrays",
    "load_model",
    "make_settings",
    "to_arrays",
]

_PEFT_KEY = re.compile(r"^(?P<module>.+)\.(?P<factor>lora_[AB])(?:\.[^.]+)?\.weight$")


def ensure_repo(run_config: dict[str, Any]) -> Path:
    """Put the repository root on ``sys.path`` (for ``simulations.copying``).

    Parameters
    ----------
    run_config : dict
        The run config; ``repo-root`` (empty: the parent of the installed
        ``clair_stats`` package).

    Returns
    -------
    pathlib.Path
        The repository root.
    """
    torch.set_num_threads(1)
    value = str(run_config.get("repo-root", ""))
    if value:
        root = Path(value).expanduser().resolve()
    else:
        import clair_stats

        root = Path(clair_stats.__file__).resolve().parents[1]
    if not (root / "simulations" / "copying" / "training.py").is_file():
        raise RuntimeError(
            f"{root} holds no simulations/copying/; set the run config's repo-root "
            "to the clair_stats repository (--run-config \"repo-root='/path'\")."
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def cache_dir(run_config: dict[str, Any]) -> Path:
    """``cache-dir``, or ``$XDG_CACHE_HOME/clair_stats/flower_copying``.

    ``<cache>/checkpoints/`` holds the pretrained model (the study's cache, keyed
    by the pretraining configuration) and ``<cache>/runs/`` the runs' summaries.
    """
    value = str(run_config.get("cache-dir", ""))
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clair_stats" / "flower_copying"


def make_settings(run_config: dict[str, Any], n_clients: int) -> Settings:
    """The study's :class:`~simulations.copying.federation.Settings` of this run.

    Parameters
    ----------
    run_config : dict
        The run config of ``pyproject.toml`` (with ``--run-config`` overrides).
    n_clients : int
        K (the clients' ``num-partitions``, the server's ``num-clients``).
    """
    ensure_repo(run_config)
    from simulations.copying.federation import Settings

    rc = run_config
    return Settings(
        experiment=str(rc["experiment"]),
        n_clients=int(n_clients),
        n_contaminated=int(rc["num-contaminated"]),
        n_train=int(rc["n-train"]),
        n_test=int(rc["n-test"]),
        pretrain_steps=int(rc["pretrain-steps"]),
        lora_rank=int(rc["lora-rank"]),
        lora_alpha=float(rc["lora-alpha"]),
        ft_steps=int(rc["local-steps"]),
        ft_batch=int(rc["batch-size"]),
        ft_lr=float(rc["lr"]),
        clair_rank=int(rc["clair-rank"]),
        clair_alpha=float(rc["clair-alpha"]),
    )


def client_kinds(settings: Settings) -> list[str]:
    """``"benign"`` or the contamination kind of client k, k = 0..K-1."""
    from simulations.copying.federation import client_tasks

    return client_tasks(settings)[1]


_MODELS: dict[tuple[str, str], Transformer] = {}


def load_model(settings: Settings, folder: Path) -> Transformer:
    """The pretrained model with fresh LoRA adapters (rank, alpha of ``settings``).

    Pretrained once and cached in ``folder`` (the study's checkpoint cache,
    :func:`simulations.copying.training.pretrained_model`), then kept in memory
    by each process.
    """
    from simulations.copying.training import pretrained_model

    config = settings.pretrain_config()
    key = (config.key(), str(folder))
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = pretrained_model(config, folder)
    model = _MODELS[key]
    model.remove_adapters()
    model.add_adapters(settings.lora_rank, settings.lora_alpha)
    return model


def initial_arrays(settings: Settings, folder: Path, seed: int) -> ArrayRecord:
    """The common initial adapter: A drawn from the seed (PEFT's law), B = 0."""
    model = load_model(settings, folder)
    init_seed = int(np.random.SeedSequence([seed, 3]).generate_state(1)[0])
    model.remove_adapters()
    model.add_adapters(
        settings.lora_rank,
        settings.lora_alpha,
        torch.Generator().manual_seed(init_seed),
    )
    return to_arrays(model.adapter_state())


_DATA: dict[tuple, tuple[CopyBatch, CopyBatch]] = {}


def client_data(
    settings: Settings, seed: int, client: int
) -> tuple[CopyBatch, CopyBatch]:
    """Client ``client``'s training and test sequences (fixed by seed and client)."""
    from simulations.copying.federation import client_tasks

    key = (repr(settings), seed, client)
    if key not in _DATA:
        task = client_tasks(settings)[0][client]
        train = task.sample(settings.n_train, np.random.default_rng([seed, client, 0]))
        test = task.sample(settings.n_test, np.random.default_rng([seed, client, 1]))
        _DATA.clear()
        _DATA[key] = (train, test)
    return _DATA[key]


def to_arrays(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """Adapter factors ``{module}.lora_A`` / ``.lora_B`` -> ArrayRecord, PEFT names."""
    return ArrayRecord(
        {f"{name}.weight": value.detach().contiguous() for name, value in state.items()}
    )


def from_arrays(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """ArrayRecord in PEFT naming -> ``{module}.lora_A`` / ``.lora_B`` float32 tensors.

    Accepts ``<module>.lora_A.weight`` and ``<module>.lora_A.<adapter>.weight``.
    """
    out = {}
    for key in record.keys():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise ValueError(
                f"array {key!r} is not a LoRA factor in PEFT naming "
                "(<module>.lora_A.weight / <module>.lora_B.weight)."
            )
        value = np.asarray(record[key].numpy(), dtype=np.float32)
        out[f"{match['module']}.{match['factor']}"] = torch.from_numpy(value.copy())
    return out


def evaluate_adapters(
    model: Transformer, adapters: dict[str, torch.Tensor], batch: CopyBatch
) -> float:
    """Masked accuracy on ``batch`` with the LoRA factors ``adapters`` loaded."""
    from simulations.copying.training import masked_accuracy

    model.load_adapter_state(adapters)
    model.eval()
    return masked_accuracy(model, batch)

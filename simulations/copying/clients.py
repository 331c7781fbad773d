"""The cache of the clients' fine-tuned updates, so that the methods can be rerun.

Local fine-tuning is almost all the cost of a replicate (10 clients x 300 AdamW
steps), and it does not depend on what is done with the updates afterwards: a
change of CLAIR, of a baseline or of the evaluation can reuse them. One file per
replicate holds its stacked updates Delta W^_k, (K, p, q) float64 per module:

* **key** (:func:`training_key`): SHA-256 of everything the training reads, and
  nothing else: the pretraining configuration's own key (architecture, base task,
  steps, batch, lr, copy weight, seed), the fine-tuning configuration (LoRA rank
  and alpha, steps, minibatch, lr, copy weight), every client's task (so K, the
  experiment's design, the contamination kinds and the swap fractions), n_k, the
  replicate's seed and :data:`CLIENTS_CODE_VERSION`. CLAIR's rank and level and
  the test sequences are not in it, so changing them keeps the cache;
* **file**: ``<folder>/<key>.npz`` (numpy, read with ``allow_pickle=False``),
  one array per module under its name plus ``__meta__``, a JSON text with the key
  and its parts. It is written to a temporary file in the same folder and renamed
  (:func:`os.replace`), so a killed worker never leaves half a file and
  parallel workers can share the folder;
* **read** (:func:`read_updates`): the file must hold the key it is named after,
  exactly the expected modules, float64 arrays of the expected shapes, all
  finite; anything else raises :class:`CacheError` (the caller retrains and
  overwrites, see :func:`simulations.copying.federation.train_clients`).

Only numpy is needed here (no torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from clair_stats.core.exceptions import ClairWarning

__all__ = [
    "CLIENTS_CODE_VERSION",
    "CacheError",
    "CacheWarning",
    "read_updates",
    "training_key",
    "updates_path",
    "write_updates",
]

#: Version of the client-training code, part of the key: bump it when a change of
#: :func:`~simulations.copying.federation.train_clients` or of
#: :func:`~simulations.copying.training.fine_tune` alters the updates.
CLIENTS_CODE_VERSION = 1
_META = "__meta__"


class CacheError(ValueError):
    """A cached file that cannot be used (unreadable, another key, other modules
    or shapes); the message names the file. Delete it, or let the caller retrain."""


class CacheWarning(ClairWarning):
    """A cached file was unusable and the updates were trained again."""


def training_key(
    pretrain: Any,
    fine_tune: Any,
    tasks: Sequence[Any],
    n_train: int,
    seed: int,
) -> str:
    """Hash of what the clients' training reads.

    Parameters
    ----------
    pretrain : PretrainConfig
        :class:`~simulations.copying.training.PretrainConfig` (enters through its
        own :meth:`~simulations.copying.training.PretrainConfig.key`).
    fine_tune : FineTuneConfig
        The local fine-tuning (a dataclass).
    tasks : sequence of CopyTask
        Client k's task, k = 0..K-1 (dataclasses).
    n_train : int
        Training sequences per client.
    seed : int
        The replicate's seed.

    Returns
    -------
    str
        32 hexadecimal digits (the file name).
    """
    parts = {
        "code": CLIENTS_CODE_VERSION,
        "pretrain": pretrain.key(),
        "fine_tune": asdict(fine_tune),
        "tasks": [asdict(task) for task in tasks],
        "n_train": int(n_train),
        "seed": int(seed),
    }
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def updates_path(folder: str | os.PathLike[str], key: str) -> Path:
    """``<folder>/<key>.npz``."""
    return Path(folder) / f"{key}.npz"


def write_updates(
    path: str | os.PathLike[str], updates: Mapping[str, np.ndarray], key: str
) -> Path:
    """Write the stacked updates atomically (temporary file, then rename).

    Parameters
    ----------
    path : path-like
        The target, from :func:`updates_path`.
    updates : mapping of str to numpy.ndarray
        Delta W^_k stacked per module, shape (K, p, q).
    key : str
        The key the file is named after (stored in it and checked on reading).

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    if _META in updates:
        raise ValueError(f"{_META!r} is reserved; rename that module.")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"key": key, "modules": list(updates)}
    arrays = {name: np.asarray(value) for name, value in updates.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays, **{_META: np.array(json.dumps(meta))})
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_updates(
    path: str | os.PathLike[str], key: str, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray] | None:
    """The cached updates, checked, or None if there is no file.

    Parameters
    ----------
    path : path-like
        The file, from :func:`updates_path`.
    key : str
        The key the caller expects (a file renamed by hand holds another).
    shapes : mapping of str to tuple of int
        The modules, in the order to return them, and their (K, p, q) shapes.

    Returns
    -------
    dict of str to numpy.ndarray or None
        float64 arrays in the order of ``shapes``; None when ``path`` does not
        exist.

    Raises
    ------
    CacheError
        If the file cannot be read as a numpy archive without pickle, holds
        another key, other modules, other shapes or dtypes, or non-finite values.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = [name for name in archive.files if name != _META]
            if _META not in archive.files:
                raise CacheError(f"{path} has no {_META} record")
            meta = json.loads(str(archive[_META]))
            arrays = {name: archive[name] for name in names}
    except CacheError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise CacheError(
            f"{path} is not a readable cache of client updates ({exc}); delete it"
        ) from exc
    if not isinstance(meta, dict) or meta.get("key") != key:
        raise CacheError(f"{path} holds the updates of another key, not {key}")
    if set(names) != set(shapes):
        raise CacheError(
            f"{path} holds modules {sorted(names)}, expected {sorted(shapes)}"
        )
    out = {}
    for name, shape in shapes.items():
        value = arrays[name]
        if value.dtype != np.float64 or value.shape != tuple(shape):
            raise CacheError(
                f"{path}: module {name} is {value.dtype} of shape {value.shape}, "
                f"expected float64 of shape {tuple(shape)}"
            )
        if not np.isfinite(value).all():
            raise CacheError(f"{path}: module {name} holds non-finite values")
        out[name] = value
    return out

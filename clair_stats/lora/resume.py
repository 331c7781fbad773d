"""The work folder of ``clair adapters``: per-module results kept until the run ends.

``clair adapters DIR... --out OUT`` keeps everything it has computed in
``.<OUT name>.clair-work/`` next to OUT, so that a run that is killed (SIGKILL,
Ctrl-C, a full disk, a lost machine) resumes where it stopped when the same
command is run again:

* ``run.json``: what the results depend on (:func:`fingerprint`): every input
  adapter's weights file (real path, size, modification time) and config (its
  SHA-256), the settings, and a digest of clair_stats' source. A resumed run
  whose fingerprint differs starts afresh (the folder is emptied, and a
  :class:`~clair_stats.ClairWarning` says so);
* ``modules/fit-<i>.safetensors``: steps 1-2 of module i (A^_m, the energies,
  the zero updates, step 1's solver statistics and the module's warnings), one
  file per module, written by the calling process as each module finishes;
* ``modules/refined-<i>.safetensors``: step 4 of module i, the K clients'
  refined factors in the output dtype and the truncation errors, written by the
  worker that refines it;
* ``out/``: the output being assembled, one client folder at a time (each written
  as ``.<name>.partial`` and renamed), then the report; when it is complete it is
  renamed to OUT and the work folder is deleted.

Every file appears only complete (written under a temporary name, then renamed),
so a kill at any moment leaves only finished results. A stored module's numbers
are bit for bit those it was computed with, and every module is computed with one
BLAS thread whatever ``--jobs``, so a resumed or parallel run writes the same
outputs as one uninterrupted sequential run.

Only one run may use a work folder at a time: it holds an exclusive ``flock`` on
``lock`` (released by the system when the process ends, however it ends); a
second run with the same OUT is refused with a message naming the folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from clair_stats.core.exceptions import ClairWarning
from clair_stats.core.optional import require_safetensors
from clair_stats.core.results import SolverInfo
from clair_stats.lora.adapters import ModuleFit, ModuleOutcome
from clair_stats.lora.peft import AdapterSet
from clair_stats.lora.writing import RefinedModule, module_file, save_atomic

__all__ = [
    "WORK_FORMAT",
    "OutputError",
    "WorkFolder",
    "fingerprint",
    "work_folder_path",
]

#: Version of the work folder's layout; a folder of another version is not used.
WORK_FORMAT = 1


class OutputError(OSError):
    """The outputs of ``clair adapters`` cannot be written where asked.

    The message names the path and what to do; the previous outputs are
    untouched.
    """


def work_folder_path(out: Path) -> Path:
    """``.<OUT name>.clair-work`` next to OUT (OUT resolved).

    Parameters
    ----------
    out : pathlib.Path
        The output folder.

    Returns
    -------
    pathlib.Path
    """
    final = Path(out).resolve()
    return final.parent / f".{final.name}.clair-work"


def fingerprint(adapters: AdapterSet, settings: dict[str, Any]) -> dict[str, Any]:
    """What a run's results depend on: inputs, settings and code.

    Parameters
    ----------
    adapters : AdapterSet
        The input adapters.
    settings : dict
        Every argument that changes a number or a file of the output (JSON
        values).

    Returns
    -------
    dict
        JSON-serialisable; two runs may share results only if theirs are equal.
    """
    inputs = []
    for adapter in adapters.adapters:
        weights = adapter.weights_file.resolve()
        stat = weights.stat()
        config = (adapter.path / "adapter_config.json").read_bytes()
        inputs.append(
            {
                "weights": str(weights),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "config_sha256": hashlib.sha256(config).hexdigest(),
            }
        )
    return {
        "format": WORK_FORMAT,
        "code": _code_digest(),
        "settings": json.loads(json.dumps(settings, sort_keys=True)),
        "inputs": inputs,
    }


@cache
def _code_digest() -> str:
    """SHA-1 of clair_stats' Python sources (a changed estimator means new results)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha1()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class WorkFolder:
    """The work folder of one ``clair adapters`` output (a context manager).

    Entering locks it, and empties it unless its ``run.json`` equals
    ``fingerprint``; :meth:`remove` deletes it (after a successful run), and
    leaving it otherwise keeps it for the next run.

    Parameters
    ----------
    out : pathlib.Path
        The output folder OUT.
    fingerprint : dict
        From :func:`fingerprint`.
    """

    def __init__(self, out: Path, fingerprint: dict[str, Any]) -> None:
        self.path = work_folder_path(out)
        self.modules = self.path / "modules"
        self.staging = self.path / "out"
        self.fingerprint = fingerprint
        self.resumed = False
        self._lock_fd: int | None = None

    def __enter__(self) -> WorkFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        stored = None
        try:
            stored = json.loads((self.path / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        entries = [p for p in self.path.iterdir() if p.name != "lock"]
        if stored == self.fingerprint:
            self.resumed = any(self.modules.glob("*.safetensors"))
        elif entries:
            if stored is not None:
                warnings.warn(
                    f"the partial results in {self.path} are of other inputs, "
                    "settings or code; they are discarded and the run starts afresh.",
                    ClairWarning,
                    stacklevel=3,
                )
            for entry in entries:
                _delete(entry)
        self.modules.mkdir(exist_ok=True)
        self.staging.mkdir(exist_ok=True)
        for partial in [
            *self.modules.glob("*.partial"),
            *self.staging.glob(".*.partial"),
        ]:
            _delete(partial)  # left by a process killed while writing them
        _write_atomic(
            self.path / "run.json", json.dumps(self.fingerprint, indent=1) + "\n"
        )
        return self

    def __exit__(self, *exc) -> None:
        self._unlock()

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(
                f"another clair adapters run is writing the same output: its work "
                f"folder {self.path} is locked; wait for that run to end, stop it, "
                "or choose another --out."
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def remove(self) -> None:
        """Delete the work folder (the run has succeeded)."""
        self._unlock()
        shutil.rmtree(self.path, ignore_errors=True)

    # -- steps 1-2 -------------------------------------------------------------

    def fit_file(self, index: int) -> Path:
        """Module ``index``'s stored steps 1-2.

        Parameters
        ----------
        index : int
            The module's position.

        Returns
        -------
        pathlib.Path
        """
        return self.modules / f"fit-{index:05d}.safetensors"

    def save_fit(self, index: int, outcome: ModuleOutcome) -> None:
        """Store module ``index``'s outcome (atomically).

        Parameters
        ----------
        index : int
            The module's position.
        outcome : ModuleOutcome
            Its steps 1-2.
        """
        tensors = {"zero_update": outcome.zero_update.astype(np.uint8)}
        meta: dict[str, Any] = {
            "name": outcome.name,
            "shape": list(outcome.shape),
            "client_ranks": list(outcome.client_ranks),
            "seconds": outcome.seconds,
            "warnings": [list(w) for w in outcome.warnings],
            "fit": None,
        }
        if outcome.fit is not None:
            fit = outcome.fit
            tensors["subspace"] = np.ascontiguousarray(fit.subspace)
            tensors["energies"] = np.ascontiguousarray(fit.energies)
            meta["fit"] = {
                "rank": fit.rank,
                "df": fit.df,
                "solver": dataclasses.asdict(fit.solver),
            }
        save_atomic(self.fit_file(index), tensors, {"outcome": json.dumps(meta)})

    def stored_fits(self, names: tuple[str, ...]) -> dict[int, ModuleOutcome]:
        """The stored outcomes of the modules ``names`` (by position).

        Parameters
        ----------
        names : tuple of str
            The module paths, in order.

        Returns
        -------
        dict of int to ModuleOutcome
            A file that cannot be read or is of another module is ignored (the
            module is computed again).
        """
        found = {}
        for index, name in enumerate(names):
            stored = _read(self.fit_file(index), "outcome", name)
            if stored is None:
                continue
            meta, tensors = stored
            fit = None
            if meta["fit"] is not None:
                fit = ModuleFit(
                    subspace=tensors["subspace"],
                    energies=tensors["energies"],
                    rank=int(meta["fit"]["rank"]),
                    df=int(meta["fit"]["df"]),
                    solver=SolverInfo(**meta["fit"]["solver"]),
                )
            found[index] = ModuleOutcome(
                name=name,
                shape=tuple(meta["shape"]),
                client_ranks=tuple(meta["client_ranks"]),
                zero_update=tensors["zero_update"].astype(bool),
                fit=fit,
                seconds=float(meta["seconds"]),
                warnings=tuple(tuple(w) for w in meta["warnings"]),
            )
        return found

    # -- step 4 and the outputs -----------------------------------------------

    def stored_refined(self, names: tuple[str, ...]) -> dict[int, RefinedModule]:
        """The modules whose refined factors are stored (by position).

        Parameters
        ----------
        names : tuple of str
            The module paths, in order.

        Returns
        -------
        dict of int to RefinedModule
        """
        found = {}
        for index, name in enumerate(names):
            keys = ("truncation_error", "refined_norm")
            stored = _read(module_file(self.modules, index), "refined", name, keys)
            if stored is not None:
                meta, tensors = stored
                found[index] = RefinedModule(name, *tensors.values(), meta["seconds"])
        return found

    def clients_done(self, names: tuple[str, ...]) -> set[int]:
        """The clients whose adapter folder is complete in ``out/``.

        Parameters
        ----------
        names : tuple of str
            The client folder names, in order.

        Returns
        -------
        set of int
        """
        return {k for k, name in enumerate(names) if (self.staging / name).is_dir()}


def _read(
    path: Path, field: str, name: str, keys: tuple[str, ...] | None = None
) -> tuple[dict, dict[str, np.ndarray]] | None:
    """The JSON metadata ``field`` and the tensors ``keys`` (default all) of a
    stored module file, or None when it is missing, damaged or of another module
    (the module is then computed again)."""
    if not path.is_file():
        return None
    try:
        with require_safetensors().safe_open(str(path), framework="numpy") as f:
            meta = json.loads(f.metadata()[field])
            tensors = {key: f.get_tensor(key) for key in (keys or f.keys())}
    except Exception:  # noqa: BLE001 - any damage: compute it again
        return None
    return (meta, tensors) if meta.get("name") == name else None


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

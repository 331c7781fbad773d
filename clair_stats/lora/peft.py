"""PEFT LoRA adapters in and out: Theta_k = Delta W_k = s_k B_k A_k (docs/model.md §1).

A PEFT LoRA adapter is a folder holding

- ``adapter_config.json``: ``peft_type`` ``"LORA"``, ``r``, ``lora_alpha``,
  ``use_rslora``, ``rank_pattern``, ``alpha_pattern``, ``fan_in_fan_out``,
  ``target_modules``, ``base_model_name_or_path``, ``task_type``, ...;
- ``adapter_model.safetensors``: for every adapted module at path ``P`` of the base
  model, ``base_model.model.P.lora_A.weight`` of shape (r_P, in) and
  ``base_model.model.P.lora_B.weight`` of shape (out, r_P) (PEFT removes the
  adapter name when it saves).

The module's update of its weight W (out x in) is

.. math:: \\Delta W = s\\, B A, \\qquad s = \\alpha / r
          \\quad (\\alpha / \\sqrt{r} \\text{ with use\\_rslora}),

where r and alpha of module ``P`` are ``rank_pattern[key]`` / ``alpha_pattern[key]``
for the first key (in file order) whose regular expression ``(.*\\.)?(key)$``
matches ``P`` in full (PEFT's rule), else ``r`` / ``lora_alpha``. With
``fan_in_fan_out`` (GPT-2's Conv1D stores its weight as in x out) the factors are
stored the same way and the stored weight receives (s B A)^T. For CLAIR each
module is one problem with p = out, q = in, B_k = ``lora_B``, A_k = ``lora_A``,
s_k = s (:meth:`AdapterSet.updates`); ``side="left"`` shares the output space,
``side="right"`` the input space.

Reading uses safetensors only, never pickle: ``adapter_model.bin``, ``.pt`` and
``.pth`` files are refused with the command that converts them. Tensors are read
lazily, one module at a time (:meth:`Adapter.module`), in float64. numpy has no
bfloat16: bf16 adapters are read through ``safetensors``' torch backend when torch
is importable (bf16 -> float32 is exact), otherwise the error says how to convert.

Refused, with a message naming the adapter and what to change: other PEFT types
than LoRA; DoRA (``lora_magnitude_vector``) and the other LoRA variants whose
update is not s B A (VeLoRA, MonteCLoRA, BD-LoRA, Arrow, KaSA, QALoRA); trainable
LoRA biases (``lora_bias``, ``bias="all"``/``"lora_only"``); LoRA on embedding
and convolution layers; ``modules_to_save`` and trainable-token tensors; adapters
whose factors are relative to base weights that their initialisation modified
(PiSSA, OLoRA, CorDA, LoRA-GA, LoftQ), unless converted by PEFT.

Writing (:func:`write_adapter`) produces the same format with scaling 1 for every
module: ``use_rslora`` false and, per module, ``rank_pattern`` = ``alpha_pattern``
= its rank, keyed by the anchored module path, so that ``PeftModel.from_pretrained``
rebuilds exactly the written factors, whatever rank each module has.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from clair_stats.core.optional import require_safetensors
from clair_stats.lora.peft_format import (
    CONVERT,
    PICKLE_SUFFIXES,
    PREFIX,
    ModuleSpec,
    anchored,
    config_problems,
    parse_keys,
    preview,
    read_header,
    read_tensors,
)

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "Adapter",
    "AdapterSet",
    "LoraModule",
    "ModuleSpec",
    "cast_factors",
    "read_adapter",
    "read_adapters",
    "write_adapter",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_WRITE_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64}


@dataclass(frozen=True)
class LoraModule:
    """One module's factors, read in float64: Delta W = s B A.

    Parameters
    ----------
    spec : ModuleSpec
        The module's path, shapes, rank, scaling and stored dtype.
    lora_B : numpy.ndarray, shape (out, r)
        B (PEFT's ``lora_B.weight``).
    lora_A : numpy.ndarray, shape (r, in)
        A (PEFT's ``lora_A.weight``).
    """

    spec: ModuleSpec
    lora_B: np.ndarray = field(repr=False)
    lora_A: np.ndarray = field(repr=False)

    @property
    def name(self) -> str:
        """The module path."""
        return self.spec.name

    @property
    def scaling(self) -> float:
        """s."""
        return self.spec.scaling

    def delta(self) -> np.ndarray:
        """Delta W = s B A, shape (out, in), float64 (forms the dense matrix)."""
        return self.spec.scaling * (self.lora_B @ self.lora_A)


@dataclass(frozen=True)
class Adapter:
    """One client's PEFT LoRA adapter, validated; tensors stay on disk.

    Parameters
    ----------
    path : pathlib.Path
        The adapter folder.
    config : dict
        ``adapter_config.json`` as read (do not modify it in place).
    modules : dict of str to ModuleSpec
        Every adapted module, sorted by path.
    prefix : str
        The key prefix of the checkpoint (``"base_model.model."``, or ``""`` for
        a checkpoint saved without it).
    """

    path: Path
    config: dict = field(repr=False)
    modules: dict = field(repr=False)
    prefix: str = field(default=PREFIX, repr=False)

    @property
    def name(self) -> str:
        """The folder name."""
        return self.path.name

    @property
    def weights_file(self) -> Path:
        """``<path>/adapter_model.safetensors``."""
        return self.path / WEIGHTS_NAME

    @property
    def base_model(self) -> str | None:
        """``base_model_name_or_path``."""
        return self.config.get("base_model_name_or_path")

    @property
    def fan_in_fan_out(self) -> bool:
        """Whether the base layers store their weight as (in, out)."""
        return bool(self.config.get("fan_in_fan_out", False))

    @property
    def module_names(self) -> tuple[str, ...]:
        """The adapted module paths, sorted."""
        return tuple(self.modules)

    def module(self, name: str) -> LoraModule:
        """Read one module's factors (float64) from disk.

        Parameters
        ----------
        name : str
            The module path, one of :attr:`module_names`.

        Returns
        -------
        LoraModule
            The module's spec and its factors B and A, as float64.

        Raises
        ------
        KeyError
            If the adapter has no such module.
        ValueError
            If a factor holds NaN or infinite values.
        """
        if name not in self.modules:
            raise KeyError(
                f"adapter {self.path} has no LoRA module {name!r}; its modules are "
                f"{preview(self.module_names)}."
            )
        spec = self.modules[name]
        keys = [f"{self.prefix}{name}.lora_{x}.weight" for x in ("B", "A")]
        lora_b, lora_a = read_tensors(self.weights_file, keys, spec.dtype)
        for key, value in zip(keys, (lora_b, lora_a), strict=True):
            if not np.isfinite(value).all():
                bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
                raise ValueError(
                    f"adapter {self.path}: tensor {key} holds {bad} NaN or infinite "
                    "value(s); this client's training diverged or the file is "
                    "corrupt. Repair or leave out this adapter."
                )
        return LoraModule(spec=spec, lora_B=lora_b, lora_A=lora_a)

    def stored_delta(self, name: str) -> np.ndarray:
        """The update in the orientation of the stored base weight.

        (out, in) for ``nn.Linear``; (in, out), the transpose of s B A, with
        ``fan_in_fan_out`` (GPT-2's Conv1D).

        Parameters
        ----------
        name : str
            The module path, one of :attr:`module_names`.

        Returns
        -------
        numpy.ndarray
            The dense update s B A (or its transpose), float64.
        """
        delta = self.module(name).delta()
        return delta.T if self.fan_in_fan_out else delta

    def __repr__(self) -> str:
        ranks = sorted({s.rank for s in self.modules.values()})
        return (
            f"Adapter({str(self.path)!r}, base_model={self.base_model!r}, "
            f"{len(self.modules)} modules, ranks {ranks})"
        )


@dataclass(frozen=True)
class AdapterSet:
    """K clients' adapters of the same base model with the same modules and shapes.

    Parameters
    ----------
    adapters : tuple of Adapter
        Client k is ``adapters[k]``.
    """

    adapters: tuple[Adapter, ...]

    @property
    def n_clients(self) -> int:
        """K."""
        return len(self.adapters)

    @property
    def module_names(self) -> tuple[str, ...]:
        """The module paths, sorted (the same for every client)."""
        return self.adapters[0].module_names

    @property
    def base_model(self) -> str | None:
        """The common ``base_model_name_or_path``."""
        return self.adapters[0].base_model

    @property
    def names(self) -> tuple[str, ...]:
        """One unique name per client: the folder names (prefixed by k if repeated)."""
        names = [a.name for a in self.adapters]
        if len(set(names)) == len(names):
            return tuple(names)
        width = len(str(len(names) - 1))
        return tuple(f"{k:0{width}d}_{n}" for k, n in enumerate(names))

    def specs(self, module: str) -> tuple[ModuleSpec, ...]:
        """The K clients' :class:`ModuleSpec` of one module.

        Parameters
        ----------
        module : str
            The module path, one of :attr:`module_names` (a ``KeyError``
            otherwise).

        Returns
        -------
        tuple of ModuleSpec
            Client k's spec at index k.
        """
        self._check_module(module)
        return tuple(a.modules[module] for a in self.adapters)

    def shape(self, module: str) -> tuple[int, int]:
        """(out, in) of the module.

        Parameters
        ----------
        module : str
            The module path, one of :attr:`module_names`.

        Returns
        -------
        tuple of int
            The shape of the module's update Delta W (that of every client).
        """
        return self.specs(module)[0].shape

    def updates(self, module: str):
        """The K updates of one module as :class:`~clair_stats.LowRankUpdates`.

        B_k = ``lora_B`` (out, r_k), A_k = ``lora_A`` (r_k, in), s_k the module's
        scaling: Theta^_k = s_k B_k A_k, p = out, q = in.

        Parameters
        ----------
        module : str
            The module path, one of :attr:`module_names`.

        Returns
        -------
        LowRankUpdates
            The factors of the K clients, read from disk as float64.
        """
        from clair_stats.core.lowrank import LowRankUpdates

        self._check_module(module)
        mods = [a.module(module) for a in self.adapters]
        return LowRankUpdates(
            [m.lora_B for m in mods],
            [m.lora_A for m in mods],
            np.array([m.scaling for m in mods]),
        )

    def dense(self, module: str) -> np.ndarray:
        """The K updates s_k B_k A_k of one module, shape (K, out, in) (small only).

        Parameters
        ----------
        module : str
            The module path, one of :attr:`module_names`.

        Returns
        -------
        numpy.ndarray, shape (K, out, in)
            The dense updates, float64.
        """
        self._check_module(module)
        return np.stack([a.module(module).delta() for a in self.adapters])

    def _check_module(self, module: str) -> None:
        if module not in self.adapters[0].modules:
            raise KeyError(
                f"no LoRA module {module!r} in these adapters; the modules are "
                f"{preview(self.module_names)}."
            )

    def __repr__(self) -> str:
        return (
            f"AdapterSet(K={self.n_clients}, base_model={self.base_model!r}, "
            f"{len(self.module_names)} modules)"
        )


def read_adapter(path: str | PathLike[str]) -> Adapter:
    """Read and validate one PEFT LoRA adapter folder (tensors stay on disk).

    Parameters
    ----------
    path : str or path-like
        The folder holding ``adapter_config.json`` and
        ``adapter_model.safetensors``.

    Returns
    -------
    Adapter

    Raises
    ------
    FileNotFoundError
        If the folder or one of the two files is missing.
    ValueError
        If the adapter is saved with pickle (``.bin``/``.pt``), is not plain
        LoRA, or its config disagrees with its tensors; the message lists every
        problem and how to fix it.
    """
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"adapter folder {folder} does not exist.")
    if not folder.is_dir():
        raise ValueError(
            f"{folder} is a file; pass the adapter folder that holds {CONFIG_NAME} "
            f"and {WEIGHTS_NAME} (here: {folder.parent})."
        )
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickled = sorted(
            p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES
        )
        if pickled:
            raise ValueError(
                f"adapter {folder} holds {', '.join(pickled)} but no {WEIGHTS_NAME}: "
                "pickle files can run arbitrary code when loaded, so clair_stats "
                f"reads safetensors only. {CONVERT}"
            )
        raise FileNotFoundError(
            f"adapter {folder} has no {WEIGHTS_NAME} (it holds "
            f"{preview(sorted(p.name for p in folder.iterdir()))}); save the "
            "adapter with PEFT's save_pretrained(folder, safe_serialization=True)."
        )
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(
            f"adapter {folder} has no {CONFIG_NAME}; it is written by PEFT's "
            "save_pretrained next to the weights, copy it along with them."
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_file} is not valid JSON: {exc}.") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{config_file} must hold a JSON object, got {type(config).__name__}."
        )
    problems = config_problems(config)
    header = read_header(weights)
    modules, prefix, key_problems = parse_keys(header, config)
    problems += key_problems
    if not problems and not modules:
        problems.append(f"{WEIGHTS_NAME} holds no lora_A / lora_B tensors")
    if problems:
        raise ValueError(
            f"adapter {folder} cannot be used:\n  - " + "\n  - ".join(problems)
        )
    return Adapter(
        path=folder,
        config=config,
        modules=dict(sorted(modules.items())),
        prefix=prefix,
    )


def read_adapters(paths: Iterable[str | PathLike[str]]) -> AdapterSet:
    """Read K adapter folders and check that they describe the same modules.

    All adapters must share the base model (``base_model_name_or_path`` and
    ``revision``), ``fan_in_fan_out``, the set of adapted modules and each
    module's shape (out, in). Ranks and alphas may differ between clients.

    Parameters
    ----------
    paths : iterable of str or path-like
        K >= 2 adapter folders, one per client (client k = the k-th folder).

    Returns
    -------
    AdapterSet

    Raises
    ------
    ValueError
        If fewer than two folders are given, one is given twice, or the adapters
        differ; the message lists, for every adapter that differs from the first,
        what differs.
    """
    folders = [Path(p) for p in paths]
    if len(folders) < 2:
        raise ValueError(
            f"got {len(folders)} adapter folder(s); CLAIR needs at least two "
            "clients' adapters of the same base model."
        )
    resolved = [f.resolve() for f in folders]
    repeated = sorted({str(f) for f in resolved if resolved.count(f) > 1})
    if repeated:
        raise ValueError(
            f"adapter folder(s) {repeated} given more than once; pass each client's "
            "adapter once."
        )
    adapters = tuple(read_adapter(f) for f in folders)
    ref = adapters[0]
    lines = []
    for k, adapter in enumerate(adapters[1:], start=1):
        diffs = _differences(ref, adapter)
        if diffs:
            lines.append(f"adapter {k} ({adapter.path}): " + "; ".join(diffs))
    if lines:
        raise ValueError(
            f"the adapters do not match adapter 0 ({ref.path}); CLAIR compares the "
            "same modules of the same base model across clients:\n  - "
            + "\n  - ".join(lines)
        )
    return AdapterSet(adapters=adapters)


def write_adapter(
    path: str | PathLike[str],
    modules: Mapping[str, tuple[np.ndarray, np.ndarray]],
    template: Adapter | Mapping[str, Any],
    *,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write a PEFT LoRA adapter with Delta W = B A (scaling 1) for every module.

    The config is the template's with ``use_rslora`` false, ``target_modules`` the
    written module paths, and per module ``rank_pattern`` = ``alpha_pattern`` = its
    rank r_m (key: the anchored, escaped path), so that PEFT's scaling
    alpha / r is 1 whatever the rank; ``r`` and ``lora_alpha`` are the largest
    rank. ``modules_to_save``, ``exclude_modules``, ``layers_to_transform`` and
    ``layers_pattern`` are cleared and ``init_lora_weights`` set to true. The
    file is ``PeftModel.from_pretrained``-loadable.

    Parameters
    ----------
    path : str or path-like
        The folder to write (created if needed).
    modules : mapping of module path to (B, A)
        B of shape (out, r_m) and A of shape (r_m, in), r_m >= 1: Delta W = B A.
        With an :class:`Adapter` template every path must be one of its modules
        and (out, in) its shape.
    template : Adapter or mapping
        The adapter (or its ``adapter_config.json`` contents) whose base model,
        task type and ``fan_in_fan_out`` the new adapter inherits.
    dtype : {"float32", "float16", "float64"}
        The stored dtype (numpy cannot write bfloat16).
    overwrite : bool
        Replace an adapter already in ``path``.

    Returns
    -------
    pathlib.Path
        The folder written.
    """
    save_file = require_safetensors("numpy").save_file

    if dtype not in _WRITE_DTYPES:
        raise ValueError(
            f"dtype must be one of {tuple(_WRITE_DTYPES)}, got {dtype!r} (numpy "
            "cannot write bfloat16; load the float32 adapter and cast in torch)."
        )
    if isinstance(template, Adapter):
        config, specs = template.config, template.modules
    elif isinstance(template, Mapping):
        config, specs = dict(template), None
        problems = config_problems(config)
        if problems:
            raise ValueError(
                "the template config is not usable:\n  - " + "\n  - ".join(problems)
            )
    else:
        raise TypeError(
            f"template must be an Adapter or an adapter_config dict, got "
            f"{type(template).__name__}."
        )
    if not isinstance(modules, Mapping) or not modules:
        raise ValueError(
            "modules must be a non-empty mapping {module path: (B, A)}, got "
            f"{type(modules).__name__} {'(empty)' if not modules else ''}."
        )
    tensors: dict[str, np.ndarray] = {}
    ranks: dict[str, int] = {}
    for name, factors in modules.items():
        b, a = _check_factors(name, factors, specs)
        b_out, a_out = cast_factors(name, b, a, dtype)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(a_out)
        tensors[f"{PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(b_out)
        ranks[name] = int(b.shape[1])
    folder = Path(path)
    existing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if (folder / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{folder} already holds {', '.join(existing)}; choose another folder "
            "or pass overwrite=True."
        )
    folder.mkdir(parents=True, exist_ok=True)
    out_config = copy.deepcopy(dict(config))
    top = max(ranks.values())
    names = sorted(ranks)
    out_config.update(
        r=top,
        lora_alpha=top,
        use_rslora=False,
        target_modules=names,
        rank_pattern={anchored(n): ranks[n] for n in names},
        alpha_pattern={anchored(n): ranks[n] for n in names},
        exclude_modules=None,
        layers_to_transform=None,
        layers_pattern=None,
        modules_to_save=None,
        init_lora_weights=True,
        inference_mode=True,
    )
    if "trainable_token_indices" in out_config:
        out_config["trainable_token_indices"] = None
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(
        json.dumps(out_config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return folder


# -- helpers ----------------------------------------------------------------------


def cast_factors(
    name: str, b: np.ndarray, a: np.ndarray, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """B and A in the written ``dtype``; a ValueError naming the module on overflow.

    Parameters
    ----------
    name : str
        The module path, for the message.
    b, a : numpy.ndarray
        The factors.
    dtype : {"float32", "float16", "float64"}
        The dtype to write.

    Returns
    -------
    tuple of numpy.ndarray
        B and A cast (the same arrays when they have that dtype already).
    """
    target = np.dtype(_WRITE_DTYPES[dtype])
    with np.errstate(over="ignore"):  # reported just below, naming the module
        b_out, a_out = b.astype(target, copy=False), a.astype(target, copy=False)
    if not (np.isfinite(b_out).all() and np.isfinite(a_out).all()):
        raise ValueError(
            f"module {name!r}: the factors overflow {dtype}; write them in float32."
        )
    return b_out, a_out


def _differences(ref: Adapter, other: Adapter) -> list[str]:
    """What differs between two adapters, in words."""
    diffs = []
    for key in ("base_model_name_or_path", "revision"):
        if ref.config.get(key) != other.config.get(key):
            diffs.append(
                f"{key} {other.config.get(key)!r} (adapter 0: {ref.config.get(key)!r})"
            )
    if ref.fan_in_fan_out != other.fan_in_fan_out:
        diffs.append(
            f"fan_in_fan_out {other.fan_in_fan_out} (adapter 0: {ref.fan_in_fan_out})"
        )
    mine, theirs = set(ref.modules), set(other.modules)
    if mine - theirs:
        diffs.append(f"missing modules {preview(sorted(mine - theirs))}")
    if theirs - mine:
        diffs.append(f"extra modules {preview(sorted(theirs - mine))}")
    for name in sorted(mine & theirs):
        a, b = ref.modules[name].shape, other.modules[name].shape
        if a != b:
            diffs.append(f"module {name!r} has shape (out, in) = {b} (adapter 0: {a})")
    return diffs


def _check_factors(
    name: str, factors: object, specs: Mapping[str, ModuleSpec] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(B, A) of one module to write, validated."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"module names must be non-empty strings, got {name!r}.")
    if not isinstance(factors, tuple | list) or len(factors) != 2:
        raise TypeError(
            f"module {name!r}: pass a pair (B, A) with B (out, r) and A (r, in), got "
            f"{type(factors).__name__}."
        )
    b, a = (np.asarray(f) for f in factors)
    for label, x in (("B", b), ("A", a)):
        if x.ndim != 2 or not (
            np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
        ):
            raise ValueError(
                f"module {name!r}: {label} must be a 2-D real array, got shape "
                f"{x.shape} and dtype {x.dtype}."
            )
        if not np.isfinite(x).all():
            raise ValueError(f"module {name!r}: {label} holds NaN or infinite values.")
    if b.shape[1] != a.shape[0] or b.shape[1] < 1:
        raise ValueError(
            f"module {name!r}: B is {b.shape} and A is {a.shape}; they must be "
            "(out, r) and (r, in) with the same r >= 1 (Delta W = B A)."
        )
    if specs is not None:
        if name not in specs:
            raise ValueError(
                f"module {name!r} is not a module of the template adapter; its "
                f"modules are {preview(list(specs))}."
            )
        want = specs[name].shape
        if (b.shape[0], a.shape[1]) != want:
            raise ValueError(
                f"module {name!r}: B A would be {(b.shape[0], a.shape[1])} but the "
                f"module's Delta W is (out, in) = {want}. Did you swap B and A?"
            )
    return b, a

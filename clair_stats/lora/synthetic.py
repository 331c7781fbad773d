"""Synthetic LoRA federations with known contamination, in memory or as PEFT folders.

The generator of the ``clair adapters`` tests and of the verdict-rule study
(``simulations/verdict_rules.py``). Every client has LoRA rank R on every module
m (a weight of shape out_m x in_m) and scaling s = lora_alpha / R. Benign client k
on module m has

.. math:: B_{km} = U_m G_{km} + \\nu E_{km}, \\qquad
          A_{km} = F_{km} / \\sqrt{\\mathrm{in}_m},

with U_m (out_m x R) shared and orthonormal and G_km (R x R), E_km (out_m x R),
F_km (R x in_m) iid N(0, 1): the update s B_km A_km lies in span(U_m) up to the
noise nu E_km (nu = ``noise``, 0.1 by default). A contaminated (client, module)
has B_km = ``strength`` E_km, off the shared subspace (strength 3 with nu = 0.1:
30 times the benign noise in Frobenius norm). The draws are made module by module
for U, then client by client and, within a client, module by module (B then A).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from clair_stats.core.lowrank import LowRankUpdates
from clair_stats.core.optional import require_safetensors
from clair_stats.core.validation import check_int, check_positive

__all__ = ["MODULES", "SyntheticFederation", "synthetic_federation"]

#: Three modules of one decoder layer: path -> (out, in).
MODULES: dict[str, tuple[int, int]] = {
    "model.layers.0.mlp.down_proj": (16, 32),
    "model.layers.0.self_attn.q_proj": (24, 16),
    "model.layers.0.self_attn.v_proj": (24, 16),
}


@dataclass(frozen=True)
class SyntheticFederation:
    """K clients' LoRA factors on M modules and which (client, module) is contaminated.

    Parameters
    ----------
    factors : dict of str to (numpy.ndarray, numpy.ndarray)
        Per module path, B of shape (K, out, R) and A of shape (K, R, in).
    contaminated : numpy.ndarray of bool, shape (K, M)
        True where client k is contaminated in module m (modules in the order of
        ``factors``).
    rank : int
        R.
    lora_alpha : float
        PEFT's lora_alpha; the scaling is lora_alpha / R.
    """

    factors: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)
    contaminated: np.ndarray = field(repr=False)
    rank: int
    lora_alpha: float

    @property
    def modules(self) -> tuple[str, ...]:
        """The module paths."""
        return tuple(self.factors)

    @property
    def n_clients(self) -> int:
        """K."""
        return self.contaminated.shape[0]

    @property
    def benign(self) -> np.ndarray:
        """(K,) True for the clients benign in every module."""
        return ~self.contaminated.any(axis=1)

    def updates(self, module: str) -> LowRankUpdates:
        """Theta_km = s B_km A_km of every client, factored.

        Parameters
        ----------
        module : str
            The module path, a key of ``factors``.

        Returns
        -------
        LowRankUpdates
            The K clients' factors of the module, with scaling s = lora_alpha / R.
        """
        b, a = self.factors[module]
        return LowRankUpdates(b, a, scaling=self.lora_alpha / self.rank)

    def write(
        self, root: str | PathLike[str], base_model: str = "tiny-llama"
    ) -> list[Path]:
        """One PEFT adapter folder per client, ``root/client<k>``, in float32.

        Parameters
        ----------
        root : str or path-like
            Created if missing; the client folders must not exist.
        base_model : str
            ``base_model_name_or_path`` of the adapters.

        Returns
        -------
        list of pathlib.Path
            The K folders, in client order.
        """
        save_file = require_safetensors("numpy").save_file

        folders = []
        targets = sorted({m.rsplit(".", 1)[-1] for m in self.modules})
        for k in range(self.n_clients):
            tensors = {}
            for m, (b, a) in self.factors.items():
                tensors[f"base_model.model.{m}.lora_A.weight"] = a[k].astype(np.float32)
                tensors[f"base_model.model.{m}.lora_B.weight"] = b[k].astype(np.float32)
            folder = Path(root) / f"client{k}"
            folder.mkdir(parents=True)
            save_file(tensors, str(folder / "adapter_model.safetensors"))
            config = {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": base_model,
                "r": self.rank,
                "lora_alpha": self.lora_alpha,
                "target_modules": targets,
            }
            (folder / "adapter_config.json").write_text(json.dumps(config))
            folders.append(folder)
        return folders


def synthetic_federation(
    n_clients: int = 8,
    modules: Mapping[str, tuple[int, int]] | None = None,
    *,
    contaminated: Mapping[int, Iterable[str]] | None = None,
    strength: float = 3.0,
    noise: float = 0.1,
    rank: int = 4,
    lora_alpha: float = 8.0,
    seed: int | np.random.Generator = 0,
) -> SyntheticFederation:
    """Draw a federation of the model in the module docstring.

    Parameters
    ----------
    n_clients : int
        K >= 2.
    modules : mapping of str to (int, int), optional
        Module path -> (out, in), out > rank; default :data:`MODULES`.
    contaminated : mapping of int to iterable of str, optional
        Client k -> the modules in which it is contaminated; default none.
    strength : float
        Scale of a contaminated B_km.
    noise : float
        nu, the scale of the benign clients' off-subspace noise.
    rank : int
        R, every client's LoRA rank.
    lora_alpha : float
        PEFT's lora_alpha (scaling lora_alpha / R).
    seed : int or numpy.random.Generator
        Source of every draw.

    Returns
    -------
    SyntheticFederation
    """
    n_clients = check_int(n_clients, "n_clients", 2)
    rank = check_int(rank, "rank", 1)
    strength = check_positive(strength, "strength")
    noise = check_positive(noise, "noise")
    lora_alpha = check_positive(lora_alpha, "lora_alpha")
    modules = dict(MODULES if modules is None else modules)
    if not modules:
        raise ValueError("modules is empty; give at least one module path.")
    for name, (out, inp) in modules.items():
        check_int(inp, f"in of {name}", 1)
        if check_int(out, f"out of {name}", 1) <= rank:
            raise ValueError(
                f"module {name!r}: out = {out} must exceed the rank R = {rank} (the "
                "shared subspace needs a complement)."
            )
    contaminated = dict(contaminated or {})
    names = list(modules)
    mask = np.zeros((n_clients, len(names)), dtype=bool)
    for k, bad in contaminated.items():
        if not 0 <= k < n_clients:
            raise ValueError(f"contaminated client {k} is not in 0..{n_clients - 1}.")
        for m in bad:
            if m not in modules:
                raise ValueError(
                    f"contaminated module {m!r} of client {k} is not one of {names}."
                )
            mask[k, names.index(m)] = True
    rng = np.random.default_rng(seed)
    shared = {
        m: np.linalg.qr(rng.standard_normal((out, rank)))[0]
        for m, (out, _) in modules.items()
    }
    b_all = {m: np.empty((n_clients, out, rank)) for m, (out, _) in modules.items()}
    a_all = {m: np.empty((n_clients, rank, inp)) for m, (_, inp) in modules.items()}
    for k in range(n_clients):
        for j, (m, (out, inp)) in enumerate(modules.items()):
            if mask[k, j]:
                b = strength * rng.standard_normal((out, rank))
            else:
                b = shared[m] @ rng.standard_normal((rank, rank))
                b += noise * rng.standard_normal((out, rank))
            b_all[m][k] = b
            a_all[m][k] = rng.standard_normal((rank, inp)) / np.sqrt(inp)
    return SyntheticFederation(
        factors={m: (b_all[m], a_all[m]) for m in names},
        contaminated=mask,
        rank=rank,
        lora_alpha=lora_alpha,
    )

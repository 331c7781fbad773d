"""The PEFT LoRA file format: what clair_stats reads and what it refuses.

The rules behind :mod:`clair_stats.lora.peft`: the key prefix of a PeftModel
checkpoint, the LoRA variants and initialisations whose update is not s B A (they
are refused), PEFT's rank/alpha pattern lookup, the checks of an
``adapter_config.json``, the parsing of the tensor keys of
``adapter_model.safetensors`` into one :class:`ModuleSpec` per adapted module, and
the reading of the factors (safetensors only; bfloat16 through torch). The public
API is :mod:`clair_stats.lora.peft`; this module holds no state.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clair_stats.core.optional import require_safetensors

# the prefix of every key in a PeftModel checkpoint: PeftModel.base_model (the
# LoraModel) holds the transformers model as .model
PREFIX = "base_model.model."
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONVERT = (
    "Convert it once with PEFT: model = PeftModel.from_pretrained(base_model, "
    "folder); model.save_pretrained(new_folder, safe_serialization=True)."
)
# LoraConfig fields that switch to a LoRA variant whose weight update is not s B A
VARIANTS = {
    "use_dora": "DoRA (weight-decomposed LoRA: a magnitude vector rescales W + s B A)",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA (stochastic factors)",
    "use_bdlora": "BD-LoRA (block-diagonal factors)",
    "arrow_config": "Arrow (routing over several adapters)",
    "kasa_config": "KaSA (extra singular values between B and A)",
    "use_qalora": "QALoRA (lora_A acts on pooled input groups)",
}
# initialisations that modify the base weights: B A is then not the update of W
MODIFYING_INITS = ("pissa", "olora", "corda", "lora_ga", "loftq")
FLOAT_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


@dataclass(frozen=True)
class ModuleSpec:
    """What an adapter declares for one module (read from the file header).

    Parameters
    ----------
    name : str
        The module's path in the base model (``model.layers.0.self_attn.q_proj``).
    out_features, in_features : int
        The shape (out, in) of Delta W: p and q for CLAIR.
    rank : int
        r of this module (``rank_pattern`` or ``r``), equal to the factors' rank.
    alpha : float
        alpha of this module (``alpha_pattern`` or ``lora_alpha``).
    scaling : float
        s = alpha / r, or alpha / sqrt(r) with ``use_rslora``.
    dtype : str
        The safetensors dtype of the stored factors (``"F32"``, ``"BF16"``, ...).
    """

    name: str
    out_features: int
    in_features: int
    rank: int
    alpha: float
    scaling: float
    dtype: str

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in), the shape of Delta W."""
        return (self.out_features, self.in_features)


def anchored(name: str) -> str:
    """A rank/alpha pattern key matching exactly the module path ``name``.

    PEFT matches ``(.*\\.)?(key)$`` against the path; ``^`` stops the optional
    prefix group from matching, so only the full path matches.
    """
    return "^" + re.escape(name)


def pattern_value(patterns: Mapping[str, Any], name: str, default: Any) -> Any:
    """PEFT's rank/alpha pattern lookup: the first key matching ``name`` wins."""
    for key, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({key})$", name):
                return value
        except re.error:
            continue  # reported by config_problems
    return default


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """Everything in an adapter_config that clair_stats cannot handle."""
    problems = []
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        problems.append(
            f"peft_type is {peft_type!r}; only LoRA adapters (peft_type 'LORA') "
            "have updates of the form s B A"
        )
    for key, what in VARIANTS.items():
        if config.get(key):
            problems.append(
                f"{key} is set: {what} is not supported, its weight update is not "
                "s B A; train a plain LoRA adapter"
            )
    if config.get("lora_bias"):
        problems.append(
            "lora_bias is true: the adapter also trains a bias, which CLAIR does not "
            "model; train with lora_bias=False"
        )
    if config.get("bias", "none") not in ("none", None):
        problems.append(
            f"bias is {config.get('bias')!r}: the adapter also trains biases, which "
            "CLAIR does not model; train with bias='none'"
        )
    if config.get("target_parameters"):
        problems.append(
            "target_parameters is set: LoRA on raw parameters (e.g. fused MoE "
            "experts) is not supported"
        )
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(MODIFYING_INITS):
        problems.append(
            f"init_lora_weights is {init!r}: this initialisation modifies the base "
            "weights, so B A is not the update of the pretrained weights; save the "
            "adapter with save_pretrained(..., path_initial_model_for_weight_"
            "conversion=...) to get a plain LoRA adapter (not possible for LoftQ)"
        )
    r = config.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        problems.append(f"r must be a positive integer, got {r!r}")
    alpha = config.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        problems.append(f"lora_alpha must be a number, got {alpha!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        patterns = config.get(key) or {}
        if not isinstance(patterns, dict):
            problems.append(f"{key} must be a JSON object, got {patterns!r}")
            continue
        for pattern, value in patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                problems.append(f"{key} key {pattern!r} is not a regex ({exc})")
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(f"{key}[{pattern!r}] must be a number, got {value!r}")
    return problems


def read_header(weights: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, safetensors dtype)} of a safetensors file, no values read."""
    safe_open = require_safetensors().safe_open

    try:
        with safe_open(str(weights), framework="numpy") as f:
            header = {}
            for key in f.keys():
                piece = f.get_slice(key)
                header[key] = (
                    tuple(int(n) for n in piece.get_shape()),
                    piece.get_dtype(),
                )
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ValueError(
            f"{weights} is not a readable safetensors file ({exc}); re-save the "
            "adapter with PEFT's save_pretrained(folder, safe_serialization=True)."
        ) from None
    return header


def parse_keys(
    header: Mapping[str, tuple[tuple[int, ...], str]], config: Mapping[str, Any]
) -> tuple[dict[str, ModuleSpec], str, list[str]]:
    """The modules declared by the tensor keys, the key prefix, and the problems."""
    problems: list[str] = []
    prefixes = {key.startswith(PREFIX) for key in header}
    prefix = PREFIX if prefixes == {True} else ""
    if prefixes == {True, False}:
        problems.append(
            f"some keys start with {PREFIX!r} and some do not; this is not a file "
            "written by PEFT's save_pretrained"
        )
    factors: dict[str, dict[str, tuple[tuple[int, ...], str]]] = {}
    unsupported: dict[str, list[str]] = {}
    for key, meta in header.items():
        short = key[len(prefix) :]
        match = re.fullmatch(r"(.+)\.lora_([AB])\.weight", short)
        if match:
            factors.setdefault(match.group(1), {})[match.group(2)] = meta
            continue
        if "lora_magnitude_vector" in short:
            reason = "DoRA magnitude vectors (use_dora)"
        elif "lora_embedding_" in short:
            reason = "LoRA on embedding layers (lora_embedding_A/B)"
        elif short.endswith("lora_B.bias"):
            reason = "trainable LoRA biases (lora_bias)"
        elif "trainable_tokens" in short:
            reason = "trainable token deltas (trainable_token_indices)"
        else:
            reason = "tensors other than LoRA factors (modules_to_save or biases)"
        unsupported.setdefault(reason, []).append(key)
    for reason, keys in unsupported.items():
        problems.append(
            f"unsupported {reason}: {preview(keys)}; CLAIR handles Linear/Conv1D "
            "LoRA factors only, retrain or save the adapter without them"
        )
    r_default, alpha_default = config.get("r"), config.get("lora_alpha")
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))
    modules: dict[str, ModuleSpec] = {}
    for name, pair in sorted(factors.items()):
        missing = {"A", "B"} - set(pair)
        if missing:
            problems.append(
                f"module {name!r} has lora_{''.join(sorted(set(pair)))}.weight but "
                f"no lora_{missing.pop()}.weight; the file is incomplete"
            )
            continue
        (a_shape, a_dtype), (b_shape, b_dtype) = pair["A"], pair["B"]
        if len(a_shape) != 2 or len(b_shape) != 2:
            problems.append(
                f"module {name!r}: lora_A {a_shape} and lora_B {b_shape} are not "
                "2-D; LoRA on convolution layers is not supported"
            )
            continue
        if a_shape[0] != b_shape[1]:
            problems.append(
                f"module {name!r}: lora_A is {a_shape} (r, in) but lora_B is "
                f"{b_shape} (out, r); their ranks differ"
            )
            continue
        bad = sorted(
            {d for d in (a_dtype, b_dtype) if d not in (*FLOAT_DTYPES, "BF16")}
        )
        if bad:
            problems.append(
                f"module {name!r}: dtype {bad} is not a float type clair_stats reads "
                "(F16, BF16, F32, F64); dequantise the adapter first"
            )
            continue
        if a_dtype != b_dtype:
            problems.append(
                f"module {name!r}: lora_A is {a_dtype} but lora_B is {b_dtype}"
            )
            continue
        rank = a_shape[0]
        if not isinstance(r_default, int) or isinstance(alpha_default, bool):
            continue  # reported by config_problems
        declared = pattern_value(rank_pattern, name, r_default)
        alpha = pattern_value(alpha_pattern, name, alpha_default)
        if declared != rank:
            problems.append(
                f"module {name!r}: the factors have rank {rank} but the config gives "
                f"r = {declared} (r / rank_pattern), which sets the scaling; the "
                "config does not belong to these weights"
            )
            continue
        if not isinstance(alpha, int | float) or isinstance(alpha, bool):
            continue  # reported by config_problems
        scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        modules[name] = ModuleSpec(
            name=name,
            out_features=b_shape[0],
            in_features=a_shape[1],
            rank=rank,
            alpha=float(alpha),
            scaling=float(scaling),
            dtype=a_dtype,
        )
    return modules, prefix, problems


def read_tensors(weights: Path, keys: Sequence[str], dtype: str) -> list[np.ndarray]:
    """The named tensors as float64 arrays; bf16 through torch if importable."""
    safe_open = require_safetensors().safe_open

    if dtype == "BF16":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise ValueError(
                f"{weights} stores bfloat16 tensors, which numpy cannot read and "
                "torch (the reader clair_stats uses for them) is not installed; "
                "install the torch extra (pip install 'clair_stats[torch]') or "
                "re-save the adapter in float32 (model.to(torch.float32); "
                "model.save_pretrained(folder))."
            ) from None
        with safe_open(str(weights), framework="pt") as f:
            # bfloat16 -> float32 is exact (bf16 is the top half of a float32)
            return [f.get_tensor(k).float().numpy().astype(np.float64) for k in keys]
    with safe_open(str(weights), framework="numpy") as f:
        return [np.asarray(f.get_tensor(k), dtype=np.float64) for k in keys]


def preview(items: Sequence[str], limit: int = 5) -> str:
    """At most ``limit`` items, then how many more."""
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:limit])
    more = len(items) - limit
    return f"[{shown}{f', ... ({more} more)' if more > 0 else ''}]"

"""An attention-only Transformer with LoRA adapters, for the copying tasks.

The architecture of Song, Xu and Zhong (2025), scaled down: token embedding,
``n_layers`` pre-LayerNorm causal self-attention blocks with rotary position
embeddings (RoPE) and no MLP, a final LayerNorm and a linear unembedding. With
V = 32, d = 32 and 2 layers of 1 head it has about 11k parameters.

LoRA (Hu et al. 2022), as in PEFT: a linear map y = W x of a module gets a
trainable update, y = W x + s B A x with A in R^{r x d_in} initialised like PEFT
(uniform on [-1/sqrt(d_in), 1/sqrt(d_in)], Kaiming with a = sqrt 5), B in
R^{d_out x r} initialised to 0, and s = lora_alpha / r; W is frozen. The module's
dense update is Delta W = s B A in R^{d_out x d_in}: the Theta_k of docs/model.md §1 for
that module (p = d_out, q = d_in). Merging Delta W into W gives the same map.

The adapted modules are the query, key, value and output maps of every layer,
named ``"layers.{l}.{q,k,v,o}"`` (:data:`LORA_TARGETS`).

References
----------
Song, Xu, Zhong (2025). Out-of-distribution generalization via composition: a lens
through induction heads in transformers. PNAS 122.
Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang, Chen (2022). LoRA: low-rank
adaptation of large language models. ICLR.
Su, Lu, Pan, Murtadha, Wen, Liu (2024). RoFormer: enhanced transformer with rotary
position embedding. Neurocomputing 568.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "LORA_TARGETS",
    "LoRALinear",
    "ModelConfig",
    "Transformer",
]

#: The adapted maps of each attention layer: query, key, value, output.
LORA_TARGETS = ("q", "k", "v", "o")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the Transformer.

    Parameters
    ----------
    vocab : int
        V.
    length : int
        Longest input (RoPE tables are built for it).
    d_model : int
        d, the residual width (= the head dimension: one head per layer).
    n_layers : int
        Attention layers.
    rope_base : float
        Base of the RoPE frequencies.
    """

    vocab: int = 32
    length: int = 48
    d_model: int = 32
    n_layers: int = 2
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("vocab", "length", "d_model", "n_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if self.d_model % 2:
            raise ValueError(
                f"d_model must be even for rotary embeddings, got {self.d_model}."
            )

    def as_dict(self) -> dict[str, int | float]:
        """The fields, for hashing into a checkpoint name."""
        return asdict(self)


class LoRALinear(nn.Module):
    """y = W x + s B A x, with W frozen when an adapter is attached.

    Parameters
    ----------
    d_in, d_out : int
        Input and output widths; W has shape (d_out, d_in), no bias.
    """

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.lora_A: nn.Parameter | None = None
        self.lora_B: nn.Parameter | None = None
        self.scaling = 1.0

    def add_adapter(
        self, rank: int, alpha: float, generator: torch.Generator | None = None
    ) -> None:
        """Attach a LoRA adapter: A uniform (PEFT's Kaiming init), B = 0.

        Parameters
        ----------
        rank : int
            r >= 1.
        alpha : float
            lora_alpha; the scaling is s = alpha / r.
        generator : torch.Generator, optional
            Source of A's initial values.
        """
        d_out, d_in = self.weight.shape
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRA rank must be a positive int, got {rank!r}.")
        bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform(a=sqrt 5) of PEFT
        a = (torch.rand(rank, d_in, generator=generator) * 2 - 1) * bound
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank))
        self.scaling = float(alpha) / rank
        self.weight.requires_grad_(False)

    def remove_adapter(self) -> None:
        """Drop the adapter (W unchanged) and make W trainable again."""
        self.lora_A = None
        self.lora_B = None
        self.scaling = 1.0
        self.weight.requires_grad_(True)

    def delta(self) -> torch.Tensor:
        """Delta W = s B A, shape (d_out, d_in) (zeros without an adapter)."""
        if self.lora_A is None or self.lora_B is None:
            return torch.zeros_like(self.weight)
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.lora_A is not None and self.lora_B is not None:
            y = y + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)
        return y


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class AttentionLayer(nn.Module):
    """x + W_o softmax(causal(RoPE(W_q h) RoPE(W_k h)^T / sqrt d)) W_v h, h = LN(x)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.q = LoRALinear(d_model, d_model)
        self.k = LoRALinear(d_model, d_model)
        self.v = LoRALinear(d_model, d_model)
        self.o = LoRALinear(d_model, d_model)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.o(attended)


class Transformer(nn.Module):
    """Attention-only, pre-LayerNorm, causal, RoPE, one head per layer.

    Parameters
    ----------
    config : ModelConfig
        The sizes.
    generator : torch.Generator, optional
        Source of the initial weights (deterministic given its seed).
    """

    def __init__(
        self, config: ModelConfig, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.embed = nn.Embedding(config.vocab, d)
        self.layers = nn.ModuleList(AttentionLayer(d) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(d)
        self.unembed = nn.Linear(d, config.vocab)
        if generator is not None:
            self._init(generator)
        inv_freq = 1.0 / (
            config.rope_base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
        )
        angles = torch.outer(torch.arange(config.length, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def _init(self, generator: torch.Generator) -> None:
        """Re-draw every weight from ``generator`` (PyTorch's default laws)."""
        d = self.config.d_model
        with torch.no_grad():
            self.embed.weight.normal_(generator=generator)
            for module in self.lora_modules().values():
                bound = 1.0 / math.sqrt(d)
                module.weight.uniform_(-bound, bound, generator=generator)
            bound = 1.0 / math.sqrt(d)
            self.unembed.weight.uniform_(-bound, bound, generator=generator)
            self.unembed.bias.uniform_(-bound, bound, generator=generator)

    def lora_modules(self) -> dict[str, LoRALinear]:
        """The adaptable maps by name, ``"layers.{l}.{q,k,v,o}"``, in order."""
        return {
            f"layers.{i}.{name}": getattr(layer, name)
            for i, layer in enumerate(self.layers)
            for name in LORA_TARGETS
        }

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits.

        Parameters
        ----------
        tokens : torch.Tensor of int64, shape (n, t), t <= config.length

        Returns
        -------
        torch.Tensor, shape (n, t, V)
        """
        t = tokens.shape[1]
        if t > self.config.length:
            raise ValueError(
                f"inputs of length {t} exceed the model's length "
                f"{self.config.length}; build the model with a larger length."
            )
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.unembed(self.norm(x))

    # ------------------------------------------------------------------- adapters
    def add_adapters(
        self, rank: int, alpha: float, generator: torch.Generator | None = None
    ) -> None:
        """Freeze every weight and attach LoRA adapters to q, k, v, o of each layer.

        Parameters
        ----------
        rank : int
            LoRA rank r.
        alpha : float
            lora_alpha (scaling alpha / r).
        generator : torch.Generator, optional
            Source of the A factors (in the order of :meth:`lora_modules`).
        """
        for param in self.parameters():
            param.requires_grad_(False)
        for module in self.lora_modules().values():
            module.add_adapter(rank, alpha, generator)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """A copy of the LoRA factors, ``"{module}.lora_A"`` / ``".lora_B"``."""
        out = {}
        for name, module in self.lora_modules().items():
            if module.lora_A is None or module.lora_B is None:
                raise RuntimeError(f"module {name} has no adapter; add_adapters first.")
            out[f"{name}.lora_A"] = module.lora_A.detach().clone()
            out[f"{name}.lora_B"] = module.lora_B.detach().clone()
        return out

    def load_adapter_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Set the LoRA factors from :meth:`adapter_state` (adapters must exist)."""
        with torch.no_grad():
            for name, module in self.lora_modules().items():
                if module.lora_A is None or module.lora_B is None:
                    raise RuntimeError(
                        f"module {name} has no adapter; add_adapters first."
                    )
                module.lora_A.copy_(state[f"{name}.lora_A"])
                module.lora_B.copy_(state[f"{name}.lora_B"])

    def deltas(self) -> dict[str, torch.Tensor]:
        """Delta W = s B A of every adapted module (detached copies)."""
        return {
            name: module.delta().detach().clone()
            for name, module in self.lora_modules().items()
        }

    def remove_adapters(self) -> None:
        """Drop every adapter, leaving W unchanged."""
        for module in self.lora_modules().values():
            module.remove_adapter()

    def base_weights(self) -> dict[str, torch.Tensor]:
        """Copies of W of every adaptable module."""
        return {
            name: module.weight.detach().clone()
            for name, module in self.lora_modules().items()
        }

    def set_weights(
        self,
        base: Mapping[str, torch.Tensor],
        deltas: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Merge: W <- W_0 + Delta W for every adaptable module.

        Parameters
        ----------
        base : mapping
            W_0 per module (:meth:`base_weights`).
        deltas : mapping, optional
            Delta W per module; modules without one get W_0.
        """
        deltas = {} if deltas is None else deltas
        unknown = set(deltas) - set(base)
        if unknown:
            raise KeyError(
                f"deltas for unknown modules {sorted(unknown)}; the modules are "
                f"{sorted(base)}."
            )
        with torch.no_grad():
            for name, module in self.lora_modules().items():
                weight = base[name]
                if name in deltas:
                    weight = weight + deltas[name].to(weight.dtype)
                module.weight.copy_(weight)

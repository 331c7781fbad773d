"""Files in and out: clients' PEFT LoRA adapters (safetensors only, never pickle)."""

from clair_stats.io.peft import (
    Adapter,
    AdapterSet,
    LoraModule,
    ModuleSpec,
    read_adapter,
    read_adapters,
    write_adapter,
)

__all__ = [
    "Adapter",
    "AdapterSet",
    "LoraModule",
    "ModuleSpec",
    "read_adapter",
    "read_adapters",
    "write_adapter",
]

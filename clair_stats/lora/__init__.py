"""CLAIR on LoRA adapters: PEFT files in and out, one verdict per client.

:mod:`~clair_stats.lora.peft` reads and writes PEFT adapters (safetensors only,
never pickle), with the rules of the file format in
:mod:`~clair_stats.lora.peft_format`; :mod:`~clair_stats.lora.adapters` runs CLAIR steps
1-3 per module on
the factors (:func:`~clair_stats.lora.adapters.fit_module`,
:func:`~clair_stats.lora.adapters.analyse_adapters`);
:mod:`~clair_stats.lora.verdict` is the one rule that turns the per-module energies
into one verdict per client (used by ``clair adapters`` and by the sequence-copying
experiment); :mod:`~clair_stats.lora.report` holds the result objects and the JSON
report; :mod:`~clair_stats.lora.writing` refines every module with the common
collaborative set and writes one adapter per client; :mod:`~clair_stats.lora.cli`
is the ``clair adapters`` command; :mod:`~clair_stats.lora.synthetic` draws
synthetic LoRA federations with known contamination (tests and studies). Modules
here import :mod:`clair_stats.pipeline`, :mod:`clair_stats.solvers` and
:mod:`clair_stats.core`; the safetensors package is needed for the files (the
``lora`` extra).
"""

from clair_stats.lora.adapters import analyse_adapters, fit_module, zero_updates
from clair_stats.lora.cli import OutputError, run_adapters
from clair_stats.lora.peft import (
    Adapter,
    AdapterSet,
    LoraModule,
    ModuleSpec,
    read_adapter,
    read_adapters,
    write_adapter,
)
from clair_stats.lora.report import AdaptersResult, ModuleReport
from clair_stats.lora.verdict import ClientVerdict, client_verdict
from clair_stats.lora.writing import write_refined

__all__ = [
    "Adapter",
    "AdapterSet",
    "AdaptersResult",
    "ClientVerdict",
    "LoraModule",
    "ModuleReport",
    "ModuleSpec",
    "OutputError",
    "analyse_adapters",
    "client_verdict",
    "fit_module",
    "read_adapter",
    "read_adapters",
    "run_adapters",
    "write_adapter",
    "write_refined",
    "zero_updates",
]

"""CLAIR on LoRA adapters: PEFT files in and out, one verdict per client.

:mod:`~clair_stats.lora.peft` reads and writes PEFT adapters (safetensors only,
never pickle); :mod:`~clair_stats.lora.verdict` is the rule that turns the
per-module evidence into one verdict per client (used by ``clair adapters`` and by
the sequence-copying experiment); :mod:`~clair_stats.lora.adapters` runs CLAIR per
module on the factors and :mod:`~clair_stats.lora.cli` is the ``clair adapters``
command. Modules here import :mod:`clair_stats.pipeline`,
:mod:`clair_stats.solvers` and :mod:`clair_stats.core`; the safetensors package
is needed for the files (the ``lora`` extra).
"""

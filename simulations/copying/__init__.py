"""Federated LoRA on a small Transformer: the sequence-copying experiments.

The paper's Figures 2 and 3 (He, Chen, Feng 2026), on the copying tasks of Song, Xu
and Zhong (PNAS 2025). Modules, in the order of the pipeline:

* :mod:`~simulations.copying.tasks`: data generators (base copy, swap-copy, a mix
  of swapped and exact copies, label noise) and the corrected scoring mask (numpy
  only);
* :mod:`~simulations.copying.transformer`: the attention-only Transformer with
  LoRA adapters (needs torch);
* :mod:`~simulations.copying.training`: pretraining with a checkpoint cache keyed by
  its configuration, local LoRA fine-tuning, masked accuracy;
* :mod:`~simulations.copying.clients`: the cache of the clients' fine-tuned
  updates, keyed by what the training reads (numpy only), so that a change of
  CLAIR or of the evaluation reruns without fine-tuning;
* :mod:`~simulations.copying.federation`: one replicate: clients, the methods
  (local, FedAvg, SVD + refinement, CLAIR per module, oracle CLAIR), evaluation;
* :mod:`~simulations.copying.study`: the study (``python -m simulations.copying``),
  its figures and summary table.

Nothing here imports torch at package import: the data generators and the report
work without the ``torch`` extra.
"""

"""Step 4 of CLAIR per module and the refined PEFT adapters, one per client.

With the verdict's collaborative set S^ (the same in every module) and each
module's A^_m, every collaborative client's update is refined as
:func:`clair_stats.clair` refines (docs/pipeline.md §3.4,
:func:`clair_stats.pipeline.refine.refine_clients`): A^_m refitted on S^, and

.. math:: \\tilde\\Theta_{km} = \\bar\\Theta_m + (1 - b_{km}) P_{\\hat A_m}
          (\\hat\\Theta_{km} - \\bar\\Theta_m), \\qquad
          \\bar\\Theta_m = \\frac{1}{|\\hat S|}
          \\sum_{j \\in \\hat S} \\hat\\Theta_{jm},

b_km the empirical-Bayes share of the in-subspace deviation pooled away (sigma by
the median rule per module), truncated to a LoRA rank by SVD
(:func:`clair_stats.solvers.factored.refine_factored`, on the factors), and
written as one PEFT adapter per client
(:func:`clair_stats.lora.peft.write_adapter`, scaling 1). A flagged client keeps
its local update in every module. Each module's refined factors go to a temporary
safetensors file first, so that memory holds one module of all clients at a time.

A client whose update in module m is zero (an untrained module, left out of the module's
fit and test by :func:`clair_stats.lora.adapters.analyse_adapters`) keeps its zero
update there and does not enter Thetabar_m; in a module that was not tested every client
keeps its update. The refinement keeps (a share of) a client's own in-subspace part P_A^
Theta^_km and replaces the rest by the federation's P_A^^perp Thetabar_m; a zero update
has no in-subspace part, so the refinement would give it only the other clients'
off-subspace mean, the part CLAIR treats as client-specific, without the shared signal:
it would move the client's model in module m in directions estimated to be noise, where
the client itself trained nothing. Keeping the zero update leaves the module as the
client trained it (the base weights).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from os import PathLike
from pathlib import Path

import numpy as np

from clair_stats.core.optional import progress as progress_bar
from clair_stats.core.optional import require_safetensors
from clair_stats.core.validation import check_choice, check_int
from clair_stats.lora.adapters import _subset
from clair_stats.lora.peft import AdapterSet, write_adapter
from clair_stats.lora.report import AdaptersResult, _wording
from clair_stats.pipeline.paths import FactoredUpdates

__all__ = ["write_refined"]

_TMP = ".clair_tmp"


def write_refined(
    adapters: AdapterSet,
    result: AdaptersResult,
    out: str | PathLike[str],
    *,
    out_rank: int | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
) -> AdaptersResult:
    """Step 4 per module with the combined S^, then one adapter per client.

    Collaborative clients get the rank-t truncated SVD of Theta~_km = Thetabar_m + (1 -
    b_km) P_A^ (Theta^_km - Thetabar_m), with A^_m refitted on S^ and b_km the
    empirical-Bayes shrinkage of the module docstring (Thetabar_m over S^ without the
    zero updates of module m; b_km = 0 is the paper's P_A^ Theta^_km + P_A^^perp
    Thetabar_m); flagged clients, zero updates and every client of a module that was not
    tested their local factors (s_k B_km, A_km). Each module's refined factors go to a
    temporary safetensors file in ``out`` (so memory holds one module at a time), then
    each client's adapter is assembled from them and written to ``out/<client name>``
    (:func:`clair_stats.lora.peft.write_adapter`, scaling 1). This writes into ``out``
    in place; :func:`clair_stats.lora.cli.run_adapters` (``clair adapters``) writes a
    complete output elsewhere first and then moves it into place.

    Parameters
    ----------
    adapters : AdapterSet
        The K clients' adapters that ``result`` analysed.
    result : AdaptersResult
        From :func:`clair_stats.lora.adapters.analyse_adapters` on the same
        adapters.
    out : str or path-like
        The output folder.
    out_rank : int, optional
        t, the LoRA rank of every refined module; default each client's own rank.
    dtype : {"float32", "float16", "float64"}
        The dtype of the written factors (default ``"float32"``).
    overwrite : bool
        Replace adapters already in ``out``.
    progress : bool
        Show tqdm bars.

    Returns
    -------
    AdaptersResult
        ``result`` with the truncation errors per module and ``outputs``, the K
        adapter folders written.
    """
    safe_open = require_safetensors().safe_open
    save_file = require_safetensors("numpy").save_file

    from clair_stats.pipeline.refine import refine_clients

    if result.names != adapters.names or [m.name for m in result.modules] != list(
        adapters.module_names
    ):
        raise ValueError(
            "result does not belong to these adapters (different clients or "
            "modules); run analyse_adapters on them first."
        )
    if out_rank is not None:
        out_rank = check_int(out_rank, "out_rank", 1)
    dtype = check_choice(dtype, "dtype", ("float32", "float16", "float64"))
    folder = Path(out)
    targets = tuple(folder / name for name in result.names)
    if not overwrite:
        taken = [str(t) for t in targets if t.exists() and any(t.iterdir())]
        if taken:
            raise FileExistsError(
                f"output folder(s) {taken} already exist and are not empty; "
                + _wording(
                    "choose another --out or pass --overwrite.",
                    "choose another out or pass overwrite=True.",
                )
            )
    tmp = folder / _TMP
    tmp.mkdir(parents=True, exist_ok=True)
    modules = []
    try:
        for i, module in enumerate(
            progress_bar(result.modules, desc="refine per module", disable=not progress)
        ):
            updates = adapters.updates(module.name)
            factors_b = [s * b for s, b in zip(updates.scaling, updates.B, strict=True)]
            factors_a = list(updates.A)
            errors = np.zeros(result.n_clients)
            norms = updates.norms()
            if module.tested:
                kept = np.flatnonzero(~module.zero_update)
                work = FactoredUpdates(_subset(updates, kept)).oriented(result.side)
                refined = work.restore(
                    refine_clients(
                        work.data,
                        module.subspace,
                        result.collaborative[kept],
                        refined_rank=out_rank,
                    ).refined,
                    result.side,
                )
                for j, k in enumerate(kept):
                    factors_b[k], factors_a[k] = refined.B[j], refined.A[j]
                errors[kept] = refined.truncation_error
                norms[kept] = refined.refined_norm
            modules.append(replace(module, truncation_error=errors, refined_norm=norms))
            save_file(
                {
                    f"{k}.{x}": np.ascontiguousarray(f, dtype=np.float64)
                    for k in range(result.n_clients)
                    for x, f in (("B", factors_b[k]), ("A", factors_a[k]))
                },
                str(tmp / f"{i}.safetensors"),
            )
        for k in progress_bar(
            range(result.n_clients), desc="write adapters", disable=not progress
        ):
            factors = {}
            for i, module in enumerate(result.modules):
                with safe_open(str(tmp / f"{i}.safetensors"), framework="numpy") as f:
                    factors[module.name] = (
                        f.get_tensor(f"{k}.B"),
                        f.get_tensor(f"{k}.A"),
                    )
            write_adapter(
                targets[k],
                factors,
                adapters.adapters[k],
                dtype=dtype,
                overwrite=overwrite,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return replace(
        result,
        modules=tuple(modules),
        settings=dict(result.settings, out_rank=out_rank, dtype=dtype),
        outputs=tuple(str(t) for t in targets),
    )

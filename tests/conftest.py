"""Study results shared by the tests of ``simulations/`` and of ``notebooks/``.

A study's quick grid (``python simulations/<study>.py --quick``) is run at most once
per test session, at the first test that asks for it, into one temporary results
folder. The tests of a study read its frame; the report of ``notebooks/`` reads its
store through :func:`clair_stats.experiments.study.load_or_run`, which finds the grid
complete and computes nothing.

The copying experiment's quick grid trains 40 clients for 150 steps (about 1.5
minutes of CPU), so its tests and its report share a tiny grid instead
(:data:`COPYING_TINY`, two replicates per experiment, seconds). The quick grid of
``simulations/verdict_rules.py``, whose copying part trains with the copying
study's quick settings, is stored with the tiny settings too.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pytest

from clair_stats.experiments.study import Study, report_folder, run_study

#: The tiny copying federation: 5 clients (2 contaminated), one layer of width 8,
#: 10 pretraining steps, 3 fine-tuning steps per client.
COPYING_TINY: Mapping[str, Any] = {
    "n_clients": 5,
    "n_contaminated": 2,
    "n_train": 8,
    "n_test": 32,
    "vocab": 16,
    "length": 24,
    "d_model": 8,
    "n_layers": 1,
    "seg_min": 4,
    "seg_max": 6,
    "pretrain_steps": 10,
    "pretrain_batch": 8,
    "lora_rank": 2,
    "ft_steps": 3,
    "ft_batch": 4,
    "clair_rank": 1,
}
COPYING_TINY_REPLICATES = 2


@dataclass(frozen=True)
class StoredGrid:
    """A study grid run to completion in the session's results folder.

    Attributes
    ----------
    study : Study
        The grid (configurations, replicates, run function).
    args : argparse.Namespace
        The study script's parsed arguments (``args.quick`` is True).
    results : pathlib.Path
        The results folder (``CLAIR_RESULTS`` of a notebook that reads the grid).
    store : pathlib.Path
        ``<results>/<name>/results.sqlite``.
    report : pathlib.Path
        ``<results>/<name>/quick/``, where ``load_or_run`` writes the report.
    frame : pandas.DataFrame
        ``ResultStore.frame(study)``; take a copy before changing it.
    """

    study: Study
    args: argparse.Namespace
    results: Path
    store: Path
    report: Path
    frame: pd.DataFrame


def _store(study: Study, results: Path) -> tuple[Path, pd.DataFrame]:
    path = results / study.name / "results.sqlite"
    with run_study(study, path, progress=False) as store:
        return path, store.frame(study)


@pytest.fixture(scope="session")
def study_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's results folder (one store per study)."""
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="session")
def quick_grid(study_results: Path) -> Callable[[ModuleType], StoredGrid]:
    """``quick_grid(script)``: the quick grid of a study script of ``simulations/``,
    run at the first call and stored for the rest of the session."""
    done: dict[str, StoredGrid] = {}

    def get(script: ModuleType) -> StoredGrid:
        name = script.__name__
        if name not in done:
            parse = script.parser().parse_args
            args = parse(["--quick", "--results", str(study_results)])
            study = script.build(args)
            with pytest.MonkeyPatch.context() as patch:
                if name == "simulations.verdict_rules":
                    # its copying replicates train with the copying study's quick
                    # settings (80 s); the tiny ones take seconds
                    from simulations.copying import study as copying

                    patch.setattr(copying, "QUICK", dict(COPYING_TINY))
                path, frame = _store(study, study_results)
            folder = report_folder(study.name, True, study_results)
            done[name] = StoredGrid(study, args, study_results, path, folder, frame)
        return done[name]

    return get


@pytest.fixture(scope="session")
def copying_tiny() -> dict[str, Any]:
    """The settings of the tiny copying federation (a fresh copy)."""
    return dict(COPYING_TINY)


@pytest.fixture(scope="session")
def copying_grid(study_results: Path, copying_tiny: dict[str, Any]) -> StoredGrid:
    """Both copying experiments on the tiny federation, 2 replicates each, stored
    as the study ``copying`` (its pretraining checkpoint in the results folder)."""
    pytest.importorskip("torch")
    from simulations.copying import study as script

    configs = [{"experiment": e, **copying_tiny} for e in script.EXPERIMENTS]
    study = Study(
        name=script.NAME,
        run=script.run,
        configs=configs,
        replicates=COPYING_TINY_REPLICATES,
        version=script.VERSION,
    )
    with pytest.MonkeyPatch.context() as patch:
        # run() caches the pretrained model under $CLAIR_RESULTS/copying/
        patch.setenv("CLAIR_RESULTS", str(study_results))
        path, frame = _store(study, study_results)
    args = argparse.Namespace(quick=True, results=study_results)
    folder = report_folder(study.name, True, study_results)
    return StoredGrid(study, args, study_results, path, folder, frame)

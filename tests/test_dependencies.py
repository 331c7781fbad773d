"""The core installs and imports without the extras (pyproject's dependency split).

``pip install clair_stats`` brings numpy, scipy, cvxpy, statsmodels, matplotlib
and threadpoolctl; pandas, joblib, tqdm and dask (studies), safetensors (LoRA
files), torch and flwr (Flower's aggregators) are extras. Each check runs in a
fresh interpreter, where the extras are made unimportable by a meta-path finder,
as on a machine without them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

EXTRAS = (
    "pandas",
    "joblib",
    "dask",
    "distributed",
    "tqdm",
    "safetensors",
    "torch",
    "flwr",
)

BLOCK = textwrap.dedent(
    f"""
    import importlib.abc, sys

    class _NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {EXTRAS!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, _NotInstalled())
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_loads_no_extra():
    """``import clair_stats`` imports none of the extras' packages."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, clair_stats; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = set(json.loads(out.stdout))
    assert loaded.isdisjoint(EXTRAS), sorted(loaded & set(EXTRAS))


def test_the_estimator_runs_without_the_extras():
    """clair(), decompose() with both solvers and the baselines need only the core."""
    done = _run(
        """
        import numpy as np
        from clair_stats import FederatedModel, clair, decompose
        from clair_stats.evaluation import baselines, metrics

        sample = FederatedModel(p=12, q=2, rank=2, n_clients=10).sample(seed=0)
        result = clair(sample.updates, rank=2)
        assert np.array_equal(result.collaborative, sample.benign)
        decompose(sample.updates[:, :6], solver="cvxpy", cvxpy_solver="SCS")
        baselines.svd_refine(sample.updates, 2)
        metrics.projection_distance(result.subspace, sample.subspace)
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")


def test_the_study_runner_says_which_extra_to_install(tmp_path):
    """Without pandas, reading a study's results names the ``studies`` extra."""
    done = _run(
        f"""
        from clair_stats.experiments.study import ResultStore
        with ResultStore({str(tmp_path / "r.sqlite")!r}, "s", "1") as store:
            store.frame()
        """
    )
    assert done.returncode != 0
    assert "pip install 'clair_stats[studies]'" in done.stderr


def test_clair_adapters_without_safetensors_names_the_extra(tmp_path):
    """Without safetensors, ``clair adapters`` stops with one line naming the extra."""
    from clair_stats.lora.synthetic import synthetic_federation

    folders = synthetic_federation(4, contaminated={}, seed=0).write(tmp_path / "in")
    argv = ["adapters", *map(str, folders), "--out", str(tmp_path / "out")]
    done = _run(
        f"""
        from clair_stats.__main__ import main
        main({argv!r})
        """
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'clair_stats[lora]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_clair_strategy_says_which_extra_to_install():
    code = BLOCK + textwrap.dedent(
        """
        import clair_stats
        from clair_stats import *  # the strategy is not in __all__
        from clair_stats.flower import ClientHistory  # numpy only
        try:
            clair_stats.ClairStrategy
        except ImportError as exc:
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "pip install 'clair_stats[flower]'" in out.stdout

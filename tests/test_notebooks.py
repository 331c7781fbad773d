"""The reports of notebooks/ execute in quick mode and say what they show.

Each notebook runs its study's quick grid into a temporary results folder (as CI
does: nothing is stored in a clean clone) and is exported to HTML, as
``make report`` does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clair_stats.experiments.reports import execute_notebook, notebook_paths

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = notebook_paths(ROOT / "notebooks")
HEADER = "#   jupytext:\n#     formats: py:percent"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_a_jupytext_report_of_a_study(path):
    text = path.read_text()
    assert HEADER in text, f"{path.name} is not in jupytext percent format"
    assert text.count("# %% [markdown]") >= 2, "a report reads its figures in prose"
    assert "load_or_run(" in text, "a report reads stored results or runs --quick"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_in_quick_mode(path, tmp_path):
    pytest.importorskip("nbclient")
    html = execute_notebook(
        path, tmp_path / "reports", root=ROOT, mode="quick", results=tmp_path / "res"
    )
    text = html.read_text()
    assert "<img" in text, f"{path.name} shows no figure"
    assert "Traceback" not in text

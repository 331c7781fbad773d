"""The studies' archive (docs/studies/): complete, current, small, and rewritable.

The committed archive is checked against the studies' code (every archived
study at its current version, every listed file present, the whole under the few
megabytes the repository can carry); the archiving itself is checked on a toy
study registered for the test: it refuses an incomplete grid, writes the figures
as palette PNGs with the tables, the page and the provenance, replaces an older
archive whole, and ``make report``'s page shows the archived figures.
"""

from __future__ import annotations

import base64
import json
import sys
import types
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from clair_stats.experiments import archive  # noqa: E402
from clair_stats.experiments.study import (  # noqa: E402
    ResultStore,
    Study,
    grid,
    run_study,
    study_parser,
)

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "docs" / "studies"
#: "a few MB at most" for the whole archive, figures and tables.
MAX_BYTES = 5_000_000


def test_the_committed_archive_matches_the_studies():
    """Every archived study is at its current version, with all its files."""
    assert archive.check_archive(DEST) == []


def test_the_committed_archive_is_small_and_indexed():
    files = [f for f in DEST.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < MAX_BYTES
    index = (DEST / "index.md").read_text()
    archived = sorted(p.parent.name for p in DEST.glob("*/provenance.json"))
    assert archived, "no study is archived"
    for name in archived:
        assert f"[{name}]({name}.md)" in index
        page = (DEST / f"{name}.md").read_text()
        info = json.loads((DEST / name / "provenance.json").read_text())
        for figure in info["figures"]:
            assert f"]({name}/{figure})" in page
    for name in set(archive.STUDIES) - set(archived):
        assert f"`{name}`" in index, f"{name} is neither archived nor listed as absent"


def _toy_run(config: dict, seed: int) -> dict:
    return {"value": config["a"] * 10 + seed % 7}


def _toy_module(replicates: int) -> types.ModuleType:
    """A study script: parser, build and report, as in simulations/."""
    module = types.ModuleType("toy_study")
    module.__doc__ = "A toy study: values against ``a``.\n\nMore text."

    def parser():
        return study_parser("toy")

    def build(args):
        return Study("toy", _toy_run, grid(a=[1, 2, 3]), replicates, "7")

    def report(frame, folder, args):
        folder.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots()
        ax.plot(frame["a"], frame["value"], "o")
        fig.savefig(folder / "values.png")
        plt.close(fig)
        (folder / "summary.md").write_text("| a | n |\n|---|---|\n| 1 | 2 |\n")
        (folder / "summary.csv").write_text("a,n\n1,2\n")

    module.parser, module.build, module.report = parser, build, report
    return module


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """Registers the toy study as ``toy`` and returns (results, dest)."""
    module = _toy_module(replicates=2)
    monkeypatch.setitem(sys.modules, "toy_study", module)
    monkeypatch.setitem(archive.STUDIES, "toy", "toy_study")
    results, dest = tmp_path / "results", tmp_path / "dest"
    return module, results, dest


def test_an_incomplete_grid_is_refused_with_the_command(toy):
    module, results, dest = toy
    with pytest.raises(archive.ArchiveError, match="no stored results"):
        archive.archive_study("toy", results=results, dest=dest)
    small = Study("toy", _toy_run, grid(a=[1, 2, 3]), 1, "7")
    with run_study(small, results / "toy" / "results.sqlite", progress=False):
        pass
    with pytest.raises(archive.ArchiveError, match=r"3 of 6 replicates.*resumes"):
        archive.archive_study("toy", results=results, dest=dest)
    assert not archive.full_grid_stored("toy", results)
    assert not (dest / "toy").exists()


def test_archive_writes_figures_tables_page_and_provenance(toy):
    module, results, dest = toy
    study = module.build(None)
    with run_study(study, results / "toy" / "results.sqlite", progress=False):
        pass
    assert archive.full_grid_stored("toy", results)
    folder = archive.archive_study("toy", results=results, dest=dest)
    assert sorted(p.name for p in folder.iterdir()) == [
        "provenance.json",
        "summary.md",
        "values.png",
    ]
    with Image.open(folder / "values.png") as image:
        assert image.mode == "P"  # a palette PNG
    info = json.loads((folder / "provenance.json").read_text())
    assert info["version"] == "7"
    assert (info["configurations"], info["replicates"], info["rows"]) == (3, 2, 6)
    assert info["title"] == "A toy study: values against `a`"
    assert info["spot_check"]["reproduced"] == info["spot_check"]["checked"] == 4
    page = (dest / "toy.md").read_text()
    assert "[![values.png](toy/values.png)](toy/values.png)" in page
    assert "```{include} toy/summary.md" in page
    assert archive.check_archive(dest) == []
    # a second archive replaces the first whole, and no temporary folder is left,
    # not even one an interrupted run left behind
    (folder / "stale.png").write_bytes(b"x")
    (dest / ".toy-killed" / "old").mkdir(parents=True)
    archive.archive_study("toy", results=results, dest=dest)
    assert not (folder / "stale.png").exists()
    assert sorted(p.name for p in dest.iterdir()) == ["toy", "toy.md"]
    index = archive.write_index(dest)
    assert "[toy](toy.md)" in index.read_text()


def test_spot_check_finds_results_the_code_no_longer_gives(toy):
    """A stored value that the rerun does not give is counted and located."""
    import sqlite3

    module, results, dest = toy
    study = module.build(None)
    path = results / "toy" / "results.sqlite"
    with run_study(study, path, progress=False):
        pass
    key, replicate, seed = next(iter(study.tasks()))
    stored = _toy_run(json.loads(key), seed)["value"]
    with sqlite3.connect(path) as connection:
        connection.execute(
            "UPDATE runs SET result = ? WHERE config = ? AND replicate = ?",
            (json.dumps([{"value": stored * 1.01}]), key, replicate),
        )
    with ResultStore(path, study.name, study.version) as store:
        check = archive.spot_check(study, store)
    assert check["reproduced"] == 3, check
    assert check["max_relative_difference"] == pytest.approx(0.01 / 1.01)
    assert check["where"] == "[0]/value"
    folder = archive.archive_study("toy", results=results, dest=dest)
    page = (dest / "toy.md").read_text()
    assert "3 of 4 gave the stored results" in page
    assert "`[0]/value`" in page
    assert folder.exists()


def test_check_names_a_stale_version_and_a_missing_file(toy):
    module, results, dest = toy
    study = module.build(None)
    with run_study(study, results / "toy" / "results.sqlite", progress=False):
        pass
    folder = archive.archive_study("toy", results=results, dest=dest)
    info = json.loads((folder / "provenance.json").read_text())
    info["version"] = "6"
    (folder / "provenance.json").write_text(json.dumps(info))
    (folder / "summary.md").unlink()
    (folder / "extra.png").write_bytes(b"x")
    (dest / ".toy-killed").mkdir()
    problems = archive.check_archive(dest)
    assert any("version 6" in line and "version 7" in line for line in problems)
    assert any("summary.md is listed but missing" in line for line in problems)
    assert any("extra.png is not listed" in line for line in problems)
    assert any(".toy-killed" in line for line in problems)
    assert archive.main(["--check", "--dest", str(dest)]) == 1


def test_the_report_page_embeds_the_archived_figures(toy, tmp_path):
    pytest.importorskip("nbconvert")
    module, results, dest = toy
    with run_study(
        module.build(None), results / "toy" / "results.sqlite", progress=False
    ):
        pass
    archive.archive_study("toy", results=results, dest=dest)
    page = archive.archive_report("toy", tmp_path / "html", dest=dest)
    text = page.read_text()
    figure = base64.b64encode((dest / "toy" / "values.png").read_bytes()).decode()
    assert f"data:image/png;base64,{figure}" in text
    assert 'href="toy/values.png"' not in text  # no link to a file not beside it
    assert "<table" in text  # the included Markdown table, rendered
    with pytest.raises(FileNotFoundError, match="not archived"):
        archive.archive_report("fig1_subspace_error", tmp_path, dest=dest)


def test_unknown_study_names_are_refused():
    with pytest.raises(ValueError, match="no study named"):
        archive.study_script("nope")
    with pytest.raises(SystemExit):
        archive.main(["nope"])

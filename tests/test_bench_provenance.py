"""The benchmark reports record no path of the machine they ran on.

The header of ``benchmarks/results/*.md`` is written by ``header()`` of each script
and :func:`benchmarks._provenance.command_line`; both are checked here without
running a benchmark.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
# an absolute path: "/" or "C:\" right after a start, blank, quote, "=" or "("
ABSOLUTE = re.compile(r"(?:^|[\s`'\"=(])(?:/|[A-Za-z]:\\)\w")


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    """Import a script of benchmarks/ as ``python benchmarks/<script>.py`` would."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module


def test_absolute_pattern_finds_absolute_paths():
    """The detector itself: it flags what the old headers wrote, not relative paths."""
    assert ABSOLUTE.search("- command: `/opt/venv/bin/python bench.py`")
    assert ABSOLUTE.search("--out /tmp/a/full.md")
    assert ABSOLUTE.search("--out=/tmp/a/full.md")
    assert not ABSOLUTE.search("python benchmarks/bench_solvers.py --out x/y.md")
    assert not ABSOLUTE.search("seed=2026 + p; 3/(7 sqrt(gamma)), load 2.5 / 2.4")


def test_command_line_is_relative_to_the_repository_root(bench, tmp_path):
    """Script, path arguments (also --option=value) inside the repository become
    relative to its root, paths outside it keep their name only; other arguments
    are unchanged, whatever the directory the command ran in."""
    command_line = bench("_provenance").command_line
    argv = [
        str(BENCH / "bench_lora_scale.py"),
        "--cap",
        "1500",
        "--out",
        str(tmp_path / "full.md"),
        f"--log={ROOT / 'benchmarks' / 'results' / 'x.md'}",
        "--sizes",
        "20x100,60x500",
    ]
    line = command_line(argv, cwd=tmp_path)
    assert line == (
        "python benchmarks/bench_lora_scale.py --cap 1500 --out '<elsewhere>/full.md' "
        "--log=benchmarks/results/x.md --sizes 20x100,60x500"
    )
    # relative tokens are read from the directory of the run
    line = command_line(["bench_solvers.py", "--out", "results/s.md"], cwd=BENCH)
    assert line == "python benchmarks/bench_solvers.py --out benchmarks/results/s.md"


def test_command_line_needs_the_script(bench):
    with pytest.raises(ValueError, match="argv is empty"):
        bench("_provenance").command_line([])


@pytest.mark.parametrize(
    ("script", "options"),
    [
        ("bench_solvers", {"cvxpy_cap": 120.0, "repeats": 5}),
        ("bench_lora_scale", {"repeats": 3}),
        ("bench_refit", {"repeats": 3}),
        ("bench_adapters", {"jobs": 2}),
    ],
)
def test_report_header_has_no_absolute_path(bench, script, options, tmp_path):
    """The header of a report, for a run started with absolute paths from another
    directory (as the committed results once were), names no absolute path."""
    if script == "bench_solvers":
        pytest.importorskip("cvxpy")
        pytest.importorskip("scs")
    module = bench(script)
    argv = [str(BENCH / f"{script}.py"), "--out", str(tmp_path / "out.md")]
    lines = module.header(argparse.Namespace(**options), "now", argv=argv)
    text = "\n".join(lines)
    assert "- command: `python benchmarks/" in text
    assert ABSOLUTE.search(text) is None, text
    for path in (sys.executable, str(ROOT), str(tmp_path)):
        assert path not in text


@pytest.mark.parametrize(
    "name", ["solvers.md", "lora_scale.md", "refit.md", "adapters.md"]
)
def test_committed_results_name_no_absolute_path(name):
    """The committed reports (written before this check existed, fixed by hand)."""
    text = (BENCH / "results" / name).read_text()
    assert ABSOLUTE.search(text) is None

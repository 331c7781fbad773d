"""The repository carries its own maths: every pointer into ``docs/`` resolves.

Code, tests, studies, notebooks and the README cite the maths as
``docs/<page>.md §<section>``. These tests read every tracked text file and check
that each cited page exists and has a heading with that section number, so that a
renamed or renumbered section cannot leave dangling pointers behind. They also
check that nothing outside ``docs/`` points to a source a reader cannot see.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".cfg", ".ini", ".rst"}

# "docs/pipeline.md §3.3.2", "`docs/pipeline.md` §3.3", "docs/findings.md §F7",
# also when a line break and a comment marker fall between page and section, and
# lists or ranges on one page: "docs/findings.md §F2, §F6", "§F7-§F8".
SECTION = r"§\s*[0-9F][0-9]*(?:\.[0-9]+)*"
POINTER = re.compile(
    rf"docs/([A-Za-z0-9_-]+)\.md`?((?:[\s#*]*{SECTION})(?:\s*(?:,|-|and)\s*{SECTION})*)?"
)
SECTION_ID = re.compile(r"§\s*([0-9F][0-9]*(?:\.[0-9]+)*)")
HEADING = re.compile(r"^#+ .*?§([0-9F][0-9]*(?:\.[0-9]+)*)", re.MULTILINE)


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        pytest.skip("not a git checkout: the tracked files are unknown")
    paths = [ROOT / line for line in out.stdout.splitlines()]
    return [p for p in paths if p.suffix in TEXT_SUFFIXES and p.is_file()]


def _pointers(inside_docs: bool) -> list[tuple[str, str, str]]:
    """(file, page, section or '') for every pointer in the tracked files inside
    or outside docs/, one entry per section of a list."""
    found = []
    for path in _tracked_text_files():
        if (DOCS in path.parents) != inside_docs:
            continue
        where = str(path.relative_to(ROOT))
        text = path.read_text(encoding="utf-8", errors="replace")
        for page, sections in POINTER.findall(text):
            ids = SECTION_ID.findall(sections) or [""]
            found += [(where, page, section) for section in ids]
    return found


def _dangling(pointers: list[tuple[str, str, str]]) -> list[str]:
    """The pointers whose page does not exist or has no heading of the section."""
    sections = {
        page.stem: set(HEADING.findall(page.read_text(encoding="utf-8")))
        for page in DOCS.glob("*.md")
    }
    return sorted(
        {
            f"{where}: docs/{page}.md" + (f" §{section}" if section else "")
            for where, page, section in pointers
            if page not in sections or (section and section not in sections[page])
        }
    )


def test_pointers_are_found():
    # the scan itself must see the pointers it is meant to check, lists included
    pointers = _pointers(inside_docs=False)
    assert len(pointers) >= 100
    assert any(section for _, _, section in pointers)
    assert ("clair_stats/core/lowrank.py", "programs", "5") in pointers


def test_every_pointer_resolves():
    dangling = _dangling(_pointers(inside_docs=False))
    assert not dangling, "pointers to missing pages or sections:\n" + "\n".join(
        dangling
    )


def test_pointers_inside_docs_resolve():
    # docs pages cite each other as "`docs/claims.md` §4.5"
    dangling = _dangling(_pointers(inside_docs=True))
    assert not dangling, "\n".join(dangling)


def test_no_pointer_to_unseen_sources():
    # the notation source and the issue tracker are not in the repository
    unseen = re.compile(r"\bSPEC\b|\b[Ii]ssue #\d+")
    hits = []
    for path in _tracked_text_files():
        if DOCS in path.parents or path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if unseen.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)

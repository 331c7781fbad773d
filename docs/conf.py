"""Sphinx configuration of the clair_stats site (``make docs``).

The site is built from this folder: the theory pages (the Markdown files of
``docs/``, read by MyST), the user guide (``docs/guide/``), the API reference
(``docs/api/``, generated from the ``__all__`` of every module by
``docs/_ext/apigen.py``), the gallery (``examples/plot_*.py``, executed by
sphinx-gallery at every build) and the studies' full-grid results
(``docs/studies/``, written by ``make archive``). Warnings are errors (``-W``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE / "_ext"))

# The gallery's scripts run in this process: one BLAS thread each, no windows.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import apigen  # noqa: E402

import clair_stats  # noqa: E402

# The API pages are written before Sphinx lists the source files.
apigen.write_pages(HERE)

project = "clair_stats"
author = "the clair_stats developers"
copyright = "2026, the clair_stats developers"
release = version = clair_stats.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "apigen",
]

exclude_patterns = []
# CLAIR_DOCS_GALLERY=0 leaves the gallery out (a quick build of the other pages).
if os.environ.get("CLAIR_DOCS_GALLERY") == "0":
    extensions.remove("sphinx_gallery.gen_gallery")
    exclude_patterns = ["auto_examples", "sg_execution_times.rst"]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# the studies' tables are included into their pages, not pages of their own
exclude_patterns += ["_build", "_templates", "_gallery", "studies/*/*.md"]
templates_path = ["_templates"]

# MyST: the theory pages write maths as $...$ and $$...$$.
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 4

# autodoc / autosummary / numpydoc
autosummary_generate = True
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# Every reference must resolve (-n): a reference to a clair_stats object by another
# path than its page's is resolved by apigen; the libraries outside clair_stats
# have no inventories offline, and private names have no page.
nitpicky = True
nitpick_ignore_regex = [
    ("py:.*", r"(?!clair_stats)[a-z]\w*\..*"),  # numpy., scipy., flwr., ...
    ("py:.*", r"(.*\.)?_\w+"),  # private helpers
]

# Links into the libraries the API names in its docstrings (offline builds: the
# inventories are not fetched; a missing one only loses links).
intersphinx_mapping = {}

html_theme = "pydata_sphinx_theme"
html_title = "clair_stats"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path = ["_static"]
html_css_files = ["clair.css"]

# The gallery's sources are examples/GALLERY_HEADER.rst and examples/plot_*.py.
# sphinx-gallery would take every subfolder of examples/ with a README for a
# section of the gallery (examples/flower_copying/, a Flower app, has one), so the
# gallery is read from a copy of just those files (docs/_gallery/, a build product).
GALLERY = HERE / "_gallery"


def _stage_gallery() -> None:
    GALLERY.mkdir(exist_ok=True)
    wanted = [ROOT / "examples" / "GALLERY_HEADER.rst"]
    wanted += sorted((ROOT / "examples").glob("plot_*.py"))
    for stale in set(GALLERY.iterdir()) - {GALLERY / f.name for f in wanted}:
        stale.unlink()
    for source in wanted:
        target = GALLERY / source.name
        if not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copy2(source, target)


_stage_gallery()

sphinx_gallery_conf = {
    "examples_dirs": str(GALLERY),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "plot_gallery": "True",
    "min_reported_time": 0,
    "within_subsection_order": "gallery_order.ExampleOrder",
}

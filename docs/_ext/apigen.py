"""The API reference pages (``docs/api/``) from the ``__all__`` of every module.

Called by ``docs/conf.py`` (before Sphinx looks for the source files), it walks
the ``clair_stats`` package and writes one page per public module, listing the
names of its ``__all__``; autosummary then writes one page per name
(``docs/api/generated/``). Every object is documented once, under its shortest
public path: ``clair_stats.<name>`` for the names the package exports,
``clair_stats.lora.<name>`` and ``clair_stats.flower.<name>`` for those of the two
subpackages, else its module. A module page lists the names it exports that are
documented elsewhere as links. Both folders are build products
(ignored by git): the reference cannot fall behind the code.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections import defaultdict
from pathlib import Path

PACKAGE = "clair_stats"
#: Subpackages whose ``__init__`` re-exports a public API of its own.
FACADES = ("clair_stats.lora", "clair_stats.flower")
#: The sections of the reference, in order: (title, modules' prefix, text).
SECTIONS = (
    ("core", "Validation, warnings, linear algebra, programs, penalties, results."),
    ("solvers", "The exact (cvxpy) and fast (proximal) solvers of P0 / P1."),
    ("pipeline", "The estimator's steps: decompose, subspace, detect, refine."),
    ("simulate", "Federations: the model, contamination types, attacks."),
    ("evaluation", "Baselines and metrics."),
    ("theory", "The formulas of the claims T1, T3, T4."),
    ("lora", "PEFT adapters, factored updates and ``clair adapters``."),
    ("flower", "CLAIR as a Flower strategy (the ``flower`` extra)."),
    ("experiments", "The study runner, plotting, reports and the demo."),
)


def public_modules() -> list[str]:
    """Dotted names of the modules with an ``__all__`` (private ones skipped)."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
        last = info.name.rsplit(".", 1)[-1]
        if last.startswith("_"):
            continue
        module = importlib.import_module(info.name)
        if getattr(module, "__all__", None):
            names.append(info.name)
    return names


def _rank(module: str, obj: object) -> tuple:
    """Sort key of a public path: the package, then the facades, then the home."""
    if module == PACKAGE:
        return (0, module)
    if module in FACADES:
        return (1, module)
    home = getattr(obj, "__module__", None)
    return (2 if home == module else 3, len(module), module)


def canonical_paths() -> tuple[dict[str, list[str]], dict[str, list[tuple]]]:
    """Which names each module documents, and which it only links to."""
    exports: dict[object, list[tuple[str, str]]] = defaultdict(list)
    objects: dict[object, object] = {}
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        names = list(module.__all__)
        if module_name == PACKAGE:
            names.append("ClairStrategy")  # lazy: needs the flower extra
        for name in names:
            obj = getattr(module, name)
            # constants: one object may be two unrelated names (small ints)
            key = id(obj) if callable(obj) else (id(obj), name)
            objects[key] = obj
            exports[key].append((module_name, name))
    documents: dict[str, list[str]] = defaultdict(list)
    links: dict[str, list[tuple]] = defaultdict(list)
    for key, places in exports.items():
        module_name, name = min(places, key=lambda p: _rank(p[0], objects[key]))
        documents[module_name].append(name)
        for other, other_name in places:
            if other != module_name:
                links[other].append((other_name, f"{module_name}.{name}"))
    return documents, links


def _kind(obj: object) -> str:
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "data"


def _title(text: str, mark: str = "=") -> str:
    return f"{text}\n{mark * len(text)}\n"


def write_pages(srcdir: str | Path) -> None:
    """Write ``api/index.rst`` and one page per module under ``srcdir``."""
    folder = Path(srcdir) / "api"
    folder.mkdir(exist_ok=True)
    documents, links = canonical_paths()
    modules = sorted(set(documents) | set(links))
    for module_name in modules:
        module = importlib.import_module(module_name)
        lines = [
            f".. _api-{module_name}:",
            "",
            _title(f"``{module_name}``"),
            f".. automodule:: {module_name}",
            "   :no-members:",
            "   :no-index:",
            "",
        ]
        names = documents.get(module_name, [])
        groups = defaultdict(list)
        for name in names:
            obj = getattr(module, name)
            groups[_kind(obj)].append(name)
        titles = {"function": "Functions", "class": "Classes", "data": "Constants"}
        for kind in ("function", "class", "data"):
            if not groups[kind]:
                continue
            lines += [_title(titles[kind], "-"), f".. currentmodule:: {module_name}"]
            lines.append("")
            template = {"class": "class.rst", "data": "data.rst"}.get(kind)
            lines += [".. autosummary::", "   :toctree: generated/"]
            lines.append("   :nosignatures:")
            if template:
                lines.append(f"   :template: {template}")
            lines.append("")
            lines += [f"   {name}" for name in sorted(groups[kind])]
            lines.append("")
        if links.get(module_name):
            lines += [_title("Also exported here", "-")]
            for name, target in sorted(links[module_name]):
                role = {"class": "class", "function": "func", "data": "data"}[
                    _kind(getattr(module, name))
                ]
                lines.append(f"- ``{name}``: :{role}:`{target}`")
            lines.append("")
        _write(folder / f"{module_name}.rst", "\n".join(lines))
    index = [
        ".. _api:",
        "",
        _title("API reference"),
        "Every public name of ``clair_stats``, from its numpydoc docstring. The",
        "names most users need are exported by the package itself",
        "(:ref:`api-clair_stats`); the subpackages follow the estimator's layers,",
        "imports pointing down (``experiments`` → ``lora`` → ``pipeline`` →",
        "``solvers`` → ``core``).",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "   :caption: The package",
        "",
        f"   {PACKAGE}",
    ]
    for facade in FACADES:
        if facade in modules:
            index.append(f"   {facade}")
    index.append("")
    for section, text in SECTIONS:
        members = [
            m
            for m in modules
            if m.startswith(f"{PACKAGE}.{section}.") and m not in FACADES
        ]
        if not members:
            continue
        index += [
            ".. toctree::",
            "   :maxdepth: 1",
            f"   :caption: {section}: {text}",
            "",
        ]
        index += [f"   {m}" for m in members]
        index.append("")
    _write(folder / "index.rst", "\n".join(index))


def _write(path: Path, text: str) -> None:
    """Write only on change, so that Sphinx does not rebuild unchanged pages."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")

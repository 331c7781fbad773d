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

import functools
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


@functools.cache
def public_modules() -> list[str]:
    """Dotted names of the package, its subpackages and modules (private ones,
    ``_name``, skipped; ``__main__``, the command line, kept)."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE, f"{PACKAGE}.__main__"]
    for info in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
        last = info.name.rsplit(".", 1)[-1]
        if not last.startswith("_"):
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


@functools.cache
def canonical_paths() -> tuple[dict[str, list[str]], dict[str, list[tuple]]]:
    """Which names each module documents, and which it only links to."""
    exports: dict[object, list[tuple[str, str]]] = defaultdict(list)
    objects: dict[object, object] = {}
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        names = list(getattr(module, "__all__", []))
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
    modules = public_modules()
    for module_name in modules:
        module = importlib.import_module(module_name)
        lines = [
            f".. _api-{module_name}:",
            "",
            _title(f"``{module_name}``"),
            f".. automodule:: {module_name}",
            "   :no-members:",
            "",
        ]
        inside = [m for m in modules if m.rpartition(".")[0] == module_name]
        if inside:
            lines += [_title("Modules", "-")]
            lines += [f"- :mod:`{m}`" for m in inside]
            lines.append("")
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
            lines += [".. autosummary::", "   :toctree: generated/"]
            lines.append("   :nosignatures:")
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
        f"   {PACKAGE}.__main__",
    ]
    for facade in FACADES:
        if facade in modules:
            index.append(f"   {facade}")
    index.append("")
    for section, text in SECTIONS:
        members = [
            m
            for m in modules
            if (m == f"{PACKAGE}.{section}" or m.startswith(f"{PACKAGE}.{section}."))
            and m not in FACADES
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


@functools.cache
def canonical_names() -> tuple[dict[int, str], dict[str, str]]:
    """Where each public object is documented: by ``id`` for functions and
    classes, and by every exported path (``module.name``, constants included)."""
    documents, links = canonical_paths()
    names, paths = {}, {}
    for module_name, members in documents.items():
        module = importlib.import_module(module_name)
        for name in members:
            obj = getattr(module, name)
            paths[f"{module_name}.{name}"] = f"{module_name}.{name}"
            if callable(obj):
                names[id(obj)] = f"{module_name}.{name}"
    for module_name, pairs in links.items():
        for name, target in pairs:
            paths[f"{module_name}.{name}"] = target
    return names, paths


def _lookup(path: str) -> object | None:
    """The object at a dotted path (module prefix imported), or None."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def resolve_alias(app, env, node, contnode):
    """``missing-reference``: a reference to a public object by another path (its
    home module, a re-export, a name relative to the current module or class) is
    resolved to the page where the object is documented."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    module, cls = node.get("py:module"), node.get("py:class")
    candidates = [target]
    if module:
        if cls:
            candidates.append(f"{module}.{cls}.{target}")
        candidates.append(f"{module}.{target}")
    # the home module of the object whose page holds the reference: a docstring
    # names its module's other objects by their short names
    page = _lookup(node["refdoc"].rpartition("/")[2])
    home = getattr(page, "__module__", None) or getattr(page, "__name__", None)
    if isinstance(home, str):
        candidates.append(f"{home}.{target}")
    candidates.append(f"{PACKAGE}.{target}")
    canonical, paths = canonical_names()
    domain = env.get_domain("py")
    for candidate in candidates:
        if not candidate.startswith(PACKAGE):
            continue
        head, _, attr = candidate.rpartition(".")
        obj = _lookup(candidate)
        if obj is None:
            continue
        if candidate in paths:
            new = paths[candidate]
        elif callable(obj) and id(obj) in canonical:
            new = canonical[id(obj)]
        else:  # a method or property: its class's page
            owner = _lookup(head)
            if owner is None or id(owner) not in canonical:
                continue
            new = f"{canonical[id(owner)]}.{attr}"
        for kind in (node["reftype"], "obj"):
            found = domain.resolve_xref(
                env, node["refdoc"], app.builder, kind, new, node, contnode
            )
            if found is not None:
                return found
    return None


def setup(app):
    app.connect("missing-reference", resolve_alias)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""Every public function, class, method and property documents all its parameters.

The public names are those of the ``__all__`` of every module of ``clair_stats``
(``clair_stats.__main__`` and the private modules, whose last component starts with
``_``, excluded) that are functions or classes, de-duplicated by identity (a name
re-exported by a package is checked once, at its definition), plus
``clair_stats.ClairStrategy`` (a lazy attribute of the package, not in its
``__all__``). For each public class, its public methods and properties are checked
too: the members of the ``__dict__`` of every class of its MRO that clair_stats
defines (so not those a third-party base class brings), dunder and private names
excluded.

Each object goes through ``numpydoc.validate.validate`` (the check scikit-learn and
skglm run in their tests) and fails on the codes of :data:`CHECKED_CODES`: no
docstring, no summary, a parameter missing from the Parameters section, a documented
parameter that does not exist, a parameter with no description. For a class, the
parameters are those of its constructor, documented in the class docstring: for a
dataclass, its fields with ``init=True``, which numpydoc looks for in the
Parameters section (an Attributes section does not count). Two departures from
numpydoc, both in :func:`docstring_errors`: a parameter whose type is a set of
options (``{"a", "b"}``) with no description is reported (numpydoc skips the
description check of such parameters), and a ``typing.Protocol`` class is not
checked for constructor parameters (it has none: its signature is typing's
placeholder).

numpydoc comes with the ``docs`` extra and Flower (for ``ClairStrategy``) with the
``flower`` extra; without them the test is skipped.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from typing import Protocol

import pytest

pytest.importorskip("numpydoc")
pytest.importorskip("flwr")

from numpydoc.docscrape import get_doc_object  # noqa: E402
from numpydoc.validate import ERROR_MSGS, Validator, validate  # noqa: E402

import clair_stats  # noqa: E402

#: The numpydoc codes this test fails on, with what each means.
CHECKED_CODES = {
    "GL08": "no docstring",
    "SS01": "no summary line",
    "PR01": "a parameter is not documented",
    "PR02": "a documented parameter does not exist",
    "PR07": "a parameter has no description",
}

#: Public names that no module's ``__all__`` lists: lazy attributes of a package.
LAZY_NAMES = ("clair_stats.ClairStrategy",)


def _public_modules() -> list:
    """The package and every module under it, except ``__main__`` and private ones."""
    modules = [clair_stats]
    for info in pkgutil.walk_packages(clair_stats.__path__, prefix="clair_stats."):
        if info.name == "clair_stats.__main__":
            continue
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        modules.append(importlib.import_module(info.name))
    return modules


def _is_clair(obj) -> bool:
    """Whether ``obj`` (a function or a class) is defined in a clair_stats module."""
    return getattr(obj, "__module__", "").split(".")[0] == "clair_stats"


def _path(obj) -> str:
    """The dotted path ``numpydoc`` imports ``obj`` from: where it is defined."""
    return f"{obj.__module__}.{obj.__qualname__}"


def _members(cls: type) -> list[tuple[str, object]]:
    """The public methods and properties of ``cls`` defined by clair_stats classes.

    Walks the MRO of ``cls``: for every class of it that a clair_stats module
    defines, the non-dunder, non-private entries of its ``__dict__`` that are
    functions, static or class methods, properties or cached properties. A member
    that a subclass overrides is taken from the subclass only. Returns
    ``(dotted path, identity key)`` pairs, the path going through the class that
    defines the member.
    """
    found = []
    seen_names: set[str] = set()
    for klass in cls.__mro__:
        if not _is_clair(klass):
            continue
        for name, member in vars(klass).items():
            if name.startswith("_") or name in seen_names:
                continue
            if isinstance(member, (staticmethod, classmethod)):
                key = member.__func__
            elif isinstance(member, property):
                key = member.fget
            elif isinstance(member, functools.cached_property):
                key = member.func
            elif inspect.isfunction(member):
                key = member
            else:
                continue  # class attributes, nested classes, constants
            seen_names.add(name)
            found.append((f"{_path(klass)}.{name}", key))
    return found


def public_names() -> list[str]:
    """The dotted paths of every public function, class, method and property."""
    objects = []
    for module in _public_modules():
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                objects.append(obj)
    for dotted in LAZY_NAMES:
        module_name, name = dotted.rsplit(".", 1)
        objects.append(getattr(importlib.import_module(module_name), name))

    names: list[str] = []
    seen: set[int] = set()

    def add(path: str, key: object) -> None:
        if id(key) not in seen:
            seen.add(id(key))
            names.append(path)

    for obj in objects:
        if not _is_clair(obj):
            continue  # a third-party object re-exported: not ours to document
        add(_path(obj), obj)
        if inspect.isclass(obj):
            for path, key in _members(obj):
                add(path, key)
    return names


PUBLIC_NAMES = public_names()


def _is_protocol(obj: object) -> bool:
    """Whether ``obj`` is a ``typing.Protocol`` class (not a class implementing one).

    A protocol cannot be instantiated: its signature, ``(*args, **kwargs)``, is
    typing's placeholder, not a constructor to document.
    """
    return inspect.isclass(obj) and bool(getattr(obj, "_is_protocol", False))


def docstring_errors(name: str) -> list[tuple[str, str]]:
    """The ``(code, message)`` errors of :data:`CHECKED_CODES` for ``name``.

    Those of ``numpydoc.validate.validate``, plus one it skips: numpydoc checks no
    description (PR07) for a parameter whose type is a set of options
    (``{"a", "b"}``), which this test reports like any other. For a protocol
    class, whose signature is not a constructor, PR01 and PR02 are dropped.
    """
    errors = [
        (code, msg) for code, msg in validate(name)["errors"] if code in CHECKED_CODES
    ]
    doc = Validator(get_doc_object(Validator._load_obj(name)))
    if doc.raw_doc:
        for param, (kind, desc) in doc.doc_all_parameters.items():
            if "{" in kind and not "".join(desc).strip():
                errors.append(("PR07", ERROR_MSGS["PR07"].format(param_name=param)))
    if _is_protocol(doc.obj):
        errors = [(code, msg) for code, msg in errors if code not in ("PR01", "PR02")]
    return errors


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_docstring_documents_parameters(name: str) -> None:
    errors = docstring_errors(name)
    listing = "\n".join(
        f"  {code} ({CHECKED_CODES[code]}): {msg}" for code, msg in errors
    )
    assert not errors, f"{name}:\n{listing}"


def test_public_names_are_collected() -> None:
    """The walk finds the package's API: functions, classes, methods, properties."""
    assert len(PUBLIC_NAMES) == len(set(PUBLIC_NAMES))
    assert "clair_stats.pipeline.estimator.clair" in PUBLIC_NAMES
    assert "clair_stats.flower.strategy.ClairStrategy" in PUBLIC_NAMES
    assert "clair_stats.core.lowrank.LowRankUpdates" in PUBLIC_NAMES
    assert not any(
        ".__" in name or name.startswith("clair_stats.__main__")
        for name in PUBLIC_NAMES
    )
    # methods and properties are collected, not only module-level names
    assert any(
        name.startswith("clair_stats.core.lowrank.LowRankUpdates.")
        for name in PUBLIC_NAMES
    )


# The self-checks' subjects: deliberately bad docstrings (and one protocol).
def _undocumented(alpha, beta=1.0):
    return alpha + beta


def _misdocumented(alpha, beta=1.0):
    """
    Parameters
    ----------
    alpha : float
    gamma : float
        Not a parameter of this function.
    """
    return alpha + beta


def _option_undescribed(mode="a"):
    """Return ``mode``.

    Parameters
    ----------
    mode : {"a", "b"}
    """
    return mode


class _Shape(Protocol):
    """Anything with a shape (a protocol: no constructor to document)."""

    shape: tuple[int, ...]


@pytest.mark.parametrize(
    ("subject", "codes"),
    [
        ("_undocumented", {"GL08"}),
        ("_misdocumented", {"SS01", "PR01", "PR02", "PR07"}),
        ("_option_undescribed", {"PR07"}),
        ("_Shape", set()),
    ],
)
def test_check_can_fail(subject: str, codes: set[str]) -> None:
    """The check reports the codes on deliberately bad docstrings of this module."""
    found = {code for code, _ in docstring_errors(f"{__name__}.{subject}")}
    assert found == codes

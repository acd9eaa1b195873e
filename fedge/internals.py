"""A checkable list of the private parts of a pinned library that fedge relies on.

Why: fedge leans on a handful of Flower internals (a private simulation entry point, the SecAgg+
state classes, the SuperNode loop it patches). Nothing in Flower promises they keep their names
or signatures, so an upgrade could change what a patch means without any error. Each side lists
what it touches as :class:`Internal` entries (``client/node/flower_internals.py``,
``server/federation/flower_internals.py``); :func:`problems` imports each one and compares it
with what fedge expects, and a test runs it, so an upgrade fails in CI instead of in the field.

Stdlib only: the modules named are imported by :func:`problems` at check time, never here.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Internal", "problems", "resolve"]


@dataclass(frozen=True)
class Internal:
    """One private name: ``module`` and a dotted ``name`` inside it (``Class.method`` allowed).

    ``parameters``: names its signature must accept (for a callable); ``attributes``: names the
    object must carry (fields of a state class, members of an enum, a module's globals);
    ``why``: what fedge does with it, for whoever upgrades the pin.
    """

    module: str
    name: str
    why: str
    parameters: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"{self.module}.{self.name}"


def resolve(internal: Internal) -> object:
    """Import ``internal.module`` and walk ``internal.name``; AttributeError/ImportError if gone."""
    target: object = importlib.import_module(internal.module)
    for part in internal.name.split("."):
        target = getattr(target, part)
    return target


def _fields(target: object) -> set[str]:
    names = set(dir(target))
    annotations = getattr(target, "__annotations__", None)
    if isinstance(annotations, dict):
        names.update(str(key) for key in annotations)
    fields = getattr(target, "__dataclass_fields__", None)
    if isinstance(fields, dict):
        names.update(str(key) for key in fields)
    return names


def problems(internals: Iterable[Internal]) -> list[str]:
    """Every way the installed library differs from ``internals``: one line each, all of them."""
    found: list[str] = []
    for internal in internals:
        try:
            target = resolve(internal)
        except (ImportError, AttributeError) as exc:
            found.append(f"{internal.path}: missing ({type(exc).__name__}: {exc})")
            continue
        if internal.parameters:
            try:
                accepted = set(inspect.signature(target).parameters)  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                found.append(f"{internal.path}: not callable with a signature ({exc})")
                continue
            missing = [name for name in internal.parameters if name not in accepted]
            if missing:
                found.append(f"{internal.path}: no parameter {', '.join(missing)}")
        absent = [name for name in internal.attributes if name not in _fields(target)]
        if absent:
            found.append(f"{internal.path}: no attribute {', '.join(absent)}")
    return found

"""Learners by name, in one small registry.

Built-ins are found, not listed: every module (or subpackage) of this package with a
module-level ``LEARNER`` (a learner class) is one, so adding a learner is adding one file
(or one package, when it brings search aids of its own, as ``channel`` does). Third parties
register through the ``compressflow.learners`` entry-point group (the entry point names a
learner class), or in-process with ``register``/``unregister``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from learners.base import Learner

ENTRY_POINT_GROUP = "compressflow.learners"

_EXTRA: dict[str, Callable[..., Learner]] = {}


@cache
def _builtin() -> dict[str, Callable[..., Learner]]:
    found: dict[str, Callable[..., Learner]] = {}
    for module_info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        module = importlib.import_module(f"learners.{module_info.name}")
        cls = getattr(module, "LEARNER", None)
        if cls is not None:
            found[cls.name] = cls
    return found


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def register(name: str, factory: Callable[..., Learner]) -> None:
    if name in known():
        raise ValueError(f"learner {name!r} is already registered")
    _EXTRA[name] = factory


def unregister(name: str) -> None:
    """Remove a learner added with ``register`` (built-ins and entry points stay)."""
    if name not in _EXTRA:
        raise ValueError(f"learner {name!r} was not added with register(); added: {sorted(_EXTRA)}")
    del _EXTRA[name]


def known() -> list[str]:
    return sorted({*_builtin(), *_EXTRA, *_plugins()})


def get(name: str, **options: Any) -> Learner:
    """A fresh learner by name, configured with ``options`` (its config's fields)."""
    if name in _EXTRA:
        return _EXTRA[name](**options)
    builtin = _builtin()
    if name in builtin:
        return builtin[name](**options)
    plugins = _plugins()
    if name in plugins:
        return plugins[name].load()(**options)
    raise ValueError(f"unknown learner {name!r}; known learners: {', '.join(known())}")

"""Learners by name. Built-ins register on import; third parties through the
``compressflow.learners`` entry-point group (the entry point names a Learner class)."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from learners.base import Learner

ENTRY_POINT_GROUP = "compressflow.learners"

_BUILTIN: dict[str, str] = {
    # name -> "module:Class", imported only when asked for (keeps `import learners` light)
    "channel": "learners.channel:ChannelPruning",
    "sparsity": "learners.sparsity:Sparsity",
    "uniform": "learners.uniform:UniformQuantization",
    "nonuniform": "learners.nonuniform:NonUniformQuantization",
}
_EXTRA: dict[str, Callable[..., Learner]] = {}


def register(name: str, factory: Callable[..., Learner]) -> None:
    if name in known():
        raise ValueError(f"learner {name!r} is already registered")
    _EXTRA[name] = factory


def _plugins() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known() -> list[str]:
    return sorted({*_BUILTIN, *_EXTRA, *_plugins()})


def get(name: str, **options: Any) -> Learner:
    """A fresh learner by name, configured with ``options`` (its config's fields)."""
    if name in _EXTRA:
        return _EXTRA[name](**options)
    if name in _BUILTIN:
        module_name, _, attr = _BUILTIN[name].partition(":")
        module = __import__(module_name, fromlist=[attr])
        return getattr(module, attr)(**options)
    plugins = _plugins()
    if name in plugins:
        return plugins[name].load()(**options)  # type: ignore[attr-defined]
    raise ValueError(f"unknown learner {name!r}; known learners: {', '.join(known())}")

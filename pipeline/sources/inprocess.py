"""In-process objects as ordinary ``package.module:factory`` sources.

A notebook holds a model object and its datasets, not an importable factory. ``put``
files the object under a generated name and returns a source string that points here;
the model and data sources then import this module and call the name, exactly as they
call a user's factory, so the same flow, preflight and records serve both. The objects
live as long as this process: such a job runs on in-process runners only, and is rebuilt
from its record only in the process that ran it.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

PREFIX = f"{__name__}:"
_OBJECTS: dict[str, Callable[[], Any]] = {}
_COUNTER = itertools.count(1)


def put(kind: str, slug: str, make: Callable[[], Any]) -> str:
    """File ``make`` (called with no arguments by the source that resolves it) and return
    its source string; ``slug`` (an identifier) names the job by default."""
    name = f"{slug}_{kind}{next(_COUNTER)}"
    _OBJECTS[name] = make
    return PREFIX + name


def copies(obj: Any) -> Callable[[], Any]:
    """A factory giving a fresh deep copy each call: the job never touches ``obj``."""
    return lambda: copy.deepcopy(obj)


def is_inprocess(source: str) -> bool:
    return source.startswith(PREFIX)


def __getattr__(name: str) -> Callable[[], Any]:
    try:
        return _OBJECTS[name]
    except KeyError:
        raise AttributeError(
            f"no in-process object {name!r} in this process: it was given to "
            "compressflow.compress in another Python process"
        ) from None

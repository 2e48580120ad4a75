"""Search-space dimensions as plain, serialisable values.

Learners describe what they let the optimizer tune with these small dataclasses; only
hpo.optimizer knows that scikit-optimize sits underneath.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Real:
    name: str
    low: float
    high: float
    prior: str = "uniform"  # or "log-uniform"


@dataclass(frozen=True)
class Integer:
    name: str
    low: int
    high: int


@dataclass(frozen=True)
class Categorical:
    name: str
    choices: tuple[Any, ...]


Dimension = Real | Integer | Categorical


def namespaced(prefix: str, dims: list[Dimension]) -> list[Dimension]:
    """Prefix each dimension's name with ``prefix.`` so chained learners never collide."""
    out: list[Dimension] = []
    for d in dims:
        if isinstance(d, Real):
            out.append(Real(f"{prefix}.{d.name}", d.low, d.high, d.prior))
        elif isinstance(d, Integer):
            out.append(Integer(f"{prefix}.{d.name}", d.low, d.high))
        else:
            out.append(Categorical(f"{prefix}.{d.name}", d.choices))
    return out


def split_namespace(params: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The parameters under ``prefix.``, with the prefix removed."""
    head = prefix + "."
    return {k[len(head) :]: v for k, v in params.items() if k.startswith(head)}


def to_python(value: Any) -> Any:
    """numpy scalars (skopt returns them) -> plain Python values that JSON and MLflow take."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value

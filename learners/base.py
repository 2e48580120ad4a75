"""What a learner is, and what it is given.

A learner has a ``name``, a ``space(info)`` of dimensions for the optimiser, and
``compress(model, params, ctx)`` that returns a NEW module (the input is never mutated).
Learners that train call ``ctx.finetune(model)``: the shared loop, with distillation when
the job asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader

from hpo.space import Dimension


@dataclass(frozen=True)
class ModelInfo:
    """What a learner may look at to shape its search space (no weights needed)."""

    model: nn.Module
    example_inputs: torch.Tensor


@dataclass
class Context:
    """Everything a learner may need besides the model and its own parameters."""

    train_loader: DataLoader
    val_loader: DataLoader
    example_inputs: torch.Tensor
    finetune: Callable[..., dict[str, list[float]]]
    device: str = "cpu"
    teacher: nn.Module | None = None
    seed: int = 0
    # Filled by learners: per-layer settings (JSON-able) that replay onto a fresh model.
    records: dict[str, Any] = field(default_factory=dict)
    # Fine-tune curves, one list per metric, appended to by ctx.finetune callers.
    curves: dict[str, list[float]] = field(default_factory=dict)


@runtime_checkable
class Learner(Protocol):
    name: str

    def space(self, info: ModelInfo) -> list[Dimension]: ...

    def compress(self, model: nn.Module, params: dict[str, Any], ctx: Context) -> nn.Module: ...

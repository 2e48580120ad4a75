"""What a learner is, and what it is given.

A learner is one file: a frozen config, a search space, one operation, and the facts the
rest of the code needs about it, declared on the class rather than kept in tables
elsewhere (``learners.chain`` orders and checks chains from these declarations alone, so
a third-party learner is checked like a built-in one):

- ``name``: how jobs and records call it; ``config``: its frozen, round-trippable config.
- ``stage``: where it may sit in a chain (structure changes, then weight sparsity, then
  quantisation); a chain never goes back to a lower stage.
- ``keeps_float``: whether its output is still float weights a later learner may edit
  (an int8 graph, codes or codebooks are not: nothing may follow such a learner).
- ``runtimes``: the runtimes its output can be timed on (None: any).
- ``speeds_up`` (optional): the runtimes on which its output runs faster than its input
  (None, or not declared: every runtime it runs on; ``()``: none, it saves bytes only).
  ``learners: auto`` builds speedup chains only of learners that speed up the runtime.
- ``works_on_graphs`` (optional, default False): it can take a model given as an ONNX
  graph or a torch.export program (no float weights or layer modules to edit), as int8's
  post-training quantisation does.
- ``space(info)``: the dimensions it lets the optimiser tune.
- ``compress(model, params, ctx)``: a NEW module (the input is never mutated); it writes
  JSON-able per-layer settings to ``ctx.records[name]``.
- ``replay(model, record, ctx)``: the same architecture from a copy of ``model`` and that
  record, without training (no pickle needed to rebuild a candidate).
- ``save(model, example_inputs, stem)``: writes its deployable file, returns the path.
- optionally ``prepare(info, probe)``: its search aids (``learners.aids``): a rule start
  for the target, a cost predictor, a survey record, warnings.

Learners that train call ``ctx.finetune(model)``: the shared loop, with distillation when
the job asks for it. A built-in learner is a module of this package with a module-level
``LEARNER`` (its class); third parties register through the ``compressflow.learners``
entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader

from hpo.space import Dimension
from learners.formats.export import save_deployable

# The runtimes a model is timed on: every layer that names one imports this tuple.
RUNTIMES = ("torch-cpu", "onnxruntime-cpu", "cuda", "cuda-graph")
GPU_RUNTIMES = ("cuda", "cuda-graph")
CPU_RUNTIMES = tuple(r for r in RUNTIMES if r not in GPU_RUNTIMES)


class NothingToSearch(ValueError):
    """A learner finds nothing it could change in this model (``space`` raises it): the
    job reports why instead of searching."""


class Stage(IntEnum):
    """Where a learner may sit in a chain; a chain never goes back to a lower stage."""

    STRUCTURE = 0  # changes the architecture (channel pruning, low-rank factorisation)
    SPARSITY = 1  # zeroes weights in place; structure changes after it would cut its layout
    QUANTIZATION = 2  # changes how weights are stored


STAGE_WHY = {
    Stage.STRUCTURE: "structure changes (pruning, factorisation) come first",
    Stage.SPARSITY: "weight sparsity comes after structure changes and before quantisation",
    Stage.QUANTIZATION: "quantisation comes last",
}


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
    stage: Stage
    keeps_float: bool
    runtimes: tuple[str, ...] | None
    config: Any

    def space(self, info: ModelInfo) -> list[Dimension]: ...

    def compress(self, model: nn.Module, params: dict[str, Any], ctx: Context) -> nn.Module: ...

    def replay(self, model: nn.Module, record: dict[str, Any], ctx: Context) -> nn.Module: ...

    def save(self, model: nn.Module, example_inputs: torch.Tensor, stem: str | Path) -> Path: ...


class LearnerDefaults:
    """Defaults a learner class may inherit: a float-weight structure learner that runs
    anywhere and ships the model's own deployable file (its packed format if it has one,
    else fp32 ONNX)."""

    stage: ClassVar[Stage] = Stage.STRUCTURE
    keeps_float: ClassVar[bool] = True
    runtimes: tuple[str, ...] | None = None
    speeds_up: tuple[str, ...] | None = None
    works_on_graphs: ClassVar[bool] = False

    def save(self, model: nn.Module, example_inputs: torch.Tensor, stem: str | Path) -> Path:
        return save_deployable(model, example_inputs, stem)

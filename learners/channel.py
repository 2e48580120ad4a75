"""Structured channel pruning on torch-pruning's dependency graph.

The result is a physically smaller network (fewer filters, narrower BatchNorms and
downstream inputs), not a mask. The optimiser tunes a pruning ratio per stage (top-level
child module) or per layer, and the importance criterion; the pruned model is then
fine-tuned with the shared loop. The pruning history is recorded so it replays onto a
fresh copy of the baseline (``ChannelPruning.replay``).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from hpo.space import Categorical, Dimension, Real
from learners import channel_ops
from learners.base import Context, LearnerDefaults, ModelInfo
from learners.finetune import finish_finetune_

IMPORTANCES = {
    "l1": lambda: tp.importance.MagnitudeImportance(p=1),
    "l2": lambda: tp.importance.MagnitudeImportance(p=2),
    "lamp": lambda: tp.importance.LAMPImportance(p=2),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    "fpgm": lambda: tp.importance.FPGMImportance(),
}
PRUNABLE = (nn.Conv2d, nn.Conv1d, nn.Linear)


@dataclass(frozen=True)
class ChannelConfig:
    granularity: str = "stage"  # "stage" (one ratio per top-level block) or "layer"
    min_ratio: float = 0.0
    max_ratio: float = 0.8
    importances: tuple[str, ...] = ("l1", "l2", "lamp", "bn_scale")
    round_to: int | None = None  # keep channel counts multiples of this (SIMD friendly)

    def __post_init__(self) -> None:
        if self.granularity not in ("stage", "layer"):
            raise ValueError(f"granularity must be 'stage' or 'layer', got {self.granularity!r}")
        if not 0.0 <= self.min_ratio < self.max_ratio < 1.0:
            raise ValueError(
                f"need 0 <= min_ratio < max_ratio < 1, got {self.min_ratio}, {self.max_ratio}"
            )
        object.__setattr__(self, "importances", tuple(self.importances))  # JSON gives lists
        unknown = set(self.importances) - set(IMPORTANCES)
        if unknown or not self.importances:
            raise ValueError(
                f"unknown importance {sorted(unknown)}; choose from {sorted(IMPORTANCES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """Layers whose outputs are the network's outputs (their width must not change)."""
    was_training = model.training
    with torch.no_grad():
        out = model.eval()(example_inputs)
    model.train(was_training)  # the caller's model is left in the mode it was in
    width = out.shape[1]
    last = [m for m in model.modules() if isinstance(m, PRUNABLE)][-1:]
    return [
        m for m in last if getattr(m, "out_features", getattr(m, "out_channels", None)) == width
    ]


def prunable_units(model: nn.Module, example_inputs: torch.Tensor, granularity: str):
    """(name, module) pairs, each of which gets its own ratio."""
    skip = {id(m) for m in output_layers(model, example_inputs)}
    if granularity == "layer":
        return [
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, PRUNABLE) and id(m) not in skip
        ]
    units = []
    for name, child in model.named_children():
        layers = [m for m in child.modules() if isinstance(m, PRUNABLE) and id(m) not in skip]
        if layers:
            units.append((name, child))
    return units


class ChannelPruning(LearnerDefaults):
    """Learner ``channel``: a structure learner (first in a chain) with float output that
    runs anywhere (the ``LearnerDefaults``)."""

    name = "channel"

    def __init__(self, config: ChannelConfig | None = None, **options: Any) -> None:
        self.config = config or ChannelConfig(**options)

    def space(self, info: ModelInfo) -> list[Dimension]:
        c = self.config
        units = prunable_units(info.model, info.example_inputs, c.granularity)
        dims: list[Dimension] = [
            Real(f"ratio.{name}", c.min_ratio, c.max_ratio) for name, _ in units
        ]
        if len(c.importances) > 1:
            dims.append(Categorical("importance", tuple(c.importances)))
        return dims

    def uniform_params(self, info: ModelInfo, ratio: float) -> dict[str, Any]:
        """The fixed rule other tools use: one ratio for every unit (a search start)."""
        params: dict[str, Any] = {d.name: ratio for d in self.space(info) if isinstance(d, Real)}
        if len(self.config.importances) > 1:
            params["importance"] = self.config.importances[0]
        return params

    def prune(self, model: nn.Module, params: dict[str, Any], example_inputs: torch.Tensor):
        """A pruned deep copy of ``model`` and its replayable pruning history."""
        c = self.config
        model = copy.deepcopy(model).eval()
        units = prunable_units(model, example_inputs, c.granularity)
        ratios = {m: float(params.get(f"ratio.{name}", 0.0)) for name, m in units}
        importance = params.get("importance", c.importances[0])
        # MetaPruner plus channel shuffles, grouped-conv balance and a final check
        pruner = channel_ops.StructuredPruner(
            model,
            example_inputs,
            importance=IMPORTANCES[importance](),
            pruning_ratio=0.0,
            pruning_ratio_dict={m: r for m, r in ratios.items() if r > 0},
            ignored_layers=output_layers(model, example_inputs),
            round_to=c.round_to,
        )
        pruner.step()
        history = [
            [n, bool(out), [int(i) for i in idx]] for n, out, idx in pruner.pruning_history()
        ]
        return model, history

    def compress(self, model: nn.Module, params: dict[str, Any], ctx: Context) -> nn.Module:
        pruned, history = self.prune(model, params, ctx.example_inputs)
        ctx.records[self.name] = {
            "config": self.config.to_dict(),
            "params": dict(params),
            "out_channels": {
                name: int(getattr(m, "out_channels", getattr(m, "out_features", 0)))
                for name, m in pruned.named_modules()
                if isinstance(m, PRUNABLE)
            },
            "history": history,
        }
        # BatchNorm statistics are re-estimated by the candidate step (pipeline.job.candidate).
        finish_finetune_(pruned, ctx.finetune(pruned), ctx, self.name, recalibrate_bn=False)
        return pruned

    def replay(self, model: nn.Module, record: dict[str, Any], ctx: Context) -> nn.Module:
        """Apply the recorded pruning history to a deep copy of ``model`` (the same
        architecture; traced on ``ctx.example_inputs``)."""
        model = copy.deepcopy(model).eval()
        graph = channel_ops.dependency_graph(model, ctx.example_inputs)
        graph.load_pruning_history([(n, out, idx) for n, out, idx in record["history"]])
        return model


LEARNER = ChannelPruning

"""Channel pruning's fixed rule: one pruning ratio for every unit, the smallest whose
un-fine-tuned pruned model meets the target (``learners.rule``'s bisection, with the
ratio as the knob, from ``min_ratio`` to ``max_ratio``). Timings go into the job's
measurement pool, so the chosen ratio's model, which round 1 fine-tunes without changing
its architecture, is not measured anew into another figure."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from learners.aids import Probe
from learners.base import ModelInfo
from learners.rule import Calibration, Knob, calibrate


class Pruner(Protocol):
    """What the rule and the latency table use of the channel learner (it imports them,
    so they name it by what it does)."""

    @property
    def config(self) -> Any: ...

    def survey(self, info: ModelInfo) -> Any: ...

    def units(self, info: ModelInfo) -> list[str]: ...

    def multiples(self, info: ModelInfo) -> dict[str, int]: ...

    def uniform_params(self, info: ModelInfo, ratio: float) -> dict[str, Any]: ...

    def prune(
        self, model: nn.Module, params: dict[str, Any], example_inputs: torch.Tensor
    ) -> tuple[nn.Module, Any]: ...


def calibrate_channel(
    learner: Pruner,
    info: ModelInfo,
    probe: Probe,
    resolution: float = 0.02,
    margin: float = 1.10,
) -> Calibration:
    """Bisect for the smallest uniform ratio whose figure's interval low end reaches the
    target (``learners.rule.calibrate``)."""
    knob = Knob(
        name="ratio",
        lo=learner.config.min_ratio,
        hi=learner.config.max_ratio,
        params_for=lambda ratio: learner.uniform_params(info, ratio),
        build=lambda params: learner.prune(info.model, params, info.example_inputs)[0],
        hint=" or raise learner_options.channel.max_ratio",
    )
    return calibrate(knob, probe, resolution, margin)

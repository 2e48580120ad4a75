"""Facts about a model's layers that several learners need."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def output_layer_names(
    model: nn.Module, example_inputs: torch.Tensor, kinds: tuple[type[nn.Module], ...]
) -> list[str]:
    """Names of the layers (of ``kinds``) whose output is the network's output: the last
    one run in a forward pass on ``example_inputs``, if its output has the network's
    output width (the logits' layer: its width must not change). The model's train/eval
    mode is restored afterwards."""
    order: list[tuple[str, int]] = []

    def keep(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.dim() >= 2:
                order.append((name, int(output.shape[1])))

        return hook

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    handles = [m.register_forward_hook(keep(n)) for n, m in layers]
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [order[-1][0]] if order and order[-1][1] == int(out.shape[1]) else []

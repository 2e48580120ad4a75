"""Shared by the zoo, cost-model, profile and zoo-pruning tests.

The pruning reference is independent of the pruner's own bookkeeping: BatchNorm
parameters are randomised (so every channel is recognisable), the kept channels of each
BatchNorm are read back from the pruned model by matching values, and the original
model is run with every other channel zeroed at its BatchNorm. A structurally correct
pruning computes exactly that; a broken pairing (split, shuffle, concat, groups) does not.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# The pruning ratio per zoo model used by the tests: what benchmarks/zoo.py found to
# reach a 2x measured speedup at batch 32 (BENCHMARKS.md, "Zoo"; on a loaded machine
# the threshold moves by one 0.1 step between runs).
RATIO_FOR_2X = {
    "resnet20": 0.6,
    "resnet32": 0.5,
    "resnet44": 0.5,
    "resnet56": 0.5,
    "mobilenet_v1": 0.5,
    "mobilenet_v2": 0.5,
    "shufflenet_v1": 0.8,
    "shufflenet_v2": 0.6,
}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Distinct, well-conditioned BatchNorm parameters and statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g)
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model


def kept_channels(original: nn.BatchNorm2d, pruned: nn.BatchNorm2d) -> list[int]:
    """Original indices of the channels a pruned BatchNorm kept (matched by value)."""
    kept = [int((original.bias - b).abs().argmin()) for b in pruned.bias.detach()]
    assert torch.equal(original.bias[kept], pruned.bias), "pruned BN values are not a subset"
    assert kept == sorted(set(kept)), "kept channels must stay in order and be distinct"
    return kept


def masked_reference(original: nn.Module, pruned: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The original's output with every channel the pruned model dropped set to zero."""
    originals = dict(original.named_modules())
    hooks = []
    for name, bn in pruned.named_modules():
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        twin = originals[name]
        if twin.num_features == bn.num_features:
            continue
        mask = torch.zeros(twin.num_features)
        mask[kept_channels(twin, bn)] = 1.0
        hooks.append(
            twin.register_forward_hook(lambda m, i, out, k=mask: out * k.view(1, -1, 1, 1))
        )
    try:
        with torch.no_grad():
            return original.eval()(x)
    finally:
        for h in hooks:
            h.remove()


def uniform_ratios(model: nn.Module, example: torch.Tensor, ratio: float) -> dict[str, float]:
    """ChannelPruning params with the same ratio on every stage."""
    from learners.channel import prunable_units

    return {f"ratio.{name}": ratio for name, _ in prunable_units(model, example, "stage")}


def conv_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {
        n: (m.in_channels, m.out_channels)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    }


class ViewShuffleNet(nn.Module):
    """A ShuffleNet-style block whose shuffle is reshape-transpose-reshape (torchvision's
    way), which DepGraph cannot map. Pruning must leave those layers alone."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12))
        self.gconv = nn.Sequential(nn.Conv2d(12, 12, 1, groups=3, bias=False), nn.BatchNorm2d(12))
        self.after = nn.Sequential(nn.Conv2d(12, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gconv(F.relu(self.stem(x))))
        b, c, h, w = x.shape
        x = x.view(b, 3, c // 3, h, w).transpose(1, 2).reshape(b, c, h, w)
        x = F.relu(self.head(F.relu(self.after(x))))
        return self.fc(x.mean((2, 3)))

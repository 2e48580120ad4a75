"""Tiny models and data shared by the tests (fast on 2 CPU cores)."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """Two conv stages and a classifier: small, but with real channel dependencies."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.stage2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stage2(self.stage1(x))).flatten(1))

    @staticmethod
    def example_inputs(size: int = 8, channels: int = 1) -> torch.Tensor:
        return torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0))


# A job small enough for a test: the tiny CNN on 400 digits at 8x8, short training and
# timing. Callers add the target, rounds, tracking and output flags.
TINY_JOB = [
    "--model", "tests.helpers:tiny_cnn",
    "--data", "digits", "--image-size", "8", "--data-limit", "400",
    "--pretrain-epochs", "2", "--epochs", "1",
    "--measure-batch", "8", "--repeats", "3",
]  # fmt: skip


def tiny_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN(num_classes, in_channels, width)


def not_a_module(num_classes: int = 10, in_channels: int = 1):
    return "I am not a model"


def tiny_loaders():
    """A ``package.module:callable`` data source: random but learnable 2-class data."""
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    sets = [TensorDataset(x[a:b], y[a:b]) for a, b in ((0, 80), (80, 100), (100, 120))]
    return tuple(DataLoader(s, batch_size=16) for s in sets)

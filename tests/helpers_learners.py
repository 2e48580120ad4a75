"""Tiny models and data for the learner tests (shared; fast on one CPU thread).

``TinyNet`` has what the learners must handle: conv + BatchNorm, a residual add, a
strided layer and a linear head. ``trained_tiny()`` is trained once per session on
sklearn's 8x8 digits (~95% validation accuracy in about a second).
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from learners.base import Context
from learners.finetune import DistillSettings, TrainSettings, make_finetune, train_

torch.set_num_threads(1)


class TinyNet(nn.Module):
    def __init__(self, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(x + self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.fc(self.pool(x).flatten(1))


def example_inputs() -> torch.Tensor:
    return torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - 0.3) / 0.4
    return x, torch.tensor(data.target, dtype=torch.long)


def digits_loaders(batch_size: int = 64, n_train: int = 1200) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders (fixed split; the training loader shuffles, seeded)."""
    x, y = _digits()
    train = TensorDataset(x[:n_train], y[:n_train])
    val = TensorDataset(x[1200:], y[1200:])
    gen = torch.Generator().manual_seed(0)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen),
        DataLoader(val, batch_size=256),
    )


@functools.lru_cache(maxsize=1)
def _trained() -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet()
    train_loader, val_loader = digits_loaders()
    train_(model, train_loader, None, TrainSettings(epochs=8, lr=0.1))
    return model.eval()


def trained_tiny() -> TinyNet:
    """A fresh copy of the session's trained TinyNet (callers may modify it)."""
    return copy.deepcopy(_trained())


def make_context(
    epochs: int = 1,
    teacher: nn.Module | None = None,
    distill: DistillSettings | None = None,
    lr: float = 0.02,
    n_train: int = 1200,
) -> Context:
    train_loader, val_loader = digits_loaders(n_train=n_train)
    settings = TrainSettings(epochs=epochs, lr=lr)
    return Context(
        train_loader=train_loader,
        val_loader=val_loader,
        example_inputs=example_inputs(),
        finetune=make_finetune(train_loader, val_loader, settings, teacher, distill),
        teacher=teacher,
    )


def snr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-noise ratio of ``approx`` against ``reference`` in decibels."""
    reference, approx = reference.detach(), approx.detach()
    noise = (reference - approx).pow(2).mean()
    return float(10 * torch.log10(reference.pow(2).mean() / noise.clamp_min(1e-20)))

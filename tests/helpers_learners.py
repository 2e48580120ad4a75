"""Data and a trained model for the learner tests (fast on one CPU thread).

The model is the tests' one tiny model, ``tests.helpers.TinyNet`` (re-exported here with
``example_inputs`` for the learner tests). ``trained_tiny()`` is trained once per session
on sklearn's 8x8 digits (~95% validation accuracy in about a second).
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from learners.base import Context
from learners.finetune import DistillSettings, TrainSettings, make_finetune, train_
from tests.helpers import TinyNet, example_inputs

__all__ = ["TinyNet", "digits_loaders", "example_inputs", "make_context", "snr_db", "trained_tiny"]

torch.set_num_threads(1)


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

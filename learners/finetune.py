"""The shared training loop: pretraining the baseline and fine-tuning every candidate.

Knowledge distillation (Hinton et al. 2015) is built in: with a teacher, the loss is
alpha * T^2 * KL(student/T || teacher/T) + (1 - alpha) * cross-entropy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 3
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9


@dataclass(frozen=True)
class DistillSettings:
    temperature: float = 4.0
    alpha: float = 0.7


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: str = "cpu") -> float:
    """Top-1 accuracy in [0, 1]; the model is left in the mode it was in."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        pred = model(x.to(device)).argmax(dim=1)
        correct += int((pred == y.to(device)).sum())
        total += int(y.numel())
    model.train(was_training)
    if total == 0:
        raise ValueError("accuracy on an empty data loader is undefined")
    return correct / total


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    settings: DistillSettings,
) -> torch.Tensor:
    t = settings.temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
    ) * (t * t)
    hard = F.cross_entropy(student_logits, targets)
    return settings.alpha * soft + (1.0 - settings.alpha) * hard


def train_(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    settings: TrainSettings,
    teacher: nn.Module | None = None,
    distill: DistillSettings | None = None,
    device: str = "cpu",
    on_epoch: Callable[[int, float, float | None], None] | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` in place (SGD + cosine schedule); returns the per-epoch curve."""
    curve: dict[str, list[float]] = {"train_loss": [], "val_accuracy": []}
    if settings.epochs <= 0:
        return curve
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    opt = torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        nesterov=settings.momentum > 0,
    )
    steps = settings.epochs * max(1, len(train_loader))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    for epoch in range(settings.epochs):
        total, count = 0.0, 0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = distillation_loss(logits, t_logits, y, distill or DistillSettings())
            else:
                loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * int(y.numel())
            count += int(y.numel())
        val = accuracy(model, val_loader, device) if val_loader is not None else None
        curve["train_loss"].append(total / max(1, count))
        if val is not None:
            curve["val_accuracy"].append(val)
        if on_epoch is not None:
            on_epoch(epoch, total / max(1, count), val)
    model.eval()
    return curve

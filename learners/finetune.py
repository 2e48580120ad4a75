"""The shared training loop: pretraining the baseline and fine-tuning every candidate.

Knowledge distillation (Hinton et al. 2015) is built in: with a teacher, the loss is
alpha * T^2 * KL(student/T || teacher/T) + (1 - alpha) * cross-entropy, plus, when
``feature_weight`` > 0, attention transfer (Zagoruyko & Komodakis 2017) on intermediate
feature maps. Attention maps (channel-mean of squared activations, L2-normalised) do not
depend on the channel count, so a channel-pruned student still matches its teacher.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from hpo.objective import guessing
from learners.base import Context

_LOG = logging.getLogger(__name__)

# Divergence: a restart multiplies the learning rate by LR_BACKOFF; an epoch whose mean
# loss exceeds EXPLODE times (and 1 more than) the first step's loss or the mean of the
# first REFERENCE_STEPS steps, whichever is lower, has exploded;
# a classification model still at chance after max(STUCK_EPOCHS, a third of the epochs)
# learns nothing at this rate. ResNet-56 on digits at lr 0.1 without warm-up: epoch-1
# loss 6.45 against 2.3 at the start, validation 0.098 (chance 0.1).
LR_BACKOFF = 0.3
EXPLODE = 2.0
REFERENCE_STEPS = 10
STUCK_EPOCHS = 3
STUCK_LOSS_FRACTION = 0.9  # ...unless its training loss fell by 10% or more since epoch 1


AUTOCASTS = ("none", "bf16")

# SGD with Nesterov momentum suits convolutional networks; pretrained transformers are
# fine-tuned with AdamW (Loshchilov & Hutter 2019) at small learning rates (BERT, Devlin
# et al. 2019: 2e-5 to 5e-5, decoupled weight decay 0.01). ``ADAMW_DEFAULTS`` is what a
# job gets when it picks adamw and sets no rate: fine-tune at BERT's 5e-5, train a
# baseline without weights at 3e-4 (a new head on an encoder, or a small encoder from
# scratch; SGD's 0.1 left a MiniLM encoder at chance after one epoch).
OPTIMIZERS = ("sgd", "adamw")
ADAMW_DEFAULTS = {"lr": 5e-5, "pretrain_lr": 3e-4, "weight_decay": 0.01}


def autocast_for(settings: TrainSettings, device: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for a training step on a CUDA device when the settings ask for it;
    elsewhere nothing (CPU training stays fp32)."""
    if settings.autocast == "bf16" and device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 3
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    # "bf16": forward and loss under torch.autocast on CUDA devices (weights stay fp32).
    autocast: str = "none"
    # Linear warm-up over this share of the steps, then the cosine decay (Goyal et al. 2017).
    warmup: float = 0.1
    # Restarts from the initial weights at lr * LR_BACKOFF when training diverges.
    retries: int = 2
    # "sgd" (momentum, Nesterov) or "adamw" (momentum unused; weight decay decoupled).
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"need epochs >= 0, lr > 0, weight_decay >= 0; got epochs={self.epochs}, "
                f"lr={self.lr}, weight_decay={self.weight_decay}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.autocast not in AUTOCASTS:
            raise ValueError(f"autocast must be one of {AUTOCASTS}, got {self.autocast!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be a share of the steps in [0, 1), got {self.warmup}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DistillSettings:
    """temperature T > 0 and soft-loss weight alpha in [0, 1]; feature_weight >= 0 scales
    the attention-transfer loss on ``feature_layers`` (module names present in teacher and
    student; empty = every top-level child whose output is a feature map)."""

    temperature: float = 4.0
    alpha: float = 0.7
    feature_weight: float = 0.0
    feature_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.feature_weight < 0:
            raise ValueError(f"feature_weight must be >= 0, got {self.feature_weight}")
        object.__setattr__(self, "feature_layers", tuple(self.feature_layers))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


Evaluate = Callable[[nn.Module, DataLoader, str], float]
TaskLoss = Callable[[nn.Module, Any], torch.Tensor]


@dataclass(frozen=True)
class Task:
    """What the model is for. ``evaluate(model, loader, device) -> float`` is the metric
    (higher is better) that the search maximises, the accuracy floor guards and the report
    shows; ``loss(model, batch) -> scalar`` trains it, on a batch as the loader yields it
    (moved to the device). The default is classification: top-1 accuracy, cross-entropy
    on (inputs, integer labels), and ``chance`` = 1 / classes, the level of a model that
    learnt nothing. A custom task has no known chance level (None)."""

    evaluate: Evaluate = accuracy
    loss: TaskLoss | None = None  # None: cross-entropy on (inputs, labels) batches
    chance: float | None = None

    @torch.no_grad()
    def measure(self, model: nn.Module, loader: DataLoader, device: str = "cpu") -> float:
        """The metric in eval mode (the model's mode is restored)."""
        was_training = model.training
        model.eval()
        try:
            return float(self.evaluate(model, loader, device))
        finally:
            model.train(was_training)


@torch.no_grad()
def recalibrate_batchnorm_(
    model: nn.Module, loader: DataLoader, max_batches: int | None = None, device: str = "cpu"
) -> int:
    """Re-estimate every BatchNorm's running statistics for the model's current weights
    (cumulative average over ``max_batches`` training batches; weights untouched).

    After heavy pruning or quantisation the weights move fast while fine-tuning and the
    running averages lag behind them: validation accuracy can sit far below what the
    weights deliver (on resnet20/digits at 90% sparsity, 55% before vs 95% after). A
    BatchNorm with a low momentum (0.01 and 0.0003 are common in published mobile
    networks) lags behind even its own baseline training. One pass with fixed weights
    fixes both. Only the BatchNorms run in training mode: dropout, stochastic depth and
    quantiser observers stay in eval mode, so the statistics are those inference sees.
    Returns the number of batches used."""
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms or max_batches == 0:
        return 0
    modes = {m: m.training for m in model.modules()}
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the population statistics
    model.to(device).eval()
    for m in norms:
        m.train()
    used = 0
    for x, *_ in loader:
        if max_batches is not None and used >= max_batches:
            break
        model(x.to(device))
        used += 1
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    for module, training in modes.items():
        module.training = training
    return used


def calibration_batches(ctx: Context, n: int) -> list[torch.Tensor]:
    """The inputs of the first ``n`` training batches (for calibrating quantisers)."""
    return [x for x, *_ in itertools.islice(ctx.train_loader, n)]


def finish_finetune_(
    model: nn.Module,
    curve: dict[str, list[float]],
    ctx: Context,
    learner: str,
    recalibrate_bn: bool,
) -> int:
    """What every weight-level learner does once fine-tuning has fixed its weights:
    re-estimate BatchNorm statistics for them when ``recalibrate_bn`` (see
    ``recalibrate_batchnorm_``) and file the fine-tune ``curve`` in ``ctx.curves`` as
    ``<learner>.<metric>``. Returns the recalibration batches (0 when off) to record."""
    recalibrated = (
        recalibrate_batchnorm_(model, ctx.train_loader, device=ctx.device) if recalibrate_bn else 0
    )
    for key, values in curve.items():
        ctx.curves.setdefault(f"{learner}.{key}", []).extend(values)
    return recalibrated


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


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Per-sample spatial attention: mean over channels of squared activations, flattened
    and L2-normalised (independent of the number of channels)."""
    return F.normalize(features.pow(2).mean(dim=1).flatten(1), dim=1)


def attention_loss(
    student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Mean over the shared feature maps of the squared distance between attention maps
    (maps whose spatial size differs are skipped)."""
    terms = [
        (attention_map(s) - attention_map(teacher[name])).pow(2).sum(dim=1).mean()
        for name, s in student.items()
        if name in teacher and s.dim() == 4 and s.shape[2:] == teacher[name].shape[2:]
    ]
    if not terms:
        raise ValueError(
            "attention transfer found no feature maps of matching spatial size in "
            f"{sorted(student)}; choose feature_layers whose outputs are 4-D in both models"
        )
    return torch.stack(terms).mean()


class FeatureTap:
    """Forward hooks that keep the latest output of named modules (for feature losses)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(
                f"feature layers {missing} are not modules of {type(model).__name__}; "
                f"top-level modules: {[n for n, _ in model.named_children()]}"
            )
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                self.outputs[name] = output

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def default_feature_layers(teacher: nn.Module, student: nn.Module) -> tuple[str, ...]:
    """Top-level children present in both models (non-4-D outputs are skipped later)."""
    student_names = {n for n, _ in student.named_children()}
    return tuple(n for n, _ in teacher.named_children() if n in student_names)


def make_finetune(
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    settings: TrainSettings,
    teacher: nn.Module | None = None,
    distill: DistillSettings | None = None,
    device: str = "cpu",
    task: Task | None = None,
    log: Callable[[str], None] | None = None,
) -> Callable[..., dict[str, list[float]]]:
    """A ``ctx.finetune``: ``finetune(model, **overrides)`` trains in place with
    ``settings`` updated by ``overrides`` (any TrainSettings field, e.g. epochs=0)."""

    def finetune(model: nn.Module, **overrides: Any) -> dict[str, list[float]]:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainSettings)}
        if unknown:
            raise TypeError(f"unknown fine-tune overrides {sorted(unknown)}")
        return train_(
            model,
            train_loader,
            val_loader,
            dataclasses.replace(settings, **overrides),
            teacher,
            distill,
            device,
            task=task,
            log=log,
        )

    return finetune


class Diverged(RuntimeError):
    """Training blew up (non-finite or exploding loss) or learnt nothing (validation
    metric stuck at chance); ``curve`` is what the attempt recorded."""

    def __init__(self, reason: str, curve: dict[str, list[float]]) -> None:
        super().__init__(reason)
        self.curve = curve


def train_(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    settings: TrainSettings,
    teacher: nn.Module | None = None,
    distill: DistillSettings | None = None,
    device: str = "cpu",
    on_epoch: Callable[[int, float, float | None], None] | None = None,
    *,
    task: Task | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` in place (SGD or AdamW, linear warm-up then cosine decay); returns the
    per-epoch curve.

    When an attempt diverges (see ``_check_step`` / ``_check_epoch``) the model goes back
    to its initial weights and trains again at ``lr * LR_BACKOFF``, at most
    ``settings.retries`` times; each restart is logged (``log``, else the module logger)
    and recorded in the curve as ``diverged_lr`` (the learning rates given up) and ``lr``
    (the one kept). The last attempt is never cut short; if its loss is not finite the
    initial weights are restored, so a blown-up model never leaves this function."""
    if settings.epochs <= 0:
        return {"train_loss": [], "val_accuracy": []}
    say = log or _LOG.warning
    task = task or Task()
    initial = copy.deepcopy(model.state_dict())
    given_up: list[float] = []
    lr = settings.lr
    for attempt in range(settings.retries + 1):
        last = attempt == settings.retries
        try:
            curve = _train_once(
                model,
                train_loader,
                val_loader,
                dataclasses.replace(settings, lr=lr),
                teacher,
                distill or DistillSettings(),
                device,
                on_epoch,
                task,
                last,
            )
            break
        except Diverged as why:
            given_up.append(lr)
            curve = why.curve
            model.load_state_dict(initial)
            if last:
                say(
                    f"training diverged at lr {lr:g} ({why}); out of retries "
                    f"({settings.retries}): the initial weights are kept"
                )
                break
            say(
                f"training diverged at lr {lr:g} ({why}): restarting from the initial "
                f"weights at lr {lr * LR_BACKOFF:g} (retry {attempt + 1} of {settings.retries})"
            )
            lr *= LR_BACKOFF
    if given_up:
        curve["diverged_lr"] = given_up
        curve["lr"] = [lr]
    return curve


def _train_once(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    settings: TrainSettings,
    teacher: nn.Module | None,
    distill: DistillSettings,
    device: str,
    on_epoch: Callable[[int, float, float | None], None] | None,
    task: Task,
    last: bool,
) -> dict[str, list[float]]:
    curve: dict[str, list[float]] = {"train_loss": [], "val_accuracy": []}
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    opt = make_optimizer(model, settings)
    steps = settings.epochs * max(1, len(train_loader))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, functools.partial(warmup_cosine, steps=steps, warmup=int(settings.warmup * steps))
    )
    taps: tuple[FeatureTap, FeatureTap] | None = None
    if teacher is not None and distill.feature_weight > 0:
        names = distill.feature_layers or default_feature_layers(teacher, model)
        taps = (FeatureTap(model, names), FeatureTap(teacher, names))
    output = _OutputTap(model) if teacher is not None and task.loss is not None else None
    try:
        return _epochs(
            model,
            train_loader,
            val_loader,
            settings,
            teacher,
            distill,
            taps,
            output,
            device,
            on_epoch,
            opt,
            sched,
            curve,
            task,
            last,
        )
    finally:
        if taps is not None:
            taps[0].close()
            taps[1].close()
        if output is not None:
            output.close()


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """The optimiser ``settings.optimizer`` names, over the model's parameters."""
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
    return torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        nesterov=settings.momentum > 0,
    )


def warmup_cosine(step: int, steps: int, warmup: int) -> float:
    """The learning-rate factor at ``step``: linear from 1/(warmup+1) to 1 over ``warmup``
    steps, then cosine to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


class _OutputTap:
    """Keeps the model's latest output (a custom loss calls the model itself; distillation
    then matches that output to the teacher's)."""

    def __init__(self, model: nn.Module) -> None:
        self.output: torch.Tensor | None = None
        self._handle = model.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            self.output = output

    def close(self) -> None:
        self._handle.remove()


def to_device(batch: Any, device: str) -> Any:
    """A batch as the loader yields it (tensor, tuple, list or dict) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)  # overlaps the copy with compute if pinned
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, tuple | list) else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) else 1


def _step_loss(
    model: nn.Module,
    batch: Any,
    teacher: nn.Module | None,
    distill: DistillSettings,
    taps: tuple[FeatureTap, FeatureTap] | None,
    output: _OutputTap | None,
    task: Task,
) -> torch.Tensor:
    """The training loss of one batch: the task's loss (cross-entropy, or the user's),
    with distillation when there is a teacher. A custom loss is distilled by matching the
    model's output to the teacher's (mean squared error, weight ``alpha``)."""
    x = batch[0] if isinstance(batch, tuple | list) else batch
    if task.loss is not None:
        loss = task.loss(model, batch)
        if teacher is not None and output is not None and output.output is not None:
            with torch.no_grad():
                t_out = teacher(x)
            s_out = output.output
            if isinstance(t_out, torch.Tensor) and t_out.shape == s_out.shape:
                loss = (1.0 - distill.alpha) * loss + distill.alpha * F.mse_loss(s_out, t_out)
    else:
        y = batch[1]
        logits = model(x)
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(x)
            loss = distillation_loss(logits, t_logits, y, distill)
        else:
            loss = F.cross_entropy(logits, y)
    if taps is not None:
        loss = loss + distill.feature_weight * attention_loss(taps[0].outputs, taps[1].outputs)
    return loss


def _epochs(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    settings: TrainSettings,
    teacher: nn.Module | None,
    distill: DistillSettings,
    taps: tuple[FeatureTap, FeatureTap] | None,
    output: _OutputTap | None,
    device: str,
    on_epoch: Callable[[int, float, float | None], None] | None,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    curve: dict[str, list[float]],
    task: Task,
    last: bool,
) -> dict[str, list[float]]:
    first: list[float] = []  # the first steps' losses: the reference for "exploding"
    for epoch in range(settings.epochs):
        total, count = 0.0, 0
        for batch in train_loader:
            batch = to_device(batch, device)
            with autocast_for(settings, device):
                loss = _step_loss(model, batch, teacher, distill, taps, output, task)
            value = float(loss.item())
            if not math.isfinite(value):
                raise Diverged(f"loss is {value} in epoch {epoch + 1}", curve)
            if len(first) < REFERENCE_STEPS:
                first.append(value)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            n = _batch_size(batch)
            total += value * n
            count += n
        mean = total / max(1, count)
        val = task.measure(model, val_loader, device) if val_loader is not None else None
        curve["train_loss"].append(mean)
        if val is not None:
            curve["val_accuracy"].append(val)
        if on_epoch is not None:
            on_epoch(epoch, mean, val)
        if not last:
            _check_epoch(
                model, train_loader, val_loader, settings, epoch, first, curve, task, device
            )
    model.eval()
    return curve


def _check_epoch(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    settings: TrainSettings,
    epoch: int,
    first: list[float],
    curve: dict[str, list[float]],
    task: Task,
    device: str,
) -> None:
    """Raise ``Diverged`` when the epoch's mean loss exploded (above EXPLODE times, and at
    least 1 above, the mean of the first REFERENCE_STEPS steps), or when the validation
    metric of a classification task has stayed at chance for the first third of the
    epochs (at least STUCK_EPOCHS; only checked while epochs remain) even with its
    BatchNorm statistics re-estimated, and its training loss has not fallen below
    STUCK_LOSS_FRACTION of the first epoch's."""
    # The lower of the first step's loss and the first steps' mean: when an epoch is only
    # a few steps long, a loss that explodes within them lifts their mean with it (ResNet-18
    # after non-uniform quantisation: loss 7-13 every round, never flagged).
    reference = min(first[:1] + [sum(first) / max(1, len(first))])
    mean = curve["train_loss"][-1]
    if mean > max(EXPLODE * reference, reference + 1.0):
        raise Diverged(
            f"mean loss {mean:.3g} in epoch {epoch + 1} against {reference:.3g} at the start",
            curve,
        )
    checkpoint = max(STUCK_EPOCHS, math.ceil(settings.epochs / 3))
    if (
        task.chance is None
        or val_loader is None
        or epoch + 1 != checkpoint
        or settings.epochs <= checkpoint
        or not all(guessing(v, task.chance) for v in curve["val_accuracy"])
        # A training loss still falling is a model that learns late, not one that is stuck
        # (a 1-layer BERT at chance for 11 epochs reached 1.0 by epoch 12 when left alone).
        or curve["train_loss"][-1] < STUCK_LOSS_FRACTION * curve["train_loss"][0]
    ):
        return
    recalibrate_batchnorm_(model, train_loader, device=device)  # low-momentum BN lags
    val = task.measure(model, val_loader, device)
    model.train()
    if guessing(val, task.chance):
        raise Diverged(
            f"validation accuracy {val:.3f} is still at chance ({task.chance:.3f}) after "
            f"{epoch + 1} epochs",
            curve,
        )

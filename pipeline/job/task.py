"""The job's task: the metric a model is scored on and the loss it is trained with.

Classification (the default) scores top-1 accuracy and trains with cross-entropy; its
chance level, 1 / classes, marks a model that learnt nothing. A custom task names its own
``evaluate: package.module:fn`` (model, loader, device -> float, higher is better) and
optionally ``loss: package.module:fn`` (model, batch -> scalar tensor); it has no chance
level. The same metric is the search reward, the accuracy floor and the report's figure.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from learners.finetune import Task, accuracy
from pipeline.sources.guard import call_guarded
from pipeline.spec import JobSpec


class TaskError(ValueError):
    """A job's ``evaluate`` or ``loss`` that cannot be imported or called."""


def resolve(field: str, ref: str) -> Callable[..., Any]:
    module_name, _, attr = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise TaskError(f"{field} {ref!r} cannot be imported: {err}") from None
    if not callable(fn):
        raise TaskError(f"{field} {ref!r} is a {type(fn).__name__}, not a function")
    # An exit it attempts (sys.exit, KeyboardInterrupt) is an error naming it, not the end.
    return functools.partial(call_guarded, f"{field} {ref}", fn)


def task_for(spec: JobSpec, num_classes: int) -> Task:
    """The job's task; ``num_classes`` (largest label + 1) sets classification's chance."""
    loss = resolve("loss", spec.loss) if spec.loss else None
    if spec.task == "custom":
        return Task(evaluate=resolve("evaluate", spec.evaluate or ""), loss=loss, chance=None)
    return Task(evaluate=accuracy, loss=loss, chance=1.0 / max(1, num_classes))


def accuracy_floor(spec: JobSpec, baseline: float) -> float:
    """The least validation metric a candidate may have: the baseline's minus
    ``target.max_accuracy_drop`` points (hundredths)."""
    return baseline - spec.target.max_accuracy_drop / 100.0

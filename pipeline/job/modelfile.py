"""The job's models as files that load without running code.

- A user's file (model source, distillation teacher) loads through
  ``learners.formats.modelfile.load_model_file``: torch.export, ONNX or, only with the
  job's ``trust_pickled_models``, a pickled module.
- The baseline is its model source (+ options, weights, output selection) and a
  safetensors state: ``save_baseline`` / ``load_baseline``.
- A candidate is the baseline, its learner chain's JSON replay records and a safetensors
  state (+ the int8 graph as ONNX): ``save_candidate`` / ``load_candidate``.

Paths travel between tasks (a Dask worker gets folder paths, never objects).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learners.base import Context
from learners.formats.modelfile import load_model_file, load_state, save_state
from learners.formats.onnx_module import OnnxModule
from pipeline.job.settings import build_learners, splits_for
from pipeline.records import storage
from pipeline.sources.models import ModelSourceError, build_model, with_logits_output
from pipeline.spec import JobSpec

RECORDS_FILE = "records.json"
ONNX_SOURCE_LEARNERS = ("int8",)


def load_teacher_file(spec: JobSpec, cache: Path | None = None) -> nn.Module:
    """The distillation teacher named in the spec (a .pt2, ONNX or, trusted, pickled file)."""
    teacher = spec.distillation.teacher
    assert teacher
    try:
        return load_model_file(storage.fetch(teacher, cache), spec.trust_pickled_models)
    except (storage.StorageError, ValueError) as err:
        raise ModelSourceError(f"distillation.teacher: {err}") from None
    except Exception as err:
        raise ModelSourceError(f"distillation.teacher {teacher} cannot be loaded: {err}") from None


def check_teacher(spec: JobSpec) -> None:
    """Load the teacher once, before the job starts (raises ModelSourceError)."""
    if spec.distillation.enabled and spec.distillation.teacher:
        load_teacher_file(spec)


def check_source_learners(spec: JobSpec, model: nn.Module) -> None:
    """An ONNX model source has no float weights: it can be timed and int8-quantised, not
    pruned, factorised, sparsified or fine-tuned."""
    if not any(isinstance(m, OnnxModule) for m in model.modules()):
        return
    other = [n for n in spec.learners if n not in ONNX_SOURCE_LEARNERS]
    if other:
        raise ModelSourceError(
            f"model {spec.model.source} is an ONNX graph (no float weights), so learners "
            f"{', '.join(other)} cannot edit it: use learners {','.join(ONNX_SOURCE_LEARNERS)} "
            "(runtime onnxruntime-cpu), or hand over a torch.export program (.pt2) or "
            "safetensors weights with a factory"
        )
    if spec.distillation.enabled:
        raise ModelSourceError(
            f"model {spec.model.source} is an ONNX graph: it cannot be fine-tuned, so "
            "distillation.enabled must be false"
        )


def source_model(spec: JobSpec, num_classes: int, in_channels: int) -> tuple[nn.Module, bool]:
    """The spec's model source, built or loaded (with its weights), as the baseline starts."""
    m = spec.model
    return build_model(
        m.source, num_classes, in_channels, m.options, m.weights, spec.trust_pickled_models
    )


def save_baseline(model: nn.Module, folder: Path) -> Path:
    """The baseline's state (safetensors); its architecture is the spec's model source."""
    return save_state(model, Path(folder) / "model")


def load_baseline(spec: JobSpec, folder: str | Path) -> nn.Module:
    """Rebuild the baseline from the spec's source and load its saved state."""
    splits = splits_for(spec)
    model, _ = source_model(spec, splits.num_classes, splits.input_shape[0])
    model = with_logits_output(model, splits.example_inputs(), spec.model.output)
    return load_state(model, storage.fetch(str(folder)) if storage.is_s3(str(folder)) else folder)


def save_candidate(model: nn.Module, records: dict[str, Any], folder: Path) -> Path:
    """A candidate: its chain's replay records (JSON) and its state (safetensors)."""
    folder = Path(folder)
    save_state(model, folder)
    (folder / RECORDS_FILE).write_text(json.dumps(records, indent=1, default=str))
    return folder


def replay(spec: JobSpec, baseline: nn.Module, records: dict[str, Any], seed: int) -> nn.Module:
    """The candidate's architecture: each learner's ``replay`` of its record, in order."""
    splits = splits_for(spec)
    train_loader, val_loader, _ = splits.loaders(spec.finetune.batch_size, spec.seed)
    ctx = Context(
        train_loader=train_loader,
        val_loader=val_loader,
        example_inputs=splits.example_inputs(),
        finetune=_no_training,
        seed=seed,
    )
    model = baseline
    for learner in build_learners(spec):
        if learner.name not in records:
            raise ValueError(f"the candidate's records have no entry for learner {learner.name}")
        model = learner.replay(model, records[learner.name], ctx)
    return model


def load_candidate(
    spec: JobSpec, baseline: nn.Module, folder: str | Path, seed: int = 0
) -> nn.Module:
    """Rebuild a candidate written by ``save_candidate`` onto ``baseline`` (not mutated)."""
    folder = Path(folder)
    records = json.loads((folder / RECORDS_FILE).read_text())
    with torch.no_grad():
        model = replay(spec, baseline, records, seed)
    return load_state(model, folder)


def _no_training(*args: Any, **kwargs: Any) -> dict[str, list[float]]:
    raise RuntimeError("replaying a candidate trains nothing")


__all__ = [
    "check_source_learners",
    "check_teacher",
    "load_baseline",
    "load_candidate",
    "load_teacher_file",
    "save_baseline",
    "save_candidate",
    "source_model",
]

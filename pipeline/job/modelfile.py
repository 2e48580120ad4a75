"""The job's models as files that load without running code.

- A user's file (model source, distillation teacher) loads through
  ``learners.formats.modelfile.load_model_file``: torch.export, ONNX or, only with the
  job's ``trust_pickled_models``, a pickled module.
- The baseline is its model source (+ options, weights, output selection) and a
  safetensors state: ``save_baseline`` / ``load_baseline``.
- A candidate is the baseline, its learner chain's JSON replay records and a safetensors
  state (+ an int8 graph as ONNX, a packed model's codecs as JSON):
  ``save_candidate`` / ``load_candidate``.

Paths travel between tasks (a Dask worker gets folder paths, never objects).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learners import registry
from learners.base import Context
from learners.formats.modelfile import (
    ExportedModule,
    load_model,
    load_model_file,
    save_model,
    saved_files,
)
from learners.formats.onnx_module import OnnxModule
from pipeline.job.chains import for_chain
from pipeline.job.settings import build_learners, splits_for
from pipeline.records import storage
from pipeline.sources.models import ModelSourceError, build_model, with_logits_output
from pipeline.spec import JobSpec, parse

RECORDS_FILE = "records.json"
CHAIN_RECORD = "chain"  # records.json: the learners that built the candidate, in order
MODEL_FILE = "model.safetensors"


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
    """An ONNX graph has no float weights and a torch.export program no layer modules:
    either can be timed and int8-quantised, not pruned, factorised, sparsified or
    fine-tuned (those learners would find nothing to edit, or fail mid-search)."""
    if any(isinstance(m, OnnxModule) for m in model.modules()):
        kind = "an ONNX graph (no float weights)"
    elif any(isinstance(m, ExportedModule) for m in model.modules()):
        kind = "a torch.export program (no layer modules)"
    else:
        return
    used = {n for chain in spec.chains for n in chain}
    other = sorted(n for n in used if not getattr(registry.get(n), "works_on_graphs", False))
    if other:
        able = [n for n in registry.known() if getattr(registry.get(n), "works_on_graphs", False)]
        raise ModelSourceError(
            f"model {spec.model.source} is {kind}, so learners {', '.join(other)} cannot "
            f"edit it: use learners {','.join(able)}, or hand over "
            "safetensors weights with a factory (model.weights)"
        )
    if spec.distillation.enabled:
        raise ModelSourceError(
            f"model {spec.model.source} is {kind}: it is not fine-tuned, so "
            "distillation.enabled must be false"
        )


def source_model(spec: JobSpec, num_classes: int, in_channels: int) -> tuple[nn.Module, bool]:
    """The spec's model source, built or loaded (with its weights), as the baseline starts.
    A ``models:/`` model that compressflow registered is rebuilt from its recipe (the
    registering job's spec, safetensors and replay records: a module learners can edit);
    any other is loaded as ``build_model`` does."""
    m = spec.model
    if m.source.startswith("models:/"):
        rebuilt = _registered_recipe(m.source)
        if rebuilt is not None:
            return rebuilt, True
    return build_model(
        m.source, num_classes, in_channels, m.options, m.weights, spec.trust_pickled_models
    )


def save_baseline(model: nn.Module, folder: str | Path) -> Path:
    """``folder``/model.safetensors: the baseline's state; its architecture is the spec's
    model source (rebuilt by ``load_baseline``)."""
    return save_model(model, Path(folder) / MODEL_FILE)


def load_baseline(spec: JobSpec, path: str | Path) -> nn.Module:
    """Rebuild the baseline from the spec's source (and output selection), then load the
    state ``save_baseline`` wrote at ``path``."""
    splits = splits_for(spec)
    model, _ = source_model(spec, splits.num_classes, splits.input_shape[0])
    model = with_logits_output(model, splits.example_inputs(), spec.model.output)
    return load_model(model, path)


def save_candidate(
    model: nn.Module, records: dict[str, Any], folder: str | Path, chain: list[str] | None = None
) -> Path:
    """``folder``/model.safetensors (+ its graph or codecs file) and records.json: the
    chain's replay records, and the chain itself. Returns the safetensors path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    saved = {**records, CHAIN_RECORD: list(chain)} if chain else records
    (folder / RECORDS_FILE).write_text(json.dumps(saved, indent=1, default=str))
    return save_model(model, folder / MODEL_FILE)


def copy_candidate(path: str | Path, folder: str | Path) -> Path:
    """Copy a saved candidate (state, records, graph/codecs) into ``folder``."""
    path, folder = Path(path), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for f in [*saved_files(path), path.with_name(RECORDS_FILE)]:
        if f.exists():
            shutil.copy(f, folder / f.name)
    return folder / path.name


def replay(spec: JobSpec, baseline: nn.Module, records: dict[str, Any], seed: int) -> nn.Module:
    """The candidate's architecture: each learner's ``replay`` of its record, in order,
    with a Context on the job's data (calibrating learners read its training batches)."""
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
    # A job with alternative chains saved each candidate's own chain beside its records.
    chain = records.get(CHAIN_RECORD) or spec.chain
    for learner in build_learners(for_chain(spec, list(chain))):
        replay_one = getattr(learner, "replay", None)
        if replay_one is None:
            # A learner without replay is taken to keep the architecture (weights only);
            # the strict state load says so if it did not.
            model = copy.deepcopy(model)
            continue
        model = replay_one(model, records.get(learner.name, {}), ctx)
    return model


def load_candidate(
    spec: JobSpec, path: str | Path, baseline: nn.Module | None = None, seed: int = 0
) -> nn.Module:
    """Rebuild a candidate written by ``save_candidate`` (``path``: its safetensors file)
    from the baseline (``baseline``, or rebuilt from the job's own baseline folder) and
    the records beside it; ``baseline`` is not mutated."""
    path = Path(path)
    records = json.loads(path.with_name(RECORDS_FILE).read_text())
    if baseline is None:
        baseline = load_baseline(spec, baseline_file(path))
    # With grad, even for a caller under no_grad: channel pruning's dependency graph
    # traces with autograd.
    with torch.enable_grad():
        model = replay(spec, baseline, records, seed)
    return load_model(model, path)


def baseline_file(candidate: Path) -> Path:
    """The baseline's state in the job run folder that holds a candidate's folder."""
    return _find_up(candidate, Path("baseline") / MODEL_FILE)


def load_saved(path: str | Path, spec: JobSpec | None = None) -> nn.Module:
    """A model the job saved (its baseline's or a candidate's ``model.safetensors``), with
    the job's spec read from the run folder's ``job.json`` unless given."""
    path = Path(path)
    if spec is None:
        spec = parse(json.loads(_find_up(path, Path("job.json")).read_text()))
    if path.with_name(RECORDS_FILE).exists():
        return load_candidate(spec, path)
    return load_baseline(spec, path)


def _find_up(start: Path, name: Path) -> Path:
    for folder in Path(start).resolve().parents:
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"no {name} in any folder above {start}")


def recipe_files(best_model: str | Path) -> list[str]:
    """What rebuilds a saved candidate elsewhere, with distinct names: the job's spec
    (job.json), its baseline (baseline.safetensors), the candidate's files and records."""
    path = Path(best_model)
    folder = Path(tempfile.mkdtemp(prefix="compressflow-recipe-"))
    shutil.copy(_find_up(path, Path("job.json")), folder / "job.json")
    shutil.copy(baseline_file(path), folder / "baseline.safetensors")
    for f in [*saved_files(path), path.with_name(RECORDS_FILE)]:
        shutil.copy(f, folder / f.name)
    return sorted(str(f) for f in folder.iterdir())


def _registered_recipe(uri: str) -> nn.Module | None:
    """The candidate a compressflow job registered at ``uri``, rebuilt from its recipe
    (None if the registered model has none: then it loads as a .pt2 or ONNX model)."""
    import mlflow.artifacts

    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        return None  # build_model says what to set
    with tempfile.TemporaryDirectory(prefix="compressflow-registry-") as tmp:
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=uri,
                    dst_path=tmp,
                    tracking_uri=tracking_uri,
                    registry_uri=tracking_uri,
                )
            )
        except Exception:
            return None  # build_model reports it
        extra = local / "extra_files"
        if not (extra / "job.json").exists():
            return None
        try:
            spec = parse(json.loads((extra / "job.json").read_text()))
            baseline = load_baseline(spec, extra / "baseline.safetensors")
            return load_candidate(spec, extra / MODEL_FILE, baseline)
        except Exception as err:
            raise ModelSourceError(
                f"model {uri}: its compressflow recipe cannot be rebuilt ({err}); the "
                "registering job's model source and data must be reachable here"
            ) from None


def _no_training(*args: Any, **kwargs: Any) -> dict[str, list[float]]:
    raise RuntimeError("replaying a candidate trains nothing")

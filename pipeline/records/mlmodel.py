"""An MLflow model folder that loads without unpickling: MLflow's ``pt2`` serialization
(a ``torch.export`` program) where the model exports, else the ONNX flavour with the
model's ONNX file (an int8 graph, a model torch.export cannot trace).
``pipeline.sources.models.load_registered`` reads either back. Written to a local folder
only: ``Tracker.log_model`` uploads it, so no MLflow global state is involved."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from mlflow.models import Model
from torch import nn

from learners.formats.onnx_module import OnnxModule

# Writes an MLflow model folder at a path, described by the given MLmodel metadata.
SaveModel = Callable[[str, Model], None]


def saver_without_pickle(
    model: nn.Module,
    onnx_path: str | Path,
    example: torch.Tensor,
    extra_files: list[str] | None = None,
) -> SaveModel:
    """A ``SaveModel`` for ``model``; ``extra_files`` (the job's rebuild recipe: spec,
    safetensors, replay records) go along, so a ``models:/`` source rebuilds it."""

    def save(path: str, metadata: Model) -> None:
        if _exports(model, example):
            try:
                _save_pt2(path, metadata, model, example, extra_files)
                return
            except Exception:  # noqa: BLE001 - not serialisable as pt2: its ONNX file instead
                shutil.rmtree(path, ignore_errors=True)
        _save_onnx(path, metadata, onnx_path, extra_files)

    return save


def _exports(model: nn.Module, example: torch.Tensor) -> bool:
    """Whether ``torch.export`` traces the model (fails fast where it cannot)."""
    if any(isinstance(m, OnnxModule) for m in model.modules()):
        return False
    try:
        torch.export.export(model.eval(), (_batch_of_two(example),))
    except Exception:  # noqa: BLE001 - any tracing failure means: use the ONNX file
        return False
    return True


def _batch_of_two(example: torch.Tensor) -> torch.Tensor:
    """MLflow exports with ``Dim.AUTO``: an example batch of 1 would fix the batch size."""
    if len(example) >= 2:
        return example
    return example.repeat(2, *([1] * (example.dim() - 1)))


def _save_pt2(
    path: str, metadata: Model, model: nn.Module, example: torch.Tensor, extra: Any
) -> None:
    import mlflow.pytorch

    mlflow.pytorch.save_model(
        model,
        path,
        mlflow_model=metadata,
        serialization_format="pt2",
        input_example=_batch_of_two(example).numpy(),
        # Given explicitly: inferring them starts a subprocess that reloads the model.
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "compressflow"],
        extra_files=extra or None,
    )


def _save_onnx(path: str, metadata: Model, onnx_path: str | Path, extra: Any) -> None:
    import mlflow.onnx
    import onnx

    mlflow.onnx.save_model(
        onnx.load(str(onnx_path)),
        path,
        mlflow_model=metadata,
        pip_requirements=["onnxruntime", "compressflow"],
        # One self-contained file: a graph loaded from bytes cannot reach weights saved
        # beside it (onnxruntime refuses external data outside its working directory).
        save_as_external_data=False,
        extra_files=extra or None,
    )

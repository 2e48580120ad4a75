"""Writing model files for deployment: ONNX, or a learner's own packed format.

(Model files the job keeps for itself, without pickle, are in ``learners.formats.modelfile``.)

A module that has its own deployable format (packed sparse weights, codebooks, an int8
ONNX graph) exposes ``save_packed(path)`` and/or ``export_onnx(path)``; otherwise the
deployable file is the fp32 ONNX export.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

ONNX_OPSET = 17


def export_onnx(model: nn.Module, example_inputs: torch.Tensor, path: str | Path) -> Path:
    """ONNX file with a dynamic batch axis (input name ``input``, output ``logits``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    custom = getattr(model, "export_onnx", None)
    if callable(custom):
        custom(path)
        return path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: ~0.2 s for a small CNN against ~5 s for the dynamo one,
        # and it writes one self-contained file.
        # Exported in eval mode; the exporter puts the model back in the mode it was in.
        torch.onnx.export(
            model,
            (example_inputs,),
            str(path),
            training=torch.onnx.TrainingMode.EVAL,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def ort_session(onnx: Path | str | bytes, threads: int, profile_prefix: str | None = None) -> Any:
    """The one onnxruntime CPU session factory: a file or the graph's bytes, a fixed thread
    count (and profiling, if asked)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    source = onnx if isinstance(onnx, bytes) else str(onnx)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def save_deployable(model: nn.Module, example_inputs: torch.Tensor, stem: str | Path) -> Path:
    """The file a user ships: the learner's packed format if it has one, else ONNX."""
    stem = Path(stem)
    packed = getattr(model, "save_packed", None)
    if callable(packed):
        path = stem.with_suffix(getattr(model, "packed_suffix", ".packed"))
        path.parent.mkdir(parents=True, exist_ok=True)
        packed(path)
        return path
    return export_onnx(model, example_inputs, stem.with_suffix(".onnx"))

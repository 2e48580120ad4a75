"""int8 post-training static quantisation executed by onnxruntime.

The float model is exported to ONNX (learners.formats.export, the same export as the fp32
baseline), pre-processed (shape inference, graph optimisation), and quantised by
``onnxruntime.quantization.quantize_static``: int8 per-channel weights, uint8
activations whose ranges are calibrated on training batches. The result runs on
onnxruntime's int8 kernels, so its speed-up is measured, not estimated.

QDQ (QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into int8 kernels) and
QOperator (QLinearConv etc. written out) are both supported; ``benchmarks/learner_suite.py``
measures which is faster here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from learners.formats.export import export_onnx

FORMATS = ("qdq", "qoperator")
CALIBRATIONS = ("minmax", "percentile", "entropy")
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over float32 batches."""

    def __init__(self, input_name: str, batches: Iterable[torch.Tensor]) -> None:
        self.input_name = input_name
        self._batches: Iterator[torch.Tensor] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._batches, None)
        if x is None:
            return None
        return {self.input_name: x.detach().cpu().float().numpy()}

    def rewind(self) -> None:  # part of the protocol in newer onnxruntime; one pass suffices
        pass


def even_batches(batches: Iterable[torch.Tensor], size: int = 32) -> list[torch.Tensor]:
    """Calibration batches of one size (onnxruntime's calibrators stack per-batch results
    and fail on a short last batch); a remainder smaller than ``size`` is dropped unless
    it is all there is."""
    data = torch.cat([b.detach().cpu().float() for b in batches])
    if len(data) <= size:
        return [data]
    return list(data[: len(data) - len(data) % size].split(size))


def weight_nodes(onnx_path: str | Path) -> list[str]:
    """Names of the graph's conv/matmul nodes in execution order (first = input layer)."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    return [n.name for n in graph.node if n.op_type in WEIGHT_OPS]


def export_float(model: nn.Module, example_inputs: torch.Tensor, path: Path) -> Path:
    return export_onnx(model, example_inputs, path)


def quantize_int8(
    model: nn.Module,
    example_inputs: torch.Tensor,
    calibration: Iterable[torch.Tensor],
    quant_format: str = "qdq",
    calibration_method: str = "minmax",
    keep_float: Iterable[str] = (),
    keep_first_last: bool = False,
) -> tuple[bytes, dict[str, Any]]:
    """int8 ONNX bytes for ``model`` and a record of what was quantised."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if quant_format not in FORMATS:
        raise ValueError(f"quant_format must be one of {FORMATS}, got {quant_format!r}")
    if calibration_method not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration_method!r}")
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[calibration_method]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_float(model.eval(), example_inputs, Path(tmp) / "fp32.onnx")
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        nodes = weight_nodes(pre)
        excluded = list(keep_float)
        if keep_first_last and nodes:
            excluded += [nodes[0], nodes[-1]]
        unknown = sorted(set(excluded) - set(nodes))
        if unknown:
            raise ValueError(f"keep_float names unknown nodes {unknown}; graph has {nodes}")
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            str(pre),
            str(out),
            _Batches("input", even_batches(calibration)),
            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            nodes_to_exclude=sorted(set(excluded)),
        )
        data = out.read_bytes()
    record = {
        "format": quant_format,
        "calibration": calibration_method,
        "weight_nodes": nodes,
        "kept_float": sorted(set(excluded)),
    }
    return data, record

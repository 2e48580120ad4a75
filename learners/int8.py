"""Learner ``int8``: post-training static int8 quantisation executed by onnxruntime.

The float model is exported to ONNX (learners.formats.export, the same export as the fp32
baseline), pre-processed (shape inference, graph optimisation), and quantised by
``onnxruntime.quantization.quantize_static``: int8 per-channel weights, uint8
activations whose ranges are calibrated on training batches. The candidate is an
``OnnxModule``: its deployable file is the int8 ONNX graph and its forward runs
onnxruntime's int8 kernels, so its accuracy and speed-up are measured, not estimated.
Its output is no float model: it runs on ``onnxruntime-cpu`` only and comes last in a
chain (for b-bit weights that run anywhere, use the ``qat`` learner).

QDQ (QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into int8 kernels) and
QOperator (QLinearConv etc. written out) are both supported; ``benchmarks/learner_suite.py``
measures which is faster here.
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from hpo.space import Categorical, Dimension
from learners.base import Context, LearnerDefaults, ModelInfo, Stage
from learners.finetune import calibration_batches
from learners.formats.export import export_onnx
from learners.formats.onnx_module import OnnxModule
from learners.formats.packed import unwrap

FORMATS = ("qdq", "qoperator")
CALIBRATIONS = ("minmax", "percentile", "entropy")
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


def _as_fed(x: torch.Tensor) -> torch.Tensor:
    """A batch as the fp32 graph takes it: floats as float32, token ids and other integer
    inputs as they are (cast to float, onnxruntime refused them: int64 expected)."""
    x = x.detach().cpu()
    return x.float() if x.is_floating_point() else x


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over input batches."""

    def __init__(self, input_name: str, batches: Iterable[torch.Tensor]) -> None:
        self.input_name = input_name
        self._batches: Iterator[torch.Tensor] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._batches, None)
        if x is None:
            return None
        return {self.input_name: _as_fed(x).numpy()}

    def rewind(self) -> None:  # part of the protocol in newer onnxruntime; one pass suffices
        pass


def even_batches(batches: Iterable[torch.Tensor], size: int = 32) -> list[torch.Tensor]:
    """Calibration batches of one size (onnxruntime's calibrators stack per-batch results
    and fail on a short last batch); a remainder smaller than ``size`` is dropped unless
    it is all there is."""
    data = torch.cat([_as_fed(b) for b in batches])
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


@dataclass(frozen=True)
class Int8Config:
    """quant_format: "qoperator" (measured fastest here) or "qdq"; calibrations: the
    methods the search may choose from; calibration_batches of training data;
    search_keep_first_last lets the search keep the first and last layer in float;
    threads for the evaluation session."""

    quant_format: str = "qoperator"
    calibrations: tuple[str, ...] = ("minmax", "percentile")
    calibration_batches: int = 8
    search_keep_first_last: bool = True
    threads: int = 1

    def __post_init__(self) -> None:
        if self.quant_format not in FORMATS:
            raise ValueError(f"quant_format must be one of {FORMATS}, got {self.quant_format!r}")
        object.__setattr__(self, "calibrations", tuple(self.calibrations))
        bad = set(self.calibrations) - set(CALIBRATIONS)
        if bad or not self.calibrations:
            raise ValueError(f"unknown calibration {sorted(bad)}; choose from {CALIBRATIONS}")
        if self.calibration_batches < 1:
            raise ValueError(f"calibration_batches must be >= 1, got {self.calibration_batches}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Int8(LearnerDefaults):
    """Learner ``int8``: onnxruntime post-training static int8 (an ``OnnxModule``)."""

    name = "int8"
    stage: ClassVar[Stage] = Stage.QUANTIZATION
    keeps_float: ClassVar[bool] = False  # an int8 graph: nothing may edit it afterwards
    runtimes: tuple[str, ...] | None = OnnxModule.runtimes

    def __init__(self, config: Int8Config | None = None, **options: Any) -> None:
        self.config = config or Int8Config(**options)

    def space(self, info: ModelInfo) -> list[Dimension]:
        c = self.config
        dims: list[Dimension] = [Categorical("calibration", c.calibrations)]
        if c.search_keep_first_last:
            dims.append(Categorical("keep_first_last", (False, True)))
        return dims

    def compress(self, model: nn.Module, params: dict[str, Any], ctx: Context) -> nn.Module:
        c = self.config
        options: dict[str, Any] = {
            "calibration_method": str(params.get("calibration", c.calibrations[0])),
            "keep_first_last": bool(params.get("keep_first_last", False)),
        }
        fallback: dict[str, str] = {}
        try:
            data, record = _quantize_quietly(model, ctx, c, c.quant_format, **options)
        except RuntimeError as err:
            if c.quant_format != "qoperator":
                raise
            # onnxruntime's QOperator writer rejects some graphs (EfficientNet's Pad:
            # "Invalid model with unknown initializers"); QDQ quantises the same graph.
            fallback = {"fallback_from": "qoperator", "fallback_reason": str(err)[:300]}
            data, record = _quantize_quietly(model, ctx, c, "qdq", **options)
        ctx.records[self.name] = {
            "config": c.to_dict(),
            "params": dict(params),
            **record,
            **fallback,
        }
        return OnnxModule(data, threads=c.threads).eval()

    def replay(self, model: nn.Module, record: dict[str, Any], ctx: Context) -> nn.Module:
        """Re-quantise a copy of ``model`` with the recorded format, calibration method and
        float layers, calibrated on the first batches of ``ctx.train_loader``."""
        config = Int8Config(**record["config"])
        data, _ = _quantize_quietly(
            model,
            ctx,
            config,
            record["format"],
            calibration_method=record["calibration"],
            keep_float=record["kept_float"],
        )
        return OnnxModule(data, threads=config.threads).eval()


def _quantize_quietly(
    model: nn.Module, ctx: Context, config: Int8Config, quant_format: str, **options: Any
) -> tuple[bytes, dict[str, Any]]:
    inner, _ = unwrap(model)
    with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
        return quantize_int8(
            copy.deepcopy(inner).eval(),
            ctx.example_inputs,
            calibration_batches(ctx, config.calibration_batches),
            quant_format,
            **options,
        )


LEARNER = Int8

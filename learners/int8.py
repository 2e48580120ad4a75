"""Learner ``int8``: post-training int8 quantisation executed by onnxruntime.

The float model is exported to ONNX (learners.formats.export, the same export as the fp32
baseline), pre-processed (shape inference, graph optimisation), and quantised by
onnxruntime: ``static`` (``quantize_static``: int8 per-channel weights, activation ranges
calibrated on training batches) or ``dynamic`` (``quantize_dynamic``: int8 weights,
activations quantised per batch at run time, the usual choice for transformer encoders).
The candidate is an ``OnnxModule``: its deployable file is the int8 ONNX graph and its
forward runs onnxruntime's int8 kernels, so its accuracy and speed-up are measured, not
estimated. Its output is no float model: it runs on ``onnxruntime-cpu`` only and comes
last in a chain (for b-bit weights that run anywhere, use the ``qat`` learner).

What is fast depends on the CPU, so format, activation type, mode, the op types quantised
and the layers kept float are options or searched choices; the defaults are the fastest
measured on an AVX-512 VNNI Xeon (BENCHMARKS "int8 on this CPU"): uint8 activations with
int8 weights (onnxruntime's x86 U8S8 kernels; int8 activations ran 3-40x slower), every
layer in int8 (one float conv in the graph leaves onnxruntime's blocked-layout float
kernels and costs more than its int8 gain: ResNet-18 at 32 px fell from 1.5x to 1.1x
with its first conv float), QOperator and QDQ within noise of each other.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from hpo.space import Categorical, Dimension
from learners.aids import Aids, Probe, built, measured_predictor
from learners.base import Context, LearnerDefaults, ModelInfo, Stage
from learners.finetune import calibration_batches
from learners.formats.export import export_onnx, ort_session
from learners.formats.onnx_module import OnnxModule
from learners.formats.packed import unwrap

FORMATS = ("qdq", "qoperator")
CALIBRATIONS = ("minmax", "percentile", "entropy")
ACTIVATIONS = ("u8", "s8")
MODES = ("static", "dynamic")
# Which op types are quantised: "matmul" = MatMul/Gemm only (the projections of a
# transformer), "all" = every op type onnxruntime quantises except embedding lookups.
OP_SETS = ("matmul", "all")
# Weight layers kept float: none, the last (the classifier), or the first and the last.
KEEP_FLOAT = ("none", "last", "first_last")
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
# Embedding tables stay float: a lookup gains nothing from int8, and static calibration
# has no range for the int64 token ids around it (onnxruntime warned on every such
# tensor and the candidates lost 17 points or failed).
_NEVER_QUANTISED = ("Gather", "GatherElements", "GatherND")


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


def _check(field: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {allowed}, got {value!r}")
    return value


def ends(nodes: list[str], keep: str) -> list[str]:
    """The weight nodes ``keep`` ("none", "last", "first_last") names."""
    if not nodes or keep == "none":
        return []
    return [nodes[-1]] if keep == "last" else [nodes[0], nodes[-1]]


def op_types(present: set[str], mode: str, quant_format: str, ops: str) -> list[str]:
    """The op types to quantise among those ``present`` in the graph: MatMul/Gemm for
    "matmul"; for "all", every type onnxruntime's quantiser handles in this mode and
    format, embedding lookups excepted."""
    from onnxruntime.quantization.registry import (
        IntegerOpsRegistry,
        QDQRegistry,
        QLinearOpsRegistry,
    )

    if ops == "matmul":
        wanted = {"MatMul", "Gemm"}
    elif mode == "dynamic":
        wanted = set(IntegerOpsRegistry)
    else:
        wanted = set(QDQRegistry if quant_format == "qdq" else QLinearOpsRegistry)
    chosen = sorted((wanted - set(_NEVER_QUANTISED)) & present)
    if not chosen:
        raise ValueError(
            f"int8 ops={ops!r} finds nothing to quantise in a graph of {sorted(present)}"
        )
    return chosen


def quantize_int8(
    model: nn.Module,
    example_inputs: torch.Tensor,
    calibration: Iterable[torch.Tensor],
    quant_format: str = "qdq",
    calibration_method: str = "minmax",
    keep_float: Iterable[str] = (),
    keep: str = "none",
    activation: str = "u8",
    mode: str = "static",
    ops: str = "all",
) -> tuple[bytes, dict[str, Any]]:
    """int8 ONNX bytes for ``model`` and a record of what was quantised. ``keep_float``
    names weight nodes to leave float, ``keep`` adds the first/last ones; ``calibration``
    batches are used by the static mode only."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _check("quant_format", quant_format, FORMATS)
    _check("calibration", calibration_method, CALIBRATIONS)
    _check("keep_float", keep, KEEP_FLOAT)
    _check("activation", activation, ACTIVATIONS)
    _check("mode", mode, MODES)
    _check("ops", ops, OP_SETS)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_float(model.eval(), example_inputs, Path(tmp) / "fp32.onnx")
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre)).graph
        nodes = [n.name for n in graph.node if n.op_type in WEIGHT_OPS]
        excluded = sorted(set(keep_float) | set(ends(nodes, keep)))
        unknown = sorted(set(excluded) - set(nodes))
        if unknown:
            raise ValueError(f"keep_float names unknown nodes {unknown}; graph has {nodes}")
        types = op_types({n.op_type for n in graph.node}, mode, quant_format, ops)
        out = Path(tmp) / "int8.onnx"
        _quantize(
            pre,
            out,
            calibration,
            quant_format,
            calibration_method,
            activation,
            mode,
            types,
            excluded,
        )
        data = out.read_bytes()
    record = {
        "mode": mode,
        "format": quant_format,
        "calibration": calibration_method,
        "activation": "u8" if mode == "dynamic" else activation,
        "ops": ops,
        "op_types": types,
        "weight_nodes": nodes,
        "kept_float": excluded,
    }
    return data, record


def _quantize(
    pre: Path,
    out: Path,
    calibration: Iterable[torch.Tensor],
    quant_format: str,
    calibration_method: str,
    activation: str,
    mode: str,
    types: list[str],
    excluded: list[str],
) -> None:
    """One onnxruntime quantiser call; its failures say which setting failed."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    setting = f"mode={mode}, format={quant_format}, calibration={calibration_method}"
    try:
        if mode == "dynamic":  # activations are quantised at run time, always uint8
            quantize_dynamic(
                str(pre),
                str(out),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=types,
                nodes_to_exclude=excluded,
            )
        else:
            quantize_static(
                str(pre),
                str(out),
                _Batches("input", even_batches(calibration)),
                quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                per_channel=True,
                activation_type=QuantType.QUInt8 if activation == "u8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method={
                    "minmax": CalibrationMethod.MinMax,
                    "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy,
                }[calibration_method],
                op_types_to_quantize=types,
                nodes_to_exclude=excluded,
            )
        # Some graphs quantise but do not load (a bias initializer shared with a
        # LayerNorm, quantised as an activation, fed to QGemm): fail here, where the
        # caller can fall back, rather than in the first forward.
        ort_session(out.read_bytes(), threads=1)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise RuntimeError(
            f"onnxruntime could not quantise ({setting}): {type(err).__name__}: {first}"
        ) from err


def _choices(
    configured: tuple[str, ...],
    token_ids: tuple[str, ...],
    images: tuple[str, ...],
    inputs: torch.Tensor,
) -> tuple[str, ...]:
    """The configured choices, or (none configured) those that suit the model's input."""
    if configured:
        return configured
    return images if inputs.is_floating_point() else token_ids


@dataclass(frozen=True)
class Int8Config:
    """quant_format: "qoperator" or "qdq" (within noise of each other here; QOperator
    files are smaller); activation_type: "u8" (onnxruntime's x86 fast path) or "s8";
    search_format / search_activation make those two searched choices instead.
    calibrations: the static calibration methods the search may choose from, over
    calibration_batches of training data. keep_float: which weight layers the search may
    keep float ("none", "last", "first_last"; one entry = fixed). modes ("static",
    "dynamic") and op_sets ("matmul", "all"): searched choices; empty = by the model's
    input: token ids get dynamic and static, MatMul-only and all (dynamic MatMul-only is
    how transformer encoders are quantised in the field), images static over all ops.
    threads for the evaluation session."""

    quant_format: str = "qoperator"
    activation_type: str = "u8"
    calibrations: tuple[str, ...] = ("minmax", "percentile")
    calibration_batches: int = 8
    keep_float: tuple[str, ...] = ("none", "last")
    modes: tuple[str, ...] = ()
    op_sets: tuple[str, ...] = ()
    search_format: bool = False
    search_activation: bool = False
    threads: int = 1

    def __post_init__(self) -> None:
        _check("quant_format", self.quant_format, FORMATS)
        _check("activation_type", self.activation_type, ACTIVATIONS)
        for name, allowed in (
            ("calibrations", CALIBRATIONS),
            ("keep_float", KEEP_FLOAT),
            ("modes", MODES),
            ("op_sets", OP_SETS),
        ):
            given = getattr(self, name)
            # "none,last" as a command-line option gives a string, not a tuple
            values = tuple(given.split(",") if isinstance(given, str) else given)
            object.__setattr__(self, name, values)
            bad = sorted(set(values) - set(allowed))
            if bad:
                raise ValueError(f"unknown {name} {bad}; choose from {allowed}")
        if not self.calibrations or not self.keep_float:
            raise ValueError("calibrations and keep_float need at least one choice each")
        if self.calibration_batches < 1:
            raise ValueError(f"calibration_batches must be >= 1, got {self.calibration_batches}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def modes_for(self, inputs: torch.Tensor) -> tuple[str, ...]:
        return _choices(self.modes, ("dynamic", "static"), ("static",), inputs)

    def op_sets_for(self, inputs: torch.Tensor) -> tuple[str, ...]:
        return _choices(self.op_sets, ("matmul", "all"), ("all",), inputs)


class Int8(LearnerDefaults):
    """Learner ``int8``: onnxruntime post-training int8 (an ``OnnxModule``)."""

    name = "int8"
    stage: ClassVar[Stage] = Stage.QUANTIZATION
    keeps_float: ClassVar[bool] = False  # an int8 graph: nothing may edit it afterwards
    works_on_graphs: ClassVar[bool] = True  # quantises an ONNX graph as it is
    runtimes: tuple[str, ...] | None = OnnxModule.runtimes

    def __init__(self, config: Int8Config | None = None, **options: Any) -> None:
        self.config = config or Int8Config(**options)

    def space(self, info: ModelInfo) -> list[Dimension]:
        c = self.config
        x = info.example_inputs
        searched = [
            ("mode", c.modes_for(x)),
            ("calibration", c.calibrations),
            ("ops", c.op_sets_for(x)),
            ("keep_float", c.keep_float),
            ("format", FORMATS if c.search_format else ()),
            ("activation", ACTIVATIONS if c.search_activation else ()),
        ]
        # calibration is always a dimension (records and reports expect it); the others
        # only where there is a choice to make
        return [
            Categorical(name, choices)
            for name, choices in searched
            if len(choices) > 1 or name == "calibration"
        ]

    def prepare(self, info: ModelInfo, probe: Probe) -> Aids:
        """Its rule start is its default setting (the first choice of each option); its
        predictor measures its own output on the baseline once per setting that changes
        the graph (the calibration method only moves the scales), so a chain before it
        is asked only for the rest of the target."""
        x = info.example_inputs

        def graph(params: dict[str, Any]) -> tuple[str, ...]:
            options = self.setting(params, x)
            return tuple(v for k, v in sorted(options.items()) if k != "calibration_method")

        predict = measured_predictor(built(self, info, probe), probe, graph)
        start = {d.name: d.choices[0] for d in self.space(info) if isinstance(d, Categorical)}
        factor = predict(start) if probe.start else None
        return Aids(start=start if probe.start else None, predict=predict, factor=factor)

    def setting(self, params: dict[str, Any], inputs: torch.Tensor) -> dict[str, str]:
        """The quantiser's options for searched ``params`` (unsearched ones at their
        defaults)."""
        c = self.config
        return {
            "mode": str(params.get("mode", c.modes_for(inputs)[0])),
            "quant_format": str(params.get("format", c.quant_format)),
            "calibration_method": str(params.get("calibration", c.calibrations[0])),
            "keep": str(params.get("keep_float", c.keep_float[0])),
            "activation": str(params.get("activation", c.activation_type)),
            "ops": str(params.get("ops", c.op_sets_for(inputs)[0])),
        }

    def compress(self, model: nn.Module, params: dict[str, Any], ctx: Context) -> nn.Module:
        c = self.config
        options = self.setting(params, ctx.example_inputs)
        fallback: dict[str, str] = {}
        try:
            data, record = _quantize_quietly(model, ctx, c, **options)
        except RuntimeError as err:
            if options["quant_format"] != "qoperator" or options["mode"] != "static":
                raise
            # onnxruntime's QOperator writer rejects some graphs (EfficientNet's Pad:
            # "Invalid model with unknown initializers"); QDQ quantises the same graph.
            fallback = {"fallback_from": "qoperator", "fallback_reason": str(err)[:300]}
            data, record = _quantize_quietly(model, ctx, c, **{**options, "quant_format": "qdq"})
        ctx.records[self.name] = {
            "config": c.to_dict(),
            "params": dict(params),
            **record,
            **fallback,
        }
        return OnnxModule(data, threads=c.threads).eval()

    def replay(self, model: nn.Module, record: dict[str, Any], ctx: Context) -> nn.Module:
        """Re-quantise a copy of ``model`` with the recorded setting and float layers,
        calibrated on the first batches of ``ctx.train_loader``."""
        config = Int8Config(**record["config"])
        data, _ = _quantize_quietly(
            model,
            ctx,
            config,
            quant_format=record["format"],
            calibration_method=record["calibration"],
            keep_float=record["kept_float"],
            mode=record.get("mode", "static"),
            activation=record.get("activation", "u8"),
            ops=record.get("ops", "all"),
        )
        return OnnxModule(data, threads=config.threads).eval()


class _Collected(logging.Handler):
    """Keeps the log records onnxruntime's quantiser emits (it logs through the root
    logger, one warning per tensor it skips: thousands on a transformer)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().strip().splitlines()[0][:200])


@contextlib.contextmanager
def _collected() -> Iterator[_Collected]:
    root = logging.getLogger()
    handlers, collected = root.handlers[:], _Collected()
    root.handlers = [collected]  # nothing reaches the terminal; the record keeps a summary
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
            yield collected
    finally:
        root.handlers = handlers


def _quantize_quietly(
    model: nn.Module, ctx: Context, config: Int8Config, **options: Any
) -> tuple[bytes, dict[str, Any]]:
    inner, _ = unwrap(model)
    static = options.get("mode", "static") == "static"
    batches = calibration_batches(ctx, config.calibration_batches) if static else []
    with _collected() as log:
        data, record = quantize_int8(
            copy.deepcopy(inner).eval(), ctx.example_inputs, batches, **options
        )
    record["quantiser_warnings"] = len(log.messages)
    record["quantiser_warning_examples"] = list(dict.fromkeys(log.messages))[:3]
    return data, record


LEARNER = Int8

"""Learner ``uniform``: uniform quantisation, in one of two modes.

- ``mode="int8"`` (default): post-training static int8 through onnxruntime
  (``learners.ort_int8``). The candidate is an ``OnnxModule``: its deployable file is the
  int8 ONNX graph, its forward runs onnxruntime, so accuracy and speed-up are those of
  real int8 kernels. Meaningful on runtime ``onnxruntime-cpu`` only (``runtimes``).
- ``mode="qat"``: quantisation-aware training (``learners.qat``) with 2..8-bit weights
  chosen per layer under an average-bit budget and 8-bit activations; the deployable file
  packs the weight codes in exactly b bits each. Saves bytes, not time, on CPU.

Either way the output is quantised, so nothing that needs float weights may follow it in
a chain (``learners.chain``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from hpo.space import Categorical, Dimension
from learners.base import Context, ModelInfo
from learners.bitwidth import (
    average_bits,
    bit_dimensions,
    check_bit_settings,
    layer_bits,
    layer_weight,
    weight_layers,
)
from learners.finetune import finish_finetune_
from learners.formats.onnx_module import OnnxModule
from learners.formats.packed import PackedModel, TensorCodec, unwrap
from learners.ort_int8 import CALIBRATIONS, FORMATS, quantize_int8
from learners.qat import calibrate_, convert_, prepare_

MODES = ("int8", "qat")


@dataclass(frozen=True)
class UniformConfig:
    """mode:            "int8" (onnxruntime PTQ) or "qat" (fake-quant training).
    int8 mode:       quant_format ("qoperator" measured fastest here, or "qdq"); the
                     calibration methods the search may choose from; calibration_batches
                     of training data; keep_first_last lets the search keep the first and
                     last layer in float; threads for the evaluation session.
    qat mode:        bits fixed, or searched globally / per layer in [min_bits, max_bits]
                     and lowered to an ``avg_bits`` budget; huffman codes the weight codes;
                     recalibrate_bn re-estimates BatchNorm statistics for the final
                     quantised weights.
    """

    mode: str = "int8"
    quant_format: str = "qoperator"
    calibrations: tuple[str, ...] = ("minmax", "percentile")
    calibration_batches: int = 8
    search_keep_first_last: bool = True
    threads: int = 1
    bits: int | None = None
    min_bits: int = 2
    max_bits: int = 8
    granularity: str = "layer"
    avg_bits: float | None = None
    huffman: bool = False
    exclude: tuple[str, ...] = ()
    recalibrate_bn: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.quant_format not in FORMATS:
            raise ValueError(f"quant_format must be one of {FORMATS}, got {self.quant_format!r}")
        object.__setattr__(self, "calibrations", tuple(self.calibrations))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        bad = set(self.calibrations) - set(CALIBRATIONS)
        if bad or not self.calibrations:
            raise ValueError(f"unknown calibration {sorted(bad)}; choose from {CALIBRATIONS}")
        if self.calibration_batches < 1:
            raise ValueError(f"calibration_batches must be >= 1, got {self.calibration_batches}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        check_bit_settings(self, lowest=2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sparse_masks(
    model: nn.Module, names: Iterable[str], codecs: Mapping[str, TensorCodec]
) -> dict[str, torch.Tensor]:
    """Non-zero masks of the named layers that an earlier learner stores sparse, so that
    quantisation keeps their pruned weights at exactly zero (``prepare_`` takes them)."""
    layers = dict(weight_layers(model))
    return {
        n: layer_weight(layers[n]).detach() != 0
        for n in names
        if codecs.get(f"{n}.weight") is not None and codecs[f"{n}.weight"].sparse
    }


def calibration_batches(ctx: Context, n: int) -> list[torch.Tensor]:
    return [x for x, *_ in itertools.islice(ctx.train_loader, n)]


class UniformQuantization:
    """Learner ``uniform``: int8 via onnxruntime, or b-bit quantisation-aware training."""

    name = "uniform"
    runtimes: tuple[str, ...] | None = OnnxModule.runtimes  # for the default int8 mode

    def __init__(self, config: UniformConfig | None = None, **options: Any) -> None:
        self.config = config or UniformConfig(**options)
        # int8 candidates run onnxruntime (timing them under torch would measure nonsense);
        # qat output is a float model that runs anywhere.
        self.runtimes = OnnxModule.runtimes if self.config.mode == "int8" else None

    def space(self, info: ModelInfo) -> list[Dimension]:
        c = self.config
        if c.mode == "int8":
            dims: list[Dimension] = [Categorical("calibration", c.calibrations)]
            if c.search_keep_first_last:
                dims.append(Categorical("keep_first_last", (False, True)))
            return dims
        return bit_dimensions(c, info.model)

    def compress(self, model: nn.Module, params: dict[str, Any], ctx: Context) -> nn.Module:
        if self.config.mode == "int8":
            return self._int8(model, params, ctx)
        return self._qat(model, params, ctx)

    def _int8(self, model: nn.Module, params: dict[str, Any], ctx: Context) -> nn.Module:
        c = self.config
        inner, _ = unwrap(model)
        method = str(params.get("calibration", c.calibrations[0]))
        keep = bool(params.get("keep_first_last", False))
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
            data, record = quantize_int8(
                copy.deepcopy(inner).eval(),
                ctx.example_inputs,
                calibration_batches(ctx, c.calibration_batches),
                c.quant_format,
                method,
                keep_first_last=keep,
            )
        ctx.records[self.name] = {
            "config": c.to_dict(),
            "params": dict(params),
            "mode": "int8",
            **record,
        }
        return OnnxModule(data, threads=c.threads).eval()

    def _qat(self, model: nn.Module, params: dict[str, Any], ctx: Context) -> nn.Module:
        c = self.config
        inner, codecs = unwrap(model)
        q = copy.deepcopy(inner).eval()
        sizes = {n: layer_weight(m).numel() for n, m in weight_layers(q, c.exclude)}
        bits = layer_bits(c, params, sizes)
        prepare_(q, bits, sparse_masks(q, bits, codecs))
        calibrate_(q, calibration_batches(ctx, c.calibration_batches))
        try:
            curve = ctx.finetune(q)
        finally:
            new = convert_(q, bits, huffman=c.huffman)
        recalibrated = finish_finetune_(q, curve, ctx, self.name, c.recalibrate_bn)
        ctx.records[self.name] = {
            "config": c.to_dict(),
            "params": dict(params),
            "mode": "qat",
            "bits": bits,
            "avg_bits": average_bits(bits, sizes),
            "act_bits": 8,
            "bn_recalibration_batches": recalibrated,
        }
        return PackedModel(q.eval(), {**codecs, **new})


def replay(
    model: nn.Module,
    record: dict[str, Any],
    calibration: list[torch.Tensor],
    example_inputs: torch.Tensor | None = None,
) -> nn.Module:
    """Re-apply recorded settings to a copy of ``model`` without training: int8 mode
    re-quantises with the same format, calibration method and float layers; qat mode
    quantises each layer to its recorded bits and calibrates activations on
    ``calibration``."""
    config = UniformConfig(**record["config"])
    inner, codecs = unwrap(model)
    if record["mode"] == "int8":
        example = example_inputs if example_inputs is not None else calibration[0][:1]
        with contextlib.redirect_stdout(io.StringIO()):
            data, _ = quantize_int8(
                copy.deepcopy(inner).eval(),
                example,
                calibration,
                record["format"],
                record["calibration"],
                keep_float=record["kept_float"],
            )
        return OnnxModule(data, threads=config.threads).eval()
    q = copy.deepcopy(inner).eval()
    bits = {n: int(b) for n, b in record["bits"].items()}
    prepare_(q, bits, sparse_masks(q, bits, codecs))
    calibrate_(q, calibration)
    return PackedModel(q.eval(), {**codecs, **convert_(q, bits, huffman=config.huffman)})


LEARNER = UniformQuantization

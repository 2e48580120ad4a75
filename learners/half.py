"""Learner ``half``: the model in half precision (fp16 or bf16), for the GPU runtimes.

Small networks on a GPU are served in half precision (TensorRT, Triton): half the bytes
moved per layer, tensor-core kernels, and, with BatchNorm folded into the convolutions
before conversion, fewer kernels per forward. This learner does the same to a copy of
its input: BatchNorm folded into the preceding convolution where the graph can be traced
(``torch.fx``'s ``fuse``; the model is left as it is where it cannot), every weight cast
to ``dtype``, optionally the first and last weight layers kept in float32 (the layers
that see raw pixels and make the logits; the search decides). The result is a
``HalfPrecision`` module that casts its float inputs to ``dtype`` in ``forward`` and
returns float32 logits, so its accuracy is measured in that precision by the same code
as any candidate, and the latency runners time it as a GPU would run it.

It comes after structure changes (prune, then halve: ``channel,half``) and last in a
chain: half-precision weights are not weights a later learner should train (fp16
training needs loss scaling this loop does not do). It is timed on ``cuda`` and
``cuda-graph`` only: CPUs mostly emulate fp16, so a CPU timing would say nothing about a
deployment. Its deployable file is the half-precision ONNX export (float32 input, a Cast,
fp16 or bf16 weights and arithmetic, float32 logits): about half the bytes of the fp32
file. An fp16 file runs on onnxruntime, TensorRT and most GPU runtimes; ONNX allows bf16
convolutions only from opset 22, so a bf16 file needs a runtime that takes it (TensorRT
does; onnxruntime's CPU provider does not).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from hpo.space import Categorical, Dimension
from learners.aids import Aids, Probe, built, measured_predictor
from learners.base import GPU_RUNTIMES, Context, LearnerDefaults, ModelInfo, Stage

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class HalfConfig:
    """dtype: "fp16" (IEEE half: 10-bit mantissa, the usual inference format) or "bf16"
    (8-bit mantissa, fp32's range); fold_batchnorm into the preceding convolutions
    before casting; search_keep_first_last lets the search keep the first and last
    weight layers in float32."""

    dtype: str = "fp16"
    fold_batchnorm: bool = True
    search_keep_first_last: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"half.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class KeepFloat(nn.Module):
    """A layer kept in float32 inside a half-precision model: casts in and back out."""

    def __init__(self, layer: nn.Module, precision: str) -> None:
        super().__init__()
        self.layer = layer.float()
        self.precision = precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.float()).to(DTYPES[self.precision])


class HalfPrecision(nn.Module):
    """A model whose weights and arithmetic are ``precision``: float inputs are cast in
    ``forward``, logits come back as float32 (so losses, argmax and exports see floats)."""

    runtimes = GPU_RUNTIMES

    def __init__(self, inner: nn.Module, precision: str) -> None:
        super().__init__()
        self.inner = inner
        self.precision = precision  # "fp16" or "bf16"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(DTYPES[self.precision])).float()


def weight_layer_names(model: nn.Module) -> list[str]:
    """Names of the model's conv and linear layers, in definition order."""
    return [name for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, bool]:
    """A copy of ``model`` (eval mode) with each BatchNorm that follows a convolution
    folded into it, and whether that was possible (tracing can fail on data-dependent
    control flow: then the copy is returned unfolded)."""
    model = copy.deepcopy(model).eval()
    try:
        return fuse(model, inplace=True), True
    except Exception:  # not symbolically traceable: keep the BatchNorms
        return model, False


def to_half(
    model: nn.Module, dtype: str, fold: bool, keep_float: list[str]
) -> tuple[HalfPrecision, bool]:
    """``model`` (not modified) in ``dtype``, and whether BatchNorm was folded (asked for
    with ``fold``, and possible); the layers named in ``keep_float`` stay in float32."""
    inner, folded = fold_batchnorm(model) if fold else (copy.deepcopy(model).eval(), False)
    inner = inner.to(DTYPES[dtype])
    for name in keep_float:
        parent_name, _, child = name.rpartition(".")
        parent = inner.get_submodule(parent_name)
        setattr(parent, child, KeepFloat(getattr(parent, child), dtype))
    return HalfPrecision(inner, dtype).eval(), folded


class Half(LearnerDefaults):
    """Learner ``half``: fp16/bf16 for the GPU runtimes (a ``HalfPrecision`` module)."""

    name = "half"
    stage: ClassVar[Stage] = Stage.QUANTIZATION
    keeps_float: ClassVar[bool] = False  # half-precision weights: nothing trains them after
    runtimes: tuple[str, ...] | None = GPU_RUNTIMES

    def __init__(self, config: HalfConfig | None = None, **options: Any) -> None:
        self.config = config or HalfConfig(**options)

    def space(self, info: ModelInfo) -> list[Dimension]:
        if not self.config.search_keep_first_last:
            return []
        return [Categorical("keep_first_last", (False, True))]

    def prepare(self, info: ModelInfo, probe: Probe) -> Aids:
        """Its rule start: every layer in half precision; its predictor measures its
        output on the baseline once per choice of keeping the first and last layers."""
        predict = measured_predictor(
            built(self, info, probe), probe, lambda p: bool(p.get("keep_first_last"))
        )
        start = {"keep_first_last": False} if self.space(info) else {}
        factor = predict(start) if probe.start else None
        return Aids(start=start if probe.start else None, predict=predict, factor=factor)

    def compress(self, model: nn.Module, params: dict[str, Any], ctx: Context) -> nn.Module:
        c = self.config
        layers = weight_layer_names(model)
        keep = [layers[0], layers[-1]] if params.get("keep_first_last") and layers else []
        keep = list(dict.fromkeys(keep))
        out, folded = to_half(model, c.dtype, c.fold_batchnorm, keep)
        ctx.records[self.name] = {
            "config": c.to_dict(),
            "params": dict(params),
            "dtype": c.dtype,
            "folded_batchnorm": folded,
            "kept_float": keep,
        }
        return out

    def replay(self, model: nn.Module, record: dict[str, Any], ctx: Context) -> nn.Module:
        """The same conversion of a copy of ``model``: recorded dtype, folding, float
        layers (nothing is trained, so the weights match too)."""
        fold = bool(record["folded_batchnorm"])
        out, folded = to_half(model, record["dtype"], fold, list(record["kept_float"]))
        if folded != fold:
            raise ValueError(
                "half: the record says BatchNorm was folded, but this model cannot be traced "
                "to fold it: replay onto the model the record was made from"
            )
        return out


LEARNER = Half

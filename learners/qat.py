"""Learner ``qat``: quantisation-aware training, b-bit weights (2..8, per layer), 8-bit
activations.

Weights are fake-quantised symmetrically per output channel, w_q = s * round(w / s) with
s = max|w| / (2^(b-1) - 1), and trained through the straight-through estimator (the
forward sees w_q, the gradient flows to w as if rounding were the identity). The input of
every quantised layer goes through an 8-bit affine fake quantiser whose range is
calibrated on training batches and then tracked by a moving average while training. Bits
are fixed, or searched globally or per layer and lowered to an average-bit budget.

``convert_`` freezes the result: each weight becomes exactly ``codes * scale`` and the
scale is kept as the buffer ``weight_scale``, so a packed file of b-bit codes (see
``learners.formats.packed``) decodes to the very same tensors. Zeros of a sparse weight stay
zero (the mask is held). On CPU this saves bytes, not time: the fake quantisers make the
float model slightly slower; real int8 kernels are the ``int8`` learner. The weights are
b-bit codes, so nothing that edits float weights may follow this learner in a chain.

Do not deep-copy a model between ``prepare_`` and ``convert_``: torch's parametrised
modules share their generated class with the copy, and removing the parametrisation from
one breaks the other. The learner copies the float model first, then prepares the copy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from hpo.space import Dimension
from learners.aids import Aids, Probe
from learners.base import Context, LearnerDefaults, ModelInfo, Stage
from learners.bitwidth import (
    average_bits,
    bit_dimensions,
    bits_aids,
    check_bit_settings,
    first_parametrization,
    layer_bits,
    layer_weight,
    weight_layers,
)
from learners.finetune import calibration_batches, finish_finetune_
from learners.formats.packed import PackedModel, TensorCodec, unwrap

ACT_BITS = 8


def qmax_for(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def channel_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric scale (1 for an all-zero channel)."""
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    scale = amax / qmax_for(bits)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def fake_quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """w_q with a straight-through gradient."""
    s = channel_scale(weight, bits).reshape(-1, *([1] * (weight.dim() - 1)))
    q = torch.clamp(torch.round(weight / s), -qmax_for(bits), qmax_for(bits)) * s
    return weight + (q - weight).detach()


class WeightFakeQuant(nn.Module):
    """Parametrisation: masked, fake-quantised weight."""

    mask: torch.Tensor | None

    def __init__(self, bits: int, mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("mask", mask)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        w = original * self.mask if self.mask is not None else original
        return fake_quantize_weight(w, self.bits)


class ActQuant(nn.Module):
    """8-bit affine fake quantiser with a calibrated, then moving-average, range."""

    lo: torch.Tensor
    hi: torch.Tensor
    seen: torch.Tensor

    def __init__(self, momentum: float = 0.05) -> None:
        super().__init__()
        self.momentum = momentum
        self.calibrating = False
        self.frozen = False
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min().clamp(max=0.0), x.max().clamp(min=0.0)
        if not bool(self.seen):
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.seen.fill_(True)
        elif self.calibrating:  # calibration: the full range seen
            self.lo.copy_(torch.minimum(self.lo, lo))
            self.hi.copy_(torch.maximum(self.hi, hi))
        else:  # training: follow the range slowly
            self.lo.lerp_(lo, self.momentum)
            self.hi.lerp_(hi, self.momentum)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        levels = (1 << ACT_BITS) - 1
        scale = ((self.hi - self.lo) / levels).clamp_min(1e-8).reshape(1).float()
        zero_point = torch.round(-self.lo / scale).clamp(0, levels).reshape(1).to(torch.int32)
        return scale, zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.frozen and (self.calibrating or self.training):
            self.observe(x)
        if not bool(self.seen):
            return x
        scale, zero_point = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, (1 << ACT_BITS) - 1)


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the layer's input goes through its ``input_quant`` first."""
    quant: ActQuant = module.get_submodule("input_quant")  # type: ignore[assignment]
    return (quant(args[0]), *args[1:])


def prepare_(
    model: nn.Module, bits: dict[str, int], masks: dict[str, torch.Tensor] | None = None
) -> None:
    """Attach weight and input fake quantisers to the named conv/linear layers."""
    layers = dict(weight_layers(model))
    masks = masks or {}
    for name, b in bits.items():
        if not 2 <= b <= 8:
            raise ValueError(f"{name}: weight bits must be in [2, 8], got {b}")
        module = layers[name]
        parametrize.register_parametrization(module, "weight", WeightFakeQuant(b, masks.get(name)))
        module.add_module("input_quant", ActQuant())
        module.register_forward_pre_hook(_quantize_input)


@torch.no_grad()
def calibrate_(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Set activation ranges from a few batches (eval mode: BatchNorm stats untouched)."""
    quants = [m for m in model.modules() if isinstance(m, ActQuant)]
    was_training = model.training
    model.eval()
    for q in quants:
        q.calibrating = True
    for x in batches:
        model(x)
    for q in quants:
        q.calibrating = False
    model.train(was_training)


@torch.no_grad()
def convert_(
    model: nn.Module, bits: dict[str, int], huffman: bool = False
) -> dict[str, TensorCodec]:
    """Freeze: weights := codes * scale exactly, ranges fixed. Returns the codecs."""
    layers = dict(weight_layers(model))
    codecs = {}
    for name, b in bits.items():
        module = layers[name]
        fq = first_parametrization(module)
        original: torch.Tensor = module.parametrizations.weight.original  # type: ignore[union-attr,assignment]
        w = original * fq.mask if fq.mask is not None else original.clone()
        scale = channel_scale(w, b)
        view = scale.reshape(-1, *([1] * (w.dim() - 1)))
        codes = torch.clamp(torch.round(w / view), -qmax_for(b), qmax_for(b))
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        # The same float32 product the packed-file decoder computes: bit-exact round trip.
        layer_weight(module).copy_(codes * view)
        module.register_buffer("weight_scale", scale.clone())
        quant: ActQuant = module.get_submodule("input_quant")  # type: ignore[assignment]
        quant.frozen = True
        sparse = fq.mask is not None
        codecs[f"{name}.weight"] = TensorCodec(
            sparse=sparse, values="uniform", bits=b, scale=f"{name}.weight_scale", huffman=huffman
        )
    return codecs


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


@dataclass(frozen=True)
class QatConfig:
    """bits fixed, or searched globally / per layer (``granularity``) in [min_bits,
    max_bits] and lowered to an ``avg_bits`` budget; huffman codes the weight codes;
    calibration_batches of training data set the activation ranges; exclude names layers
    left in float; recalibrate_bn re-estimates BatchNorm statistics for the final
    quantised weights."""

    bits: int | None = None
    min_bits: int = 2
    max_bits: int = 8
    granularity: str = "layer"
    avg_bits: float | None = None
    huffman: bool = False
    calibration_batches: int = 8
    exclude: tuple[str, ...] = ()
    recalibrate_bn: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude))
        check_bit_settings(self, lowest=2)
        if self.calibration_batches < 1:
            raise ValueError(f"calibration_batches must be >= 1, got {self.calibration_batches}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Qat(LearnerDefaults):
    """Learner ``qat``: b-bit fake-quant training; the file packs each code in b bits."""

    name = "qat"
    stage: ClassVar[Stage] = Stage.QUANTIZATION
    keeps_float: ClassVar[bool] = False  # b-bit codes: a later learner would undo them
    speeds_up: tuple[str, ...] | None = ()  # fake quantisers: bytes saved, not time

    def __init__(self, config: QatConfig | None = None, **options: Any) -> None:
        self.config = config or QatConfig(**options)

    def space(self, info: ModelInfo) -> list[Dimension]:
        return bit_dimensions(self.config, info.model)

    def prepare(self, info: ModelInfo, probe: Probe) -> Aids:
        """Its rule start and predictor over the bit widths (``bitwidth.bits_aids``)."""
        return bits_aids(self, self.config, info, probe)

    def compress(self, model: nn.Module, params: dict[str, Any], ctx: Context) -> nn.Module:
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
            "bits": bits,
            "avg_bits": average_bits(bits, sizes),
            "act_bits": ACT_BITS,
            "bn_recalibration_batches": recalibrated,
        }
        return PackedModel(q.eval(), {**codecs, **new})

    def replay(self, model: nn.Module, record: dict[str, Any], ctx: Context) -> nn.Module:
        """Quantise a copy of ``model`` to the recorded bits, without training, with
        activation ranges calibrated on the first batches of ``ctx.train_loader``."""
        config = QatConfig(**record["config"])
        inner, codecs = unwrap(model)
        q = copy.deepcopy(inner).eval()
        bits = {n: int(b) for n, b in record["bits"].items()}
        prepare_(q, bits, sparse_masks(q, bits, codecs))
        calibrate_(q, calibration_batches(ctx, config.calibration_batches))
        return PackedModel(q.eval(), {**codecs, **convert_(q, bits, huffman=config.huffman)})


LEARNER = Qat

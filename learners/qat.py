"""Quantisation-aware training: b-bit weights (2..8, per layer), 8-bit activations.

Weights are fake-quantised symmetrically per output channel, w_q = s * round(w / s) with
s = max|w| / (2^(b-1) - 1), and trained through the straight-through estimator (the
forward sees w_q, the gradient flows to w as if rounding were the identity). The input of
every quantised layer goes through an 8-bit affine fake quantiser whose range is
calibrated on training batches and then tracked by a moving average while training.

``convert_`` freezes the result: each weight becomes exactly ``codes * scale`` and the
scale is kept as the buffer ``weight_scale``, so a packed file of b-bit codes (see
``learners.formats.packed``) decodes to the very same tensors. Zeros of a sparse weight stay
zero (the mask is held). On CPU this saves bytes, not time: the fake quantisers make the
float model slightly slower; real int8 kernels are the ``uniform`` learner's int8 mode.

Do not deep-copy a model between ``prepare_`` and ``convert_``: torch's parametrised
modules share their generated class with the copy, and removing the parametrisation from
one breaks the other. The learner copies the float model first, then prepares the copy.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from learners.bitwidth import first_parametrization, layer_weight, weight_layers
from learners.formats.packed import TensorCodec

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

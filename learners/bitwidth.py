"""Per-layer bit widths shared by the b-bit learners (quantisation-aware training,
k-means weight sharing): which layers are coded, the search dimensions for their widths,
and fitting chosen widths to an average-bit budget."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

from hpo.space import Dimension, Integer
from learners.aids import Aids, Compresses, Probe, built
from learners.base import ModelInfo
from learners.formats.packed import unwrap
from learners.rule import Knob, rule_aids, uniform_params

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def weight_layers(model: nn.Module, exclude: tuple[str, ...] = ()) -> list[tuple[str, nn.Module]]:
    """(module name, module) of every conv/linear layer whose weight a learner may code."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, WEIGHT_LAYERS) and name not in exclude
    ]


# --------------------------------------------------------------------------- bit budgets


def average_bits(bits: Mapping[str, int], sizes: Mapping[str, int]) -> float:
    """Size-weighted mean bit width of the coded weights."""
    total = sum(sizes[n] for n in bits)
    return sum(bits[n] * sizes[n] for n in bits) / max(1, total)


def fit_bits_to_budget(
    bits: Mapping[str, int], sizes: Mapping[str, int], budget: float | None, min_bits: int
) -> dict[str, int]:
    """Lower per-layer bit widths until the size-weighted mean is within ``budget``: one bit
    at a time from the widest layer (ties: the largest), so the search's preferences keep
    their order and the budget is always met."""
    out = dict(bits)
    if budget is None:
        return out
    if budget < min_bits:
        raise ValueError(f"a budget of {budget} average bits is below min_bits={min_bits}")
    while average_bits(out, sizes) > budget + 1e-9:
        name = max(out, key=lambda n: (out[n], sizes[n], n))
        if out[name] <= min_bits:
            break
        out[name] -= 1
    return out


class BitWidthSettings(Protocol):
    """The bit-width fields the b-bit learners (``uniform`` qat mode, ``nonuniform``)
    share: ``bits`` fixed for every layer, else searched once ("global" granularity) or per
    layer ("layer") in [min_bits, max_bits] and lowered to ``avg_bits`` when set; layers in
    ``exclude`` are not coded. Read-only properties so frozen dataclasses match."""

    @property
    def bits(self) -> int | None: ...
    @property
    def min_bits(self) -> int: ...
    @property
    def max_bits(self) -> int: ...
    @property
    def granularity(self) -> str: ...
    @property
    def avg_bits(self) -> float | None: ...
    @property
    def exclude(self) -> tuple[str, ...]: ...


def check_bit_settings(settings: BitWidthSettings, lowest: int) -> None:
    """Reject bit-width settings outside ``lowest <= min_bits <= max_bits <= 8`` (the
    lowest width differs by learner: k-means sharing allows 1 bit, uniform codes 2)."""
    s = settings
    if not lowest <= s.min_bits <= s.max_bits <= 8:
        raise ValueError(
            f"need {lowest} <= min_bits <= max_bits <= 8, got {s.min_bits}, {s.max_bits}"
        )
    if s.bits is not None and not s.min_bits <= s.bits <= s.max_bits:
        raise ValueError(f"bits must be in [{s.min_bits}, {s.max_bits}], got {s.bits}")
    if s.granularity not in ("global", "layer"):
        raise ValueError(f"granularity must be 'global' or 'layer', got {s.granularity!r}")
    if s.avg_bits is not None and not s.min_bits <= s.avg_bits <= s.max_bits:
        raise ValueError(
            f"avg_bits must be in [min_bits, max_bits] = [{s.min_bits}, "
            f"{s.max_bits}], got {s.avg_bits}"
        )


def bit_dimensions(settings: BitWidthSettings, model: nn.Module) -> list[Dimension]:
    """Search dimensions for the bit widths: none when ``bits`` is fixed, one ``bits`` for
    "global" granularity, else one ``bits.<layer>`` per coded layer of ``model``."""
    s = settings
    if s.bits is not None:
        return []
    if s.granularity == "global":
        return [Integer("bits", s.min_bits, s.max_bits)]
    inner, _ = unwrap(model)
    return [
        Integer(f"bits.{n}", s.min_bits, s.max_bits) for n, _ in weight_layers(inner, s.exclude)
    ]


def layer_bits(
    settings: BitWidthSettings, params: Mapping[str, Any], sizes: Mapping[str, int]
) -> dict[str, int]:
    """Bits per layer of ``sizes`` from the settings or the search's ``params`` (the names
    ``bit_dimensions`` gives; max_bits where absent), within the average-bit budget."""
    s = settings
    if s.bits is not None:
        bits = {n: s.bits for n in sizes}
    elif s.granularity == "layer":
        bits = {n: int(params.get(f"bits.{n}", s.max_bits)) for n in sizes}
    else:
        bits = {n: int(params.get("bits", s.max_bits)) for n in sizes}
    return fit_bits_to_budget(bits, sizes, s.avg_bits, s.min_bits)


def layer_weight(module: nn.Module) -> torch.Tensor:
    """The ``weight`` of a conv/linear layer (typed, for code that edits it)."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is not a tensor")
    return weight


def first_parametrization(module: nn.Module) -> Any:
    """The parametrisation a learner registered on ``module.weight``."""
    return module.parametrizations.weight[0]  # type: ignore[union-attr,index]


def bits_aids(
    learner: Compresses, settings: BitWidthSettings, info: ModelInfo, probe: Probe
) -> Aids:
    """A bit-width learner's search aids. For a compression target: the widest uniform
    width that meets it (bisected from ``max_bits`` down on its un-fine-tuned output,
    ``learners.rule``) and, with one global width, a curve over the widths that predicts
    any setting. For a speedup target (the codes are decoded to float weights, so the
    width changes the file, not the compute): the widest width, and no predictor."""
    dims = learner.space(info)
    widths = [d.name for d in dims if isinstance(d, Integer)]
    if not widths or probe.target.kind != "compression":
        return Aids(start=uniform_params(dims, settings.max_bits)) if probe.start else Aids()
    knob = Knob(
        name="bits",
        lo=settings.max_bits,
        hi=settings.min_bits,
        params_for=lambda bits: uniform_params(dims, bits),
        build=built(learner, info, probe),
        hint=f" or lower learner_options.{learner.name}.min_bits",
        integer=True,
        param="bits" if widths == ["bits"] else None,
    )
    return rule_aids(learner.name, knob, probe)

"""Low-rank factorisation: each chosen layer becomes two smaller layers (truncated SVD).

A layer's weight, flattened to W (out x in*k*k), is replaced by its best rank-r
approximation in the Frobenius norm, U_r S_r V_r^T (Eckart & Young 1936: the error is
the energy of the dropped singular values, sum_{i>r} s_i^2), split as two layers:
A = sqrt(S_r) V_r^T (in*k*k -> r) then B = U_r sqrt(S_r) (r -> out, with the bias).

- Linear: Linear(in, r, bias=False) then Linear(r, out).
- Conv2d, 1x1 or KxK: a KxK conv to r channels (same stride, padding, dilation) then a 1x1
  conv to the output channels, the "channel decomposition" of Zhang et al. 2016
  ("Accelerating Very Deep Convolutional Networks for Classification and Detection",
  TPAMI). Chosen over the spatial Kx1/1xK split (Jaderberg et al. 2014) because it is a
  closed-form SVD (no per-layer optimisation), exact at full rank, and both halves are
  plain dense convolutions every runtime and ONNX exporter already handles. KxK convs are
  included by default because CIFAR-style ResNets have almost nothing else (resnet20:
  19 3x3 convs, two 1x1 shortcuts, one Linear head); ``convolutions="pointwise"`` keeps
  them out. Grouped and depthwise convs are never factorised.

Both halves run at the layer's output resolution, so parameters and FLOPs shrink by the
same factor r * (in*k*k + out) / (out * in*k*k). A layer whose factorised form would not
save parameters at the chosen rank is left alone. The optimiser tunes the kept rank as a
fraction of the layer's full rank min(out, in*k*k), per stage (top-level child) or per
layer; the result is fine-tuned through ``ctx.finetune``. The per-layer ranks are the
record, and ``replay`` rebuilds the same shapes (with the SVD weights) from them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from hpo.space import Dimension, Real, to_python
from learners.aids import Aids, Probe
from learners.base import Context, LearnerDefaults, ModelInfo, Stage
from learners.finetune import finish_finetune_
from learners.layers import output_layer_names
from learners.rule import Knob, rule_aids, uniform_params

GRANULARITIES = ("stage", "layer")
CONVOLUTIONS = ("all", "pointwise", "none")  # which convs may be factorised besides Linear


@dataclass(frozen=True)
class LowRankConfig:
    granularity: str = "stage"  # one rank fraction per top-level child, or per layer
    min_fraction: float = 0.1  # kept rank as a fraction of the layer's full rank
    max_fraction: float = 1.0  # 1.0 lets the optimiser leave a unit alone
    convolutions: str = "all"  # "all": KxK and 1x1; "pointwise": 1x1 only; "none"
    exclude_output: bool = True  # leave the layer that produces the logits alone

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {', '.join(map(repr, GRANULARITIES))}; "
                f"got {self.granularity!r}"
            )
        if self.convolutions not in CONVOLUTIONS:
            raise ValueError(
                f"convolutions must be one of {', '.join(map(repr, CONVOLUTIONS))}; "
                f"got {self.convolutions!r}"
            )
        if not 0.0 < self.min_fraction < self.max_fraction <= 1.0:
            raise ValueError(
                "min_fraction and max_fraction need 0 < min_fraction < max_fraction <= 1; "
                f"got min_fraction={self.min_fraction}, max_fraction={self.max_fraction}"
            )
        if not isinstance(self.exclude_output, bool):
            raise ValueError(f"exclude_output must be True or False, got {self.exclude_output!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def factorisable(module: nn.Module, convolutions: str = "all") -> bool:
    """Whether ``module`` is a layer this learner can split in two."""
    if isinstance(module, nn.Linear):
        return True
    if not isinstance(module, nn.Conv2d) or module.groups != 1 or convolutions == "none":
        return False
    return convolutions == "all" or tuple(module.kernel_size) == (1, 1)


def full_rank(layer: nn.Linear | nn.Conv2d) -> int:
    out, *rest = layer.weight.shape
    return min(out, math.prod(rest))


def saves_parameters(layer: nn.Linear | nn.Conv2d, rank: int) -> bool:
    """Whether two layers through ``rank`` channels hold fewer weights than ``layer``."""
    out, *rest = layer.weight.shape
    fan_in = math.prod(rest)
    return rank * (fan_in + out) < out * fan_in


def rank_for(fraction: float, full: int) -> int:
    return max(1, min(full, round(fraction * full)))


def units(
    model: nn.Module, example_inputs: torch.Tensor, config: LowRankConfig
) -> dict[str, list[str]]:
    """Unit name -> the factorisable layers it covers (each unit gets one rank fraction)."""
    kinds = (nn.Linear, nn.Conv2d)
    skip = set(output_layer_names(model, example_inputs, kinds)) if config.exclude_output else set()
    grouped: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        if name and name not in skip and factorisable(m, config.convolutions):
            unit = name if config.granularity == "layer" else name.split(".")[0]
            grouped.setdefault(unit, []).append(name)
    return grouped


def plan(
    model: nn.Module, params: dict[str, Any], example_inputs: torch.Tensor, config: LowRankConfig
) -> dict[str, int]:
    """Layer name -> kept rank, for the layers whose factorised form saves parameters
    (a unit without a ``rank.<unit>`` parameter is left alone)."""
    modules = dict(model.named_modules())
    ranks: dict[str, int] = {}
    for unit, names in units(model, example_inputs, config).items():
        fraction = params.get(f"rank.{unit}")
        if fraction is None:
            continue
        for name in names:
            layer = modules[name]
            rank = rank_for(float(fraction), full_rank(layer))
            if saves_parameters(layer, rank):
                ranks[name] = rank
    return ranks


@torch.no_grad()
def split_layer(layer: nn.Linear | nn.Conv2d, rank: int) -> nn.Sequential:
    """Two layers through ``rank`` channels holding the truncated SVD of ``layer``."""
    weight = layer.weight
    out = weight.shape[0]
    u, s, vh = torch.linalg.svd(weight.detach().double().reshape(out, -1), full_matrices=False)
    root = s[:rank].sqrt()
    first_w = (root[:, None] * vh[:rank]).to(weight)
    second_w = (u[:, :rank] * root[None, :]).to(weight)
    has_bias = layer.bias is not None
    first: nn.Module
    second: nn.Module
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, out, bias=has_bias)
        first.weight.copy_(first_w)
        second.weight.copy_(second_w)
    else:
        first = nn.Conv2d(
            layer.in_channels,
            rank,
            layer.kernel_size,  # type: ignore[arg-type]
            stride=layer.stride,  # type: ignore[arg-type]
            padding=layer.padding,  # type: ignore[arg-type]
            dilation=layer.dilation,  # type: ignore[arg-type]
            bias=False,
            padding_mode=layer.padding_mode,
        )
        second = nn.Conv2d(rank, out, 1, bias=has_bias)
        first.weight.copy_(first_w.reshape(first.weight.shape))
        second.weight.copy_(second_w.reshape(second.weight.shape))
    if layer.bias is not None:
        second.bias.copy_(layer.bias)  # type: ignore[union-attr]
    pair = nn.Sequential(first, second).to(device=weight.device, dtype=weight.dtype)
    return pair.train(layer.training)


def factorise_(model: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """Replace each named layer of ``model`` in place by its rank-``ranks[name]`` pair."""
    modules = dict(model.named_modules())
    for name, rank in ranks.items():
        layer = modules.get(name)
        if not isinstance(layer, (nn.Linear, nn.Conv2d)) or not factorisable(layer):
            raise ValueError(
                f"{name!r} is not a Linear or ungrouped Conv2d of {type(model).__name__}"
            )
        if not 1 <= rank <= full_rank(layer):
            raise ValueError(f"rank of {name!r} must be in [1, {full_rank(layer)}], got {rank}")
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name], child, split_layer(layer, rank))
    return model


def predicted_compression(info: ModelInfo, params: dict[str, Any], config: LowRankConfig) -> float:
    """The file's compression for ``params``, predicted as the ratio of the numbers it
    stores (parameters and buffers, fp32 both before and after): each factorised layer
    keeps rank * (fan_in + out) weights of out * fan_in. The graph's own bytes are left
    out, so a small model's file is predicted slightly smaller than it is."""
    model = info.model
    modules = dict(model.named_modules())
    stored = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    saved = 0
    for name, rank in plan(model, params, info.example_inputs, config).items():
        out, *rest = modules[name].weight.shape  # type: ignore[union-attr]
        fan_in = math.prod(rest)
        saved += out * fan_in - rank * (fan_in + out)
    return stored / max(1, stored - saved)


class LowRank(LearnerDefaults):
    name = "lowrank"
    stage = Stage.STRUCTURE
    keeps_float = True
    runtimes = None

    def __init__(self, config: LowRankConfig | None = None, **options: Any) -> None:
        self.config = config or LowRankConfig(**options)

    def space(self, info: ModelInfo) -> list[Dimension]:
        c = self.config
        return [
            Real(f"rank.{unit}", c.min_fraction, c.max_fraction)
            for unit in units(info.model, info.example_inputs, c)
        ]

    def prepare(self, info: ModelInfo, probe: Probe) -> Aids:
        """Its rule start: the largest kept-rank fraction, the same for every unit, whose
        factorised (SVD, un-fine-tuned) model meets the target (``learners.rule``); for
        a compression target also a predictor, from the weights a setting keeps
        (``predicted_compression``). No speedup predictor: fewer FLOPs are not a speedup."""
        c, dims = self.config, self.space(info)
        knob = Knob(
            name="fraction",
            lo=c.max_fraction,
            hi=c.min_fraction,
            params_for=lambda fraction: uniform_params(dims, fraction),
            build=lambda params: self.factorised(info, params),
            hint=" or lower learner_options.lowrank.min_fraction",
        )
        aids = rule_aids(self.name, knob, probe)
        if probe.target.kind == "compression":
            aids.predict = lambda params: predicted_compression(info, params, c)
        return aids

    def factorised(self, info: ModelInfo, params: dict[str, Any]) -> nn.Module:
        """The factorised copy of ``info``'s model for ``params`` (SVD weights, untrained)."""
        ranks = plan(info.model, params, info.example_inputs, self.config)
        return factorise_(copy.deepcopy(info.model), ranks).eval()

    def compress(self, model: nn.Module, params: dict[str, Any], ctx: Context) -> nn.Module:
        ranks = plan(model, params, ctx.example_inputs, self.config)
        modules = dict(model.named_modules())
        smaller = factorise_(copy.deepcopy(model), ranks)
        ctx.records[self.name] = {
            "config": self.config.to_dict(),
            "params": {k: to_python(v) for k, v in params.items()},
            "ranks": ranks,
            "full_ranks": {n: full_rank(modules[n]) for n in ranks},  # type: ignore[arg-type]
        }
        # Truncation moves every activation after the first factorised layer: the fine-tune
        # runs BatchNorm in training mode, and the statistics are re-estimated at the end.
        batches = finish_finetune_(smaller, ctx.finetune(smaller), ctx, self.name, True)
        ctx.records[self.name]["bn_batches"] = batches
        return smaller.eval()

    def replay(self, model: nn.Module, record: dict[str, Any], ctx: Context) -> nn.Module:
        """The recorded architecture (SVD weights, no training) from a copy of ``model``."""
        ranks = {str(k): int(v) for k, v in record["ranks"].items()}
        return factorise_(copy.deepcopy(model), ranks).eval()


LEARNER = LowRank

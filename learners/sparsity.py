"""Weight sparsification: gradual magnitude pruning (Zhu & Gupta, "To prune, or not to
prune", 2017) with masks held during fine-tuning.

Sparsity rises from ``initial`` to the final target along a cubic curve between a start
and an end step, and the masks are recomputed (smallest magnitudes of the already-masked
weights) every ``frequency`` steps, so the network adapts while it is pruned. The final
per-layer sparsities come from one global target, spread over layers uniformly, by the
search's per-layer shares, or by a global magnitude ranking (``allocate``).

The result is a ``PackedModel`` whose deployable file stores only the non-zeros (positions
+ float32 values), so the file shrinks with the density. Dense CPU kernels run a sparse
weight exactly as fast as a dense one: this learner saves bytes, not time.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from hpo.space import Dimension, Real
from learners.aids import Aids, Probe, built
from learners.base import Context, LearnerDefaults, ModelInfo, Stage
from learners.bitwidth import first_parametrization, layer_weight, weight_layers
from learners.finetune import finish_finetune_
from learners.formats.packed import PackedModel, TensorCodec, unwrap
from learners.rule import Knob, rule_aids

ALLOCATIONS = ("uniform", "layer", "global")


def zhu_gupta(
    step: int, initial: float, final: float, start: int, end: int, frequency: int
) -> float:
    """Target sparsity at ``step``: 0 before ``start``; then
    s_f + (s_i - s_f) * (1 - (t - start) / (end - start))^3, evaluated at the last mask
    update ``t`` (a multiple of ``frequency`` after ``start``); ``final`` from ``end`` on."""
    if step < start:
        return 0.0
    if step >= end:
        return final
    t = start + ((step - start) // frequency) * frequency
    progress = (t - start) / (end - start)
    return final + (initial - final) * (1.0 - progress) ** 3


def allocate(
    sizes: dict[str, int], scores: dict[str, float], target: float, cap: float
) -> dict[str, float]:
    """Per-layer sparsities s_l = min(cap, c * score_l) with the one ``c`` for which the
    size-weighted mean sparsity equals ``target`` (found by bisection; monotone in c)."""
    if not 0.0 <= target <= cap < 1.0:
        raise ValueError(f"need 0 <= target <= cap < 1, got target={target}, cap={cap}")
    if any(s <= 0 for s in scores.values()) or set(scores) != set(sizes):
        raise ValueError("scores must be positive and name exactly the layers in sizes")
    total = sum(sizes.values())

    def mean(c: float) -> float:
        return sum(n * min(cap, c * scores[k]) for k, n in sizes.items()) / total

    if target == 0.0:
        return {k: 0.0 for k in sizes}
    lo, hi = 0.0, cap / min(scores.values())
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean(mid) < target else (lo, mid)
    return {k: min(cap, hi * scores[k]) for k in sizes}


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping the ``1 - sparsity`` largest magnitudes (ties by position)."""
    n = weight.numel()
    k = min(n, int(round(sparsity * n)))
    mask = torch.ones(n, dtype=torch.bool, device=weight.device)
    if k > 0:
        order = torch.argsort(weight.detach().abs().flatten(), stable=True)
        mask[order[:k]] = False
    return mask.reshape(weight.shape)


@dataclass(frozen=True)
class SparsityConfig:
    """What the search may tune and how pruning runs.

    sparsity:        fixed global target; None lets the search choose in [min, max].
    allocation:      "uniform" (every layer the same), "layer" (search proposes a share per
                     layer) or "global" (one magnitude threshold across layers).
    max_layer_sparsity: no layer is pruned beyond this (avoids cutting a layer off).
    initial_sparsity, start_step, end_step, frequency: the Zhu & Gupta schedule, in
                     optimizer steps of the fine-tune run; end_step None = one epoch of the
                     training loader (ending on its last step), frequency None = a tenth of
                     the ramp. If the fine-tune budget ends inside the ramp, the rest of the
                     way to the final sparsity is taken at once (recorded as not completed).
    exclude:         module names left dense.
    recalibrate_bn:  re-estimate BatchNorm statistics on the training data once the
                     masks are final (see ``learners.finetune.recalibrate_batchnorm_``).
    """

    sparsity: float | None = None
    min_sparsity: float = 0.3
    max_sparsity: float = 0.95
    allocation: str = "uniform"
    max_layer_sparsity: float = 0.98
    initial_sparsity: float = 0.0
    start_step: int = 0
    end_step: int | None = None
    frequency: int | None = None
    exclude: tuple[str, ...] = ()
    recalibrate_bn: bool = True

    def __post_init__(self) -> None:
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if not 0.0 <= self.min_sparsity < self.max_sparsity <= self.max_layer_sparsity < 1.0:
            raise ValueError(
                "need 0 <= min_sparsity < max_sparsity <= max_layer_sparsity < 1, got "
                f"{self.min_sparsity}, {self.max_sparsity}, {self.max_layer_sparsity}"
            )
        if self.sparsity is not None and not 0.0 <= self.sparsity <= self.max_layer_sparsity:
            raise ValueError(
                f"sparsity must be in [0, max_layer_sparsity={self.max_layer_sparsity}], "
                f"got {self.sparsity}"
            )
        if not 0.0 <= self.initial_sparsity < 1.0:
            raise ValueError(f"initial_sparsity must be in [0, 1), got {self.initial_sparsity}")
        if self.start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {self.start_step}")
        if self.end_step is not None and self.end_step <= self.start_step:
            raise ValueError(f"end_step must exceed start_step, got {self.end_step}")
        if self.frequency is not None and self.frequency < 1:
            raise ValueError(f"frequency must be >= 1, got {self.frequency}")
        object.__setattr__(self, "exclude", tuple(self.exclude))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Mask(nn.Module):
    """Parametrisation weight = original * mask: pruned weights get zero gradient."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original * self.mask


class _Schedule:
    """Forward pre-hook on the model: each forward in training mode is one step, and the
    masks follow ``zhu_gupta``. Ticking on forwards makes the schedule work inside any
    training loop (the shared one included) without a callback."""

    def __init__(self, pruner: GradualPruner, start: int, end: int, frequency: int) -> None:
        self.pruner, self.start, self.end, self.frequency = pruner, start, end, frequency
        self.step = 0

    def __call__(self, module: nn.Module, args: Any) -> None:
        if not module.training:
            return
        t = self.step
        if self.start <= t <= self.end and (t - self.start) % self.frequency == 0:
            self.pruner.update(self.pruner.target_at(t, self.start, self.end, self.frequency))
        self.step += 1


class GradualPruner:
    """Holds the masks of one model's layers and moves them to a global sparsity."""

    def __init__(
        self, model: nn.Module, config: SparsityConfig, final: float, shares: dict[str, float]
    ) -> None:
        self.model, self.config, self.final = model, config, final
        self.layers = dict(weight_layers(model, config.exclude))
        self.shares = shares
        self.sizes = {n: layer_weight(m).numel() for n, m in self.layers.items()}
        for m in self.layers.values():
            parametrize.register_parametrization(
                m, "weight", _Mask(torch.ones_like(layer_weight(m), dtype=torch.bool))
            )
        self.current: dict[str, float] = {n: 0.0 for n in self.layers}

    def target_at(self, step: int, start: int, end: int, frequency: int) -> float:
        return zhu_gupta(step, self.config.initial_sparsity, self.final, start, end, frequency)

    def per_layer(self, target: float) -> dict[str, float]:
        cap = self.config.max_layer_sparsity
        if self.config.allocation == "global":
            weights = {n: layer_weight(m).detach().abs().flatten() for n, m in self.layers.items()}
            everything = torch.cat(list(weights.values()))
            k = int(round(target * everything.numel()))
            if k == 0:
                return {n: 0.0 for n in self.layers}
            threshold = everything.kthvalue(k).values
            scores = {
                n: max(float((w <= threshold).float().mean()), 1e-6) for n, w in weights.items()
            }
            return allocate(self.sizes, scores, target, cap)
        return allocate(self.sizes, self.shares, target, cap)

    @torch.no_grad()
    def update(self, target: float) -> None:
        for name, s in self.per_layer(target).items():
            module = self.layers[name]
            s = max(s, self.current[name])  # masks only grow
            first_parametrization(module).mask.copy_(magnitude_mask(layer_weight(module), s))
            self.current[name] = s

    @torch.no_grad()
    def finish(self) -> dict[str, float]:
        """Bake the masks into plain weights (exact +0.0 where pruned); achieved sparsity."""
        achieved = {}
        for name, module in self.layers.items():
            mask = first_parametrization(module).mask.clone()
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            weight = layer_weight(module)
            weight.copy_(torch.where(mask, weight, torch.zeros_like(weight)))
            achieved[name] = 1.0 - float(mask.float().mean())
        return achieved


def _shares(params: dict[str, Any], layers: list[str], allocation: str) -> dict[str, float]:
    if allocation == "layer":
        return {n: float(params.get(f"share.{n}", 1.0)) for n in layers}
    return {n: 1.0 for n in layers}


def sparse_codecs(layers: list[str], codecs: dict[str, TensorCodec]) -> dict[str, TensorCodec]:
    """Earlier codecs, plus sparse float32 storage for each pruned layer's weight."""
    return {**codecs, **{f"{name}.weight": TensorCodec(sparse=True) for name in layers}}


class Sparsity(LearnerDefaults):
    """Learner ``sparsity``: gradual magnitude pruning, packed sparse output. Its weights
    stay float (zeros among them), so a quantiser may follow it; a structure change may
    not (it would cut through the sparse layout)."""

    name = "sparsity"
    stage: ClassVar[Stage] = Stage.SPARSITY
    speeds_up: tuple[str, ...] | None = ()  # dense kernels: zeros save bytes, not time

    def __init__(self, config: SparsityConfig | None = None, **options: Any) -> None:
        self.config = config or SparsityConfig(**options)

    def space(self, info: ModelInfo) -> list[Dimension]:
        c = self.config
        dims: list[Dimension] = []
        if c.sparsity is None:
            dims.append(Real("sparsity", c.min_sparsity, c.max_sparsity))
        if c.allocation == "layer":
            inner, _ = unwrap(info.model)
            dims += [Real(f"share.{n}", 0.1, 1.0) for n, _ in weight_layers(inner, c.exclude)]
        return dims

    def prepare(self, info: ModelInfo, probe: Probe) -> Aids:
        """For a compression target: the least uniform sparsity that meets it (bisected
        on its packed, un-fine-tuned output, ``learners.rule``) and, when the sparsity is
        its only dimension, a curve over it that predicts any setting. For a speedup
        target (the packed file is decoded to dense weights, so zeros do not run
        faster): the least sparsity, and no predictor."""
        c = self.config
        shares = {d.name: 1.0 for d in self.space(info) if d.name.startswith("share.")}
        if c.sparsity is not None or probe.target.kind != "compression":
            start = shares if c.sparsity is not None else {**shares, "sparsity": c.min_sparsity}
            return Aids(start=start) if probe.start else Aids()
        knob = Knob(
            name="sparsity",
            lo=c.min_sparsity,
            hi=c.max_sparsity,
            params_for=lambda s: {**shares, "sparsity": s},
            build=built(self, info, probe),
            hint=" or raise learner_options.sparsity.max_sparsity",
            param=None if shares else "sparsity",
        )
        return rule_aids(self.name, knob, probe)

    def target(self, params: dict[str, Any]) -> float:
        c = self.config
        if c.sparsity is not None:
            return c.sparsity
        return float(params.get("sparsity", 0.5 * (c.min_sparsity + c.max_sparsity)))

    def compress(self, model: nn.Module, params: dict[str, Any], ctx: Context) -> nn.Module:
        c = self.config
        inner, codecs = unwrap(model)
        dense = copy.deepcopy(inner)
        final = self.target(params)
        names = [n for n, _ in weight_layers(dense, c.exclude)]
        pruner = GradualPruner(dense, c, final, _shares(params, names, c.allocation))
        steps_per_epoch = max(1, len(ctx.train_loader))
        # Default ramp: one epoch, ending on its last step, so even a one-epoch budget
        # completes it (longer budgets then fine-tune with the final masks held).
        end = c.end_step if c.end_step is not None else c.start_step + steps_per_epoch - 1
        frequency = c.frequency or max(1, (end - c.start_step) // 10)
        schedule = _Schedule(pruner, c.start_step, end, frequency)
        handle = dense.register_forward_pre_hook(schedule)
        try:
            curve = ctx.finetune(dense)
        finally:
            handle.remove()
        completed = schedule.step > end
        if not completed:  # the fine-tune budget ended inside the ramp: finish one-shot
            pruner.update(final)
        achieved = pruner.finish()
        recalibrated = finish_finetune_(dense, curve, ctx, self.name, c.recalibrate_bn)
        ctx.records[self.name] = {
            "config": c.to_dict(),
            "params": dict(params),
            "target": final,
            "sparsity": achieved,
            "schedule": {
                "start": c.start_step,
                "end": end,
                "frequency": frequency,
                "steps_run": schedule.step,
                "completed": completed,
            },
            "bn_recalibration_batches": recalibrated,
        }
        return PackedModel(dense.eval(), sparse_codecs(names, codecs))

    @torch.no_grad()
    def replay(self, model: nn.Module, record: dict[str, Any], ctx: Context) -> nn.Module:
        """One-shot magnitude pruning of a copy of ``model`` to the recorded per-layer
        sparsity (the settings, not the fine-tuned weights: those are in the packed file)."""
        inner, codecs = unwrap(model)
        dense = copy.deepcopy(inner).eval()
        layers = dict(weight_layers(dense))
        for name, s in record["sparsity"].items():
            weight = layer_weight(layers[name])
            mask = magnitude_mask(weight, float(s))
            weight.copy_(torch.where(mask, weight, torch.zeros_like(weight)))
        return PackedModel(dense, sparse_codecs(list(record["sparsity"]), codecs))


def density(model: nn.Module) -> float:
    """Fraction of non-zero conv/linear weights (1.0 for a dense model)."""
    inner, _ = unwrap(model)
    layers = weight_layers(inner)
    nnz = sum(int((layer_weight(m) != 0).sum()) for _, m in layers)
    total = sum(layer_weight(m).numel() for _, m in layers)
    return nnz / max(1, total)


__all__ = [
    "GradualPruner",
    "Sparsity",
    "SparsityConfig",
    "allocate",
    "density",
    "magnitude_mask",
    "zhu_gupta",
]


LEARNER = Sparsity

"""Structured channel pruning on torch-pruning's dependency graph.

The result is a physically smaller network (fewer filters, narrower norms and downstream
inputs), not a mask, for 1-, 2- and 3-D convolutional networks and Linear layers. The
optimiser tunes a pruning ratio per stage or per layer, and the importance criterion;
the pruned model is then fine-tuned with the shared loop. The pruning history is
recorded so it replays onto a fresh copy of the baseline (``ChannelPruning.replay``).

Before any pruning, ``survey`` looks at the model once (cached per architecture): it
lists torch-pruning's dependency groups (layers whose output channels must go together),
prunes all of them on a copy at the largest ratio, and if that fails, each group alone
on a fresh copy. Groups that raise, whose pruned model does not run, or whose kept
channels compute something else (``channel_ops.StructuredPruner.check``) are excluded,
with the reason, and never pruned; the records name them. A model with no group left
raises ``NothingToPrune`` from ``space``.

Stages (``granularity: stage``): a model's own top-level blocks when they split its
groups into a handful (2 to 6) with none holding more than half, as the zoo's do
(``conv1``, ``layer1``..``layer3``); otherwise (everything in one ``features``
Sequential, or a flat model) the groups in execution order are cut into 3 to 6 stages at
each change of resolution (a downsampling), then by depth. The records say which group
went to which stage.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from hpo.space import Categorical, Dimension, Real
from learners.aids import Aids, Probe
from learners.base import RUNTIMES, Context, LearnerDefaults, ModelInfo, NothingToSearch
from learners.channel import ops as channel_ops
from learners.channel.aids import prepare_channel
from learners.channel.rewrite import prunable_form
from learners.finetune import finish_finetune_
from learners.layers import output_layer_names

IMPORTANCES = {
    "l1": lambda: tp.importance.MagnitudeImportance(p=1),
    "l2": lambda: tp.importance.MagnitudeImportance(p=2),
    "lamp": lambda: tp.importance.LAMPImportance(p=2),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    "fpgm": lambda: tp.importance.FPGMImportance(),
}
PRUNABLE = channel_ops.LAYERS
# ``round_to: auto``: the channel multiple measured fastest on each runtime
# (benchmarks/round_to.py, BENCHMARKS.md "Channel widths"); a job timed on several
# runtimes takes the largest of theirs.
ROUND_TO = dict.fromkeys(RUNTIMES, 8)
MIN_STAGES, MAX_STAGES = 3, 6  # stages cut by resolution and depth
MAX_BLOCKS = 8  # a model's own top-level blocks are its stages up to this many


class NothingToPrune(channel_ops.PruningError, NothingToSearch):
    """No dependency group of the model can be pruned consistently (the message says why
    for each); the search has nothing to tune."""


@dataclass(frozen=True)
class ChannelConfig:
    granularity: str = "stage"  # "stage" (a handful of blocks, see above) or "layer"
    min_ratio: float = 0.0
    max_ratio: float = 0.8
    importances: tuple[str, ...] = ("l1", "l2", "lamp", "bn_scale")
    # Kept channel counts are rounded to the nearest multiple of this (None or 1: any
    # width); "auto" takes the multiple measured fastest on ``runtimes`` (``ROUND_TO``).
    round_to: int | str | None = "auto"
    # The runtimes the job is timed on (the job fills them in: ``for_runtimes``).
    runtimes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.granularity not in ("stage", "layer"):
            raise ValueError(f"granularity must be 'stage' or 'layer', got {self.granularity!r}")
        if not 0.0 <= self.min_ratio < self.max_ratio < 1.0:
            raise ValueError(
                f"need 0 <= min_ratio < max_ratio < 1, got {self.min_ratio}, {self.max_ratio}"
            )
        object.__setattr__(self, "importances", tuple(self.importances))  # JSON gives lists
        object.__setattr__(self, "runtimes", tuple(self.runtimes))
        unknown = set(self.importances) - set(IMPORTANCES)
        if unknown or not self.importances:
            raise ValueError(
                f"unknown importance {sorted(unknown)}; choose from {sorted(IMPORTANCES)}"
            )
        r = self.round_to
        if not (
            r is None or r == "auto" or (isinstance(r, int) and not isinstance(r, bool) and r >= 1)
        ):
            raise ValueError(f"round_to must be 'auto', null or a whole number >= 1, got {r!r}")
        unknown = set(self.runtimes) - set(ROUND_TO)
        if unknown:
            raise ValueError(f"unknown runtime {sorted(unknown)}; choose from {sorted(ROUND_TO)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def multiple(self) -> int | None:
        """The channel multiple pruning keeps (None: any width)."""
        if self.round_to == "auto":
            picked = max(ROUND_TO[r] for r in (self.runtimes or tuple(ROUND_TO)))
            return picked if picked > 1 else None
        return None if self.round_to in (None, 1) else int(self.round_to)


def rounding(config: ChannelConfig) -> dict[str, Any]:
    """The pruner options that round kept widths. A set ``round_to`` holds every layer
    to it; ``auto`` gives each layer the runtime's multiple, halved for a layer too
    narrow to reach ``max_ratio`` at it (``ops.layer_multiple``). Once one multiple for
    the whole network was halved to suit its narrowest layer: an 8-wide squeeze conv
    then left a MobileNetV3 at any width, 4x slower on onnxruntime."""
    auto = config.round_to == "auto" and config.multiple is not None
    return {"round_to": config.multiple, "multiple_reach": config.max_ratio if auto else None}


def layer_multiples(config: ChannelConfig, model: nn.Module, roots: list[str]) -> dict[str, int]:
    """Each named layer's channel multiple (1: any width) under ``config``."""
    options = rounding(config)
    if options["round_to"] is None:
        return dict.fromkeys(roots, 1)
    return {
        r: channel_ops.layer_multiple(
            _width(model.get_submodule(r)), options["round_to"], options["multiple_reach"]
        )
        for r in roots
    }


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """Layers whose outputs are the network's outputs (their width must not change)."""
    return [model.get_submodule(n) for n in output_layer_names(model, example_inputs, PRUNABLE)]


@dataclass(frozen=True)
class Group:
    """One dependency group: ``root`` is torch-pruning's root layer, ``layers`` every layer
    whose output channels it removes, ``stage`` the unit whose ratio it takes."""

    root: str
    layers: tuple[str, ...]
    stage: str
    resolution: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "layers": list(self.layers)}


@dataclass(frozen=True)
class Survey:
    """What ``survey`` found: the groups that prune consistently (in execution order) and
    the excluded ones, each ``{"group", "layers", "reason"}``."""

    groups: tuple[Group, ...]
    excluded: tuple[dict[str, Any], ...] = ()
    layer_order: tuple[str, ...] = field(default=(), repr=False)

    def stages(self) -> list[str]:
        return list(dict.fromkeys(g.stage for g in self.groups))

    def layers(self) -> list[str]:
        mine = {layer for g in self.groups for layer in g.layers}
        return [n for n in self.layer_order if n in mine]

    def describe_excluded(self) -> str:
        """One line: which groups are left alone, and why."""
        listed = "; ".join(
            f"{e['group']}"
            + (f" (+{len(e['layers']) - 1} layers)" if len(e["layers"]) > 1 else "")
            + f": {e['reason']}"
            for e in self.excluded
        )
        return (
            f"skips {len(self.excluded)} dependency group(s) it cannot prune consistently, "
            f"left unpruned: {listed}"
        )

    def why_nothing(self) -> str:
        reasons = (
            "; ".join(f"{e['group']} ({e['reason']})" for e in self.excluded[:6])
            or "it has no convolution or Linear layer besides the output layer"
        )
        more = f" and {len(self.excluded) - 6} more" if len(self.excluded) > 6 else ""
        return f"no dependency group can be pruned consistently: {reasons}{more}"


_surveys: dict[str, Survey] = {}
_survey_lock = threading.Lock()


def survey(model: nn.Module, example_inputs: torch.Tensor, config: ChannelConfig) -> Survey:
    """The model's prunable groups and the excluded ones (computed once per architecture,
    example shape and config in this process; see the module docstring)."""
    key = _fingerprint(model, example_inputs, config)
    with _survey_lock:
        if key not in _surveys:
            _surveys[key] = _survey(model, example_inputs, config)
        return _surveys[key]


_warned: set[int] = set()  # surveys (cached for the process) whose exclusions were told


def _fingerprint(model: nn.Module, example: torch.Tensor, config: ChannelConfig) -> str:
    h = hashlib.sha256(repr(model).encode())
    for m in model.modules():
        h.update(f"{type(m).__module__}.{type(m).__qualname__}".encode())
    h.update(repr((tuple(example.shape), str(example.dtype), config.granularity)).encode())
    h.update(repr((config.max_ratio, config.importances[0], config.multiple)).encode())
    return h.hexdigest()


def own_copy(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The copy the learner surveys, prunes or replays: channel-shuffle units in the form
    it can prune (``rewrite``); the same form every time, so group names and recorded
    histories match."""
    model = copy.deepcopy(model).eval()
    prunable_form(model, example)
    return model


def _reason(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()[0]
    return text if len(text) <= 300 else text[:297] + "..."


def _pruner(model: nn.Module, example: torch.Tensor, config: ChannelConfig, ratios, ignored=()):
    return channel_ops.StructuredPruner(
        model,
        example,
        importance=IMPORTANCES[config.importances[0]](),
        pruning_ratio=0.0,
        pruning_ratio_dict=ratios,
        ignored_layers=output_layers(model, example) + list(ignored),
        **rounding(config),
    )


def _width(module: nn.Module) -> int:
    return int(getattr(module, "out_channels", getattr(module, "out_features", 0)))


def _probe(model: nn.Module, example: torch.Tensor, config: ChannelConfig, roots, others):
    """Prune the groups of ``roots`` at the largest ratio on a copy, every layer in
    ``others`` left alone (torch-pruning visits every group it is not told to ignore, and
    one broken group fails them all). Returns why it failed (None if it did not) and the
    roots that lost no channel."""
    trial = copy.deepcopy(model).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = _pruner(
                trial,
                example,
                config,
                {trial.get_submodule(r): config.max_ratio for r in roots},
                [trial.get_submodule(n) for n in others],
            )
            pruner.step()
    except Exception as err:  # noqa: BLE001 - torch-pruning or the model's forward
        return _reason(err), []
    same = [r for r in roots if _width(trial.get_submodule(r)) == _width(model.get_submodule(r))]
    return None, same


def _survey(model: nn.Module, example: torch.Tensor, config: ChannelConfig) -> Survey:
    model = own_copy(model, example)
    names = {m: n for n, m in model.named_modules()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = _pruner(model, example, config, {})
    except Exception as err:  # noqa: BLE001 - DepGraph cannot trace the model
        reason = f"torch-pruning cannot trace the model: {_reason(err)}"
        return Survey((), ({"group": "(whole model)", "layers": [], "reason": reason},))
    graph, meta = pruner.graph, pruner.meta
    skipped = pruner.skipped
    ignored = [m for m in meta.ignored_layers if not any(m is s for s in skipped)]
    found: list[tuple[str, tuple[str, ...]]] = []
    excluded: list[dict[str, Any]] = []
    roots = meta.root_module_types
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=roots):
        layers = tuple(
            names[dep.target.module]
            for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler)
            and isinstance(dep.target.module, PRUNABLE)
        )
        root = names[group[0].dep.target.module]
        movers = channel_ops.channel_movers(group, pruner.unmapped)
        if movers:
            reason = f"its channels pass through {movers}, which torch-pruning cannot map"
            excluded.append({"group": root, "layers": list(layers), "reason": reason})
        elif layers:
            found.append((root, layers))
    unsafe = [layer for e in excluded for layer in e["layers"]]
    why, same = (
        _probe(model, example, config, [r for r, _ in found], unsafe) if found else (None, [])
    )
    if why is not None:  # one or more groups fail: try each alone
        same = []
        kept = []
        for root, layers in found:
            others = unsafe + [n for r, ls in found if r != root for n in ls]
            why, unchanged = _probe(model, example, config, [root], others)
            if why is None:
                kept.append((root, layers))
                same += unchanged
            else:
                excluded.append({"group": root, "layers": list(layers), "reason": why})
        found = kept
    if same:  # too narrow to lose a channel at the largest ratio and its channel multiple
        multiples = layer_multiples(config, model, same)
        # A layer these groups share with a group that prunes (a depthwise consumer of a
        # stage's concatenated outputs) is left to that group: ignoring it would stop
        # torch-pruning from pruning every group it belongs to.
        pruned_layers = {n for r, ls in found if r not in same for n in ls}
        excluded += [
            {
                "group": r,
                "layers": [n for n in ls if n == r or n not in pruned_layers],
                "reason": f"nothing to remove: at a ratio of {config.max_ratio} its width "
                f"stays the same (channel multiple {multiples[r]})",
            }
            for r, ls in found
            if r in same
        ]
        found = [(r, ls) for r, ls in found if r not in same]
    order = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
    return Survey(_stages(model, example, found, config), tuple(excluded), tuple(order))


def _stages(model, example, found, config: ChannelConfig) -> tuple[Group, ...]:
    """Groups in execution order, each with its stage (see the module docstring)."""
    if not found:
        return ()
    when: dict[str, int] = {}
    where: dict[str, str] = {}
    hooks = []
    for _, layers in found:
        for name in layers:

            def hook(module, inputs, output, name=name):
                if name not in when:
                    when[name] = len(when)
                    shape = tuple(output.shape)
                    # conv: N, C, *spatial; Linear: N, *positions, C
                    spatial = shape[1:-1] if isinstance(module, nn.Linear) else shape[2:]
                    where[name] = "x".join(map(str, spatial)) or "vector"

            hooks.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    late = len(when)
    # each group is placed by the first of its layers to run
    first = [min(ls, key=lambda n: when.get(n, late)) for _, ls in found]
    order = sorted(range(len(found)), key=lambda i: when.get(first[i], late))
    found, first = [found[i] for i in order], [first[i] for i in order]
    res = [where.get(name, "?") for name in first]
    if config.granularity == "layer":
        return tuple(Group(r, ls, r, w) for (r, ls), w in zip(found, res, strict=True))
    owners = [name.split(".")[0] for name in first]
    counts = Counter(owners)
    if 2 <= len(counts) <= MAX_BLOCKS and 2 * max(counts.values()) <= len(found):
        return tuple(Group(r, ls, o, w) for (r, ls), o, w in zip(found, owners, res, strict=True))
    segments: list[list[int]] = []
    for i, w in enumerate(res):
        if segments and res[segments[-1][-1]] == w:
            segments[-1].append(i)
        else:
            segments.append([i])
    while len(segments) > MAX_STAGES:  # merge the smallest adjacent pair
        j = min(range(len(segments) - 1), key=lambda k: len(segments[k]) + len(segments[k + 1]))
        segments[j : j + 2] = [segments[j] + segments[j + 1]]
    while len(segments) < MIN_STAGES:  # cut the largest stage in half (by depth)
        j = max(range(len(segments)), key=lambda k: len(segments[k]))
        if len(segments[j]) < 2:
            break
        half = len(segments[j]) // 2
        segments[j : j + 1] = [segments[j][:half], segments[j][half:]]
    stage_of = {i: f"stage{n}" for n, seg in enumerate(segments, 1) for i in seg}
    return tuple(
        Group(r, ls, stage_of[i], w) for i, ((r, ls), w) in enumerate(zip(found, res, strict=True))
    )


def prunable_units(model: nn.Module, example_inputs: torch.Tensor, granularity: str):
    """(unit name, its layers) pairs, each unit getting its own ratio, for the default
    config at ``granularity``."""
    found = survey(model, example_inputs, ChannelConfig(granularity=granularity))
    if granularity == "layer":
        return [(name, [name]) for name in found.layers()]
    return [
        (stage, [layer for g in found.groups if g.stage == stage for layer in g.layers])
        for stage in found.stages()
    ]


class ChannelPruning(LearnerDefaults):
    """Learner ``channel``: a structure learner (first in a chain) with float output that
    runs anywhere (the ``LearnerDefaults``)."""

    name = "channel"

    def __init__(self, config: ChannelConfig | None = None, **options: Any) -> None:
        self.config = config or ChannelConfig(**options)

    def for_runtimes(self, runtimes: list[str] | tuple[str, ...]) -> ChannelPruning:
        """This learner for a job timed on ``runtimes`` (what ``round_to: auto`` picks
        for); a config that names its runtimes keeps them."""
        known = tuple(r for r in runtimes if r in ROUND_TO)
        if self.config.runtimes or not known:
            return self
        return ChannelPruning(replace(self.config, runtimes=known))

    def survey(self, info: ModelInfo) -> Survey:
        return survey(info.model, info.example_inputs, self.config)

    def units(self, info: ModelInfo) -> list[str]:
        """Names of the units that each get a ratio (stages or layers)."""
        found = self.survey(info)
        return found.layers() if self.config.granularity == "layer" else found.stages()

    def multiples(self, info: ModelInfo) -> dict[str, int]:
        """Each prunable group's channel multiple (1: any width), by its root layer."""
        groups = self.survey(info).groups
        return layer_multiples(self.config, info.model, [g.root for g in groups])

    def space(self, info: ModelInfo) -> list[Dimension]:
        c = self.config
        found = self.survey(info)
        if not found.groups:
            raise NothingToPrune(f"channel pruning: {found.why_nothing()}")
        dims: list[Dimension] = [
            Real(f"ratio.{name}", c.min_ratio, c.max_ratio) for name in self.units(info)
        ]
        if len(c.importances) > 1:
            dims.append(Categorical("importance", tuple(c.importances)))
        return dims

    def uniform_params(self, info: ModelInfo, ratio: float) -> dict[str, Any]:
        """The fixed rule other tools use: one ratio for every unit (a search start)."""
        params: dict[str, Any] = {d.name: ratio for d in self.space(info) if isinstance(d, Real)}
        if len(self.config.importances) > 1:
            params["importance"] = self.config.importances[0]
        return params

    def prepare(self, info: ModelInfo, probe: Probe) -> Aids:
        """Its survey, rule start and latency predictor (``learners.channel.aids``)."""
        return prepare_channel(self, info, probe)

    def prune(self, model: nn.Module, params: dict[str, Any], example_inputs: torch.Tensor):
        """A pruned deep copy of ``model`` and its replayable pruning history. Excluded
        groups (``survey``) are left alone."""
        c = self.config
        found = survey(model, example_inputs, c)
        model = own_copy(model, example_inputs)
        if c.granularity == "layer":
            ratios = {
                layer: float(params.get(f"ratio.{layer}", 0.0))
                for g in found.groups
                for layer in g.layers
            }
        else:
            ratios = {g.root: float(params.get(f"ratio.{g.stage}", 0.0)) for g in found.groups}
        importance = params.get("importance", c.importances[0])
        if found.excluded and id(found) not in _warned:  # once per model, not per candidate
            _warned.add(id(found))
            warnings.warn(f"channel pruning {found.describe_excluded()}", stacklevel=2)
        excluded = [model.get_submodule(layer) for e in found.excluded for layer in e["layers"]]
        # MetaPruner plus channel shuffles, grouped-conv balance and a final check
        pruner = channel_ops.StructuredPruner(
            model,
            example_inputs,
            importance=IMPORTANCES[importance](),
            pruning_ratio=0.0,
            pruning_ratio_dict={model.get_submodule(n): r for n, r in ratios.items() if r > 0},
            ignored_layers=output_layers(model, example_inputs) + excluded,
            **rounding(c),
        )
        pruner.step()
        history = [
            [n, bool(out), [int(i) for i in idx]] for n, out, idx in pruner.pruning_history()
        ]
        return model, history

    def compress(self, model: nn.Module, params: dict[str, Any], ctx: Context) -> nn.Module:
        pruned, history = self.prune(model, params, ctx.example_inputs)
        found = survey(model, ctx.example_inputs, self.config)
        ctx.records[self.name] = {
            "config": self.config.to_dict(),
            "round_to": self.config.multiple,
            "multiples": layer_multiples(self.config, model, [g.root for g in found.groups]),
            "params": dict(params),
            "out_channels": {
                name: int(getattr(m, "out_channels", getattr(m, "out_features", 0)))
                for name, m in pruned.named_modules()
                if isinstance(m, PRUNABLE)
            },
            # which group went to which stage, and the groups left alone and why
            "groups": [g.to_dict() for g in found.groups],
            "excluded": [dict(e) for e in found.excluded],
            "history": history,
        }
        # BatchNorm statistics are re-estimated by the candidate step (pipeline.job.candidate).
        finish_finetune_(pruned, ctx.finetune(pruned), ctx, self.name, recalibrate_bn=False)
        return pruned

    def replay(self, model: nn.Module, record: dict[str, Any], ctx: Context) -> nn.Module:
        """Apply the recorded pruning history to a deep copy of ``model`` (the same
        architecture; traced on ``ctx.example_inputs``)."""
        model = own_copy(model, ctx.example_inputs)
        graph = channel_ops.dependency_graph(model, ctx.example_inputs)
        graph.load_pruning_history([(n, out, idx) for n, out, idx in record["history"]])
        return model


LEARNER = ChannelPruning

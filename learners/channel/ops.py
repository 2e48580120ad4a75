"""What torch-pruning 1.6.1 cannot see on its own, taught through its extension points.

Six gaps break structured pruning of ShuffleNets (Torch-Pruning's own docs list
torchvision's ShuffleNetV2 as unprunable):

1. **Channel shuffle moves channels.** DepGraph treats unknown ops as element-wise and
   would remove channel ``i`` on both sides of a shuffle. A module that declares
   ``channel_permutation = True`` and applies ``x.index_select(1, self.perm)`` (the
   zoo's ``ChannelShuffle``) gets a custom pruner (``customized_pruners``) that shortens
   ``perm``, plus an index mapping on the graph edges to its producer
   (``Dependency.index_mapping``, the hook DepGraph's own concat/split support uses):
   channel ``i`` before the shuffle is channel ``perm^-1[i]`` after it.
2. **Grouped convolutions need balanced, aligned pruning.** DepGraph repeats one index
   set in every group of the *root* layer (``out_channel_groups``), and its grouped
   ``prune_conv_in_channels`` assumes the same in-group offsets in every group. Behind a
   shuffle, or across a concat of tensors with different group layouts (ShuffleNet V1's
   downsampling units), neither holds, and the result has the wrong shape or silently
   the wrong function. Groups that hold a grouped convolution are selected here
   (``select_balanced``): channels that must go together (one offset in every input
   group of a grouped consumer) are tied into orbits, and orbits are taken by importance
   only in combinations that remove the same number of channels from every group of
   every grouped producer. A group with no such combination is left unpruned.
3. **Split offsets go stale.** DepGraph's split op updates its sizes but not the offsets
   its index mapping reads; they are refreshed after every group (``ChannelGraph`` does
   the same on replay). ShuffleNet V2's channel split depends on it.
4. **Ops DepGraph cannot map** (transpose/permute/gather on the channel axis, e.g. a
   reshape-transpose shuffle): the layers whose channels reach one are not pruned, with
   a warning that names them. torchvision's ShuffleNet V2 units are rewritten into the
   zoo's form before pruning (``learners.channel.rewrite``), so their shuffles prune.
5. **Reshapes DepGraph cannot map crash the whole graph.** Its reshape index mapping
   divides by an inferred channel count that can be 0 (``ZeroDivisionError`` in
   ``update_reshape_index_mapping`` on a ShuffleNet channel shuffle written as
   ``view``/``transpose``/``flatten``), while the graph is built, so no layer of the
   model could be pruned. The mapping is computed per reshape here (``guard_reshapes``):
   a reshape it fails on is marked and treated like the ops of gap 4, and the rest of
   the model stays prunable.
6. **``torch.chunk`` loses an output** (``complete_chunks``, below), failing the whole
   graph of torchvision's ShuffleNet V2 with ``IndexError``.

Every pruning ends with a check: the pruned network must compute what the original
computes with the removed channels zeroed (after every convolution, Linear and norm
layer of any dimension: BatchNorm1d/2d/3d, InstanceNorm, GroupNorm), on the example
input. A mismatch, or a pruned network that does not run, raises ``PruningError``: a
broken model is never returned.
"""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning.dependency import index_mapping, shape_infer

# Layers whose output channels are pruned (the roots of dependency groups), and the layers
# whose outputs the final check masks: every layer whose output width follows them.
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
MASKED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm)

# grad_fn names of ops that move values across the channel axis; DepGraph maps them as
# identity, which is wrong, so the layers whose channels reach them are left alone.
CHANNEL_MOVERS = ("transpose", "permute", "indexselect", "gather", "index", "pixelshuffle",
                  "pixelunshuffle", "channelshuffle", "roll", "flip", "scatter", "sort",
                  "repeat", "unfold")  # fmt: skip


class PruningError(RuntimeError):
    """Pruning would produce a network that does not compute the original on the kept
    channels (an unsupported dependency); no model is returned."""


UNMAPPED = "_compressflow_unmapped"  # set on a reshape node whose mapping failed


def _guard(real):
    def update_reshape_index_mapping(graph, node) -> None:
        try:
            real(graph, node)
        except Exception as err:  # noqa: BLE001 - any failure means: cannot map this reshape
            setattr(node, UNMAPPED, f"{type(err).__name__}: {err}")

    update_reshape_index_mapping.guarded = True  # type: ignore[attr-defined]
    update_reshape_index_mapping.__wrapped__ = real  # type: ignore[attr-defined]
    return update_reshape_index_mapping


def guard_reshapes() -> None:
    """A reshape whose index mapping torch-pruning cannot compute is marked (gap 5)
    instead of failing the graph's build. torch-pruning has no hook for it and recomputes
    every mapping whenever it forms a group, so its module-level function is replaced,
    once, by one that behaves the same except that it catches the failure."""
    if not getattr(index_mapping.update_reshape_index_mapping, "guarded", False):
        index_mapping.update_reshape_index_mapping = _guard(
            index_mapping.update_reshape_index_mapping
        )


guard_reshapes()


def _chunk_index(split_node, out_node) -> int | None:
    """Which output of ``split_node``'s autograd function ``out_node`` reads."""
    for fn, index in getattr(out_node.grad_fn, "next_functions", ()):
        if fn is split_node.grad_fn:
            return int(index)
    return None


def complete_chunks(graph) -> None:
    """Gap 6: ``torch.chunk`` saves one size (``_saved_split_size``) where DepGraph reads
    a list (``_saved_split_sizes``), so it falls back to inferring each output's width and
    drops one it cannot infer (a chunk fed straight into a concat, torchvision's ShuffleNet
    V2); its concat mapping then reads past the offsets (``IndexError``) and no layer of
    the model could be pruned. The sizes are completed from the saved ones, and the
    outputs put in chunk order (DepGraph maps output ``i`` to offsets ``i:i+2``)."""
    for node in graph.module2node.values():
        fn = node.grad_fn
        if node.type != tp.ops.OPTYPE.SPLIT or not hasattr(fn, "_saved_split_size"):
            continue
        sizes = list(getattr(fn, "_saved_self_sym_sizes", ()))
        dim = int(getattr(fn, "_saved_dim", -1))
        if dim < 0:
            dim += len(sizes)
        if not sizes or dim != 1:
            continue
        size, total = int(fn._saved_split_size), int(sizes[1])
        chunks = [min(size, total - start) for start in range(0, total, size)]
        found = {id(n): _chunk_index(node, n) for n in node.outputs}
        index = {k: i for k, i in found.items() if i is not None}
        if sorted(index.values()) != list(range(len(chunks))) or len(index) != len(found):
            continue  # an unused chunk or an unknown reader: left to DepGraph
        node.outputs.sort(key=lambda n: index[id(n)])
        node.module.split_sizes = chunks
        node.module.offsets = [sum(chunks[:i]) for i in range(len(chunks) + 1)]


def _completing(real):
    def init_shape_information(graph) -> None:
        real(graph)
        complete_chunks(graph)

    init_shape_information.completing = True  # type: ignore[attr-defined]
    init_shape_information.__wrapped__ = real  # type: ignore[attr-defined]
    return init_shape_information


if not getattr(shape_infer.init_shape_information, "completing", False):
    shape_infer.init_shape_information = _completing(shape_infer.init_shape_information)


def is_permutation(module: Any) -> bool:
    return bool(getattr(type(module), "channel_permutation", False)) and isinstance(
        getattr(module, "perm", None), Tensor
    )


class PermutationPruner(tp.pruner.BasePruningFunc):
    """Prunes a channel permutation ``out[:, o] = x[:, perm[o]]``. Indices arrive in
    *output* coordinates from both sides (the edge mappings below convert); removing
    output ``o`` removes input ``perm[o]`` and the permutation is re-ranked."""

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        old = torch.as_tensor(layer.perm)
        perm = old.tolist()
        drop = set(int(i) for i in idxs)
        dropped_inputs = {perm[o] for o in drop}
        rank: dict[int, int] = {}
        for c in range(len(perm)):
            if c not in dropped_inputs:
                rank[c] = len(rank)
        kept = [rank[perm[o]] for o in range(len(perm)) if o not in drop]
        layer.perm = torch.tensor(kept, dtype=torch.long, device=old.device)
        return layer

    prune_in_channels = prune_out_channels  # in and out channels are pruned together

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(torch.as_tensor(layer.perm).numel())

    get_in_channels = get_out_channels


class _ToInput:
    """Output coordinates of a permutation -> its input coordinates."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, idxs):
        perm = self.module.perm.tolist()
        return [i._replace(idx=perm[i.idx]) for i in idxs]


class _ToOutput:
    """Input coordinates of a permutation -> its output coordinates."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, idxs):
        inverse = torch.argsort(self.module.perm).tolist()
        return [i._replace(idx=inverse[i.idx]) for i in idxs]


def customized_pruners(model: nn.Module) -> dict[type, tp.pruner.BasePruningFunc]:
    pruner = PermutationPruner()
    return {type(m): pruner for m in model.modules() if is_permutation(m)}


def install_mappings(graph: tp.DependencyGraph) -> list[nn.Module]:
    """Put the permutation's index mapping on the edges to and from its producer (the
    node works in output coordinates). Returns permutations it could not map: those fed
    directly by a split, whose edges DepGraph already uses for its own mapping."""
    unmapped = []
    for module, node in graph.module2node.items():
        if not is_permutation(module):
            continue
        if any(n.type in (tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.UNBIND) for n in node.inputs):
            unmapped.append(module)
            continue
        for source in node.inputs:
            for dep in node.dependencies:
                if dep.target is source:
                    dep.index_mapping[0] = _ToInput(module)
            for dep in source.dependencies:
                if dep.target is node:
                    dep.index_mapping[0] = _ToOutput(module)
    return unmapped


def dependency_graph(model: nn.Module, example_inputs: Tensor) -> tp.DependencyGraph:
    """A DepGraph that understands channel permutations (for ``replay``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = ChannelGraph().build_dependency(
            model, example_inputs=example_inputs, customized_pruners=customized_pruners(model)
        )
    install_mappings(graph)
    return graph


def refresh_split_offsets(graph: tp.DependencyGraph) -> None:
    """torch-pruning 1.6.1's SplitPruner updates a split's ``split_sizes`` but not the
    ``offsets`` its index mapping reads; without this a second group through the same
    split is mapped with stale offsets."""
    for node in graph.module2node.values():
        if node.type == tp.ops.OPTYPE.SPLIT and node.module.split_sizes is not None:
            offsets = [0]
            for size in node.module.split_sizes:
                offsets.append(offsets[-1] + size)
            node.module.offsets = offsets


class ChannelGraph(tp.DependencyGraph):
    """DepGraph whose history replay keeps split offsets current (see above)."""

    def load_pruning_history(self, pruning_history) -> None:
        self._pruning_history = pruning_history
        for name, is_out, idxs in pruning_history:
            module = self.model.get_submodule(name)
            pruner = self.get_pruner_of_module(module)
            fn = pruner.prune_out_channels if is_out else pruner.prune_in_channels
            self.get_pruning_group(module, fn, idxs).prune(record_history=False)
            refresh_split_offsets(self)


def _moves_channels(node) -> bool:
    if getattr(node, UNMAPPED, None):
        return True
    if node.type != tp.ops.OPTYPE.ELEMENTWISE or is_permutation(node.module):
        return False
    grad_fn = node.grad_fn
    name = grad_fn.name().lower() if hasattr(grad_fn, "name") else "unknown"
    return name == "unknown" or any(op in name for op in CHANNEL_MOVERS)


def _op_name(node) -> str:
    unmapped = getattr(node, UNMAPPED, None)
    if unmapped:
        return f"a reshape ({unmapped})"
    grad_fn = node.grad_fn
    return grad_fn.name() if hasattr(grad_fn, "name") else "an unknown op"


def channel_movers(group, unmapped: list[nn.Module] | None = None) -> str:
    """The ops in ``group`` DepGraph would map wrongly (gaps 4 and 5), named; "" if none."""
    ops = [
        _op_name(dep.target) if _moves_channels(dep.target) else "an unmapped permutation"
        for dep, _ in group
        if _moves_channels(dep.target) or _among(dep.target.module, unmapped or [])
    ]
    return ", ".join(dict.fromkeys(ops))


def unsafe_layers(
    graph: tp.DependencyGraph, ignored: list[nn.Module], unmapped: list[nn.Module]
) -> list[nn.Module]:
    """Layers whose output channels reach an op DepGraph would map wrongly (or one of
    the ``unmapped`` permutations)."""
    risky: list[nn.Module] = []
    for group in graph.get_all_groups(ignored_layers=ignored):
        if channel_movers(group, unmapped):
            risky += [
                dep.target.module
                for dep, _ in group
                if graph.is_out_channel_pruning_fn(dep.handler)
                and isinstance(dep.target.module, LAYERS)
            ]
    return risky


def _among(module: Any, modules: list[nn.Module]) -> bool:
    return any(module is m for m in modules)


def _grouped(module: nn.Module) -> bool:
    """A grouped (not depthwise) convolution: the case DepGraph gets wrong."""
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups != module.out_channels
    )


class _Orbits:
    """Union-find over root channel indices."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def classes(self) -> list[list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            out[self.find(i)].append(i)
        return list(out.values())


@dataclass
class _Layout:
    """What a dependency group's layers demand of the root indices pruned together:
    ``orbits`` of roots that must go together (a grouped consumer's offsets), roots that
    may not go at all, each grouped producer's group count, which groups each root hits
    (balance) and which producer layers it narrows (the per-layer cap)."""

    orbits: _Orbits
    forbidden: set[int] = field(default_factory=set)
    groups_of: list[int] = field(default_factory=list)  # groups of each grouped producer
    # root -> [(member, group of that member)] for grouped producers (balance)
    balance: dict[int, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    # root -> [member] for every pruned producer layer (the per-layer cap)
    touches: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    caps: list[int] = field(default_factory=list)


def select_balanced(graph: tp.DependencyGraph, full, importance: Tensor, n_target: int):
    """Root indices to prune (at most ``n_target``) such that every grouped convolution
    in the group loses the same number of output channels from each of its groups, every
    grouped consumer loses the same in-group input offsets in all its groups, and no
    layer loses a larger share of its channels than ``n_target`` is of the root's.
    ``None`` if nothing can be pruned that way."""
    n = len(importance)
    layout = _layout(graph, full, n, n_target / max(n, 1))
    units = _units(layout, importance)
    if units is None:
        return None
    return _choose(units, layout, n_target)


def _layout(graph: tp.DependencyGraph, full, n: int, share: float) -> _Layout:
    layout = _Layout(_Orbits(n))
    for item in full:
        module, handler = item.dep.target.module, item.dep.handler
        if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        idxs, roots = list(item.idxs), list(item.root_idxs)
        if graph.is_out_channel_pruning_fn(handler):
            member = len(layout.caps)
            layout.caps.append(int(share * _out_width(module)))
            for root in roots:
                layout.touches[root].append(member)
            if _grouped(module):
                groups = _int(module, "groups")
                per = _int(module, "out_channels") // groups
                for idx, root in zip(idxs, roots, strict=True):
                    layout.balance[root].append((len(layout.groups_of), idx // per))
                layout.groups_of.append(groups)
        elif _grouped(module):  # a grouped consumer: offset t goes in all groups at once
            per = _int(module, "in_channels") // _int(module, "groups")
            by_offset: dict[int, list[int]] = defaultdict(list)
            for idx, root in zip(idxs, roots, strict=True):
                by_offset[idx % per].append(root)
            for members in by_offset.values():
                if len(members) != module.groups:  # some of its groups are fed elsewhere
                    layout.forbidden.update(members)
                for other in members[1:]:
                    layout.orbits.union(members[0], other)
    return layout


def _units(layout: _Layout, importance: Tensor) -> list[list[int]] | None:
    """The sets of roots that may go together, least important first (None: none)."""

    def signature(orbit: list[int]) -> tuple:
        counts: dict[tuple[int, int], int] = defaultdict(int)
        for root in orbit:
            for key in layout.balance[root]:
                counts[key] += 1
        return tuple(sorted(counts.items()))

    def balanced(sigs: list[tuple]) -> bool:
        totals: dict[tuple[int, int], int] = defaultdict(int)
        for sig in sigs:
            for key, count in sig:
                totals[key] += count
        counts: dict[int, list[int]] = defaultdict(list)
        for (member, _group), count in totals.items():
            counts[member].append(count)
        # every group of a touched producer loses the same number of channels
        return all(
            len(set(c)) == 1 and len(c) == layout.groups_of[member] for member, c in counts.items()
        )

    by_sig: dict[tuple, list[list[int]]] = defaultdict(list)
    for orbit in layout.orbits.classes():
        if not layout.forbidden.intersection(orbit):
            by_sig[signature(orbit)].append(orbit)
    if not by_sig:
        return None
    for orbit_list in by_sig.values():
        orbit_list.sort(key=lambda o: float(importance[o].mean()))
    sigs = list(by_sig)
    if all(balanced([s]) or not s for s in sigs):  # every orbit is a valid unit alone
        units = [o for s in sigs for o in by_sig[s]]
    elif balanced(sigs):  # one orbit of each signature together is
        rounds = min(len(v) for v in by_sig.values())
        units = [[i for s in sigs for i in by_sig[s][r]] for r in range(rounds)]
    else:
        return None
    units.sort(key=lambda u: float(importance[u].mean()))
    return units


def _choose(units: list[list[int]], layout: _Layout, n_target: int) -> list[int] | None:
    """Units in order while they fit ``n_target`` and every layer's cap."""
    chosen: list[int] = []
    removed = [0] * len(layout.caps)
    for unit in units:
        if len(chosen) + len(unit) > n_target:
            continue
        extra: dict[int, int] = defaultdict(int)
        for root in unit:
            for member in layout.touches[root]:
                extra[member] += 1
        if all(removed[m] + k <= layout.caps[m] for m, k in extra.items()):
            chosen += unit
            for m, k in extra.items():
                removed[m] += k
    return sorted(chosen) or None


class StructuredPruner:
    """``tp.pruner.MetaPruner`` with the extensions above; same ``step()`` and
    ``pruning_history()``. Keyword options are MetaPruner's; ``multiple_reach`` set makes
    ``round_to`` a per-layer multiple (``layer_multiple``)."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Tensor,
        multiple_reach: float | None = None,
        **options: Any,
    ) -> None:
        self.reference = copy.deepcopy(model).eval()
        self.example_inputs = example_inputs
        options.setdefault("customized_pruners", customized_pruners(model))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.meta = _MetaPruner(model, example_inputs, **options)
        self.meta.reach = multiple_reach  # round_to per layer (layer_multiple)
        self.graph = self.meta.DG
        unmapped = install_mappings(self.graph)
        self.unmapped = unmapped
        self.skipped = unsafe_layers(self.graph, list(self.meta.ignored_layers), unmapped)
        if self.skipped:
            names = sorted(self.graph._module2name.get(m, "?") for m in self.skipped)
            warnings.warn(
                f"channel pruning skips {len(names)} layers whose channels pass through ops "
                f"it cannot map: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}",
                stacklevel=2,
            )
            self.meta.ignored_layers.extend(self.skipped)
        self.removed: dict[nn.Module, list[int]] = {}  # module -> removed original indices

    def pruning_history(self):
        return self.meta.pruning_history()

    def step(self) -> None:
        self._prune_grouped()
        for group in self.meta.step(interactive=True):
            self._record(group)
            group.prune()
            refresh_split_offsets(self.graph)
        self.check()

    def _prune_grouped(self) -> None:
        """Groups holding grouped convolutions, selected here (see ``select_balanced``);
        MetaPruner then skips them. The ratio is the one MetaPruner would use: that of
        the first pruned layer with its own ratio, else the default."""
        meta, graph = self.meta, self.graph
        todo = []
        for full in graph.get_all_groups(
            ignored_layers=list(meta.ignored_layers), root_module_types=meta.root_module_types
        ):
            if any(_grouped(dep.target.module) for dep, _ in full):
                outputs = [
                    dep.target.module
                    for dep, _ in full
                    if graph.is_out_channel_pruning_fn(dep.handler)
                    and isinstance(dep.target.module, tuple(meta.root_module_types))
                ]
                ratio = next(
                    (meta.get_target_pruning_ratio(m, 1) for m in outputs
                     if m in meta.pruning_ratio_dict),
                    meta.get_target_pruning_ratio(None, 1),
                )  # fmt: skip
                todo.append((full[0].dep.target.module, full[0].dep.handler, ratio))
                meta.ignored_layers.extend(outputs)
        for root, handler, ratio in todo:
            channels = graph.get_out_channels(root)
            n_target = channels - int(channels * (1 - ratio))
            if n_target <= 0:
                continue
            full = graph.get_pruning_group(root, handler, list(range(channels)))
            importance = meta.estimate_importance(full)
            if importance is None:
                importance = torch.zeros(channels)
            chosen = select_balanced(graph, full, importance.cpu(), n_target)
            if chosen is None:
                continue
            group = graph.get_pruning_group(root, handler, chosen)
            if graph.check_pruning_group(group):
                self._record(group)
                group.prune()
                refresh_split_offsets(graph)

    def _record(self, group) -> None:
        """Remember removed output channels in original numbering (for ``check``)."""
        for dep, idxs in group:
            module = dep.target.module
            if not isinstance(module, MASKED):
                continue
            if not self.graph.is_out_channel_pruning_fn(dep.handler):  # BN's fn counts
                continue
            removed = self.removed.setdefault(module, [])
            width = _out_width(module) + len(removed)
            alive = [c for c in range(width) if c not in set(removed)]
            removed += [alive[i] for i in idxs]

    def check(self) -> None:
        """The pruned model must equal the original with removed channels zeroed."""
        pruned = self.graph.model
        names = {m: n for n, m in pruned.named_modules()}
        reference = dict(self.reference.named_modules())
        hooks = []
        for module, removed in self.removed.items():
            if not removed:
                continue
            twin = reference[names[module]]
            mask = torch.ones(_out_width(twin))
            mask[removed] = 0.0
            hooks.append(twin.register_forward_hook(_zero_channels(mask)))
        try:
            with torch.no_grad():
                expected = self.reference(self.example_inputs)
                try:
                    got = pruned.eval()(self.example_inputs)
                except Exception as err:  # noqa: BLE001 - whatever a custom forward raises
                    raise PruningError(
                        f"the pruned network does not run: {type(err).__name__}: {err}"
                    ) from None
        finally:
            for h in hooks:
                h.remove()
        scale = float(expected.abs().max()) + 1e-12
        error = float((got - expected).abs().max()) / scale
        if got.shape != expected.shape or error > 1e-3:
            raise PruningError(
                f"the pruned network differs from the original on the kept channels "
                f"(relative error {error:.2e}); an unsupported channel dependency"
            )


def layer_multiple(width: int, multiple: int, reach: float | None) -> int:
    """The multiple a ``width``-channel layer's kept width is rounded to: ``multiple``
    for every layer (``reach`` None), or, per layer, ``multiple`` halved while it would
    stop the layer reaching a pruning ratio of ``reach`` (1: any width). Wide layers keep
    the runtime's fast multiple; one narrow layer (an 8-wide squeeze conv, a 16-wide
    stem) no longer takes it away from the whole network."""
    m = multiple
    while reach is not None and m > 1 and m > width * (1 - reach):
        m //= 2
    return m


class _MetaPruner(tp.pruner.MetaPruner):
    reach: float | None = None  # set: the multiple is chosen per layer (layer_multiple)

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        """Kept channels rounded to the *nearest* multiple of the layer's multiple (at
        least one multiple; a layer narrower than one is left alone). torch-pruning 1.6.1
        rounds down, to 0 for a layer keeping fewer than ``round_to``: it then prunes the
        whole layer, or nothing when DepGraph refuses that."""
        round_to = layer_multiple(current_channels, round_to, self.reach)
        if round_to <= 1:
            return n_pruned
        if current_channels < round_to:
            return 0
        kept = current_channels - n_pruned
        rounded = max(round_to, int(round(kept / round_to)) * round_to)
        return max(current_channels - min(rounded, current_channels), 0)


def _out_width(module: nn.Module) -> int:
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return _int(module, "out_channels")


def _int(module: nn.Module, attribute: str) -> int:
    return int(getattr(module, attribute))


def _zero_channels(mask: Tensor):
    def hook(module, inputs, output):
        # A Linear's features are its output's last dimension at any rank ([batch,
        # sequence, hidden] in a transformer); a conv's or norm's channels are dimension 1.
        if isinstance(module, nn.Linear):
            shape = [1] * (output.dim() - 1) + [-1]
        else:
            shape = [1, -1] + [1] * (output.dim() - 2)
        return output * mask.view(shape).to(output.dtype)

    return hook

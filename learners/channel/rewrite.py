"""Channel-shuffle units rewritten into a form the channel learner can prune.

torchvision's ShuffleNet V2 unit (``InvertedResidual``: attributes ``branch1``,
``branch2``, ``stride``) splits its input with ``chunk(2)`` and shuffles with
``view``/``transpose``/``view``. torch-pruning cannot map that shuffle (ops.py gap 4), so
every unit's output channels stayed whole, and ``chunk`` splits at the midpoint, which
is wrong as soon as one side loses channels. The same unit with a split sized by its
branch and the shuffle as a stored permutation (``index_select``, ops.py gap 1) computes
the same function and prunes through both: this is the zoo's ShuffleNet V2 form
(pipeline/sources/zoo/shufflenet.py), which prunes its unit outputs.

``prunable_form`` swaps such units in a model the channel learner owns (its deep copy,
never the user's model), and only where the rewritten unit gives the same output as the
original on the unit's own input from the example; anything else is left as it was. It
runs before every survey, pruning and replay, so module names (and the recorded pruning
history) are those of the rewritten model. The shipped ONNX has a Gather where it had a
Reshape/Transpose/Reshape: one read and write of the tensor either way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

TOLERANCE = 1e-5  # relative to the output's scale: float reordering only


class ChannelPermutation(nn.Module):
    """``out[:, o] = x[:, perm[o]]``; the channel pruner shortens ``perm`` (ops.py)."""

    channel_permutation = True  # the marker learners/channel/ops.py looks for
    perm: Tensor

    def __init__(self, perm: Tensor) -> None:
        super().__init__()
        self.register_buffer("perm", perm.clone().long())

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.perm)


def shuffle_permutation(channels: int, groups: int) -> Tensor:
    """The permutation of ``view(groups, c / groups)``, ``transpose``, ``view`` back."""
    return torch.arange(channels).view(groups, channels // groups).t().reshape(-1)


class SplitShuffleUnit(nn.Module):
    """A ShuffleNet V2 unit: stride 1 passes the first channels through and branches on
    the last ``branch2[0].in_channels`` (read at run time, so a pruned unit splits where
    its branch expects); stride 2 runs both branches on the whole input. Then the
    channel shuffle as a stored permutation. Keeps the original's submodule names."""

    def __init__(self, branch1: nn.Module, branch2: nn.Sequential, stride: int, channels: int):
        super().__init__()
        self.stride = stride
        self.branch1 = branch1
        self.branch2 = branch2
        self.shuffle = ChannelPermutation(shuffle_permutation(channels, 2))

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            k = int(self.branch2[0].in_channels)  # type: ignore[arg-type]
            passed, branched = torch.split(x, [x.shape[1] - k, k], dim=1)
            out = torch.cat((passed, self.branch2(branched)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return self.shuffle(out)


def _candidate(module: nn.Module) -> bool:
    """A module shaped like torchvision's ShuffleNet V2 unit."""
    branch2 = getattr(module, "branch2", None)
    return (
        not isinstance(module, SplitShuffleUnit)
        and isinstance(getattr(module, "branch1", None), nn.Module)
        and isinstance(branch2, nn.Sequential)
        and len(branch2) > 0
        and isinstance(branch2[0], nn.Conv2d)
        and getattr(module, "stride", None) in (1, 2)
    )


def _inputs(model: nn.Module, example: Tensor, modules: list[nn.Module]) -> dict[int, Tensor]:
    """Each module's first input on the example (modules the forward never reaches are
    absent)."""
    seen: dict[int, Tensor] = {}

    def hook(module, args):
        if args and isinstance(args[0], Tensor):
            seen.setdefault(id(module), args[0].detach().clone())

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return seen


def _same(a: Tensor, b: Tensor) -> bool:
    if not isinstance(b, Tensor) or a.shape != b.shape:
        return False
    scale = float(a.abs().max()) or 1.0
    return float((a - b).abs().max()) <= TOLERANCE * scale


def prunable_form(model: nn.Module, example: Tensor) -> list[str]:
    """Swap, in place, every ShuffleNet V2 unit of ``model`` whose rewritten form computes
    the same on the example; returns the swapped modules' names."""
    names = [(n, m) for n, m in model.named_modules() if n and _candidate(m)]
    if not names:
        return []
    was_training = model.training
    model.eval()
    inputs = _inputs(model, example, [m for _, m in names])
    swapped = []
    for name, unit in names:
        x = inputs.get(id(unit))
        if x is None:
            continue
        with torch.no_grad():
            expected = unit(x)
            channels = int(expected.shape[1]) if isinstance(expected, Tensor) else 0
            if channels % 2:
                continue
            new = SplitShuffleUnit(unit.branch1, unit.branch2, int(unit.stride), channels)
            if not _same(expected, new(x)):
                continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
        swapped.append(name)
    model.train(was_training)
    return swapped

"""Chains of learners: which orders make sense, and applying one.

A candidate may pass through several learners, e.g. channel -> uniform (int8), or
sparsity -> nonuniform (Deep Compression: prune, share weights, Huffman-code). Order
matters: structure changes come first, then weight sparsity, then one quantiser, because

- a quantiser's output is no longer float weights (``uniform`` int8 is an onnxruntime
  graph, ``uniform`` qat and ``nonuniform`` hold codes or codebooks) and a later learner
  that edits or trains float weights would undo or break that;
- structured pruning after sparsification would cut through the sparse codecs' layout.

``validate_chain`` is called once, at the edge (the job spec), with a message that says
what is wrong and what would be valid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from hpo.space import Dimension, namespaced, split_namespace
from learners.base import Context, Learner, ModelInfo

# Stage of each built-in learner: a chain must not go back to a lower stage.
STAGES = {"channel": 0, "sparsity": 1, "uniform": 2, "nonuniform": 2}
QUANTIZERS = ("uniform", "nonuniform")  # their output is not float weights: nothing follows
STAGE_WHY = {
    0: "structure changes (channel pruning) come first",
    1: "weight sparsity comes after structure changes and before quantisation",
}


def validate_chain(
    names: Sequence[str],
    runtime: str | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Raise ValueError, naming the problem and the valid alternatives, for a bad chain.

    With ``runtime``, each learner (built with its ``options``, as the job will build it)
    that declares ``runtimes`` must list it: an int8 onnxruntime graph cannot be timed on
    torch-cpu. Without ``options`` learners are checked in their default configuration.
    """
    from learners.registry import get, known

    names = list(names)
    if not names:
        raise ValueError(f"a learner chain needs at least one learner; known: {', '.join(known())}")
    available = known()
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(
            f"unknown learner {', '.join(map(repr, unknown))} in chain {','.join(names)}; "
            f"known learners: {', '.join(available)}"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"learner {', '.join(map(repr, repeated))} appears more than once in chain "
            f"{','.join(names)}; each learner may be used once"
        )
    for i, name in enumerate(names):
        later = names[i + 1 :]
        if name in QUANTIZERS and later:
            raise ValueError(
                f"{later[0]!r} cannot follow {name!r} in chain {','.join(names)}: {name!r} "
                f"outputs quantised weights ({_quantized_output(name)}) and {later[0]!r} "
                "needs float weights; put the quantiser last, e.g. "
                f"{','.join([*[n for n in names if n != name], name])}"
                if later[0] not in QUANTIZERS
                else f"only one quantiser per chain, got {name!r} and {later[0]!r} in "
                f"{','.join(names)}"
            )
        for nxt in later:
            if name in STAGES and nxt in STAGES and STAGES[nxt] < STAGES[name]:
                raise ValueError(
                    f"{nxt!r} cannot follow {name!r} in chain {','.join(names)}: "
                    f"{STAGE_WHY[STAGES[nxt]]}; order as "
                    f"{','.join(sorted(names, key=lambda n: STAGES.get(n, 1)))}"
                )
    if runtime is None:
        return
    for name in names:
        learner = get(name, **dict((options or {}).get(name, {})))
        allowed = getattr(learner, "runtimes", None)
        if allowed and runtime not in allowed:
            hint = (
                "; or quantisation-aware training, which runs anywhere: "
                "learner_options: {uniform: {mode: qat}}"
                if name == "uniform"
                else ""
            )
            raise ValueError(
                f"learner {name!r} as configured runs only on {', '.join(allowed)}, but the "
                f"target runtime is {runtime!r}: set target.runtime to "
                f"{allowed[0]!r}{hint}"
            )


def _quantized_output(name: str) -> str:
    return {
        "uniform": "an int8 onnxruntime graph, or b-bit codes in qat mode",
        "nonuniform": "codebook indices",
    }[name]


def chain_space(learners: Sequence[Learner], info: ModelInfo) -> list[Dimension]:
    """All learners' dimensions, each namespaced by its learner's name."""
    dims: list[Dimension] = []
    for learner in learners:
        dims += namespaced(learner.name, learner.space(info))
    return dims


def apply_chain(
    learners: Sequence[Learner], model: nn.Module, params: dict[str, Any], ctx: Context
) -> nn.Module:
    """Run each learner on the previous one's output, with its own (un-prefixed) params."""
    validate_chain([learner.name for learner in learners])
    for learner in learners:
        model = learner.compress(model, split_namespace(params, learner.name), ctx)
    return model

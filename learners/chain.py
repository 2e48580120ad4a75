"""Chains of learners: which orders make sense, and applying one.

A candidate may pass through several learners, e.g. channel -> int8, or sparsity ->
nonuniform (Deep Compression: prune, share weights, Huffman-code). The rules come from
what each learner declares (``learners.base``), so a third-party learner is checked like a
built-in one:

- a chain never goes back to a lower ``stage`` (structure changes, then weight sparsity,
  then quantisation): structured pruning after sparsification would cut through the
  sparse codecs' layout;
- a learner with ``keeps_float`` False (an int8 graph, b-bit codes, codebook indices) comes
  last: a later learner that edits or trains float weights would undo or break its output;
- every learner's ``runtimes`` (None: any) include the target runtime.

``validate_chain`` is called once, at the edge (the job spec), with a message that says
what is wrong and what would be valid.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from hpo.space import Dimension, namespaced, split_namespace
from learners.base import STAGE_WHY, Context, Learner, ModelInfo
from learners.registry import get, known


def validate_chain(
    names: Sequence[str],
    runtime: str | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Raise ValueError, naming the problem and the valid alternatives, for a bad chain.

    Each learner is built with its ``options`` (its config's fields), as the job will
    build it; without ``options`` learners are checked in their default configuration.
    With ``runtime``, each learner's declared ``runtimes`` must include it: an int8
    onnxruntime graph cannot be timed on torch-cpu.
    """
    names = list(names)
    available = known()
    if not names:
        raise ValueError(f"a chain needs at least one learner; known: {', '.join(available)}")
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
    learners = [get(n, **dict((options or {}).get(n, {}))) for n in names]
    check_order(learners)
    if runtime is not None:
        check_runtime(learners, runtime)


def check_order(learners: Sequence[Learner]) -> None:
    """Raise ValueError if a learner follows one whose output is not float weights, or
    one of a later stage."""
    chain = ",".join(learner.name for learner in learners)
    valid = ",".join(learner.name for learner in sorted(learners, key=_rank))
    for i, learner in enumerate(learners):
        later = learners[i + 1 :]
        if later and not learner.keeps_float:
            nxt = later[0]
            if not nxt.keeps_float:
                raise ValueError(
                    f"only one quantiser per chain, got {learner.name!r} and {nxt.name!r} in "
                    f"{chain}: neither outputs float weights the other could take"
                )
            raise ValueError(
                f"{nxt.name!r} cannot follow {learner.name!r} in chain {chain}: "
                f"{learner.name!r} does not output float weights and {nxt.name!r} needs "
                f"them; put {learner.name!r} last, e.g. {valid}"
            )
        for nxt in later:
            if nxt.stage < learner.stage:
                why = STAGE_WHY.get(nxt.stage, f"stage {nxt.stage} comes before {learner.stage}")
                raise ValueError(
                    f"{nxt.name!r} cannot follow {learner.name!r} in chain {chain}: {why}; "
                    f"order as {valid}"
                )


def check_runtime(learners: Sequence[Learner], runtime: str) -> None:
    """Raise ValueError if a learner cannot be timed on ``runtime``, naming the runtime it
    needs and the learners of the same stage that would run there."""
    for learner in learners:
        allowed = learner.runtimes
        if allowed is None or runtime in allowed:
            continue
        others = [get(n) for n in known() if n != learner.name]
        alternatives = [
            o.name
            for o in others
            if o.stage == learner.stage and (o.runtimes is None or runtime in o.runtimes)
        ]
        hint = f"; or use the {' or '.join(alternatives)} learner" if alternatives else ""
        raise ValueError(
            f"learner {learner.name!r} as configured runs only on {', '.join(allowed)}, but "
            f"the target runtime is {runtime!r}: set target.runtime to {allowed[0]!r}{hint}"
        )


def valid_chains(
    runtimes: Sequence[str],
    kind: str,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    max_length: int = 2,
) -> list[list[str]]:
    """Every chain of up to ``max_length`` known learners that ``validate_chain`` accepts on
    every runtime and whose every learner can move the target: for speedup, each one
    speeds up every runtime (``speeds_up``; a learner that only saves bytes would cost
    accuracy for nothing); for compression, any. Shorter chains first, then by name."""
    names = known()
    useful = [
        n
        for n in names
        if kind != "speedup" or _speeds_up(get(n, **dict((options or {}).get(n, {}))), runtimes)
    ]
    chains: list[list[str]] = []
    for length in range(1, max_length + 1):
        for combo in itertools.permutations(useful, length):
            try:
                for runtime in runtimes:
                    validate_chain(combo, runtime=runtime, options=options)
            except ValueError:
                continue
            chains.append(list(combo))
    return chains


def _speeds_up(learner: Learner, runtimes: Sequence[str]) -> bool:
    faster_on = getattr(learner, "speeds_up", None)
    if faster_on is None:
        faster_on = learner.runtimes
    return faster_on is None or all(r in faster_on for r in runtimes)


def _rank(learner: Learner) -> tuple[int, bool]:
    """Sort key of a valid order: by stage, float-keeping learners first within one."""
    return int(learner.stage), not learner.keeps_float


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
    check_order(learners)
    for learner in learners:
        model = learner.compress(model, split_namespace(params, learner.name), ctx)
    return model

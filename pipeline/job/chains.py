"""Alternative chains in one job: the chain as a searched choice.

A job whose ``learners`` lists several chains searches one space: a categorical
``chain`` (each chain's label, e.g. ``channel,int8``) beside the union of every chain's
own dimensions (namespaced by learner, so ``channel.ratio`` means the same in
``[channel]`` and ``[channel, int8]``). The dimensions a setting's chain does not use are
held at one neutral value (``canonical``), so the optimiser's GP sees a chain's settings
differ only where that chain's learners differ, and two settings of ``[int8]`` are never
told apart by a pruning ratio no learner applied. Why one space rather than a search
per chain: one GP per target learns across chains from every screening (a shared
learner's dimension means the same in each chain), its acquisition moves the budget to
the chains whose screenings score best, and each chain's rule start (screened and fully
evaluated first) anchors it; skopt handles categorical choices natively.

Each setting is built by its own chain's learners: ``for_chain`` gives the spec of that
chain (``learners`` one chain, only its learners' options) and the setting's own
parameters, which is what candidates and screenings take, exactly as in a one-chain job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpo.space import Categorical, Dimension, Integer, Real
from learners import registry
from learners.aids import Aids
from pipeline.spec import JobSpec

CHAIN = "chain"  # the searched choice's parameter (a job with alternatives only)


def label(chain: list[str]) -> str:
    """A chain's name in records and params: its learners joined by ','."""
    return ",".join(chain)


def chain_of(spec: JobSpec, params: dict[str, Any]) -> list[str]:
    """The chain a setting is built with: its ``chain`` choice, or the job's one chain."""
    if CHAIN in params:
        return str(params[CHAIN]).split(",")
    return spec.chains[0]


def for_chain(spec: JobSpec, chain: list[str]) -> JobSpec:
    """The job's spec with ``learners`` = ``chain`` (and only its learners' options): what
    a candidate or screening of that chain is built from. The job's name stays."""
    options = {n: o for n, o in spec.learner_options.items() if n in chain}
    return spec.model_copy(
        update={"learners": list(chain), "learner_options": options, "name": spec.job_name}
    )


def own_params(params: dict[str, Any], chain: list[str]) -> dict[str, Any]:
    """A setting's parameters that its chain's learners read (and any not namespaced by
    a learner, e.g. distillation's): without the choice and other chains' dimensions."""
    return {k: v for k, v in params.items() if k != CHAIN and _used_by(k, chain)}


def _used_by(name: str, chain: list[str]) -> bool:
    """Whether a dimension is read by ``chain``: a learner's own (``<learner>.x``) only by
    chains holding that learner; any other (``distill.x``) by every chain."""
    head = name.split(".", 1)[0] if "." in name else ""
    return head in chain or head not in registry.known()


def narrowed(spec: JobSpec, chains: list[list[str]]) -> JobSpec:
    """The job's spec searching only ``chains`` (those left after the others proved
    unreachable); one chain left is an ordinary one-chain job."""
    kept = chains[0] if len(chains) == 1 else chains
    return spec.model_copy(update={"learners": kept, "name": spec.job_name})


def search_space(
    chains: list[list[str]], dims_of: Callable[[list[str]], list[Dimension]]
) -> list[Dimension]:
    """The choice of chain, then each chain's dimensions once (by name); one chain: its
    own dimensions only (no choice)."""
    if len(chains) == 1:
        return dims_of(chains[0])
    seen: dict[str, Dimension] = {}
    for chain in chains:
        for d in dims_of(chain):
            seen.setdefault(d.name, d)
    return [Categorical(CHAIN, tuple(label(c) for c in chains)), *seen.values()]


def neutral(d: Dimension) -> Any:
    """The value a dimension holds where a setting's chain does not use it."""
    if isinstance(d, Categorical):
        return d.choices[0]
    if isinstance(d, Integer):
        return d.low
    assert isinstance(d, Real)
    return d.low


def canonical(dims: list[Dimension]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """For a space with a chain choice: a setting with every dimension its chain does not
    use at its neutral value (any dimension missing, e.g. a rule start's, filled)."""
    if not dims or dims[0].name != CHAIN:
        return lambda params: params

    def fill(params: dict[str, Any]) -> dict[str, Any]:
        chain = str(params[CHAIN]).split(",")
        out = {CHAIN: params[CHAIN]}
        for d in dims[1:]:
            used = _used_by(d.name, chain)
            out[d.name] = params[d.name] if used and d.name in params else neutral(d)
        return out

    return fill


def merged_aids(by_chain: dict[str, Aids]) -> Aids:
    """One job's aids from its chains' (by label): the records, files, lines (each marked
    with its chain) and warnings of all, and a predictor and a veto that ask the
    setting's own chain. Starts are each chain's (``starts``); unreachable only if every
    chain is."""
    if len(by_chain) == 1:
        return next(iter(by_chain.values()))
    out = Aids()
    for name, aids in by_chain.items():
        out.records.update({f"{name.replace(',', '+')}/{k}": v for k, v in aids.records.items()})
        out.files += aids.files
        out.lines += [f"[{name}] {line}" for line in aids.lines]
        out.warnings += [f"[{name}] {line}" for line in aids.warnings]
    if all(a.unreachable for a in by_chain.values()):
        out.unreachable = "every chain falls short: " + "; ".join(
            f"{n}: {a.unreachable}" for n, a in by_chain.items()
        )
    predictors = {n: a.predict for n, a in by_chain.items()}
    vetoes = {n: a.veto for n, a in by_chain.items()}

    def predict(params: dict[str, Any]) -> float | None:
        own = predictors.get(str(params.get(CHAIN)))
        return own(params) if own is not None else None

    def veto(params: dict[str, Any]) -> str | None:
        own = vetoes.get(str(params.get(CHAIN)))
        return own(params) if own is not None else None

    out.predict = predict
    out.veto = veto if any(vetoes.values()) else None
    return out


def starts(by_chain: dict[str, Aids], dims: list[Dimension]) -> list[dict[str, Any]]:
    """Every chain's rule start, as a setting of the job's space (with its choice, in
    canonical form), in the order the chains are listed."""
    if len(by_chain) == 1:
        start = next(iter(by_chain.values())).start
        return [start] if start is not None else []
    fill = canonical(dims)
    return [fill({CHAIN: n, **a.start}) for n, a in by_chain.items() if a.start is not None]

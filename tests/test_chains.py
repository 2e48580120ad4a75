"""Alternative chains in one job (``learners`` as a list of chains, or ``auto``): the
spec's forms, the search space with the chain as a choice, and the search choosing the
chain on a problem whose best chain is known."""

import pytest

from hpo.space import Categorical, Real
from learners.aids import Aids
from learners.chain import valid_chains
from pipeline.job import chains
from pipeline.job.search import state_for
from pipeline.job.twofidelity import TwoFidelity
from pipeline.records.results import CandidateResult
from pipeline.spec import SpecError, parse

ORT = {"speedup": 2, "runtime": "onnxruntime-cpu"}


def job(learners, target=ORT, **fields):
    return parse(
        {"model": "resnet20", "data": "digits", "target": target, "learners": learners, **fields}
    )


@pytest.mark.parametrize(
    "given, chains_",
    [
        ("channel", [["channel"]]),
        ("channel,int8", [["channel", "int8"]]),
        ("channel;int8;channel,int8", [["channel"], ["int8"], ["channel", "int8"]]),
        ([["channel"], ["lowrank", "int8"]], [["channel"], ["lowrank", "int8"]]),
        ([["channel", "int8"]], [["channel", "int8"]]),  # one listed alone is that chain
        (["channel;int8"], None),  # a list holding a ';' string is one unknown name
    ],
)
def test_the_forms_of_learners(given, chains_):
    if chains_ is None:
        with pytest.raises(SpecError, match="unknown learner"):
            job(given)
        return
    spec = job(given)
    assert spec.chains == chains_
    assert (len(chains_) == 1) == isinstance(spec.learners[0], str)


def test_auto_lists_every_valid_chain_that_gives_the_target_on_the_runtime():
    on_ort = job("auto").chains
    assert ["int8"] in on_ort and ["channel", "int8"] in on_ort and ["lowrank", "int8"] in on_ort
    # sparsity and codebooks save bytes, not time; int8 before channel is not a valid order
    assert not any({"sparsity", "nonuniform", "qat"} & set(c) for c in on_ort)
    assert ["int8", "channel"] not in on_ort and all(len(c) <= 2 for c in on_ort)
    on_torch = job("auto", {"speedup": 2, "runtime": "torch-cpu"}).chains
    assert ["int8"] not in on_torch and ["channel"] in on_torch  # int8 runs on onnxruntime only
    smaller = job("auto", {"compression": 4}, auto_chain_length=1).chains
    assert ["sparsity"] in smaller and all(len(c) == 1 for c in smaller)
    assert on_ort == valid_chains(["onnxruntime-cpu"], "speedup")


@pytest.mark.parametrize(
    "learners, options, message",
    [
        ("channel;channel", {}, "listed more than once"),
        ("channel;int8", {}, "runs only on onnxruntime-cpu"),  # on torch-cpu
        ("channel;lowrank", {"sparsity": {}}, "not in learners"),
    ],
)
def test_bad_alternatives_are_refused_with_the_reason(learners, options, message):
    with pytest.raises(SpecError, match=message):
        job(learners, {"speedup": 2, "runtime": "torch-cpu"}, learner_options=options)


def test_options_reach_only_the_chains_that_hold_their_learner():
    spec = job("channel;lowrank,int8", learner_options={"channel": {"max_ratio": 0.5}})
    with pytest.raises(ValueError, match="pick one first"):
        _ = spec.chain
    one = chains.for_chain(spec, ["lowrank", "int8"])
    assert one.chain == ["lowrank", "int8"] and one.learner_options == {}
    assert one.job_name == spec.job_name == "resnet20-2-chains-speedup2"
    assert chains.for_chain(spec, ["channel"]).learner_options["channel"]["max_ratio"] == 0.5


SPACE = [
    Categorical("chain", ("channel", "lowrank")),
    Real("channel.x", 0.0, 1.0),
    Real("lowrank.y", 0.0, 1.0),
    Real("distill.alpha", 0.0, 1.0),  # read by every chain
]


def test_a_setting_holds_the_dimensions_its_chain_does_not_use_at_one_value():
    fill = chains.canonical(SPACE)
    a = fill({"chain": "channel", "channel.x": 0.3, "lowrank.y": 0.9, "distill.alpha": 0.5})
    assert a == {"chain": "channel", "channel.x": 0.3, "lowrank.y": 0.0, "distill.alpha": 0.5}
    assert fill({"chain": "lowrank", "lowrank.y": 0.4})["channel.x"] == 0.0  # a start's filled
    own = chains.own_params(
        {"chain": "channel", "channel.r": 1, "int8.m": 2, "distill.t": 3}, ["channel"]
    )
    assert own == {"channel.r": 1, "distill.t": 3}
    assert chains.canonical([Real("x", 0, 1)])({"x": 0.5}) == {"x": 0.5}  # one chain: as is


def test_the_space_is_the_choice_and_each_dimension_once():
    dims_of = {
        "channel": [Real("channel.r", 0, 1)],
        "channel,int8": [Real("channel.r", 0, 1), Categorical("int8.m", ("s", "d"))],
    }
    space = chains.search_space([["channel"], ["channel", "int8"]], lambda c: dims_of[",".join(c)])
    assert [d.name for d in space] == ["chain", "channel.r", "int8.m"]
    assert space[0].choices == ("channel", "channel,int8")
    assert chains.search_space([["channel"]], lambda c: dims_of["channel"]) == dims_of["channel"]


def test_merged_aids_ask_the_settings_own_chain_and_are_unreachable_only_if_all_are():
    by_chain = {
        "channel": Aids(start={"channel.x": 0.5}, predict=lambda p: 10.0, lines=["calibrated"]),
        "lowrank": Aids(start={"lowrank.y": 0.2}, predict=lambda p: 2.0, unreachable="slow"),
    }
    merged = chains.merged_aids(by_chain)
    assert merged.predict({"chain": "channel"}) == 10.0
    assert merged.predict({"chain": "lowrank"}) == 2.0
    assert merged.unreachable is None and merged.lines == ["[channel] calibrated"]
    starts = chains.starts(by_chain, SPACE)
    assert [s["chain"] for s in starts] == ["channel", "lowrank"]
    assert starts[1]["channel.x"] == 0.0
    both = chains.merged_aids({n: Aids(unreachable="short") for n in "ab"})
    assert both.unreachable.startswith("every chain falls short")


def test_merged_aids_veto_by_the_settings_own_chain():
    by_chain = {
        "channel": Aids(veto=lambda p: "too slow on onnxruntime" if p["channel.x"] > 0.5 else None),
        "lowrank": Aids(),  # no veto of its own: none of its settings is vetoed
    }
    merged = chains.merged_aids(by_chain)
    assert merged.veto({"chain": "channel", "channel.x": 0.7}) == "too slow on onnxruntime"
    assert merged.veto({"chain": "channel", "channel.x": 0.3}) is None
    assert merged.veto({"chain": "lowrank", "channel.x": 0.7}) is None
    assert chains.merged_aids({"a": Aids(), "b": Aids()}).veto is None


# A problem whose best chain is known: at a 3x target, chain lowrank keeps ~0.85 of its
# accuracy where channel keeps ~0.5. Both rules are weak (set well past what 3x needs).
def quality(p):
    strength = p["channel.x"] if p["chain"] == "channel" else p["lowrank.y"]
    speed = 1 + 3 * strength
    top = 0.6 if p["chain"] == "channel" else 0.95
    return top - 0.15 * strength, speed


def test_the_search_starts_from_every_chains_rule_and_finds_the_better_chain():
    target = {"speedup": 3.0, "max_accuracy_drop": 100}
    spec = parse({"target": target, "budget": {"rounds": 6, "screen": 60, "batch": 1}})
    state = state_for(spec, 0.95, 10)
    fill = chains.canonical(SPACE)
    starts = [
        fill({"chain": "channel", "channel.x": 0.95}),
        fill({"chain": "lowrank", "lowrank.y": 0.95}),
    ]

    def screen(settings, first):
        rows = []
        for i, p in enumerate(settings):
            accuracy, speed = quality(p)
            rows.append(
                {
                    "index": first + i,
                    "params": p,
                    "status": "ok",
                    "accuracy": accuracy - 0.1,
                    "achieved": speed,
                }
            )
        return rows

    def evaluate(settings, first):
        out = []
        for i, p in enumerate(settings):
            r = CandidateResult(round=first + i, params=p, learners=[p["chain"]])
            r.accuracy, r.speedup = quality(p)
            r.speedups = {"torch-cpu": r.speedup}
            r.speedup_intervals = {"torch-cpu": [r.speedup * 0.99, r.speedup * 1.01]}
            out.append(r.to_dict())
        return out

    loop = TwoFidelity(
        spec=spec, state=state, dims=SPACE, baseline_accuracy=0.95, screen=screen,
        evaluate=evaluate, on_screen=lambda rows: None, on_result=lambda r, f: None,
        starts=starts, log=lambda line: None,
        rule_source=lambda p: f"rule:{p['chain']}", normalize=chains.canonical(SPACE),
    )  # fmt: skip
    loop.run()
    first_two = state.results[:2]
    assert [r.params for r in first_two] == starts
    assert [r.source for r in first_two] == ["rule:channel", "rule:lowrank"]
    assert [r.params for r in loop.screenings[:2]] == starts  # screened first, too
    best = state.best_feasible()
    assert best.params["chain"] == "lowrank" and best.source == "search"
    assert best.accuracy > max(r.accuracy for r in first_two)  # the search beat both rules
    # every proposal is in canonical form: channel's settings never vary lowrank's dimension
    ones = [r.params for r in loop.screenings if r.params["chain"] == "channel"]
    assert ones and all(p["lowrank.y"] == 0.0 for p in ones)
    assert {r.params["chain"] for r in loop.screenings} == {"channel", "lowrank"}


def test_distilling_at_all_is_a_searched_choice():
    import torch

    from learners.base import ModelInfo
    from pipeline.job.search import search_space
    from pipeline.job.settings import distill_settings
    from tests.helpers import tiny_cnn

    spec = job("channel;lowrank", {"speedup": 2, "runtime": "torch-cpu"},
               distillation={"enabled": True, "search": True})  # fmt: skip
    x = torch.randn(2, 1, 8, 8)
    dims = search_space(spec, ModelInfo(tiny_cnn(), x))
    on = next(d for d in dims if d.name == "distill.on")
    assert set(on.choices) == {True, False}
    assert {"distill.temperature", "distill.alpha"} <= {d.name for d in dims}
    chosen = {"distill.on": True, "distill.temperature": 2.5, "distill.alpha": 0.3}
    assert distill_settings(spec, chosen).temperature == 2.5
    assert distill_settings(spec, {**chosen, "distill.on": False}) is None
    # a setting's own parameters keep the choice, whichever chain it is built by
    assert chains.own_params({"chain": "lowrank", **chosen}, ["lowrank"]) == chosen
    # `search: true` alone searches it (it was silently ignored without `enabled`); with
    # `enabled: false` the spec contradicts itself and is refused
    alone = job("channel", {"speedup": 2, "runtime": "torch-cpu"}, distillation={"search": True})
    assert alone.distillation.enabled
    assert "distill.on" in {d.name for d in search_space(alone, ModelInfo(tiny_cnn(), x))}
    with pytest.raises(ValueError, match="distillation.search: true needs"):
        job("channel", {"speedup": 2}, distillation={"search": True, "enabled": False})


def test_a_chain_with_nothing_to_search_is_left_out_and_the_rest_searched():
    import torch

    from learners import registry
    from learners.base import LearnerDefaults, ModelInfo, NothingToSearch
    from pipeline.job.search import searchable
    from tests.helpers import tiny_cnn

    class Empty(LearnerDefaults):
        name = "empty"
        config = None

        def space(self, info):
            raise NothingToSearch("no group prunes consistently")

    registry.register("empty", lambda **options: Empty())
    try:
        info = ModelInfo(tiny_cnn(), torch.randn(2, 1, 8, 8))
        lines = []
        spec, dims = searchable(job("lowrank;empty", {"compression": 2}), info, lines.append)
        assert spec.chains == [["lowrank"]] and "chain" not in [d.name for d in dims]
        assert lines == ["chain left out of the search, nothing to search in empty: no group "
                         "prunes consistently"]  # fmt: skip
        with pytest.raises(NothingToSearch, match="no group prunes"):  # one chain: as before
            searchable(job("empty", {"compression": 2}), info)
    finally:
        registry.unregister("empty")
